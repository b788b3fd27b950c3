"""`python -m fastpggan.dataset info|grid|export` on every format --data reads."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import slow
from fastpggan import dataset
from fastpggan.data import build_dataset
from formats import FORMATS, every_format


def run(*argv, log=None):
    lines = []
    out = dataset.run(dataset.build_parser().parse_args([*argv, "--no-progress"]), log=log or lines.append)
    return out, lines


def _extra(kind):
    return ["--resolution", "16"] if kind == "lsun" else []


@pytest.mark.parametrize("kind", FORMATS)
def test_info(tmp_path, kind):
    made = every_format(tmp_path / "d", kind)
    d, lines = run("info", made.path, *_extra(kind))
    n, c, r = made.images.shape[:2] + (made.images.shape[-1],)
    assert (d["images"], d["channels"], d["resolution"]) == (n, c, r)
    assert d["levels"] == [r >> i for i in range(int(math.log2(r)) - 1)]
    if made.labels is None:
        assert d["classes"] == 0 and d["class_counts"] is None and "labels:     none" in lines
    else:
        assert d["class_counts"] == np.bincount(made.labels).tolist()
    assert d["format"] == {
        "npz": "array",
        "cifar10.tar.gz": "cifar10",
        "mnist.gz": "mnist-idx",
        "mnist": "mnist-idx",
    }.get(kind, kind)
    files = os.listdir(d["cache"])
    assert d["cache_bytes"] == sum(os.path.getsize(os.path.join(d["cache"], f)) for f in files) > made.images.size
    assert any(d["cache"] in line for line in lines) and any(f"images:     {n}" == line for line in lines)
    js, _ = run("info", made.path, "--json", *_extra(kind))
    assert js == d


@pytest.mark.parametrize("kind", FORMATS)
def test_grid_shows_the_datasets_images(tmp_path, kind):
    made = every_format(tmp_path / "d", kind)
    out = str(tmp_path / "grid.png")
    res = made.images.shape[-1] // 2
    run("grid", made.path, "--out", out, "--res", str(res), "--num", "4", "--seed", "3", *_extra(kind))
    ds = build_dataset(made.path, progress=False, **({"resolution": 16} if kind == "lsun" else {}))
    pick = np.sort(np.random.default_rng(3).choice(len(ds), 4, replace=False))
    g = np.asarray(Image.open(out))
    g = g[..., None] if g.ndim == 2 else g
    assert g.shape == (2 * res, 2 * res, made.images.shape[1])
    tiles = [
        g[(k // 2) * res : (k // 2 + 1) * res, (k % 2) * res : (k % 2 + 1) * res].transpose(2, 0, 1) for k in range(4)
    ]
    assert all(np.array_equal(t, ds.level(res)[i]) for t, i in zip(tiles, pick))


@pytest.mark.parametrize("kind", FORMATS)
def test_export_npz_and_folder_read_back(tmp_path, kind):
    made = every_format(tmp_path / "d", kind)
    ds = build_dataset(made.path, progress=False, **({"resolution": 16} if kind == "lsun" else {}))
    r = ds.resolution
    npz = str(tmp_path / "out.npz")
    run("export", made.path, "--to", npz, *_extra(kind))
    with np.load(npz, allow_pickle=False) as z:
        assert np.array_equal(z["images"], made.images)
        assert (made.labels is None and "labels" not in z.files) or np.array_equal(z["labels"], made.labels)
    back = build_dataset(npz, progress=False)
    assert np.array_equal(back.level(r), made.images)
    folder = str(tmp_path / "pngs")
    run("export", made.path, "--to", folder, "--res", str(r // 2), *_extra(kind))
    for i in range(len(ds)):
        sub = f"{made.labels[i]:0{len(str(ds.num_classes - 1))}d}" if ds.num_classes >= 2 else ""
        img = np.asarray(Image.open(os.path.join(folder, sub, f"img{i:08d}.png")))
        img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        assert np.array_equal(img, ds.level(r // 2)[i])
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_export_refuses_to_overwrite_and_force_replaces(tmp_path):
    made = every_format(tmp_path / "d", "npz")
    dst = tmp_path / "x.npz"
    dst.write_bytes(b"keep me")
    p = subprocess.run(
        [sys.executable, "-m", "fastpggan.dataset", "export", made.path, "--to", str(dst), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and p.stderr.splitlines() == [
        f"error: --to '{dst}' exists; add --force to overwrite it, or choose another path"
    ]
    assert dst.read_bytes() == b"keep me"
    run("export", made.path, "--to", str(dst), "--force")
    assert np.array_equal(np.load(dst)["images"], made.images)


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["grid", "{data}", "--out", "{data}/g.png"], "is a file, not a folder"),
        slow(["grid", "{data}", "--out", "{tmp}/g.png", "--res", "64"], "has no 64x64 copy"),
        slow(["export", "{data}", "--to", "{tmp}/o.npz", "--res", "6"], "--res must be a power of two"),
        slow(["info", "{tmp}/missing"], "does not exist"),
        slow(["info", "{data}", "--max-images", "0"], "--max-images"),
        slow(["bogus", "{data}"], "invalid choice"),
    ],
)
def test_errors_are_one_line(tmp_path, argv, msg):
    made = every_format(tmp_path / "d", "npz")
    argv = [a.format(data=made.path, tmp=tmp_path) for a in argv]
    p = subprocess.run(
        [sys.executable, "-m", "fastpggan.dataset", *argv, "--no-progress"], capture_output=True, text=True, timeout=300
    )
    err = p.stderr.splitlines()
    assert p.returncode == 2 and len(err) == 1 and msg in err[0], p.stderr


@pytest.mark.slow
def test_info_json_is_one_line_for_scripts(tmp_path):
    made = every_format(tmp_path / "d", "mnist")
    p = subprocess.run(
        [sys.executable, "-m", "fastpggan.dataset", "info", made.path, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert p.returncode == 0 and json.loads(p.stdout)["images"] == len(made.images)
