"""Hostile checkpoints and a flaky machine, through the real command lines in subprocesses (README "Robustness"):
tampered, non-finite or malicious checkpoints, resume's flags, killed runs, two trainers on one folder, a full disk.
How each case is checked: test_bad_inputs.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastpggan import checkpoint as ckpt
from hostile import (
    FAST,
    cli,
    copy_run,
    good_run,  # noqa: F401  (a fixture)
    leftovers,
    one_line_error,
    succeeded,
    tampered,
    tiny_npz,
)

pytestmark = pytest.mark.slow  # the whole battery is in the full suite only, as test_bad_inputs.py's


def _nan_g_ema(s):
    s["G_ema"]["to_rgb.0.weight"].fill_(float("nan"))


def _shape(s):
    s["G_ema"]["dense.weight"] = torch.zeros(3, 3)


@pytest.mark.parametrize(
    "change,fragment",
    [
        (_nan_g_ema, "NaN or inf weights in G_ema (1 tensor, first: to_rgb.0.weight)"),
        (
            lambda s: s["config"]["network"].update(fmap_base=10**15),
            "config.network.fmap_base: expected int <= 1048576 (it is 1000000000000000)",
        ),
        (
            lambda s: s["config"]["network"].update(resolution=1 << 40),
            "config.network.resolution: expected int <= 16384",
        ),
        (
            lambda s: s["config"]["network"].update(latent_size="8"),
            "config.network.latent_size: expected int, got str (it is '8')",
        ),
        (lambda s: s["config"]["network"].update(fmap_max=64), "does not match its recorded network"),
        (
            lambda s: s["config"]["network"].update(fused_scale="yes"),
            "config.network.fused_scale: expected bool, got str (it is 'yes')",
        ),
        (lambda s: s["progress"].update(resolution=1 << 40), "progress.resolution: expected int <= 16384"),
        (lambda s: s["progress"].update(alpha=float("nan")), "progress.alpha: expected float >= 0.0 (it is nan)"),
        (lambda s: s.pop("config"), "is damaged: config: missing"),
        (lambda s: s.pop("progress"), "is damaged: progress: missing"),
        (_shape, "G_ema does not match its recorded network (dense.weight: (3, 3)"),
    ],
)
def test_tampered_or_non_finite_checkpoints_are_refused_by_every_command(tmp_path, good_run, change, fragment):
    bad = tampered(good_run, tmp_path, change)
    tiny_npz(tmp_path / "d.npz")
    for module, args in (
        ("generate", ["--checkpoint", bad, "--out", "out"]),
        ("evaluate", ["--checkpoint", bad, "--data", "d.npz", "--out", "out.json"]),
        ("export", ["--checkpoint", bad, "--onnx", "out.onnx"]),
        ("train", ["--init", bad, "--data", "d.npz", "--out", "runs"]),
        ("train", ["--resume", bad, "--out", "runs"]),
    ):
        one_line_error(cli(module, *args, cwd=tmp_path), fragment)
    assert not any(os.path.exists(tmp_path / p) for p in ("out", "out.json", "out.onnx", "runs"))
    assert ckpt.list_checkpoints(str(tmp_path)) == []  # no new checkpoint next to the bad one


class _Evil:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_a_malicious_pickle_runs_nothing(tmp_path):
    torch.save({"format": ckpt.FORMAT, "x": _Evil()}, tmp_path / "evil.pt")
    for module, args in (("generate", ["--checkpoint", "evil.pt"]), ("train", ["--resume", "evil.pt"])):
        one_line_error(cli(module, *args, cwd=tmp_path), "is corrupt or not a fastpggan checkpoint")
    assert not os.path.exists(tmp_path / "pwned")


def test_a_nan_g_ema_is_never_saved(tmp_path, good_run, monkeypatch):
    """In this process: the trainer refuses to write a checkpoint whose G_ema went non-finite, and says which
    earlier checkpoint is intact."""
    from conftest import train_quietly
    from fastpggan import trainer as trainer_mod

    run = copy_run(good_run, tmp_path)
    real = trainer_mod.Trainer.step

    def step(self, ph):
        out = real(self, ph)
        self.G_ema.to_rgb[0].weight.data.fill_(float("nan"))
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "step", step)
    before = ckpt.list_checkpoints(str(run))
    with pytest.raises(trainer_mod.Diverged, match=r"G_ema \(1 tensor.*no checkpoint was written.*finite weights"):
        train_quietly(["--resume", str(run / os.path.basename(good_run["ckpt"])), "--kimg", "0.02"])
    assert ckpt.list_checkpoints(str(run)) == before and not leftovers(run)


def test_resume_says_which_flags_it_applies_and_which_it_ignores(tmp_path, good_run):
    run = copy_run(good_run, tmp_path)
    out = succeeded(
        cli(
            "train",
            "--resume",
            run / os.path.basename(good_run["ckpt"]),
            "--resolution",
            "4",
            "--seed",
            "5",
            "--lr",
            "0.002",
            "--kimg",
            "0.016",
            "--no-progress",
            cwd=tmp_path,
        )
    )
    applied = [ln for ln in out.splitlines() if ln.startswith("resume: applying")]
    ignored = [ln for ln in out.splitlines() if ln.startswith("resume: ignoring")]
    assert applied == ["resume: applying --kimg 0.016, --lr 0.002"], out
    assert len(ignored) == 1 and "--resolution 4, --seed 5" in ignored[0]
    state = ckpt.load(ckpt.latest(str(run)))
    assert state["config"]["schedule"]["lr_base"] == 0.002 and state["config"]["total_kimg"] == 0.016
    assert state["config"]["data"] == good_run["data"] and state["config"]["seed"] == 0


def test_resume_onto_data_that_became_grayscale_is_one_line(tmp_path, good_run):
    gray = tiny_npz(tmp_path / "gray.npz", channels=1)
    bad = tampered(good_run, tmp_path, lambda s: s["config"].update(data=gray))
    r = cli("train", "--resume", bad, "--kimg", "0.02", "--no-progress", cwd=tmp_path)
    one_line_error(r, "is now 8x8 with 1 channel(s)", "trained on 8x8 with 3", "resume with the data it started with")
    assert ckpt.list_checkpoints(str(tmp_path)) == []


def test_partial_writes_of_killed_runs_are_removed_and_the_log_rewinds(tmp_path, good_run):
    run = copy_run(good_run, tmp_path)
    stale = run / "checkpoint_000000.016.pt.tmp-999999999"
    stale.write_bytes(b"half a checkpoint")
    first = run / os.path.basename(good_run["all"][0])  # rewind to the oldest (the README's way: the newer
    for newer in good_run["all"][1:]:  # checkpoints deleted); the log has ticks past it
        os.remove(run / os.path.basename(newer))
    out = succeeded(cli("train", "--resume", first, "--no-progress", cwd=tmp_path))
    assert "removed 1 unfinished file left by an interrupted write (checkpoint_000000.016.pt.tmp-999999999)" in out
    assert not stale.exists() and not leftovers(run)
    ticks = [json.loads(ln)["kimg"] for ln in open(run / "log.jsonl") if '"tick"' in ln]
    assert ticks == sorted(set(ticks)) and ticks[-1] == 0.012, ticks


def test_two_trainers_cannot_share_a_run_folder(tmp_path, good_run):
    run = copy_run(good_run, tmp_path)
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastpggan.train",
            "--resume",
            "latest",
            "--out",
            "runs",
            "--name",
            "run",
            "--kimg",
            "1000",
            "--no-progress",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # Ctrl-C works
    try:
        deadline = time.time() + 120
        while time.time() < deadline and f"pid {first.pid}" not in open(run / ".lock").read():
            time.sleep(0.2)
        assert f"pid {first.pid}" in open(run / ".lock").read()
        r = cli(
            "train",
            "--resume",
            "latest",
            "--out",
            "runs",
            "--name",
            "run",
            "--kimg",
            "1000",
            "--no-progress",
            cwd=tmp_path,
        )
        one_line_error(r, f"is in use by pid {first.pid} on", "another folder (--name)")
    finally:
        first.send_signal(signal.SIGINT)  # it saves a checkpoint and stops
        try:
            first.wait(120)
        except subprocess.TimeoutExpired:
            first.kill()
            raise
    ticks = [json.loads(ln)["kimg"] for ln in open(run / "log.jsonl") if '"tick"' in ln]
    assert len(ticks) == len(set(ticks)), ticks


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("mount")
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip(
            "needs root to mount a 2 MB tmpfs as the full disk; the same error path is checked in "
            "test_checkpoint_write_errors_on_a_full_disk"
        )
    try:
        data = tiny_npz(tmp_path / "d.npz")
        r = cli(
            "train",
            "--data",
            data,
            *FAST,
            "--keep",
            "0",
            "--kimg",
            "10",
            "--fmap-base",
            "128",
            "--fmap-max",
            "32",
            "--out",
            disk,
            "--name",
            "run",
            cwd=tmp_path,
        )
        line = one_line_error(r, "disk", "is full", "continue with --resume")
        intact = ckpt.list_checkpoints(str(disk / "run"))
        assert intact and intact[-1] in line
        for p in intact:
            ckpt.load(p)
        assert not leftovers(disk)
        shutil.copytree(disk / "run", tmp_path / "runs" / "run")
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    run = tmp_path / "runs" / "run"
    nimg = ckpt.load(ckpt.latest(str(run)))["progress"]["nimg"]
    succeeded(
        cli("train", "--resume", ckpt.latest(str(run)), "--kimg", (nimg + 8) / 1000, "--no-progress", cwd=tmp_path)
    )
    ticks = [json.loads(ln)["kimg"] for ln in open(run / "log.jsonl") if '"tick"' in ln]
    assert ticks == sorted(set(ticks)) and ticks[-1] == (nimg + 8) / 1000, ticks


def test_checkpoint_write_errors_on_a_full_disk(tmp_path, monkeypatch):
    """In this process, for machines that cannot mount a small disk: torch.save failing the way it does on a
    full disk is one UserError naming the last intact checkpoint, and no partial file stays."""
    import errno

    from fastpggan.errors import UserError

    intact = ckpt.save(dict(G={}, D={}, G_ema={}), str(tmp_path), 4)

    def full(obj, f):
        open(f, "wb").write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=f"the disk is full.*last intact checkpoint is {intact}"):
        ckpt.save(dict(G={}, D={}, G_ema={}), str(tmp_path), 8)
    assert ckpt.list_checkpoints(str(tmp_path)) == [intact] and not leftovers(tmp_path)
