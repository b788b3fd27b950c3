"""The plain-PyTorch bodies of the kernel ops (each op module's TORCH_KERNELS, what the compiled backend will
compile), held to the extension's CPU kernels of the same schemas: the same values within the dtype's tolerance
(ops.tolerance_ratio), the same output dtypes, shapes and memory layouts, at odd shapes (C = 17, N = 1 and 5, 5x5 and
9x9 planes), NCHW and channels_last, in fp32, fp64 and bf16. The extension's kernels are held to `_ref` in
test_backends.py."""

import importlib

import pytest
import torch

from fastpggan import ops
from fastpggan.ops import backends

pytestmark = pytest.mark.skipif(
    backends.available("bias_act")["bias_act"]["ext"] is not None,
    reason="the extension's CPU kernels are not available here",
)
BODIES = {
    name: body
    for module in ("bias_act", "fade_in", "minibatch_stddev", "gradient_penalty")
    for name, body in importlib.import_module(f"fastpggan.ops.{module}").TORCH_KERNELS.items()
}


def _rand(*shape, dtype, cl=False):
    t = torch.randn(*shape, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl and t.ndim == 4 else t


def _calls(dtype, cl):
    """(kernel op, args) pairs: every kernel op, with inputs a training step would give it."""
    ext = torch.ops.fastpggan_ext
    r = lambda *s: _rand(*s, dtype=dtype, cl=cl)  # noqa: E731
    x, b = r(5, 17, 9, 9), torch.randn(17, dtype=dtype)
    y = ext.bias_act(x, b, 0.43, 0.2)
    y_pn, r_pn = ext.bias_act_pn(x, b, 0.43, 0.2)
    dense = torch.randn(3, 17, dtype=dtype)
    high, half, same = r(5, 17, 8, 8), r(5, 17, 4, 4), r(5, 17, 8, 8)
    g = r(5, 17, 9, 9)
    g[2] = 0  # a zero gradient: its norm is 0 and its gradient 0
    mb = r(8, 17, 5, 5)
    return [
        ("bias_act", (x, b, 0.43, 0.2)),
        ("bias_act", (x, None, 1.7, 1.0)),
        ("bias_act", (dense, b, 0.43, 0.2)),
        ("bias_act_grad", (r(5, 17, 9, 9), y, 0.43, 0.2)),
        ("bias_act_grad", (r(5, 17, 9, 9), y, 1.7, 1.0)),
        ("bias_act_pn", (x, b, 0.43, 0.2)),
        ("bias_act_pn", (dense, None, 1.0, 1.0)),
        ("bias_act_pn_grad", (r(5, 17, 9, 9), y_pn, r_pn, 0.43, 0.2)),
        ("fade_in", (half, high, 0.37, None)),
        ("fade_in", (same, high, 0.0, torch.tensor([0.3], dtype=dtype))),
        ("fade_in_grad", (r(5, 17, 8, 8), [5, 17, 4, 4], 0.37, None)),
        ("fade_in_grad", (r(5, 17, 8, 8), [5, 17, 8, 8], 0.0, torch.tensor([0.3], dtype=dtype))),
        ("minibatch_stddev", (mb, 4)),
        ("minibatch_stddev", (r(1, 17, 5, 5), 1)),
        ("minibatch_stddev_grad", (r(8, 18, 5, 5), mb, 4)),
        ("gradient_penalty", (g, 2.0)),
        (
            "gradient_penalty_grad",
            (
                torch.randn(5, dtype=torch.float64 if dtype == torch.float64 else torch.float32),
                g,
                ext.gradient_penalty(g, 2.0)[1],
                2.0,
            ),
        ),
        ("gp_interpolate", (x, r(5, 17, 9, 9), torch.rand(5))),
    ]


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_every_kernel_op_body_matches_the_extension(dtype, cl):
    calls = _calls(dtype, cl)
    assert {name for name, _ in calls} == set(BODIES)  # every kernel op is covered
    for name, args in calls:
        expected = getattr(torch.ops.fastpggan_ext, name)(*args)
        actual = BODIES[name](*args)
        pairs = zip(actual, expected) if isinstance(expected, (tuple, list)) else [(actual, expected)]
        for a, e in pairs:
            what = f"{name} {dtype} {'channels_last' if cl else 'nchw'}"
            assert (a.shape, a.dtype, a.stride()) == (e.shape, e.dtype, e.stride()), what
            assert ops.tolerance_ratio(a, e, dtype) <= 1, what
