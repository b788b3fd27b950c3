"""The fast backends against the `_ref` oracles: values, first and second-order gradients, whole networks.

Every test that takes `fast` runs for impl='triton', impl='ext' (the C++/CUDA extension) and impl='compiled' (the
plain-PyTorch kernel ops through torch.compile; in the full suite only, since each test compiles a few graphs), on
CUDA tensors where a GPU exists, else on CPU tensors: Triton then runs on its CPU interpreter (TRITON_INTERPRET=1,
set in conftest), the extension runs its C++ kernels, and inductor compiles C++. Every output of triton and ext
starts as NaN (Triton's POISON, the extension's set_poison), so an element a kernel fails to write fails the
comparison; a compiled test fails if any call ran the eager body instead of compiled code (_compiled.stats()).

Tolerances per dtype, elementwise |triton - ref| <= atol * max(1, max|ref|) * sqrt(count) + rtol * |ref|, with
(atol, rtol) = float64 1e-10/1e-9, float32 1e-5/1e-5, float16 2e-3/2e-3, bfloat16 2e-2/2e-2, against the ref run on
the same (low-precision) inputs. atol is relative to the tensor's scale because a gradient's absolute error follows
its largest terms; count is the number of terms a value sums over (bias grads, dlow), 1 elsewhere.
"""

import functools
import warnings

import pytest
import torch

from backends_common import DEV, DTYPES, FAST, LAYOUTS, SHAPES, _poison, both, close, fast, rand  # noqa: F401  (fixtures)
from conftest import run_python, slow
from fastpggan import ops
from fastpggan.losses import d_loss_wgan_gp, g_loss_wgan
from fastpggan.networks import Discriminator, Generator
from fastpggan.ops import _dispatch

# --- bias_act -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("pn", [False, True], ids=["act", "act+pn"])
def test_bias_act_matches_ref(fast, shape, channels_last, pn):
    n, c, h = shape
    x = rand(n, c, h, h, channels_last=channels_last, grad=True)
    b = rand(c, grad=True)
    (y0, (gx0, gb0)), (y1, (gx1, gb1)) = both(
        fast, lambda which: ops.bias_act(x, b, gain=0.43, negative_slope=0.2, pixel_norm=pn, impl=which), (x, b)
    )
    close(y1, y0, torch.float32)
    close(gx1, gx0, torch.float32)
    close(gb1, gb0, torch.float32, count=n * h * h)
    assert y1.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("channels_last", LAYOUTS)
def test_pixel_norm_with_more_channels_than_a_tile_holds(fast, channels_last):
    """C = 2500 > MAX_TILE_CHANNELS (1024): the Triton kernels loop over channel chunks (a whole-C tile spills)."""
    from fastpggan.kernels._common import MAX_TILE_CHANNELS

    c = 2500
    assert c > 2 * MAX_TILE_CHANNELS and c % MAX_TILE_CHANNELS  # three chunks, the last one partial
    x = rand(2, c, 3, 3, channels_last=channels_last, grad=True)
    b = rand(c, grad=True)
    (y0, (gx0, gb0)), (y1, (gx1, gb1)) = both(
        fast, lambda which: ops.bias_act(x, b, gain=0.7, negative_slope=0.2, pixel_norm=True, impl=which), (x, b)
    )
    close(y1, y0, torch.float32)
    close(gx1, gx0, torch.float32)
    close(gb1, gb0, torch.float32, count=18)


@pytest.mark.parametrize("shape", [(16, 512), (5, 17), (1, 3), (2, 1)], ids=str)
@pytest.mark.parametrize(
    "slope,pn,bias", [(0.2, False, True), (1.0, False, True), (0.2, True, True), (1.0, True, False), (0.0, False, True)]
)
def test_bias_act_dense_layer_shapes(fast, shape, slope, pn, bias):
    x = rand(*shape, grad=True)
    b = rand(shape[1], grad=True) if bias else None
    inputs = (x, b) if bias else (x,)
    (y0, g0), (y1, g1) = both(
        fast, lambda which: ops.bias_act(x, b, gain=1.7, negative_slope=slope, pixel_norm=pn, impl=which), inputs
    )
    close(y1, y0, torch.float32)
    for a, e in zip(g1, g0):
        close(a, e, torch.float32, count=shape[0])


@pytest.mark.parametrize("pn", [False, True], ids=["act", "act+pn"])
def test_bias_act_zero_gain_still_trains_the_bias(fast, pn):
    x = rand(3, 4, 2, 2, grad=True)
    b = rand(4, grad=True)
    (y0, g0), (y1, g1) = both(fast, lambda which: ops.bias_act(x, b, gain=0.0, pixel_norm=pn, impl=which), (x, b))
    close(y1, y0, torch.float32)
    close(g1[0], g0[0], torch.float32)
    close(g1[1], g0[1], torch.float32, count=12)
    assert g1[1].abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("pn", [False, True], ids=["act", "act+pn"])
def test_bias_act_low_precision(fast, dtype, channels_last, pn):
    x = rand(4, 17, 8, 8, dtype=dtype, channels_last=channels_last, grad=True)
    b = rand(17, grad=True)
    (y0, (gx0, gb0)), (y1, (gx1, gb1)) = both(
        fast, lambda which: ops.bias_act(x, b, gain=0.9, pixel_norm=pn, impl=which), (x, b)
    )
    assert y1.dtype == dtype and gx1.dtype == dtype and gb1.dtype == torch.float32
    close(y1, y0, dtype)
    close(gx1, gx0, dtype)
    close(gb1, gb0, dtype, count=4 * 64)


@pytest.mark.parametrize("channels_last", [LAYOUTS[0], slow(True, id="channels_last")])
@pytest.mark.parametrize("slope", [0.2, 1.0])
def test_bias_act_second_order(fast, channels_last, slope):
    x = rand(2, 3, 2, 2, dtype=torch.float64, channels_last=channels_last, grad=True)
    b = rand(3, dtype=torch.float64, grad=True)
    fn = functools.partial(ops.bias_act, gain=0.7, negative_slope=slope, impl=fast)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("slope,bias", [(0.2, True), (1.0, False)])
def test_bias_act_pixel_norm_second_order(fast, channels_last, slope, bias):
    x = rand(2, 5, 2, 2, dtype=torch.float64, channels_last=channels_last, grad=True)
    inputs = (x, rand(5, dtype=torch.float64, grad=True)) if bias else (x,)
    fn = lambda x, b=None: ops.bias_act(x, b, gain=0.7, negative_slope=slope, pixel_norm=True, impl=fast)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_bias_act_pixel_norm_double_backward_matches_ref(fast):
    """A path-length-style penalty through pixel norm (G differentiated twice), in float32 at a layer's width."""
    x = rand(3, 33, 4, 4, grad=True)
    b = rand(33, grad=True)
    w = rand(3, 33, 4, 4)
    grads = []
    for impl in ("ref", fast):
        y = ops.bias_act(x, b, gain=0.3, pixel_norm=True, impl=impl)
        (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(g.square().sum(), (x, b)))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bias_act_matches_ref_in_float64(fast):
    x = rand(3, 17, 8, 8, dtype=torch.float64, grad=True)
    b = rand(17, dtype=torch.float64, grad=True)
    for pn in (False, True):
        (y0, g0), (y1, g1) = both(fast, lambda which: ops.bias_act(x, b, gain=0.123, pixel_norm=pn, impl=which), (x, b))
        close(y1, y0, torch.float64)
        for a, e in zip(g1, g0):
            close(a, e, torch.float64, count=3 * 64)


# --- fade_in ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("upsample", [True, False], ids=["up", "same"])
def test_fade_in_matches_ref(fast, shape, channels_last, upsample):
    n, c, h = shape
    high = rand(n, c, h, h, channels_last=channels_last, grad=True)
    low = rand(n, c, h // 2 if upsample else h, h // 2 if upsample else h, channels_last=channels_last, grad=True)
    (y0, g0), (y1, g1) = both(fast, lambda which: ops.fade_in(low, high, 0.37, impl=which), (low, high))
    close(y1, y0, torch.float32)
    close(g1[1], g0[1], torch.float32)
    close(g1[0], g0[0], torch.float32, count=4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fade_in_low_precision_and_tensor_alpha(fast, dtype):
    high = rand(2, 3, 16, 16, dtype=dtype, grad=True)
    low = rand(2, 3, 8, 8, dtype=dtype, grad=True)
    alpha = torch.tensor(0.61, device=DEV)
    (y0, g0), (y1, g1) = both(fast, lambda which: ops.fade_in(low, high, alpha, impl=which), (low, high))
    assert y1.dtype == dtype
    close(y1, y0, dtype)
    close(g1[0], g0[0], dtype, count=4)
    close(g1[1], g0[1], dtype)


def test_fade_in_endpoints_bit_exact(fast):
    high = rand(2, 3, 8, 8)
    low = rand(2, 3, 4, 4)
    assert torch.equal(ops.fade_in(low, high, 0.0, impl=fast), ops.upsample2x_nearest(low))
    assert torch.equal(ops.fade_in(low, high, 1.0, impl=fast), high)


def test_fade_in_alpha_tensor_is_read_at_run_time(fast):
    high, low = rand(1, 3, 8, 8), rand(1, 3, 4, 4)
    alpha = torch.zeros((), device=DEV)
    a = ops.fade_in(low, high, alpha, impl=fast)
    alpha.fill_(1.0)
    b = ops.fade_in(low, high, alpha, impl=fast)
    assert torch.equal(a, ops.upsample2x_nearest(low)) and torch.equal(b, high)


@pytest.mark.parametrize("channels_last", [LAYOUTS[0], slow(True, id="channels_last")])
@pytest.mark.parametrize("upsample", [True, False], ids=["up", "same"])
def test_fade_in_second_order(fast, channels_last, upsample):
    high = rand(1, 2, 4, 4, dtype=torch.float64, channels_last=channels_last, grad=True)
    low = rand(
        1, 2, 2 if upsample else 4, 2 if upsample else 4, dtype=torch.float64, channels_last=channels_last, grad=True
    )

    def fn(lo, hi):
        return ops.fade_in(lo, hi, 0.3, impl=fast) ** 2  # squared: a nonzero 2nd order

    assert torch.autograd.gradcheck(fn, (low, high))
    assert torch.autograd.gradgradcheck(fn, (low, high))


@pytest.mark.bypasses_kernels
def test_fade_in_alpha_with_grad_takes_the_differentiable_path(fast):
    high, low = rand(1, 2, 4, 4), rand(1, 2, 2, 2)
    alpha = torch.tensor(0.3, device=DEV, requires_grad=True)
    (ga,) = torch.autograd.grad(ops.fade_in(low, high, alpha, impl=fast).sum(), alpha)
    close(ga, (high - ops.upsample2x_nearest(low)).sum(), torch.float32, count=32)


# --- registration: opcheck and torch.compile ---------------------------------------------------------------------


def _opcheck_cases(fast):
    """(op, sample args) for every op of the backend: fwd and grad of each hot op, pixel norm, gp_interpolate."""
    kernel_ops = (
        "bias_act",
        "bias_act_grad",
        "bias_act_pn",
        "bias_act_pn_grad",
        "fade_in",
        "fade_in_grad",
        "minibatch_stddev",
        "minibatch_stddev_grad",
        "gradient_penalty",
        "gradient_penalty_grad",
        "gp_interpolate",
    )
    if fast == "ext":
        name = {k: ops._ext.op(k) for k in kernel_ops}
    else:
        name = {k: getattr(torch.ops.fastpggan, f"{k}_{fast}").default for k in kernel_ops}
    x = rand
    y = x(2, 5, 4, 4)
    yp, r = name["bias_act_pn"](y, None, 0.5, 0.2)
    g = x(3, 2, 4, 4)
    _, gr = name["gradient_penalty"](g, 1.0)
    return [
        (name["bias_act"], (x(2, 5, 4, 4, grad=True), x(5, grad=True), 0.5, 0.2)),
        (name["bias_act"], (x(2, 5, 4, 4, channels_last=True, grad=True), None, 0.5, 1.0)),
        (name["bias_act_grad"], (x(2, 5, 4, 4, grad=True), y, 0.5, 0.2)),
        (name["bias_act_pn"], (x(2, 5, 4, 4, grad=True), x(5, grad=True), 0.5, 0.2)),
        (name["bias_act_pn_grad"], (x(2, 5, 4, 4), yp, r, 0.5, 0.2)),
        (name["fade_in"], (x(2, 3, 4, 4, grad=True), x(2, 3, 8, 8, grad=True), 0.3, None)),
        (name["fade_in"], (x(2, 3, 8, 8), x(2, 3, 8, 8), 0.0, torch.full((1,), 0.4, device=DEV))),
        (name["fade_in_grad"], (x(2, 3, 8, 8, grad=True), [2, 3, 4, 4], 0.3, None)),
        (name["minibatch_stddev"], (x(4, 3, 4, 4, grad=True), 2)),
        (name["minibatch_stddev_grad"], (x(4, 4, 4, 4, grad=True), x(4, 3, 4, 4, grad=True), 2)),
        (name["gradient_penalty"], (x(3, 2, 4, 4, grad=True), 1.0)),
        (name["gradient_penalty_grad"], (x(3, grad=True), g.requires_grad_(True), gr, 1.0)),
        (name["gp_interpolate"], (x(3, 2, 4, 4, grad=True), x(3, 2, 4, 4, grad=True), torch.rand(3, device=DEV))),
    ]


def test_opcheck_every_op(fast):
    cases = _opcheck_cases(fast)
    assert len({op for op, _ in cases}) == 11
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_traces_the_generator_forward(fast):
    torch.manual_seed(0)
    G = Generator(resolution=16, fmap_base=64, fmap_max=16, latent_size=16, impl=fast).to(DEV)
    z = rand(4, 16)
    eager = G(z, 16, 0.5)
    compiled = torch.compile(G, backend="aot_eager", fullgraph=True)
    close(compiled(z, 16, 0.5), eager, torch.float32)


# --- whole networks -------------------------------------------------------------------------------------------------


def _nets(which):
    torch.manual_seed(0)
    G = Generator(resolution=16, fmap_base=128, fmap_max=32, latent_size=32, impl=which).to(DEV, torch.float64)
    D = Discriminator(resolution=16, fmap_base=128, fmap_max=32, mbstd_group_size=4, impl=which).to(DEV, torch.float64)
    return G, D


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_networks_and_wgan_gp_gradients_match_ref(fast, alpha):
    """In float64: LeakyReLU's kink makes float32 network gradients ill-conditioned. A pre-activation within
    rounding of 0 takes slope 1 in one backend and 0.2 in the other, and through pixel norm that moves every
    channel of the pixel: float32 ref and fast gradients differed by 2 % of their largest on a 2-core AVX2 CPU,
    where the fast ones and the float64 ref agreed to 1e-7."""
    results = []
    for which in ("ref", fast):
        G, D = _nets(which)
        torch.manual_seed(1)
        z, reals = rand(8, 32, dtype=torch.float64), rand(8, 3, 16, 16, dtype=torch.float64)
        fakes = G(z, 16, alpha)
        scores = D(fakes, alpha)
        torch.manual_seed(2)
        d_loss = d_loss_wgan_gp(lambda x: D(x, alpha), reals, fakes, impl=which)
        d_grads = torch.autograd.grad(d_loss, list(D.parameters()), allow_unused=True, materialize_grads=True)
        g_grads = torch.autograd.grad(
            g_loss_wgan(lambda x: D(x, alpha), G(z, 16, alpha)),
            list(G.parameters()),
            allow_unused=True,
            materialize_grads=True,
        )
        results.append((fakes, scores, d_loss, d_grads, g_grads))
    (f0, s0, l0, dg0, gg0), (f1, s1, l1, dg1, gg1) = results
    close(f1, f0, torch.float64)
    close(s1, s0, torch.float64)
    close(l1, l0, torch.float64)
    for a, e in zip(dg1 + gg1, dg0 + gg0):
        atol, rtol = 1e-9, 1e-9  # sums over a whole network's backward
        assert torch.allclose(a, e, atol=atol, rtol=rtol), (a - e).abs().max()


# --- selection and fallback ------------------------------------------------------------------------------------------


def test_auto_falls_back_to_ref_with_one_warning_when_triton_is_missing():
    code = """
import sys, warnings
sys.modules['triton'] = None   # as if Triton were not installed
import torch
from fastpggan import ops
x = torch.randn(4, 3, 4, 4)
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter('always')
    ys = [ops.bias_act(x, None, gain=0.5) for _ in range(3)]
msgs = [str(w.message) for w in rec if 'fastpggan' in str(w.message)]
assert len(msgs) == 1, msgs
assert "impl='triton' unavailable" in msgs[0] and 'pip install triton' in msgs[0], msgs[0]
assert all(torch.equal(y, ops.bias_act_ref(x, None, 0.5)) for y in ys)
try:
    ops.bias_act(x, impl='triton')
    raise SystemExit('explicit triton should raise')
except ops.BackendUnavailable as e:
    assert 'pip install triton' in str(e)
print('ok')
"""
    p = run_python(code, timeout=300, FASTPGGAN_IMPL="triton")
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]


@pytest.mark.skipif(DEV == "cuda", reason="checks the CPU message without the interpreter")
def test_cpu_tensors_without_the_interpreter_say_how():
    code = """
import torch
from fastpggan import ops
try:
    ops.fade_in(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 4, 4), 0.5, impl='triton')
except ops.BackendUnavailable as e:
    assert 'TRITON_INTERPRET=1' in str(e), e
    print('ok')
"""
    p = run_python(code, timeout=300, TRITON_INTERPRET="0")
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]


def test_auto_on_cpu_stays_on_ref_without_warning(monkeypatch):
    monkeypatch.setattr(_dispatch, "_warned", set())
    x = rand(4, 3, 4, 4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = ops.bias_act(x, None)
    if DEV == "cpu":
        assert not [w for w in rec if "fastpggan" in str(w.message)]
        assert torch.equal(y, ops.bias_act_ref(x, None))
