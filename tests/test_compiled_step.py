"""The whole WGAN-GP critic step (D's loss on reals, fakes and the penalty, its double backward, the parameter
gradients) compiled by torch.compile with fullgraph=True under dynamo's `trace_autograd_ops`, with each backend's
ops inside as opaque custom ops, from the first call (no eager call before it: the layers prepared the CPU when
they were built). Its loss and gradients equal the eager step's. Then the same through fastpggan.compiled_step
(`train --compile-step on`): whole training steps, compiled pass by pass, equal the eager ones.

Tolerance: fp32, |compiled - eager| <= 1e-5 + 1e-4 |eager| elementwise (inductor reorders the sums of a whole
network's backward, as in tests/test_backends.py's whole-network test). Each case compiles for 30-80 s on one CPU
thread (cold inductor cache), so all are `slow`; Triton runs on its CPU interpreter.
"""

import copy
import json
import os
import types

import pytest
import torch

from conftest import checkpoint_tensors, skip_unless_runs, tiny_train_args, train_quietly
from fastpggan import checkpoint as ckpt
from fastpggan import compiled_step, ops
from fastpggan.errors import UserError
from fastpggan.losses import d_loss_wgan_gp
from fastpggan.networks import Discriminator, Generator
from fastpggan.ops import _dispatch
from fastpggan.optim import make_optimizer
from fastpggan.step import TrainStep, random_inputs

# A torch without dynamo's trace_autograd_ops refuses --compile-step in one line (the last test): these skip there.
needs_trace_autograd_ops = pytest.mark.skipif(
    compiled_step.unsupported() is not None, reason=f"--compile-step cannot run here: {compiled_step.unsupported()}"
)


def test_a_trace_on_an_unprepared_device_says_what_to_do(monkeypatch):
    monkeypatch.setattr(_dispatch, "_prepared", set())  # as if nothing had run on the CPU yet
    monkeypatch.setattr(_dispatch, "_checked", set())
    monkeypatch.setattr(_dispatch, "_prepare_in_use", lambda args=None: None)  # and torch.compile's hook did not
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(Exception, match=r"call fastpggan.ops.backends.prepare\('cpu'\)"):
        torch.compile(lambda x: ops.bias_act(x, None, impl="ext"), backend="eager", fullgraph=True)(x)
    assert torch.equal(ops.bias_act(x, None, impl="ref"), ops.bias_act_ref(x))  # 'ref' needs nothing prepared


def test_torch_compile_prepares_the_devices_in_use_before_it_traces(monkeypatch):
    import torch._dynamo  # imported: the next check registers the hook (fastpggan does not import it itself)

    _dispatch._hook_compiler()
    monkeypatch.setattr(_dispatch, "_prepared", set())
    monkeypatch.setattr(_dispatch, "_checked", set())
    x = torch.randn(2, 3, 4, 4)
    y = torch.compile(lambda x: ops.bias_act(x, None, gain=0.5), backend="eager", fullgraph=True)(x)
    assert ("cpu", os.environ.get("FASTPGGAN_CACHE")) in _dispatch._prepared
    assert torch.allclose(y, ops.bias_act_ref(x, None, 0.5), atol=1e-6)


@needs_trace_autograd_ops
@pytest.mark.slow
@pytest.mark.parametrize("impl", ["ref", "ext", "triton", "compiled", "auto"])
def test_the_whole_critic_step_compiles_with_fullgraph_and_gives_the_eager_gradients(impl):
    skip_unless_runs(impl)
    torch._dynamo.reset()
    torch.manual_seed(0)
    D = Discriminator(resolution=8, fmap_base=64, fmap_max=16, mbstd_group_size=4, impl=impl)
    reals, fakes, u = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.rand(4)
    params = list(D.parameters())

    def critic():
        loss = d_loss_wgan_gp(lambda x: D(x, 0.5), reals, fakes, impl=impl, u=u)
        loss.backward()  # consumed inside: a compiled function cannot return what requires_grad_() made
        return loss.detach()

    def run(fn):
        for p in params:
            p.grad = None
        return fn(), [p.grad.clone() for p in params]

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled_loss, compiled_grads = run(torch.compile(critic, fullgraph=True))
    eager_loss, eager_grads = run(critic)
    assert torch.allclose(compiled_loss, eager_loss, atol=1e-5, rtol=1e-4)
    for a, e in zip(compiled_grads, eager_grads):
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-4), (a - e).abs().max()


# -- the compiled training step (fastpggan.compiled_step) --------------------------------------------------------


def _twin_steps(impl, **kwargs):
    """An eager TrainStep and a CompiledStep on identical copies of one small G and D."""
    torch.manual_seed(0)
    G = Generator(resolution=8, fmap_base=64, fmap_max=16, latent_size=16, impl=impl)
    D = Discriminator(resolution=8, fmap_base=64, fmap_max=16, mbstd_group_size=4, impl=impl)
    logged = []

    def make(cls, **extra):
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        return cls(
            g,
            d,
            copy.deepcopy(g).eval().requires_grad_(False),
            make_optimizer(g.parameters(), "cpu"),
            make_optimizer(d.parameters(), "cpu"),
            impl=impl,
            **kwargs,
            **extra,
        )

    return make(TrainStep), make(compiled_step.CompiledStep, log=logged.append), logged


def _state(step):
    return [t.detach() for m in (step.G, step.D, step.G_ema) for t in m.parameters()]


@needs_trace_autograd_ops
@pytest.mark.slow
@pytest.mark.parametrize("impl", ["ref", "ext"])
def test_compiled_training_steps_equal_the_eager_steps_and_compile_once_per_key(impl):
    skip_unless_runs(impl)
    torch._dynamo.reset()
    eager, compiled, logged = _twin_steps(impl)
    gen = torch.Generator().manual_seed(1)
    for alpha in (1.0, 0.5, 1.0, 0.25):  # stable, fading, and each again: no new graph
        inputs = random_inputs(4, 3, 8, 16, "cpu", gen)
        assert torch.allclose(compiled.step(inputs, 8, alpha), eager.step(inputs, 8, alpha), atol=1e-5, rtol=1e-4)
    assert compiled.failure is None and compiled.graphs == 4, (compiled.failure, compiled.graphs)
    assert sorted(k[:4] for k in compiled.compile_seconds) == [
        ("D", 8, 4, False),
        ("D", 8, 4, True),
        ("G", 8, 4, False),
        ("G", 8, 4, True),
    ]
    assert sum("compiled in" in line for line in logged) == 4
    for a, e in zip(_state(compiled), _state(eager)):
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-4), (a - e).abs().max()


@needs_trace_autograd_ops
@pytest.mark.slow
def test_the_cli_trains_with_compile_step_as_it_does_eagerly(tiny_npz, tmp_path):
    """Labels and gradient accumulation (--batch-gpu), through `train --compile-step on` (the 4x4 stage only:
    each stage compiles its own passes, and the step test above covers fading)."""
    torch._dynamo.reset()
    extra = ("--kimg", "0.016", "--cond", "--batch-gpu", "4")
    train_quietly(tiny_train_args(tiny_npz, tmp_path / "eager", *extra))
    printed = []
    t = train_quietly(
        tiny_train_args(tiny_npz, tmp_path / "compiled", *extra, "--compile-step", "on"), log=printed.append
    )
    printed = "\n".join(map(str, printed))
    assert "passes compiled whole" in printed and "the D pass at 4x4, minibatch 8, compiled in" in printed
    assert "warning" not in printed and t.train_step.failure is None and t.train_step.graphs == 2, printed
    with open(tmp_path / "compiled" / "run" / "log.jsonl") as f:
        tick = next(rec for rec in map(json.loads, f) if "tick" in rec)
    # the tick's time leaves the compiles out (2 tiny steps, against seconds of compiling)
    assert tick["sec_per_kimg"] * tick["kimg"] < t.compile_seconds / 2, (tick, t.compile_seconds)
    eager, comp = (
        checkpoint_tensors(torch.load(ckpt.latest(str(tmp_path / name / "run")), weights_only=True))
        for name in ("eager", "compiled")
    )
    assert eager.keys() == comp.keys()
    for k in eager:
        if eager[k].is_floating_point():
            assert torch.allclose(comp[k], eager[k], atol=1e-5, rtol=1e-4), k
        else:
            assert torch.equal(comp[k], eager[k]), k


@needs_trace_autograd_ops
def test_a_pass_that_does_not_compile_warns_once_and_runs_eagerly(monkeypatch):
    eager, compiled, logged = _twin_steps("ref")
    plain = TrainStep.g_pass

    def breaks(self, *args):
        torch._dynamo.graph_break()  # fullgraph=True refuses it
        return plain(self, *args)

    monkeypatch.setattr(TrainStep, "g_pass", breaks)
    gen = torch.Generator().manual_seed(1)
    monkeypatch.setattr(compiled_step.CompiledStep, "d_pass", TrainStep.d_pass)  # the D pass eager: seconds
    for _ in range(2):
        inputs = random_inputs(4, 3, 8, 16, "cpu", gen)
        assert torch.equal(compiled.step(inputs, 8, 1.0), eager.step(inputs, 8, 1.0))
    assert compiled.failure.startswith("Unsupported"), compiled.failure
    assert [line.startswith("warning: --compile-step: compiling the G pass failed") for line in logged] == [True]
    assert all(torch.equal(a, e) for a, e in zip(_state(compiled), _state(eager)))


def test_compile_step_refuses_cuda_graphs_on_and_a_torch_without_trace_autograd_ops(tiny_npz, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--compile-step on and --cuda-graphs on do not combine"):
        train_quietly(tiny_train_args(tiny_npz, tmp_path, "--compile-step", "on", "--cuda-graphs", "on"))
    monkeypatch.setattr(torch._dynamo, "config", types.SimpleNamespace())  # as torch before the setting
    with pytest.raises(UserError, match="has no torch._dynamo.config.trace_autograd_ops.*--compile-step off"):
        _twin_steps("ref")
