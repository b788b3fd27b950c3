"""The trainer end to end on seconds-long runs: growth, outputs, exact resume, and every error path."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import checkpoint_tensors, slow, tiny_train_args, train_quietly
from fastpggan import checkpoint as ckpt
from fastpggan import config, losses, trainer
from fastpggan import step as step_mod
from fastpggan.errors import UserError
from fastpggan.ops import _dispatch

_train = train_quietly


def _log(run_dir):
    """The tick records of a run's log.jsonl."""
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [rec for rec in map(json.loads, f) if "tick" in rec]


def test_smoke_grows_through_resolutions(tiny_npz, tmp_path):
    t = _train(tiny_train_args(tiny_npz, tmp_path))
    run_dir = tmp_path / "run"
    rows = _log(run_dir)
    assert [r["res"] for r in rows] == [4, 8, 8, 16, 16]
    assert rows[1]["alpha"] < 1 and rows[3]["alpha"] < 1 and rows[-1]["alpha"] == 1
    for key in ("kimg", "res", "alpha", "loss_G", "loss_D", "sec_per_kimg", "img_per_s", "peak_mem_mb"):
        assert all(key in r for r in rows)
    assert all(np.isfinite(r["loss_D"]) and np.isfinite(r["loss_G"]) for r in rows)
    assert t.nimg == 80 and len(list(run_dir.glob("fakes_*.png"))) == 5
    assert json.loads((run_dir / "config.json").read_text())["network"]["fmap_max"] == 8
    last = ckpt.latest(str(run_dir))
    state = torch.load(last, weights_only=True)
    assert state["progress"]["nimg"] == 80 and state["progress"]["resolution"] == 16
    assert set(state) >= {"G", "D", "G_ema", "opt_G", "opt_D", "scaler", "rng", "sampler", "config", "progress"}
    # G_ema moved away from G's initial weights but is not G.
    assert not torch.equal(state["G_ema"]["dense.weight"], state["G"]["dense.weight"])


def test_keep_last_k(tiny_npz, tmp_path):
    _train(tiny_train_args(tiny_npz, tmp_path, "--snap-ticks", "1", "--keep", "2"))
    names = [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path / "run"))]
    assert names == ["checkpoint_000000.064.pt", "checkpoint_000000.080.pt"]


@pytest.mark.parametrize(
    "extra",
    [[], ["--mirror", "--cond"], ["--amp", "fp16", "--channels-last"], ["--fused-scale", "0", "--cond"]],
    ids=["plain", "mirror-cond", "fp16-channels_last", "unfused-cond"],
)
def test_resume_is_bit_exact(tiny_npz, tmp_path, extra):
    straight = tiny_train_args(tiny_npz, tmp_path / "a", *extra)
    _train(straight)
    full = torch.load(ckpt.latest(str(tmp_path / "a" / "run")), weights_only=True)

    half = tiny_train_args(tiny_npz, tmp_path / "b", *extra)
    half[half.index("--kimg") + 1] = "0.04"  # stop mid-transition (8x8 fade-in)
    _train(half)
    mid = ckpt.latest(str(tmp_path / "b" / "run"))
    assert torch.load(mid, weights_only=True)["progress"]["nimg"] == 40
    run_flags = [a for a in extra if a == "--channels-last"]  # how to run is not part of the checkpoint
    t = _train(["--resume", mid, "--kimg", "0.08", "--no-progress", "--device", "cpu", *run_flags])
    assert t.D.fused_scale is t.G.fused_scale is ("--fused-scale" not in extra)
    resumed = torch.load(ckpt.latest(str(tmp_path / "b" / "run")), weights_only=True)
    assert full["scaler"] == resumed["scaler"]
    assert resumed["config"]["network"]["fused_scale"] is ("--fused-scale" not in extra)
    if "fp16" in extra:  # one GradScaler per network, saved and restored
        assert set(full["scaler"]) == {"D", "G"} and full["scaler"]["D"]["scale"] > 0

    a, b = checkpoint_tensors(full), checkpoint_tensors(resumed)
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["sampler"] == resumed["sampler"] and torch.equal(full["rng"]["torch"], resumed["rng"]["torch"])


OLD_CHECKPOINT = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoint_v1_digits8_cond.pt")


def test_a_checkpoint_written_before_the_trainer_split_still_resumes(tmp_path):
    """tests/fixtures/checkpoint_v1_digits8_cond.pt was written by fastpggan 0.1.0 at commit 125761d, before
    train.py was split into config, trainer and train: `python -m fastpggan.train --data digits --fmap-base 32
    --fmap-max 8 --latent-size 8 --minibatch 8 --lod-training-kimg 0.016 --lod-transition-kimg 0.016 --tick-kimg
    0.016 --snap-ticks 1 --kimg 0.04 --device cpu --seed 3 --mirror --cond`, its 0.032-kimg checkpoint, with
    torch.optim.Adam's state and 0.1's (non-official) training step. Today's trainer loads every tensor of it
    unchanged (Adam's per-parameter steps become TFAdam's one step count), says in one line that the run will not
    retrace 0.1's, and trains on from it."""
    pytest.importorskip("sklearn", reason="scikit-learn is in the [demo] extra (the digits dataset)")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "checkpoint_000000.032.pt"
    path.write_bytes(open(OLD_CHECKPOINT, "rb").read())
    old = torch.load(path, weights_only=True)
    lines = []
    loaded = _train(
        ["--resume", str(path), "--kimg", "0.032", "--no-progress", "--device", "cpu"],  # nothing to train
        log=lines.append,
    )
    notes = [ln for ln in lines if "fastpggan 0.1" in ln]
    assert len(notes) == 1 and "official" in notes[0] and "\n" not in notes[0]
    now = loaded.state_dict()
    a, b = checkpoint_tensors(old), checkpoint_tensors(now)
    old_steps = {k: a.pop(k) for k in list(a) if k.endswith(".step")}
    assert sorted(k for k in b if k.endswith(".step")) == ["opt_D.shared.step", "opt_G.shared.step"]
    for part in ("opt_G", "opt_D"):
        assert float(b.pop(f"{part}.shared.step")) == max(float(v) for k, v in old_steps.items() if k.startswith(part))
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert now["sampler"] == old["sampler"] and torch.equal(now["rng"]["torch"], old["rng"]["torch"])
    assert {k: now["progress"][k] for k in old["progress"]} == old["progress"]
    # a run from before tuning goes on with the static backend order, and from now on records that it does
    want = dict(
        config.RunConfig.from_dict(old["config"]).to_dict(),
        total_kimg=0.032,
        step_version=step_mod.STEP_VERSION,
        backends=dict(device=None, choices={}),
    )
    assert now["config"] == want and {k: want[k] for k in old["config"]} == dict(
        old["config"], total_kimg=0.032
    )  # every recorded field kept, the missing ones filled in

    t = _train(["--resume", str(path), "--kimg", "0.048", "--no-progress", "--device", "cpu"])
    assert t.nimg == 48
    state = ckpt.load(ckpt.latest(str(run_dir)))
    assert state["progress"]["nimg"] == 48 and state["config"]["cond"] and state["config"]["mirror"]
    assert all(torch.isfinite(v).all() for v in checkpoint_tensors(state).values())
    assert not torch.equal(state["G"]["dense.weight"], old["G"]["dense.weight"])


def test_gp_native_res_is_recorded_and_reaches_the_step_and_a_newer_step_is_refused(tiny_npz, tmp_path):
    lines = []
    t = _train(tiny_train_args(tiny_npz, tmp_path, "--gp-native-res"), log=lines.append)
    assert t.cfg.gp_native_res is True and t.train_step.gp_native_res is True
    assert t.cfg.step_version == step_mod.STEP_VERSION
    assert any("--gp-native-res" in ln for ln in lines)
    path = ckpt.latest(str(tmp_path / "run"))
    state = ckpt.load(path)
    assert state["config"]["gp_native_res"] is True
    resumed = _train(["--resume", path, "--no-progress", "--device", "cpu"])
    assert resumed.train_step.gp_native_res is True
    state["config"]["step_version"] = step_mod.STEP_VERSION + 1
    torch.save(state, path)
    with pytest.raises(UserError, match="newer fastpggan .*upgrade"):
        _train(["--resume", path, "--no-progress", "--device", "cpu"])
    default = _train(tiny_train_args(tiny_npz, tmp_path / "b"))
    assert default.cfg.gp_native_res is False and default.train_step.gp_native_res is False


def test_resume_latest(tiny_npz, tmp_path):
    argv = tiny_train_args(tiny_npz, tmp_path)
    argv[argv.index("--kimg") + 1] = "0.032"
    _train(argv)
    t = _train(["--resume", "latest", "--out", str(tmp_path), "--kimg", "0.048", "--no-progress", "--device", "cpu"])
    assert t.nimg == 48 and t.run_dir == str(tmp_path / "run")


@pytest.mark.parametrize(
    "amp,dtype,extra",
    [("on", torch.bfloat16, []), ("fp16", torch.float16, []), ("fp16", torch.float16, ["--amp-min-res", "8"])],
)
def test_amp_on_cpu_keeps_weights_optimizer_and_ema_fp32(tiny_npz, tmp_path, amp, dtype, extra):
    t = _train(tiny_train_args(tiny_npz, tmp_path, "--amp", amp, *extra))
    assert t.amp_dtype == dtype
    assert t.G.amp_min_res == t.D.amp_min_res == (8 if extra else None)
    rows = _log(tmp_path / "run")
    assert rows and all(np.isfinite(r["loss_D"]) and np.isfinite(r["loss_G"]) for r in rows)
    for net in (t.G, t.D, t.G_ema):
        assert {p.dtype for p in net.parameters()} == {torch.float32}
    for opt in (t.opt_G, t.opt_D):
        assert {v.dtype for st in opt.state.values() for v in st.values()} == {torch.float32}
    assert (t.train_step.scaler_state() is not None) == (dtype == torch.float16)


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_npz, tmp_path, monkeypatch):
    real, calls = losses.g_loss_wgan, []

    def poisoned(*a, **k):
        if _dispatch._recorder:  # the trainer's start-up recording of the op cases, not a training step
            return real(*a, **k)
        calls.append(1)
        out = real(*a, **k)
        return out * float("nan") if len(calls) >= 5 else out

    monkeypatch.setattr(losses, "g_loss_wgan", poisoned)
    with pytest.raises(trainer.Diverged, match=r"NaN.*last checkpoint \(finite weights\): .*checkpoint_000000.032.pt"):
        _train(tiny_train_args(tiny_npz, tmp_path))
    good = ckpt.list_checkpoints(str(tmp_path / "run"))
    assert len(good) == 1
    state = ckpt.load(good[0])
    assert state["progress"]["nimg"] == 32
    assert all(torch.isfinite(v).all() for v in state["G"].values())


def test_oom_message(tiny_npz, tmp_path, monkeypatch):
    def oom(self, ph):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(trainer.Trainer, "step", oom)
    with pytest.raises(UserError, match=r"out of memory at 4x4 with minibatch 8: .*--minibatch 4:4.*--amp"):
        _train(tiny_train_args(tiny_npz, tmp_path))


@pytest.fixture
def sigint_handler():
    """Sets SIGINT's handler for one test and restores the one found: a test run from a background job starts
    with SIGINT ignored, so the tests must not depend on how they were launched."""
    found = signal.getsignal(signal.SIGINT)

    def use(handler):
        signal.signal(signal.SIGINT, handler)
        return handler

    yield use
    signal.signal(signal.SIGINT, found)


def _interrupt_at_step(monkeypatch, n):
    real, calls = trainer.Trainer.step, []

    def step(self, ph):
        out = real(self, ph)
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(trainer.Trainer, "step", step)


def test_ctrl_c_saves_checkpoint_then_exits(tiny_npz, tmp_path, monkeypatch, sigint_handler):
    def mine(signum, frame):
        raise KeyboardInterrupt

    sigint_handler(mine)
    _interrupt_at_step(monkeypatch, 3)
    with pytest.raises(SystemExit) as e:
        _train(tiny_train_args(tiny_npz, tmp_path))
    assert e.value.code == 130
    state = ckpt.load(ckpt.latest(str(tmp_path / "run")))
    assert state["progress"]["nimg"] == 24
    assert signal.getsignal(signal.SIGINT) is mine  # the handler found at start, not Python's default


def test_an_ignored_ctrl_c_stays_ignored(tiny_npz, tmp_path, monkeypatch, sigint_handler):
    """A trainer started as a background job (SIGINT ignored) is not stopped by a Ctrl-C meant for the shell."""
    sigint_handler(signal.SIG_IGN)
    _interrupt_at_step(monkeypatch, 3)
    t = _train(tiny_train_args(tiny_npz, tmp_path))
    assert t.nimg == int(t.cfg.total_kimg * 1000) and not t.stop_requested
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("content,msg", [(b"\x00garbage" * 10, "corrupt"), (None, "not a fastpggan checkpoint")])
def test_bad_checkpoint(tmp_path, content, msg):
    path = tmp_path / "c.pt"
    if content is None:
        torch.save({"weights": torch.ones(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=msg):
        _train(["--resume", str(path), "--no-progress"])
    with pytest.raises(UserError, match="does not exist"):
        _train(["--resume", str(tmp_path / "missing.pt"), "--no-progress"])


def test_incompatible_checkpoint(tiny_npz, tmp_path):
    argv = tiny_train_args(tiny_npz, tmp_path)
    argv[argv.index("--kimg") + 1] = "0.016"
    _train(argv)
    path = ckpt.latest(str(tmp_path / "run"))
    state = torch.load(path, weights_only=True)
    state["G"]["dense.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(UserError, match="incompatible"):
        _train(["--resume", path, "--no-progress", "--device", "cpu"])


def _cli(*args, cwd):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "fastpggan.train", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--data", "no/such/folder"], "error: data path 'no/such/folder' does not exist"),
        slow(["--data", "digits", "--resolution", "24"], "error: resolution must be a power of two"),
        slow(["--data", "digits", "--resolution", "2"], "error: resolution must be a power of two"),
        slow(["--resume", "latest"], "error: --resume latest: no checkpoint found"),
        slow(["--data", "digits", "--amp-min-res", "12"], "error: --amp-min-res must be a power of two"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, msg):
    r = _cli(*args, "--no-progress", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(msg), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_too_small_images_strict(tmp_path):
    from PIL import Image

    (tmp_path / "d").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "d" / f"{i}.png")
    r = _cli("--data", "d", "--resolution", "32", "--strict", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "smaller than 32x32" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_help_documents_flags(tmp_path):
    r = _cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    for flag in (
        "--data",
        "--out",
        "--resolution",
        "--kimg",
        "--preset",
        "--seed",
        "--amp",
        "--resume",
        "--device",
        "--mirror",
        "--cond",
        "--lod-training-kimg",
        "--lod-transition-kimg",
        "--minibatch",
        "--lr",
        "--no-reset-opt",
        "--strict",
    ):
        assert flag in r.stdout


def test_cli_entry_turns_errors_into_one_line(capsys):
    from fastpggan.errors import cli_entry

    @cli_entry
    def fails(argv):
        raise UserError("bad thing; do this instead")

    @cli_entry
    def interrupted(argv):
        raise KeyboardInterrupt

    for fn, code, text in ((fails, 2, "error: bad thing; do this instead"), (interrupted, 130, "interrupted")):
        with pytest.raises(SystemExit) as e:
            fn([])
        assert e.value.code == code and capsys.readouterr().err.strip() == text


def test_one_time_estimate_line_and_per_resolution_rates(tiny_npz, tmp_path):
    lines = []
    t = _train(
        tiny_train_args(
            tiny_npz,
            tmp_path,
            "--kimg",
            "0.48",
            "--lod-training-kimg",
            "0.16",
            "--lod-transition-kimg",
            "0.16",
            "--tick-kimg",
            "1",
        ),
        log=lines.append,
    )
    notes = [ln for ln in lines if ln.startswith("estimate: about ")]
    assert len(notes) == 1 and "to train the remaining" in notes[0] and "\n" not in notes[0], lines
    assert set(t.eta.sec_per_img) == {4, 8} and all(v > 0 for v in t.eta.sec_per_img.values())  # 20 steps a phase
    images = sum(n for _, n in t.eta.measured.values())
    assert 0 < images <= t.nimg
    assert set(t.eta.forward_cost) == {4, 8} and all(v > 0 for v in t.eta.forward_cost.values())
    before = torch.get_rng_state()
    probe = t.eta.probe_forward_cost({4, 16}, repeats=1)
    assert set(probe) == {4, 16} and torch.equal(torch.get_rng_state(), before)  # the run's RNG is untouched
