"""gradient_penalty kernels: gp[n] = (||g_n||_2 - t)^2 and its backward dg = dgp[n] * 2 (r_n - t) / r_n * g_n.

Forward: partial sums of squares over fixed chunks of each sample, then one program per sample adds them up
in a fixed order (deterministic, no atomics) and writes r = ||g_n|| and the penalty. Backward: one elementwise
pass. At r_n = 0 the gradient is 0, as torch.linalg.vector_norm defines it. The norm is over all of a sample's
elements, so any dense layout is read in memory order.

Also the WGAN-GP interpolation xhat = real + u[n] (fake - real), one elementwise pass.
"""

import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, acc_dtype, cdiv, empty, needs_int64, program_start
from ._tensors import accumulator_dtype, dense, like_layout

FINAL_BLOCK = 1024


@triton.jit
def _sumsq_kernel(g_ptr, part_ptr, D, S, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # grid (chunks, samples): the large dimension on axis 0 (limit 2^31 - 1; axis 1's is 65535)
    n = tl.program_id(1).to(tl.int64)
    s = tl.program_id(0)
    i = s.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(g_ptr + n * D + i, mask=i < D, other=0).to(ACC)
    tl.store(part_ptr + n * S + s, tl.sum(v * v, axis=0))


@triton.jit
def _finish_kernel(part_ptr, gp_ptr, r_ptr, S, target, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    total = tl.zeros([BLOCK], ACC)
    for s0 in range(0, S, BLOCK):
        s = s0 + tl.arange(0, BLOCK)
        total += tl.load(part_ptr + n * S + s, mask=s < S, other=0)
    r = tl.sqrt(tl.sum(total, axis=0))
    tl.store(r_ptr + n, r)
    tl.store(gp_ptr + n, (r - target) * (r - target))


@triton.jit
def _bwd_kernel(dgp_ptr, g_ptr, r_ptr, dg_ptr, D, target, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    r = tl.load(r_ptr + n).to(ACC)
    coef = tl.where(r > 0, tl.load(dgp_ptr + n).to(ACC) * 2 * (r - target) / tl.where(r > 0, r, 1), 0)
    v = tl.load(g_ptr + n * D + i, mask=i < D, other=0).to(ACC)
    tl.store(dg_ptr + n * D + i, (coef * v).to(dg_ptr.dtype.element_ty), mask=i < D)


def gradient_penalty(g, target):
    """(gp, r): per-sample penalty and norm, shape (N,), in fp32 (fp64 for fp64 input)."""
    g = dense(g)
    n = g.shape[0]
    d = g[0].numel() if n else 0
    gp = empty((n,), dtype=accumulator_dtype(g.dtype), device=g.device)
    r = empty((n,), dtype=accumulator_dtype(g.dtype), device=g.device)
    if n == 0:
        return gp, r
    s = max(1, cdiv(d, ELEMENTWISE_BLOCK))
    part = empty((n, s), dtype=accumulator_dtype(g.dtype), device=g.device)
    if d:
        _sumsq_kernel[(s, n)](g, part, d, s, ACC=acc_dtype(g), BLOCK=ELEMENTWISE_BLOCK)
    else:
        part.zero_()
    _finish_kernel[(n,)](part, gp, r, s, float(target), ACC=acc_dtype(g), BLOCK=FINAL_BLOCK)
    return gp, r


def gradient_penalty_grad(dgp, g, r, target):
    """dg = dgp[n] * 2 (r_n - t) / r_n * g_n, in g's dtype and layout (0 where r_n = 0)."""
    g = dense(g)
    dgp = dgp.contiguous()
    dg = empty(None, like=g)
    n = g.shape[0]
    d = g[0].numel() if n else 0
    if n == 0 or d == 0:
        return dg
    _bwd_kernel[(cdiv(d, ELEMENTWISE_BLOCK), n)](
        dgp, g, r, dg, d, float(target), ACC=acc_dtype(g), BLOCK=ELEMENTWISE_BLOCK
    )
    return dg


@triton.jit
def _interpolate_kernel(
    real_ptr, fake_ptr, u_ptr, out_ptr, numel, D, INT64: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr
):
    offs = program_start(BLOCK, INT64) + tl.arange(0, BLOCK)
    inb = offs < numel
    a = tl.load(real_ptr + offs, mask=inb).to(ACC)
    b = tl.load(fake_ptr + offs, mask=inb).to(ACC)
    u = tl.load(u_ptr + offs // D, mask=inb).to(ACC)
    tl.store(out_ptr + offs, (a + u * (b - a)).to(out_ptr.dtype.element_ty), mask=inb)


def gp_interpolate(real, fake, u):
    """real + u[n] * (fake - real) (the WGAN-GP sample), in real's dtype and layout."""
    real = dense(real)
    fake = like_layout(fake, real).to(real.dtype)
    u = u.to(device=real.device, dtype=accumulator_dtype(real.dtype)).contiguous()
    out = empty(None, like=real)
    n = real.shape[0]
    if real.numel() == 0:
        return out
    _interpolate_kernel[(cdiv(real.numel(), ELEMENTWISE_BLOCK),)](
        real,
        fake,
        u,
        out,
        real.numel(),
        real.numel() // n,
        INT64=needs_int64(real),
        ACC=acc_dtype(real),
        BLOCK=ELEMENTWISE_BLOCK,
    )
    return out
