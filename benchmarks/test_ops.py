"""Per-op speed, every available backend, at the shapes PGGAN runs (v2-1gpu minibatch, Table-2 widths).

bytes = the minimum a fused kernel must move (inputs read once, outputs written once); the report turns the
median into GB/s. Forward and forward+backward are separate groups.
"""
import pytest
import torch

from conftest import PGGAN_SHAPES, devices, record, run_synced, shape_cases
from fastpggan import ops

IMPLS = ["ref", "triton", "ext"]


def _impl_or_skip(impl, op, *args, **kwargs):
    try:
        getattr(ops, op)(*args, impl=impl, **kwargs)
    except ops.BackendUnavailable as e:
        pytest.skip(str(e))


def _inputs(device, res, dtype=torch.float32, grad=False):
    n, c = PGGAN_SHAPES[res]
    x = torch.randn(n, c, res, res, device=device, dtype=dtype, requires_grad=grad)
    b = torch.randn(c, device=device, requires_grad=grad)
    return x, b


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device,res", shape_cases())
def test_bias_act_pixelnorm_fwd(benchmark, device, res, impl):
    x, b = _inputs(device, res)
    _impl_or_skip(impl, "bias_act", x, b, pixel_norm=True)
    benchmark.group = f"bias_act+pn fwd {device} {res}"
    record(benchmark, device, bytes=2 * x.numel() * x.element_size(), op="bias_act", res=res, impl=impl)
    run_synced(benchmark, lambda: ops.bias_act(x, b, gain=0.1, pixel_norm=True, impl=impl), device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device,res", shape_cases())
def test_bias_act_fwd_bwd(benchmark, device, res, impl):
    x, b = _inputs(device, res, grad=True)
    _impl_or_skip(impl, "bias_act", x.detach(), b.detach())
    gy = torch.randn_like(x)
    benchmark.group = f"bias_act fwd+bwd {device} {res}"
    record(benchmark, device, bytes=5 * x.numel() * x.element_size(), op="bias_act", res=res, impl=impl)
    run_synced(benchmark, lambda: torch.autograd.grad(ops.bias_act(x, b, gain=0.1, impl=impl), (x, b), gy), device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device,res", [c for c in shape_cases() if c.values[1] >= 8])
def test_fade_in_fwd(benchmark, device, res, impl):
    n, _ = PGGAN_SHAPES[res]
    high = torch.randn(n, 3, res, res, device=device)
    low = torch.randn(n, 3, res // 2, res // 2, device=device)
    _impl_or_skip(impl, "fade_in", low, high, 0.5)
    benchmark.group = f"fade_in fwd {device} {res}"
    record(benchmark, device, bytes=(2 * high.numel() + low.numel()) * 4, op="fade_in", res=res, impl=impl)
    run_synced(benchmark, lambda: ops.fade_in(low, high, 0.5, impl=impl), device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
def test_minibatch_stddev_fwd_bwd(benchmark, device, impl):
    x, _ = _inputs(device, 4, grad=True)
    _impl_or_skip(impl, "minibatch_stddev", x.detach())
    gy = torch.randn(x.shape[0], x.shape[1] + 1, 4, 4, device=device)
    benchmark.group = f"minibatch_stddev fwd+bwd {device}"
    record(benchmark, device, bytes=4 * x.numel() * 4, op="minibatch_stddev", res=4, impl=impl)
    run_synced(benchmark, lambda: torch.autograd.grad(ops.minibatch_stddev(x, impl=impl), x, gy), device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device,res", shape_cases())
def test_gradient_penalty_fwd_bwd(benchmark, device, res, impl):
    n, _ = PGGAN_SHAPES[res]
    g = torch.randn(n, 3, res, res, device=device, requires_grad=True)
    _impl_or_skip(impl, "gradient_penalty", g.detach())
    benchmark.group = f"gradient_penalty fwd+bwd {device} {res}"
    record(benchmark, device, bytes=3 * g.numel() * 4, op="gradient_penalty", res=res, impl=impl)
    run_synced(benchmark, lambda: torch.autograd.grad(ops.gradient_penalty(g, impl=impl).sum(), g), device)
