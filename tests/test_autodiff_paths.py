"""Every autodiff path a user of our ops and layers may take: correct, or one clear error, never a silently wrong
answer (issue "Drop-in layers correct under every autodiff path").

The fast backends' custom ops have no forward derivative, no torch.func autograd and no batching rules, so under
forward-mode AD (torch.func.jvp, torch.autograd.forward_ad), torch.func.grad/vjp/jacrev and vmap 'auto' runs
'ref' (a forced backend too, with one warning) and an explicit fast impl raises BackendUnavailable; under vmap
alone an explicit impl runs through torch's loop over the batch. float64 throughout: tangents against central
finite differences to 1e-6, gradients against ref to 1e-10.
"""

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from fastpggan import layers, ops
from fastpggan.layers import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear, MinibatchStdDev, PixelNorm
from fastpggan.ops import backends

FAST = ["ext", "triton", "compiled"]
D = torch.float64


def _case(name):
    """(function of impl and tensors, the tensors): one small odd-shaped call of each op or layer."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g, dtype=D)  # noqa: E731
    x = r(2, 5, 4, 4)
    if name == "bias_act":
        return lambda impl, x, b: ops.bias_act(x, b, gain=0.7, impl=impl), (x, r(5))
    if name == "bias_act_pn":
        return lambda impl, x, b: ops.bias_act(x, b, pixel_norm=True, impl=impl), (x, r(5))
    if name == "fade_in_up":
        return lambda impl, lo, hi: ops.fade_in(lo, hi, 0.3, impl=impl), (r(2, 5, 2, 2), x)
    if name == "fade_in_same":
        return lambda impl, lo, hi: ops.fade_in(lo, hi, 0.6, impl=impl), (r(2, 5, 4, 4), x)
    if name == "minibatch_stddev":
        return lambda impl, x: ops.minibatch_stddev(x, 2, impl=impl), (r(4, 5, 4, 4),)
    if name == "gradient_penalty":
        return lambda impl, gr: ops.gradient_penalty(gr, target=1.0, impl=impl), (x,)
    if name == "gp_interpolate":
        u = torch.full((2,), 0.25, dtype=D)
        return lambda impl, re, fa: ops.gp_interpolate(re, fa, u, impl=impl), (x, r(2, 5, 4, 4))
    layer = {
        "EqualizedConv2d": lambda impl: EqualizedConv2d(5, 3, 3, padding=1, act="lrelu", impl=impl),
        "EqualizedConvTranspose2d": lambda impl: EqualizedConvTranspose2d(5, 3, 4, 2, 1, act="lrelu", impl=impl),
        "EqualizedLinear": lambda impl: EqualizedLinear(80, 6, act="lrelu", impl=impl),
        "PixelNorm": lambda impl: PixelNorm(impl=impl),
        "MinibatchStdDev": lambda impl: MinibatchStdDev(2, impl=impl),
    }[name]
    inp = x.reshape(2, 80) if name == "EqualizedLinear" else (r(4, 5, 4, 4) if name == "MinibatchStdDev" else x)
    modules = {}  # built before any transform (their init draws and writes weights), the same weights for all
    for impl in ("ref", "auto", *FAST):
        modules[impl] = layer(impl).to(D)
        modules[impl].load_state_dict(modules["ref"].state_dict())
    return lambda impl, inp: modules[impl](inp), (inp,)


OPS = [
    "bias_act",
    "bias_act_pn",
    "fade_in_up",
    "fade_in_same",
    "minibatch_stddev",
    "gradient_penalty",
    "gp_interpolate",
]
LAYERS = layers.__all__  # every public layer: _case has a sample of each, or the test fails


def _finite_difference(f, xs, ts, eps=1e-6):
    plus = f(*[x + eps * t for x, t in zip(xs, ts)])
    minus = f(*[x - eps * t for x, t in zip(xs, ts)])
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("name", OPS + LAYERS)
def test_forward_mode_auto_is_correct_and_a_fast_impl_refuses(name):
    f, xs = _case(name)
    ts = tuple(torch.randn_like(x) for x in xs)
    want = _finite_difference(lambda *a: f("ref", *a), xs, ts)
    for impl in ("ref", "auto"):
        _, got = torch.func.jvp(lambda *a: f(impl, *a), xs, ts)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        with fwAD.dual_level():
            y = f(impl, *[fwAD.make_dual(x, t) for x, t in zip(xs, ts)])
            torch.testing.assert_close(fwAD.unpack_dual(y).tangent, want, rtol=1e-6, atol=1e-6)
    for impl in FAST:
        with pytest.raises(ops.BackendUnavailable, match="cannot run under forward-mode AD.*impl='auto'"):
            torch.func.jvp(lambda *a: f(impl, *a), xs, ts)
        with fwAD.dual_level(), pytest.raises(ops.BackendUnavailable, match=r"forward-mode AD \(torch.autograd"):
            f(impl, *[fwAD.make_dual(x, t) for x, t in zip(xs, ts)])


def test_a_tangent_on_any_input_counts():
    """Only the bias carries a tangent: the op must still see forward-mode AD."""
    x, b, tb = torch.randn(2, 3, 4, 4, dtype=D), torch.randn(3, dtype=D), torch.randn(3, dtype=D)
    want = torch.func.jvp(lambda b: ops.bias_act_ref(x, b), (b,), (tb,))[1]
    with fwAD.dual_level():
        y = ops.bias_act(x, fwAD.make_dual(b, tb), impl="auto")
        torch.testing.assert_close(fwAD.unpack_dual(y).tangent, want)
        with pytest.raises(ops.BackendUnavailable):
            ops.bias_act(x, fwAD.make_dual(b, tb), impl="ext")


def test_a_forced_backend_runs_ref_under_a_transform_with_one_warning():
    f, xs = _case("bias_act")
    ts = tuple(torch.randn_like(x) for x in xs)
    want = torch.func.jvp(lambda *a: f("ref", *a), xs, ts)[1]
    with backends.pin("ext"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            torch.testing.assert_close(torch.func.jvp(lambda *a: f("auto", *a), xs, ts)[1], want)
    lines = [str(w.message) for w in seen if "cannot run under" in str(w.message)]
    assert len(lines) <= 1 and all("impl='ext' (pin)" in line and "running 'ref'" in line for line in lines)


@pytest.mark.parametrize("name", OPS + LAYERS)
def test_torch_func_grad_and_jacrev_auto_matches_ref_and_a_fast_impl_refuses(name):
    f, xs = _case(name)
    want = torch.func.jacrev(lambda *a: f("ref", *a), argnums=0)(*xs)
    torch.testing.assert_close(
        torch.func.jacrev(lambda *a: f("auto", *a), argnums=0)(*xs), want, rtol=1e-10, atol=1e-10
    )
    g_ref = torch.func.grad(lambda *a: f("ref", *a).square().sum())(*xs)
    torch.testing.assert_close(
        torch.func.grad(lambda *a: f("auto", *a).square().sum())(*xs), g_ref, rtol=1e-10, atol=1e-10
    )
    for impl in FAST:
        with pytest.raises(ops.BackendUnavailable, match="cannot run under torch.func.grad"):
            torch.func.grad(lambda *a: f(impl, *a).square().sum())(*xs)


@pytest.mark.parametrize("name", ["bias_act_pn", "fade_in_up", "gp_interpolate", "EqualizedConv2d"])
def test_vmap_auto_runs_ref_and_an_explicit_impl_loops_correctly(name):
    f, xs = _case(name)
    batched = tuple(torch.stack([x, 2 * x]) for x in xs)
    want = torch.stack([f("ref", *xs), f("ref", *[2 * x for x in xs])])
    torch.testing.assert_close(torch.vmap(lambda *a: f("auto", *a))(*batched), want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "no batching rule: a loop" warning
        torch.testing.assert_close(torch.vmap(lambda *a: f("ext", *a))(*batched), want)


def test_the_choice_log_names_the_transform():
    x = torch.randn(2, 3, 4, 4, dtype=D)
    with backends.choices_made() as log:
        torch.func.jvp(lambda x: ops.bias_act(x, None, impl="auto"), (x,), (torch.ones_like(x),))
    assert log and log[-1]["impl"] == "ref" and log[-1]["why"] == "forward-mode AD (torch.func.jvp/jacfwd)"


@pytest.mark.parametrize(
    "name,impl",
    [(name, "ext") for name in LAYERS + ["bias_act_pn"]]
    + [pytest.param("PixelNorm", "triton", marks=pytest.mark.slow)],
)  # the interpreter takes minutes per layer
def test_second_order_on_the_fast_backends(name, impl):
    f, xs = _case(name)
    xs = tuple(x.detach().requires_grad_(True) for x in xs)
    assert torch.autograd.gradgradcheck(lambda *a: f(impl, *a), xs)


@pytest.mark.parametrize(
    "impls", [["ref", "ext", "auto"], pytest.param(["triton", "compiled", "--layers"], marks=pytest.mark.slow)]
)
def test_compile_from_the_very_first_call(impls):
    """torch.compile(fullgraph=True) of each op alone (and layer, slow) on its first call in a fresh process, with a
    fresh tune cache: no graph break, and ref's values."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, os.path.join(here, "first_call_compile.py"), *impls],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith(("OK", "FAIL"))]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    assert all(line.startswith("OK") for line in lines), "\n".join(lines)
    assert len(lines) == (4 + 2 * ("--layers" in impls)) * len([i for i in impls if not i.startswith("--")])


def test_a_checkout_named_fastpggan_in_the_working_folder_fails_at_import_and_says_why(tmp_path):
    """Run from a folder holding a checkout named fastpggan, the package is a namespace package (its __init__ does
    not run); the import must fail there with one clear line, not at the first op call."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "fastpggan").symlink_to(repo, target_is_directory=True)
    out = subprocess.run(
        [sys.executable, "-c", "import fastpggan.layers"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastpggan was imported as a namespace package from")
    assert "run from another folder" in last
