"""Per-op speed, every available backend, at the shapes PGGAN runs (v2-1gpu minibatch, Table-2 widths).

Each case is one op, one pass ('fwd' or 'fwd+bwd'), one dtype and one resolution; the backends of a case share
a group, so the report gives their ratio to 'ref'. `bytes` is the minimum a fused implementation must move
through memory (each input read once, each output written once; small vectors ignored). The ops do a few
flops per element, so they are memory-bound: bytes / median / measured copy bandwidth is the roofline fraction.

    bias_act      x (N,C,R,R):   fwd 2 E (x, y)            fwd+bwd 5 E (+ dy, y, dx)
    fade_in G     rgb (N,3,R,R): fwd 2.25 E (low is E/4)   fwd+bwd 4.5 E (+ dy, dhigh, dlow)
    fade_in D     feat (N,C,R/2,R/2), same size: fwd 3 E   fwd+bwd 6 E
    mbstd         x (N,512,4,4): fwd 2 E                   fwd+bwd 5 E
    GP            grads (N,3,R,R): fwd 1 E                 fwd+bwd 3 E (+ g again, dg)
    gp_interpolate  images (N,3,R,R): fwd 3 E (real, fake, xhat)  fwd+bwd 6 E (+ dy, dreal, dfake)

(E = elements x bytes per element.) On the CPU the Triton cases skip (they would run on the interpreter); the
extension's C++ kernels run there.
"""
import pytest
import torch

from conftest import PGGAN_SHAPES, devices, record, run_synced
from fastpggan import ops

IMPLS = ["ref", "triton", "ext"]
CPU_RESOLUTIONS = (8, 32)


def _bias_act(res, dtype, device, pn):
    n, c = PGGAN_SHAPES[res]
    x = torch.randn(n, c, res, res, device=device, dtype=dtype)
    b = torch.randn(c, device=device)
    return (lambda impl, x, b: ops.bias_act(x, b, gain=0.05, pixel_norm=pn, impl=impl)), [x, b], x.numel(), (2, 5)


def _fade_g(res, dtype, device):
    n, _ = PGGAN_SHAPES[res]
    high = torch.randn(n, 3, res, res, device=device, dtype=dtype)
    low = torch.randn(n, 3, res // 2, res // 2, device=device, dtype=dtype)
    return (lambda impl, lo, hi: ops.fade_in(lo, hi, 0.37, impl=impl)), [low, high], high.numel(), (2.25, 4.5)


def _fade_d(res, dtype, device):
    n, _ = PGGAN_SHAPES[res]
    c = PGGAN_SHAPES[res // 2][1]
    high = torch.randn(n, c, res // 2, res // 2, device=device, dtype=dtype)
    low = torch.randn_like(high)
    return (lambda impl, lo, hi: ops.fade_in(lo, hi, 0.37, impl=impl)), [low, high], high.numel(), (3, 6)


def _mbstd(res, dtype, device):
    n, c = PGGAN_SHAPES[4]
    x = torch.randn(n, c, 4, 4, device=device, dtype=dtype)
    return (lambda impl, x: ops.minibatch_stddev(x, 4, impl=impl)), [x], x.numel(), (2, 5)


def _gp(res, dtype, device):
    n, _ = PGGAN_SHAPES[res]
    g = torch.randn(n, 3, res, res, device=device, dtype=dtype)
    return (lambda impl, g: ops.gradient_penalty(g, impl=impl)), [g], g.numel(), (1, 3)


def _interp(res, dtype, device):
    n, _ = PGGAN_SHAPES[res]
    real = torch.randn(n, 3, res, res, device=device, dtype=dtype)
    fake = torch.randn_like(real)
    u = torch.rand(n, device=device)
    return (lambda impl, r, f: ops.gp_interpolate(r, f, u, impl=impl)), [real, fake], real.numel(), (3, 6)


OPS = {
    "bias_act": (lambda r, d, dev: _bias_act(r, d, dev, False), list(PGGAN_SHAPES)),
    "bias_act+pixelnorm": (lambda r, d, dev: _bias_act(r, d, dev, True), list(PGGAN_SHAPES)),
    "fade_in G rgb": (_fade_g, [r for r in PGGAN_SHAPES if r >= 8]),
    "fade_in D features": (_fade_d, [r for r in PGGAN_SHAPES if r >= 8]),
    "minibatch_stddev": (_mbstd, [4]),
    "gradient_penalty": (_gp, list(PGGAN_SHAPES)),
    "gp_interpolate": (_interp, list(PGGAN_SHAPES)),
}


def _cases():
    cases = []
    for dev in devices():
        device = dev.values[0]
        for op, (_, resolutions) in OPS.items():
            for res in resolutions:
                if device == "cpu" and res not in CPU_RESOLUTIONS + (4,):
                    continue
                for dtype in ([torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]):
                    for mode in ("fwd", "fwd+bwd"):
                        dt = str(dtype).replace("torch.", "")
                        cases.append(pytest.param(device, op, res, dtype, mode, marks=dev.marks,
                                                  id=f"{device}-{op.replace(' ', '_')}-{res}-{dt}-{mode}"))
    return cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device,op,res,dtype,mode", _cases())
def test_op(benchmark, device, op, res, dtype, mode, impl):
    fn, inputs, elements, (fwd_units, fwdbwd_units) = OPS[op][0](res, dtype, device)
    try:
        out = fn(impl, *inputs)
    except ops.BackendUnavailable as e:
        pytest.skip(str(e))
    dt = str(dtype).replace("torch.", "")
    benchmark.group = f"{op} {mode} {device} {dt} {res}x{res}"
    units = fwd_units if mode == "fwd" else fwdbwd_units
    record(benchmark, device, op=op, mode=mode, res=res, dtype=dt, impl=impl,
           bytes=int(units * elements * inputs[0].element_size()))
    if mode == "fwd":
        run_synced(benchmark, lambda: fn(impl, *inputs), device)
        return
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    gy = torch.randn_like(out)
    run_synced(benchmark, lambda: torch.autograd.grad(fn(impl, *leaves), leaves, gy), device)
