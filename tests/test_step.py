"""The training step: fp16 loss scaling and its gradient-penalty recipe, optimizer helpers, and the CUDA-graph
wrapper's buffer handling (on the CPU with a stand-in that re-runs the recorded step; for real on a GPU)."""

import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import checkpoint_tensors, skip_unless_runs, slow, tiny_train_args, train_quietly
from fastpggan import checkpoint as ckpt
from fastpggan import config, cuda_graph, losses, optim, trainer
from fastpggan import step as step_mod
from fastpggan.errors import UserError
from fastpggan.networks import Discriminator, Generator

_train = train_quietly


def _final_state(run_dir):
    state = torch.load(ckpt.latest(str(run_dir)), weights_only=True)
    return checkpoint_tensors(state), state


# -- gradient penalty under loss scaling ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scaled_gradient_penalty_equals_unscaled(dtype):
    torch.manual_seed(0)
    D = Discriminator(resolution=8, fmap_base=64, fmap_max=16, mbstd_group_size=2).to(dtype)
    reals, fakes = torch.randn(4, 3, 8, 8, dtype=dtype), torch.randn(4, 3, 8, 8, dtype=dtype)
    u = torch.rand(4, dtype=dtype)
    call = functools.partial(D, alpha=1.0)
    plain = losses.d_loss_wgan_gp(call, reals, fakes, u=u, impl="ref")
    g_plain = torch.autograd.grad(plain, list(D.parameters()), allow_unused=True)
    scale = torch.tensor(2.0**14, dtype=dtype)  # a power of two: scaling and unscaling are exact
    scaled = losses.d_loss_wgan_gp(call, reals, fakes, u=u, impl="ref", grad_scale=scale)
    g_scaled = torch.autograd.grad(scaled * scale, list(D.parameters()), allow_unused=True)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(scaled, plain, **tol)
    used = [(a, b) for a, b in zip(g_scaled, g_plain) if b is not None]
    assert len(used) > 5
    for a, b in used:
        torch.testing.assert_close(a / scale, b, **tol)


def _tiny_step(amp_dtype, **kw):
    torch.manual_seed(0)
    G = Generator(resolution=8, latent_size=16, fmap_base=64, fmap_max=16)
    D = Discriminator(resolution=8, fmap_base=64, fmap_max=16, mbstd_group_size=2)
    G_ema = Generator(resolution=8, latent_size=16, fmap_base=64, fmap_max=16).requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    dev = torch.device("cpu")
    s = step_mod.TrainStep(
        G,
        D,
        G_ema,
        optim.make_optimizer(G.parameters(), dev),
        optim.make_optimizer(D.parameters(), dev),
        amp_dtype=amp_dtype,
        **kw,
    )
    inputs = step_mod.StepInputs(
        reals=torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8),
        z_d=torch.randn(4, 16),
        u=torch.rand(4),
        z_g=torch.randn(4, 16),
    )
    return s, inputs


def test_fp16_overflow_skips_the_step_and_backs_off_the_scale():
    s, inputs = _tiny_step(torch.float16)
    s.scaler_D = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # S * scores overflows fp16 in D's backward
    d_before = [p.detach().clone() for p in s.D.parameters()]
    g_before = [p.detach().clone() for p in s.G.parameters()]
    out = s.step(inputs, 8, 0.5)
    assert out.dtype == torch.float32 and out.shape == (2,)
    assert all(torch.equal(a, b) for a, b in zip(d_before, s.D.parameters())), "D stepped on inf gradients"
    assert s.scaler_D.get_scale() < 2.0**40
    assert any(not torch.equal(a, b) for a, b in zip(g_before, s.G.parameters())), "G should still train"
    assert float(s.opt_D.t) == 0 and float(s.opt_G.t) == 1


def test_fp16_step_calibrates_its_scale_then_trains():
    """The default scale 2^16 overflows this D's fp16 gradient-penalty backward at first: those steps are skipped
    (non-finite loss, D untouched) until the scale has backed off; then every step trains with finite losses."""
    s, inputs = _tiny_step(torch.float16)
    outs = [s.step(inputs, 8, 0.5) for _ in range(30)]
    assert all(torch.isfinite(o).all() for o in outs[-5:])
    stepped = int(s.opt_D.t)
    skipped = sum(not bool(torch.isfinite(o[0])) for o in outs)
    assert stepped >= 5 and stepped + skipped == 30


class _NoHostReads(TorchDispatchMode):
    """Raises on the ops that copy a tensor value to the host (what `.item()`, `bool(t)`, `if t:` and
    data-dependent shapes dispatch to). Under CUDA they would synchronise, and a CUDA graph cannot capture them."""

    FORBIDDEN = {"_local_scalar_dense", "is_nonzero", "nonzero", "equal", "masked_select", "unique"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket.__name__ in self.FORBIDDEN:
            raise AssertionError(f"host read in the step: aten.{func._overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("impl", ["ref", "ext", "triton"])
@pytest.mark.parametrize("amp", [None, slow(torch.bfloat16), slow(torch.float16)], ids=["fp32", "bf16", "fp16"])
def test_step_reads_nothing_back_to_the_host(amp, impl):
    """The CPU counterpart of the GPU sync-debug test: the whole step, GradScaler and fused Adam included,
    reads no tensor value on the host, in every backend and precision."""
    skip_unless_runs(impl)
    s, inputs = _tiny_step(amp, impl=impl)
    s.G.impl = s.D.impl = impl
    for m in list(s.G.modules()) + list(s.D.modules()):
        if hasattr(m, "impl"):
            m.impl = impl
    s.step(inputs, 8, 0.5)  # first step: lazy optimizer and scaler state
    with _NoHostReads():
        out = s.step(inputs, 8, 0.5)
        s.step(inputs, 8, 1.0)
    assert out.shape == (2,)


# -- optimizer helpers ------------------------------------------------------------------------------------------


def test_reset_optimizer_in_place_equals_a_fresh_optimizer():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    opt = optim.make_optimizer([w], torch.device("cpu"))
    for _ in range(3):
        w.grad = torch.randn_like(w)
        opt.step()
    state_tensors = [id(v) for v in opt.state[w].values()] + [id(opt.t)]
    optim.reset_optimizer_(opt)
    assert [id(v) for v in opt.state[w].values()] + [id(opt.t)] == state_tensors  # a captured graph stays valid
    assert float(opt.t) == 0
    w2 = torch.nn.Parameter(w.detach().clone())
    fresh = optim.make_optimizer([w2], torch.device("cpu"))
    g = torch.randn_like(w)
    w.grad, w2.grad = g.clone(), g.clone()
    opt.step()
    fresh.step()
    assert torch.equal(w, w2)


def test_optimizer_state_writes_a_float_lr_and_loading_keeps_the_tensor():
    w = torch.nn.Parameter(torch.randn(3))
    opt = optim.make_optimizer([w], torch.device("cpu"), lr=0.01, capturable=True)
    lr = opt.param_groups[0]["lr"]
    optim.set_lr(opt, 0.002)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.002)
    sd = optim.optimizer_state(opt)
    assert isinstance(sd["param_groups"][0]["lr"], float)
    optim.set_lr(opt, 0.5)
    optim.load_optimizer_state(opt, sd)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.002)


# -- option parsing ---------------------------------------------------------------------------------------------


def test_pick_amp_and_cuda_graphs_on_cpu():
    cpu = torch.device("cpu")
    assert config.pick_amp("auto", cpu) == ("fp32", None)
    assert config.pick_amp("on", cpu) == ("bf16", None)
    assert config.pick_amp("bf16", cpu) == ("bf16", None)
    assert config.pick_amp("fp16", cpu) == ("fp16", None)
    assert config.pick_amp("off", cpu) == ("fp32", None)
    assert config.pick_cuda_graphs("auto", cpu, 1) == (False, None)
    assert config.pick_cuda_graphs("off", cpu, 1) == (False, None)
    with pytest.raises(UserError, match="--cuda-graphs on needs a CUDA device"):
        config.pick_cuda_graphs("on", cpu, 1)
    with pytest.raises(UserError, match="do not combine"):
        config.pick_cuda_graphs("on", cpu, 1, compile_step=True)


def test_cli_cuda_graphs_on_without_gpu_is_one_line(tiny_npz, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="needs a CUDA device"):
        _train(tiny_train_args(tiny_npz, tmp_path, "--cuda-graphs", "on"))


# -- the graph wrapper ------------------------------------------------------------------------------------------


def _graphed_run(monkeypatch, args, capture, log=lambda *a: None):
    """Train with CudaGraphStep forced on and `capture` in place of torch.cuda.graph (capture=None: the eager
    step, with the same capturable optimizers as the graphed one)."""
    monkeypatch.setattr(config, "pick_cuda_graphs", lambda mode, device, world, compile_step=False: (True, None))
    wrapper = functools.partial(cuda_graph.CudaGraphStep, capture=capture) if capture else lambda step, log: step
    monkeypatch.setattr(trainer, "CudaGraphStep", wrapper)
    return _train(args, log=log)


@pytest.mark.parametrize(
    "extra",
    [[], slow(["--mirror", "--cond", "--amp", "fp16", "--batch-gpu", "4"])],
    ids=["plain", "mirror-cond-fp16-chunks"],
)
def test_graph_wrapper_buffers_and_warmup_leave_results_unchanged(tiny_npz, tmp_path, monkeypatch, extra):
    """Static inputs, alpha filled in place, the warm-up undone, one build per (res, minibatch, fading) key:
    the wrapper trains exactly as the eager step (the CPU stand-in re-runs the recorded step on replay)."""
    _graphed_run(monkeypatch, tiny_train_args(tiny_npz, tmp_path / "eager", *extra), None)
    builds = []

    def capture(fn):
        builds.append(1)
        return cuda_graph._Rerun(fn)

    t = _graphed_run(monkeypatch, tiny_train_args(tiny_npz, tmp_path / "graphed", *extra), capture)
    assert isinstance(t.runner, cuda_graph.CudaGraphStep) and not t.runner.failed
    assert len(builds) == 5  # 4x4; 8x8 fading; 8x8; 16x16 fading; 16x16
    a, sa = _final_state(tmp_path / "eager" / "run")
    b, sb = _final_state(tmp_path / "graphed" / "run")
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert sa["scaler"] == sb["scaler"]


def test_capture_runs_on_the_warm_up_side_stream(monkeypatch):
    """CudaGraphStep's capture goes on the one side stream its warm-up used, not torch.cuda.graph's own (the
    pattern that failed on ROCm). Simulated: torch.cuda's stream and graph objects are stand-ins that record."""
    import contextlib

    made, captured = [], []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: made.append(object()) or made[-1])
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")

    @contextlib.contextmanager
    def graph(g, stream=None, **kw):
        captured.append(stream)
        yield

    monkeypatch.setattr(torch.cuda, "graph", graph)
    runner = cuda_graph.CudaGraphStep(_tiny_step(None)[0], log=lambda *a: None)
    warm = runner.side_stream()
    ran = []
    assert runner.capture(lambda: ran.append(1)) == "graph" and ran == [1]
    assert captured == [warm] and made == [warm] and runner.side_stream() is warm


def test_capture_failure_warns_once_and_trains_eagerly(tiny_npz, tmp_path, monkeypatch):
    _graphed_run(monkeypatch, tiny_train_args(tiny_npz, tmp_path / "eager"), None)
    lines = []

    def capture(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    t = _graphed_run(monkeypatch, tiny_train_args(tiny_npz, tmp_path / "graphed"), capture, log=lines.append)
    warnings = [line for line in lines if "CUDA-graph capture failed" in line]
    assert len(warnings) == 1 and "continues eagerly" in warnings[0] and "4x4" in warnings[0]
    assert t.runner.failed
    a, _ = _final_state(tmp_path / "eager" / "run")
    b, _ = _final_state(tmp_path / "graphed" / "run")
    for k in a:  # the failed warm-up was undone
        assert torch.equal(a[k], b[k]), k


# -- real CUDA graphs -------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


@gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
@pytest.mark.parametrize("impl", ["ref", "triton", "ext"])
def test_graphed_training_equals_eager_on_gpu(tiny_npz, tmp_path, monkeypatch, amp, impl):
    """Real capture and replay through the whole tiny schedule (5 stages) against the eager step with the same
    (capturable) optimizers, in one process so cuDNN picks the same algorithms, deterministic ones."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    extra = ["--device", "cuda", "--amp", amp, "--impl", impl, "--mirror"]
    with monkeypatch.context() as m:
        _graphed_run(m, tiny_train_args(tiny_npz, tmp_path / "eager", *extra), None)
    t = _train(tiny_train_args(tiny_npz, tmp_path / "graphed", *extra, "--cuda-graphs", "on"))
    assert isinstance(t.runner, cuda_graph.CudaGraphStep) and not t.runner.failed
    a, sa = _final_state(tmp_path / "eager" / "run")
    b, sb = _final_state(tmp_path / "graphed" / "run")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert sa["scaler"] == sb["scaler"]


@gpu
def test_cuda_step_has_no_host_sync(tiny_npz, tmp_path):
    """The eager step must not read device values on the host, or it could not be captured."""
    t = _train(tiny_train_args(tiny_npz, tmp_path, "--device", "cuda", "--cuda-graphs", "off", "--kimg", "0.016"))
    ph = t.schedule.at(t.nimg)
    inputs = t.draw_inputs(ph)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.train_step.step(inputs, ph.resolution, ph.alpha)
    finally:
        torch.cuda.set_sync_debug_mode("default")
