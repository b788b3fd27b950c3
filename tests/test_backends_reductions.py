"""The fast backends of the reductions against their `_ref` oracles: minibatch_stddev, gradient_penalty and
gp_interpolate, values and first and second-order gradients (how and to what tolerance: test_backends.py)."""

import functools

import pytest
import torch

from backends_common import DEV, DTYPES, FAST, LAYOUTS, SHAPES, _poison, both, close, fast, rand  # noqa: F401  (fixtures)
from conftest import slow
from fastpggan import ops

MBSTD_CASES = [
    (4, 17, 4, 4),
    (16, 512, 4, 4),
    (16, 3, 8, 16),
    (5, 17, 4, 5),
    (1, 3, 4, 4),
    (2, 1, 32, 2),
    slow(8, 3, 64, 4, id="(8, 3, 64, 4)"),
    (16, 1, 8, 1),
]


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("n,c,h,group", MBSTD_CASES, ids=str)
def test_minibatch_stddev_matches_ref(fast, n, c, h, group, channels_last):
    x = rand(n, c, h, h, channels_last=channels_last, grad=True)
    (y0, (g0,)), (y1, (g1,)) = both(fast, lambda which: ops.minibatch_stddev(x, group, impl=which), (x,))
    close(y1, y0, torch.float32)
    close(g1, g0, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_minibatch_stddev_low_precision(fast, dtype):
    x = rand(8, 17, 4, 4, dtype=dtype, grad=True)
    (y0, (g0,)), (y1, (g1,)) = both(fast, lambda which: ops.minibatch_stddev(x, 4, impl=which), (x,))
    assert y1.dtype == dtype and g1.dtype == dtype
    close(y1, y0, dtype)
    close(g1, g0, dtype)


@pytest.mark.parametrize("channels_last", [LAYOUTS[0], slow(True, id="channels_last")])  # 8 s each on Triton's
@pytest.mark.parametrize("n,group", [slow(4, 2), slow(6, 3), (3, 1)])  # interpreter, 10 s, 18 s
def test_minibatch_stddev_second_order(fast, n, group, channels_last):
    x = rand(n, 2, 2, 2, dtype=torch.float64, channels_last=channels_last, grad=True)

    def fn(x):
        return ops.minibatch_stddev(x, group, impl=fast) ** 2

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_minibatch_stddev_double_backward_formula_matches_autograd_of_ref():
    x = rand(6, 4, 4, 4, dtype=torch.float64, grad=True)
    dout = rand(6, 5, 4, 4, dtype=torch.float64, grad=True)
    ddx = rand(6, 4, 4, 4, dtype=torch.float64)
    (dx,) = torch.autograd.grad(ops.minibatch_stddev_ref(x, 3), x, dout, create_graph=True)
    want = torch.autograd.grad(dx, (dout, x), ddx)
    got = ops.minibatch_stddev.__globals__["minibatch_stddev_double_backward"](ddx, dout, x, 3)
    for a, e in zip(got, want):
        close(a, e, torch.float64)


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize(
    "shape", [(1, 1, 4, 4), (5, 3, 8, 8), (16, 3, 32, 32), (2, 17, 64, 64), (16, 512, 4, 4)], ids=str
)
@pytest.mark.parametrize("target", [1.0, 750.0])
def test_gradient_penalty_matches_ref(fast, shape, channels_last, target):
    g = rand(*shape, channels_last=channels_last, grad=True)
    (y0, (g0,)), (y1, (g1,)) = both(fast, lambda which: ops.gradient_penalty(g, target=target, impl=which), (g,))
    close(y1, y0, torch.float32)
    close(g1, g0, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_penalty_low_precision(fast, dtype):
    g = rand(4, 3, 16, 16, dtype=dtype, grad=True)
    (y0, (g0,)), (y1, (g1,)) = both(fast, lambda which: ops.gradient_penalty(g, impl=which), (g,))
    assert y1.dtype == torch.float32 and g1.dtype == dtype
    close(y1, y0, dtype, count=3 * 256)
    close(g1, g0, dtype)


def test_gradient_penalty_zero_sample(fast):
    g = rand(3, 2, 4, 4)
    g[1] = 0  # deliberately zero: the norm's gradient there must be 0, not NaN
    g.requires_grad_(True)
    (y0, (g0,)), (y1, (g1,)) = both(fast, lambda which: ops.gradient_penalty(g, impl=which), (g,))
    close(y1, y0, torch.float32)
    close(g1, g0, torch.float32)
    assert torch.equal(g1[1], torch.zeros_like(g1[1]))


@pytest.mark.parametrize("channels_last", [LAYOUTS[0], slow(True, id="channels_last")])
def test_gradient_penalty_second_order(fast, channels_last):
    g = rand(3, 2, 2, 2, dtype=torch.float64, channels_last=channels_last, grad=True)
    fn = functools.partial(ops.gradient_penalty, target=1.5, impl=fast)
    assert torch.autograd.gradcheck(fn, (g,))
    assert torch.autograd.gradgradcheck(fn, (g,))


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (5, 3, 8, 8), (16, 3, 32, 32), (2, 17, 64, 64)], ids=str)
def test_gp_interpolate_matches_ref(fast, shape, channels_last):
    real = rand(*shape, channels_last=channels_last, grad=True)
    fake = rand(*shape, channels_last=channels_last, grad=True)
    u = torch.rand(shape[0], device=DEV).requires_grad_(True)
    (y0, g0), (y1, g1) = both(fast, lambda which: ops.gp_interpolate(real, fake, u, impl=which), (real, fake, u))
    close(y1, y0, torch.float32)
    close(g1[0], g0[0], torch.float32)
    close(g1[1], g0[1], torch.float32)
    close(g1[2], g0[2], torch.float32, count=real[0].numel())


def test_gp_interpolate_gradients(fast):
    args = [rand(3, 2, 2, 2, dtype=torch.float64, grad=True) for _ in range(2)]
    u = torch.rand(3, dtype=torch.float64, device=DEV).requires_grad_(True)
    fn = functools.partial(ops.gp_interpolate, impl=fast)
    assert torch.autograd.gradcheck(fn, (*args, u))
    assert torch.autograd.gradgradcheck(fn, (*args, u))
