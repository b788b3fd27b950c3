"""The reference ops against independent formulas (numpy), and their autograd to the promised order."""

import functools
import warnings

import numpy as np
import pytest
import torch

from fastpggan import ops
from fastpggan.ops import _dispatch

SHAPES = [(1, 3, 4, 4), (2, 17, 8, 8), (5, 1, 4, 4), (4, 12, 32, 32)]


def _np_bias_act(x, b, gain, slope, pn):
    y = x.astype(np.float64) * gain
    if b is not None:
        y = y + b.astype(np.float64).reshape([1, -1] + [1] * (x.ndim - 2))
    y = np.where(y >= 0, y, y * slope)
    if pn:
        y = y / np.sqrt((y**2).mean(axis=1, keepdims=True) + 1e-8)
    return y


@pytest.mark.parametrize("shape,channels_last", [(s, cl) for s in SHAPES for cl in (False, True)] + [((3, 7), False)])
@pytest.mark.parametrize("slope,pn", [(0.2, False), (1.0, False), (0.2, True), (1.0, True)])
def test_bias_act_formula(shape, slope, pn, channels_last):
    x = torch.randn(shape)
    b = torch.randn(shape[1])
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = ops.bias_act(x, b, gain=0.37, negative_slope=slope, pixel_norm=pn)
    np.testing.assert_allclose(y.numpy(), _np_bias_act(x.numpy(), b.numpy(), 0.37, slope, pn), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_bias_act_dtypes(dtype, tol):
    x = torch.randn(2, 9, 4, 4).to(dtype)
    b = torch.randn(9)
    y = ops.bias_act(x, b, gain=1.3, pixel_norm=True)
    assert y.dtype == dtype
    ref = _np_bias_act(x.double().numpy(), b.numpy(), 1.3, 0.2, True)
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=tol, atol=tol)


def _np_fade(low, high, a):
    if low.shape[-1] != high.shape[-1]:
        low = low.repeat(2, axis=2).repeat(2, axis=3)
    return (1 - a) * low + a * high


@pytest.mark.parametrize("half", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, "tensor"])
def test_fade_in_formula(half, alpha):
    high = torch.randn(3, 5, 8, 8)
    low = torch.randn(3, 5, 4, 4) if half else torch.randn(3, 5, 8, 8)
    a = torch.tensor(0.7) if alpha == "tensor" else alpha
    y = ops.fade_in(low, high, a)
    np.testing.assert_allclose(y.numpy(), _np_fade(low.numpy(), high.numpy(), float(a)), rtol=1e-6, atol=1e-6)


def test_fade_in_endpoints_exact():
    low, high = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)
    assert torch.equal(ops.fade_in(low, high, 0.0), ops.upsample2x_nearest(low))
    assert torch.equal(ops.fade_in(low, high, 1.0), high)
    assert torch.equal(ops.fade_in(low, high, torch.tensor(1.0)), high)


def test_fade_in_rejects_bad_sizes():
    with pytest.raises(ValueError, match="half"):
        ops.fade_in(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 8, 8), 0.5)
    with pytest.raises(ValueError, match="0-d"):
        ops.fade_in(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 8, 8), torch.ones(2))


def _np_mbstd(x, group):
    n = x.shape[0]
    g = min(group, n)
    m = n // g
    out = np.empty((n, 1) + x.shape[2:])
    for j in range(m):
        members = [i for i in range(n) if i % m == j]
        v = x[members].astype(np.float64)
        s = np.sqrt(((v - v.mean(0)) ** 2).mean(0) + 1e-8).mean()
        out[members] = s
    return np.concatenate([x, out], axis=1)


@pytest.mark.parametrize("n,group", [(1, 4), (2, 4), (8, 4), (16, 4), (12, 3), (6, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_minibatch_stddev_formula(n, group, channels_last):
    x = torch.randn(n, 17, 4, 4) * 3 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = ops.minibatch_stddev(x, group)
    assert y.shape == (n, 18, 4, 4)
    np.testing.assert_allclose(y.numpy(), _np_mbstd(x.numpy(), group), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_indivisible():
    with pytest.raises(ValueError, match="divisible"):
        ops.minibatch_stddev(torch.randn(6, 3, 4, 4), 4)


def test_gradient_penalty_formula():
    g = torch.randn(5, 3, 8, 8)
    want = (np.sqrt((g.double().numpy().reshape(5, -1) ** 2).sum(1)) - 1.5) ** 2
    np.testing.assert_allclose(ops.gradient_penalty(g, target=1.5).numpy(), want, rtol=1e-5)


def test_gradient_penalty_zero_grad_is_finite():
    g = torch.zeros(2, 4, requires_grad=True)
    ops.gradient_penalty(g).sum().backward()
    assert torch.isfinite(g.grad).all()


# --- autograd: first order everywhere, second order where the WGAN-GP double backward needs it ---------------


def _d(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("slope", [0.2, 1.0])
def test_bias_act_grad2(slope):
    # Keep values away from the LReLU kink, where finite differences are not defined.
    x = (torch.randn(2, 5, 3, 3, dtype=torch.float64) + 0.3 * torch.randn(2, 5, 3, 3).sign()).requires_grad_(True)
    b = _d(5)
    f = functools.partial(ops.bias_act, gain=0.8, negative_slope=slope)
    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


def test_bias_act_pixel_norm_grad():
    x, b = _d(2, 6, 3, 3), _d(6)
    assert torch.autograd.gradcheck(lambda x, b: ops.bias_act(x, b, negative_slope=1.0, pixel_norm=True), (x, b))


def test_fade_in_grad2():
    low, high, a = _d(2, 3, 4, 4), _d(2, 3, 8, 8), torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.fade_in, (low, high, a))
    assert torch.autograd.gradgradcheck(ops.fade_in, (low, high, a))


def test_minibatch_stddev_grad2():
    x = _d(8, 3, 4, 4)
    f = functools.partial(ops.minibatch_stddev, group_size=4)
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradient_penalty_grad2():
    g = _d(4, 3, 5, 5)
    assert torch.autograd.gradcheck(lambda g: ops.gradient_penalty(g), (g,))
    assert torch.autograd.gradgradcheck(lambda g: ops.gradient_penalty(g), (g,))


# --- backend selection ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["ext"])
def test_unavailable_backend_raises_clear_error(impl, ext_broken):
    with pytest.raises(ops.BackendUnavailable, match=f"impl='{impl}' is not available"):
        ops.bias_act(torch.randn(2, 3), impl=impl)


def test_unknown_impl():
    with pytest.raises(ValueError, match="one of"):
        ops.fade_in(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4), 0.5, impl="cuda")


def test_env_override_falls_back_with_one_warning(monkeypatch, ext_broken):
    monkeypatch.setenv("FASTPGGAN_IMPL", "ext")
    monkeypatch.setattr(_dispatch, "_warned", set())
    x = torch.randn(4, 3, 4, 4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            y = ops.minibatch_stddev(x)
    msgs = [str(w.message) for w in rec if "fastpggan" in str(w.message)]
    assert len(msgs) == 1 and "impl='ext' unavailable" in msgs[0]
    assert torch.equal(y, ops.minibatch_stddev_ref(x, 4))


def test_env_override_invalid(monkeypatch):
    monkeypatch.setenv("FASTPGGAN_IMPL", "fast")
    with pytest.raises(ValueError, match="FASTPGGAN_IMPL"):
        ops.gradient_penalty(torch.randn(2, 3))


def test_env_override_selects_ref(monkeypatch):
    monkeypatch.setenv("FASTPGGAN_IMPL", "ref")
    calls = []
    fn, check = _dispatch._registry["gradient_penalty"]["ref"]
    monkeypatch.setitem(_dispatch._registry["gradient_penalty"], "ref", (lambda *a: calls.append(1) or fn(*a), check))
    ops.gradient_penalty(torch.randn(2, 3))
    assert calls == [1]
