"""A resume that finds its way (issue 43, step 3): `--resume latest` skips unreadable checkpoints and names them,
the data is recorded absolute with a content fingerprint, and --data relocates it only where that matches. The
command lines' answers are rows of test_faults_loaded.py; these are the pieces, in process."""

import argparse
import dataclasses
import os
import shutil
import types

import numpy as np
import pytest

from fastpggan import resume
from fastpggan.config import resolve_config
from fastpggan.data import build_dataset
from fastpggan.errors import UserError
from faults import CK, RUN, run_template  # noqa: F401  (a fixture)
from hostile import tiny_npz


def _latest(root):
    return argparse.Namespace(resume="latest", out=os.path.join(root, "runs"), name="run")


def test_latest_skips_the_unreadable_newest_and_names_it(run_template, tmp_path):
    shutil.copytree(run_template, tmp_path, dirs_exist_ok=True)
    with open(tmp_path / CK[2], "r+b") as f:
        f.truncate(1000)
    said = []
    path, state = resume.find_resume(_latest(str(tmp_path)), said.append)
    assert path == str(tmp_path / CK[1]) and state["progress"]["nimg"] == 8
    assert len(said) == 1 and said[0].startswith(f"resume: skipped 1 unreadable checkpoint(s) of '{tmp_path / RUN}'")
    assert "checkpoint_000000.012.pt (is corrupt or not a fastpggan checkpoint" in said[0]
    assert said[0].endswith("resuming the newest good one, checkpoint_000000.008.pt")


def test_latest_with_nothing_skipped_says_nothing(run_template):
    said = []
    path, _ = resume.find_resume(_latest(str(run_template)), said.append)
    assert path == str(run_template / CK[2]) and said == []


def _dataset(tmp_path, name, seed=1, n=8):
    rng = np.random.default_rng(seed)
    np.savez(tmp_path / name, images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
    return build_dataset(str(tmp_path / name), cache_dir=str(tmp_path / "cache"), progress=False, log=lambda *a: None)


def test_the_fingerprint_follows_the_images_not_the_file(tmp_path):
    a = _dataset(tmp_path, "a.npz")
    os.makedirs(tmp_path / "moved")
    b = _dataset(tmp_path / "moved", "a.npz")  # the same images elsewhere (a new mtime too)
    assert a.content_fingerprint == b.content_fingerprint
    other = _dataset(tmp_path, "c.npz", seed=2)
    fewer = _dataset(tmp_path, "d.npz", n=7)
    assert other.content_fingerprint["pixels"] != a.content_fingerprint["pixels"]
    assert fewer.content_fingerprint["images"] == 7


def test_data_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = _dataset(tmp_path, "a.npz")
    cfg = resolve_config(ds, data="a.npz", device="cpu", fmap_base=32, fmap_max=8, latent_size=8)
    assert cfg.data == str(tmp_path / "a.npz") and cfg.data_fingerprint == ds.content_fingerprint
    assert resolve_config(ds, data="fashion-mnist", device="cpu").data == "fashion-mnist"  # a name stays a name


def test_relocation_is_checked_against_the_fingerprint(tmp_path):
    ds = _dataset(tmp_path, "a.npz")
    cfg = resolve_config(ds, data="/gone/a.npz", device="cpu", fmap_base=32, fmap_max=8, latent_size=8)
    said = []
    moved = resume.check_relocated(ds, cfg, str(tmp_path / "a.npz"), "c.pt", said.append)
    assert moved.data == str(tmp_path / "a.npz") and said == [
        f"resume: the run's data '/gone/a.npz' is now '{tmp_path / 'a.npz'}' (the same images by fingerprint)"
    ]
    other = _dataset(tmp_path, "b.npz", seed=3)
    with pytest.raises(UserError, match=r"^--data 'b.npz' is not the data the run in 'c.pt' trained on \(pixels "):
        resume.check_relocated(other, cfg, "b.npz", "c.pt", said.append)
    old = dataclasses.replace(cfg, data_fingerprint=None)  # a checkpoint from before fingerprints
    b = str(tmp_path / "b.npz")
    assert resume.check_relocated(other, old, b, "c.pt", said.append).data == b
    assert "predates data fingerprints, so only the data's shape is checked" in said[-1]


def test_recorded_data_that_is_gone_is_one_line_naming_the_way_out(tmp_path):
    cfg = types.SimpleNamespace(data="/gone/a.npz")
    args = argparse.Namespace(data="fashion-mnist")
    with pytest.raises(UserError, match=r"the data '/gone/a.npz' that the run in 'c.pt' trained on is not found; pass"):
        resume.data_to_open(cfg, args, {"data": "fashion-mnist"}, "c.pt")
    assert resume.data_to_open(cfg, argparse.Namespace(data="x.npz"), {"data": "fashion-mnist"}, "c.pt") == "x.npz"
    tiny_npz(tmp_path / "here.npz")
    here = types.SimpleNamespace(data=str(tmp_path / "here.npz"))
    assert resume.data_to_open(here, args, {"data": "fashion-mnist"}, "c.pt") == here.data
