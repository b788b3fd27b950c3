"""minibatch_stddev kernels (paper Sec. 3). With G samples per group, M = N / G groups, n in group n % M:

    s[m] = mean_f sqrt(mean_g (x[g*M+m, f] - mean_g x[., f])^2 + 1e-8),      f over (c, h, w)
    out  = cat([x, s[n % M] as one constant map], dim=1)

Forward: the statistics in partial sums over feature chunks (grid chunks x groups, so that a small minibatch
still fills the GPU), finished per group in a fixed order (deterministic), then one launch that writes out.
Backward: one launch, dx = dout[:, :C] + ds[m] * (x - mean) / (F * G * std), ds[m] the sum of dout's extra map
over the group. The statistic is a mean over all f, so each sample's elements are visited in memory order and
NCHW-contiguous and channels_last inputs take the same statistics kernel.
"""

import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, acc_dtype, cdiv, empty, needs_int64, program_start
from ._tensors import accumulator_dtype, dense, is_channels_last, like_layout

EPS = 1e-8
STATS_BLOCK = 1024
FINISH_BLOCK = 128
BWD_BLOCK = 512  # 1024 features per program take 108 registers a thread (25 % occupancy on sm_90)


@triton.jit
def _group_moments(x_ptr, m, M, G, F, f, fm, eps, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Per-feature mean and std over the G members of group m, for features f."""
    mean = tl.zeros([BLOCK], ACC)
    for g in range(0, G):
        mean += tl.load(x_ptr + (g * M + m).to(tl.int64) * F + f, mask=fm, other=0).to(ACC)
    mean = mean / G
    var = tl.zeros([BLOCK], ACC)
    for g in range(0, G):
        d = tl.load(x_ptr + (g * M + m).to(tl.int64) * F + f, mask=fm, other=0).to(ACC) - mean
        var += d * d
    return mean, tl.sqrt(var / G + eps)


@triton.jit
def _stats_kernel(x_ptr, part_ptr, M, G, F, eps, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """grid (feature chunks, groups): part[m, chunk] = the chunk's sum of per-feature stds (the large dimension on
    axis 0); _finish_kernel adds a group's chunks in order, so the result is deterministic."""
    chunk = tl.program_id(0)
    m = tl.program_id(1)
    f = chunk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    fm = f < F
    _, sd = _group_moments(x_ptr, m, M, G, F, f, fm, eps, ACC, BLOCK)
    tl.store(part_ptr + m.to(tl.int64) * tl.num_programs(0) + chunk, tl.sum(tl.where(fm, sd, 0), axis=0))


@triton.jit
def _finish_kernel(part_ptr, s_ptr, chunks, F, ACC: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)
    total = tl.zeros([BLOCK], ACC)
    for c0 in range(0, chunks, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        total += tl.load(part_ptr + m.to(tl.int64) * chunks + c, mask=c < chunks, other=0)
    tl.store(s_ptr + m, tl.sum(total, axis=0) / F)


@triton.jit
def _concat_kernel(
    x_ptr, s_ptr, out_ptr, numel, M, C, HW, CHANNELS_LAST: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr
):
    offs = program_start(BLOCK, INT64) + tl.arange(0, BLOCK)
    inb = offs < numel
    if CHANNELS_LAST:
        c = offs % (C + 1)
        pix = offs // (C + 1)
        n = pix // HW
        is_x = c < C
        src = pix * C + c
    else:
        n = offs // ((C + 1) * HW)
        r = offs % ((C + 1) * HW)
        is_x = r < C * HW
        src = n * C * HW + r
    xv = tl.load(x_ptr + src, mask=inb & is_x, other=0)
    sv = tl.load(s_ptr + n % M, mask=inb & (is_x == 0), other=0).to(xv.dtype)
    tl.store(out_ptr + offs, tl.where(is_x, xv, sv), mask=inb)


@triton.jit
def _bwd_kernel(
    dout_ptr,
    x_ptr,
    dx_ptr,
    M,
    G,
    C,
    HW,
    F,
    eps,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # grid (feature blocks, groups): the large dimension on axis 0, whose limit is 2^31 - 1 (axis 1's is 65535).
    # F = C * HW comes from the host (an int64 argument once it passes int32).
    m = tl.program_id(1)
    ds = tl.zeros([BLOCK_HW], ACC)
    for g in range(0, G):
        n = (g * M + m).to(tl.int64)
        for h0 in range(0, HW, BLOCK_HW):
            hw = h0 + tl.arange(0, BLOCK_HW)
            if CHANNELS_LAST:
                off = (n * HW + hw) * (C + 1) + C
            else:
                off = n * (C + 1) * HW + C * HW + hw
            ds += tl.load(dout_ptr + off, mask=hw < HW, other=0).to(ACC)
    coef = tl.sum(ds, axis=0) / F / G  # not / (F * G): that product overflows int32 at 2^31
    f = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # int32 (F < 2^31): f // C needs no 64-bit division
    fm = f < F
    mean, sd = _group_moments(x_ptr, m, M, G, F, f, fm, eps, ACC, BLOCK)
    for g in range(0, G):
        n = (g * M + m).to(tl.int64)
        u = (tl.load(x_ptr + n * F + f, mask=fm, other=0).to(ACC) - mean) / sd
        if CHANNELS_LAST:
            doff = (n * HW + f // C) * (C + 1) + f % C
        else:
            doff = n * (C + 1) * HW + f
        d = tl.load(dout_ptr + doff, mask=fm, other=0).to(ACC) + coef * u
        tl.store(dx_ptr + n * F + f, d.to(dx_ptr.dtype.element_ty), mask=fm)


def minibatch_stddev(x, group_size):
    """(N, C, H, W) -> (N, C+1, H, W) in x's layout; group_size must divide N."""
    x = dense(x)
    n, c, h, w = x.shape
    m = n // group_size
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    out = empty((n, c + 1, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    s = empty((m,), dtype=accumulator_dtype(x.dtype), device=x.device)
    if x.numel():
        chunks = cdiv(c * h * w, STATS_BLOCK)
        part = empty((m, chunks), dtype=accumulator_dtype(x.dtype), device=x.device)
        _stats_kernel[(chunks, m)](x, part, m, group_size, c * h * w, EPS, ACC=acc_dtype(x), BLOCK=STATS_BLOCK)
        _finish_kernel[(m,)](part, s, chunks, c * h * w, ACC=acc_dtype(x), BLOCK=FINISH_BLOCK)
    else:
        s.fill_(EPS**0.5)
    _concat_kernel[(cdiv(out.numel(), ELEMENTWISE_BLOCK),)](
        x,
        s,
        out,
        out.numel(),
        m,
        c,
        h * w,
        CHANNELS_LAST=fmt is torch.channels_last,
        INT64=needs_int64(out),
        BLOCK=ELEMENTWISE_BLOCK,
    )
    return out


def minibatch_stddev_grad(dout, x, group_size):
    """dx of minibatch_stddev given dout (N, C+1, H, W)."""
    x = dense(x)
    n, c, h, w = x.shape
    dout = like_layout(dout, x)
    dx = empty(None, like=x)
    if x.numel() == 0:
        return dx
    m = n // group_size
    if c * h * w >= 2**31:
        raise ValueError("minibatch_stddev: more than 2^31 - 1 features per sample")
    _bwd_kernel[(cdiv(c * h * w, BWD_BLOCK), m)](
        dout,
        x,
        dx,
        m,
        group_size,
        c,
        h * w,
        c * h * w,
        EPS,
        CHANNELS_LAST=is_channels_last(x),
        ACC=acc_dtype(x),
        BLOCK=BWD_BLOCK,
        BLOCK_HW=min(256, triton.next_power_of_2(h * w)),
    )
    return dx
