"""Helpers of the backend tests (test_backends.py, test_backends_reductions.py; their docstrings say what they check):
the `fast` fixture over the fast backends, NaN-poisoned outputs, the per-dtype comparison, inputs and shapes."""

import pytest
import torch

from conftest import skip_unless_runs, slow
from fastpggan import ops

DEV = "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


FAST = ["triton", "ext", slow("compiled", id="compiled")]


@pytest.fixture(params=FAST)
def fast(request):
    skip_unless_runs(request.param, DEV)
    if request.param != "compiled":
        yield request.param
        return
    before = ops._compiled.totals()
    yield request.param
    after = ops._compiled.totals()
    assert after.fallbacks == before.fallbacks, f"a compiled call ran uncompiled: {after.failure}"
    assert after.calls > before.calls or request.node.get_closest_marker("bypasses_kernels"), "no compiled code ran"


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    if ops._util.triton_unavailable(torch.empty(1, device=DEV)) is None:
        from fastpggan.kernels import _common

        monkeypatch.setattr(_common, "POISON", True)
    if ops._ext.load_error() is None:
        torch.ops.fastpggan_ext.set_poison(True)
        yield
        torch.ops.fastpggan_ext.set_poison(False)
    else:
        yield


def close(actual, expected, dtype, count=1):
    """Within the module doc's bound everywhere (ops._util.tolerance_ratio, the tuner's own judge)."""
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all(), "non-finite output (an unwritten element?)"
    ratio = ops._util.tolerance_ratio(actual, expected, dtype, count)
    err = (actual.double() - expected.double()).abs().max().item()
    assert ratio <= 1.0, f"max error {err:.3g}, {ratio:.3g}x the {dtype} tolerance"


def rand(*shape, dtype=torch.float32, channels_last=False, grad=False):
    t = torch.randn(*shape, device=DEV).to(dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def both(fast, fn, inputs, grad_out_seed=7):
    """Run fn(impl) for 'ref' and `fast`; return (outputs, input grads) of each, with the same upstream grads."""
    res = []
    for which in ("ref", fast):
        out = fn(which)
        torch.manual_seed(grad_out_seed)
        gy = torch.randn(out.shape, device=out.device).to(out.dtype)  # same logical values whatever the layout
        grads = torch.autograd.grad(out, inputs, gy)
        res.append((out, grads))
    return res


# shapes (N, C, H=W) covering C in {1, 3, 17, 512}, N in {1, 2, 5, 16}, H in {4, 8, 32, 64}
SHAPES = [(1, 1, 4), (2, 3, 8), (5, 17, 32), (16, 512, 4), (1, 512, 8), (2, 17, 64), (16, 3, 32), (5, 1, 64)]


LAYOUTS = [pytest.param(False, id="nchw"), pytest.param(True, id="channels_last")]
