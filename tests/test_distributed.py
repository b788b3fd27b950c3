"""Data-parallel training on CPU with gloo, through torchrun: the same numbers as one process, resume across
world sizes, only rank 0 writes, and clear errors."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import tiny_train_args
from fastpggan import checkpoint as ckpt
from fastpggan import config, train
from fastpggan.errors import UserError

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no gloo backend",
)


def _data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, size=(64, 16, 16, 3), dtype=np.uint8))
    return str(path)


def _args(data, out, *extra):
    # mbstd groups are formed per process (as in the official multi-GPU code), so compare with it off
    return tiny_train_args(
        data,
        out,
        "--mbstd-group",
        "1",
        "--mirror",
        "--metrics",
        "msssim",
        "--metric-kimg",
        "0.032",
        "--metric-num",
        "16",
        *extra,
    )


def _torchrun(nproc, args, env, **kw):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--standalone",
        "-m",
        "fastpggan.train",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kw)


def _env(tmp_path):
    return dict(os.environ, FASTPGGAN_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")


def _final(run_dir):
    return torch.load(ckpt.list_checkpoints(str(run_dir))[-1], weights_only=True)


def _assert_same_state(a, b, tol=1e-5):
    assert a["progress"]["nimg"] == b["progress"]["nimg"]
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            diff = (a[key][name].float() - b[key][name].float()).abs().max().item()
            assert diff <= tol, f"{key}.{name} differs by {diff}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data = _data(tmp)
    env = _env(tmp)
    one = subprocess.run(
        [sys.executable, "-m", "fastpggan.train", *_args(data, tmp / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(2, _args(data, tmp / "two"), env)
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp, data, env, two


@pytest.mark.slow
def test_two_processes_give_the_parameters_of_one(runs):
    tmp, _, _, _ = runs
    _assert_same_state(_final(tmp / "one" / "run"), _final(tmp / "two" / "run"))


@pytest.mark.slow
def test_only_rank_0_writes(runs):
    tmp, _, _, two = runs
    one_files = sorted(p.name for p in (tmp / "one" / "run").iterdir() if not p.name.startswith("events."))
    two_files = sorted(p.name for p in (tmp / "two" / "run").iterdir() if not p.name.startswith("events."))
    assert two_files == one_files
    assert [p.name for p in (tmp / "two").iterdir()] == ["run"]
    assert len(list((tmp / "two" / "run").glob("events.*"))) <= 1
    lines = (tmp / "two" / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp / "one" / "run" / "log.jsonl").read_text().splitlines())
    assert two.stdout.count("done:") == 1
    import json

    metric_recs = [json.loads(line) for line in lines if '"metrics"' in line]
    assert metric_recs and all(r["num"] == 16 and 0 <= r["metrics"]["msssim"] <= 1 for r in metric_recs)


@pytest.mark.slow
def test_resume_with_a_different_world_size(runs):
    tmp, data, env, _ = runs
    half = _torchrun(2, _args(data, tmp / "half", "--kimg", "0.048"), env)
    assert half.returncode == 0, half.stderr[-3000:]
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastpggan.train",
            "--resume",
            ckpt.list_checkpoints(str(tmp / "half" / "run"))[-1],
            "--kimg",
            "0.08",
            "--no-progress",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_state(_final(tmp / "one" / "run"), _final(tmp / "half" / "run"))


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    data = _data(tmp_path)
    os.environ["FASTPGGAN_CACHE"] = str(tmp_path / "cache")
    train.main(_args(data, tmp_path / "whole", "--kimg", "0.032"))
    train.main(_args(data, tmp_path / "acc", "--kimg", "0.032", "--batch-gpu", "2"))
    _assert_same_state(_final(tmp_path / "whole" / "run"), _final(tmp_path / "acc" / "run"))


def test_global_batch_that_does_not_split_is_refused_up_front(tmp_path):
    data = _data(tmp_path)
    os.environ["FASTPGGAN_CACHE"] = str(tmp_path / "cache")
    from fastpggan.data import build_dataset

    ds = build_dataset(data, progress=False, log=lambda *a: None)
    kw = train.config_kwargs(train.build_parser().parse_args(_args(data, tmp_path / "x")))
    with pytest.raises(UserError, match="global minibatch 8 at 4x4 is not divisible by the 3 processes"):
        config.resolve_config(ds, **dict(kw, world=3))
    with pytest.raises(UserError, match="not a multiple of --batch-gpu 3"):
        config.resolve_config(ds, **dict(kw, world=2, batch_gpu=3))


def _start_long_run(tmp_path):
    data = _data(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "fastpggan.train",
        *_args(data, tmp_path / "out", "--kimg", "50"),
    ]
    # Ctrl-C as from a terminal, also when these tests themselves run as a background job (SIGINT ignored)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run_dir = tmp_path / "out" / "run"
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir.exists() and ckpt.list_checkpoints(str(run_dir))):
        time.sleep(0.5)
    assert ckpt.list_checkpoints(str(run_dir)), "no checkpoint was written"
    return proc, run_dir


def _rank_pid(rank):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if (
            f"RANK={rank}".encode() in environ
            and b"fastpggan.train" in cmdline
            and b"torch.distributed.run" not in cmdline
        ):
            return int(pid)
    raise AssertionError(f"could not find rank {rank}")


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run_and_the_checkpoint_stays_intact(tmp_path):
    proc, run_dir = _start_long_run(tmp_path)
    os.kill(_rank_pid(1), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    last = ckpt.list_checkpoints(str(run_dir))[-1]
    state = ckpt.load(last)  # intact: loads and validates
    assert state["progress"]["nimg"] > 0
    # whichever the survivor notices first, torchrun's SIGTERM or the broken connection, it says what to do
    assert ("stopped by SIGTERM" in err or "the process group failed" in err) and "continue with --resume" in err, err[
        -3000:
    ]


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path):
    proc, run_dir = _start_long_run(tmp_path)
    before = ckpt.list_checkpoints(str(run_dir))[-1]
    os.kill(_rank_pid(1), signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    after = ckpt.list_checkpoints(str(run_dir))[-1]
    assert "interrupted: saved" in out, (out + err)[-3000:]
    # names sort by kimg; `before` itself may have been rotated away (--keep) by the checkpoints written since
    assert os.path.basename(after) > os.path.basename(before)
    assert ckpt.load(after)["progress"]["nimg"] > 0
