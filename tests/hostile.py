"""Helpers of the hostile-input tests (test_bad_inputs.py, test_bad_checkpoints.py): the command lines in
subprocesses, one-line error checks, leftovers, tiny data and a good run to tamper with."""

import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastpggan import checkpoint as ckpt
from fastpggan.data import ImageDataset

# a run of a few seconds: 4x4 -> 8x8 at tiny widths, a checkpoint every 4-image tick
FAST = (
    "--fmap-base 32 --fmap-max 8 --latent-size 8 --minibatch 4 --lod-training-kimg 0.004 --lod-transition-kimg 0.004 "
    "--tick-kimg 0.004 --snap-ticks 1 --kimg 0.012 --no-progress --device cpu"
).split()


def cli(module, *args, cwd, timeout=240, env=None):
    """`python -m fastpggan.<module> ARGS` in `cwd`, with this test's cache; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", f"fastpggan.{module}", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def train(*args, cwd, **kw):
    return cli("train", *args, *FAST, "--out", "runs", "--name", "run", cwd=cwd, **kw)


def one_line_error(r, *fragments):
    """Exit status 2 and a single `error: ...` line on stderr, no traceback, containing each fragment."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def succeeded(r):
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.stdout


def leftovers(*roots):
    """Partial files of interrupted writes and builds under the roots."""
    return [
        p
        for root in roots
        for p in glob.glob(os.path.join(str(root), "**", "*"), recursive=True)
        if ".tmp" in os.path.basename(p) or ".broken-" in os.path.basename(p)
    ]


def cached(tmp_path):
    """The one dataset cache this test built, opened (and so checked)."""
    metas = glob.glob(os.path.join(os.environ["FASTPGGAN_CACHE"], "*", "meta.json"))
    assert len(metas) == 1, metas
    return ImageDataset(os.path.dirname(metas[0]))


def png(path, array, mode=None):
    from PIL import Image

    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def rgb_folder(path, n=4, size=8, seed=0):
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    for i, a in enumerate(imgs):
        png(os.path.join(path, f"img{i}.png"), a)
    return imgs


def tiny_npz(path, n=8, size=8, channels=3, **extra):
    rng = np.random.default_rng(1)
    shape = (n, size, size, channels) if channels > 1 else (n, size, size)
    np.savez(path, images=rng.integers(0, 256, shape, dtype=np.uint8), **extra)
    return str(path)


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished tiny run with three checkpoints (kimg 0.004, 0.008, 0.012), made once for this module."""
    root = tmp_path_factory.mktemp("good")
    data = tiny_npz(root / "d.npz")
    r = cli(
        "train",
        "--data",
        data,
        *FAST,
        "--keep",
        "0",
        "--out",
        "runs",
        "--name",
        "run",
        cwd=root,
        env={"FASTPGGAN_CACHE": str(root / "cache")},
    )
    succeeded(r)
    run = root / "runs" / "run"
    return dict(root=root, data=data, run=str(run), ckpt=ckpt.latest(str(run)), all=ckpt.list_checkpoints(str(run)))


def copy_run(good_run, tmp_path):
    dst = tmp_path / "runs" / "run"
    shutil.copytree(good_run["run"], dst)
    return dst


def tampered(good_run, tmp_path, change):
    state = torch.load(good_run["ckpt"], weights_only=True)
    change(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    return path
