"""The dataset formats people have, as --data: official TFRecords, LSUN lmdb, CIFAR-10 batches, MNIST idx files.

Each is read into the cache and compared with what the official dataset_tool.py would have given: the genuine
official TFRecords of tests/fixtures/official/tfrecords level by level, and for the others the official
create_* function's steps written out here with numpy and Pillow.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import slow
from fastpggan import builtin_data, images
from fastpggan.data import build_dataset, downsample_box
from fastpggan.errors import UserError
from fastpggan.formats import safe_pickle
from formats import (
    cifar,
    idx_bytes,
    lsun,
    lsun_expected,
    malicious_batch,
    mnist,
    record_spans,
    tfrecords,
    write_tfrecord,
)
from official import fixture


def cli(*argv):
    """`python -m fastpggan.dataset ARGV` in a fresh process: (exit status, stdout, stderr lines)."""
    p = subprocess.run(
        [sys.executable, "-m", "fastpggan.dataset", *argv, "--no-progress"], capture_output=True, text=True, timeout=300
    )
    return p.returncode, p.stdout, p.stderr.splitlines()


def assert_one_line_error(rc, err, *needles):
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (rc, err)
    for n in needles:
        assert n in err[0], (n, err[0])


# ---- official TFRecords


@pytest.mark.parametrize("name", ["rgb16_cond3", "gray8"])
def test_tfrecords_every_level_equals_the_official_one(name):
    exp = np.load(fixture(f"tfrecords/{name}_expected.npz"))
    ds = build_dataset(fixture(f"tfrecords/{name}"), progress=False)
    stored = sorted(k for k in exp.files if k.startswith("images_r"))
    assert ds.resolutions == [2 ** int(k[-2:]) for k in reversed(stored)]
    for k in stored:
        level = ds.level(2 ** int(k[-2:]))
        assert level.dtype == np.uint8 and np.array_equal(level, exp[k]), k
    assert np.array_equal(ds.level(ds.resolution), exp["images"][exp["order"]])  # the exporter's record order
    if "labels_onehot_in_record_order" in exp.files:
        assert np.array_equal(ds.labels, exp["labels_onehot_in_record_order"].argmax(1))
        assert ds.num_classes == exp["labels_onehot_in_record_order"].shape[1]
    else:
        assert ds.labels is None
    assert ds.meta["format"] == "tfrecords"


def test_tfrecords_each_level_comes_from_its_own_file(tmp_path):
    made = tfrecords(tmp_path)
    low = np.load(fixture("tfrecords/rgb16_cond3_expected.npz"))["images_r02"]
    write_tfrecord(os.path.join(made.path, "rgb16_cond3-r02.tfrecords"), 255 - low)  # not what 8x8 box-filters to
    ds = build_dataset(made.path, progress=False)
    assert np.array_equal(ds.level(4), 255 - low)
    assert np.array_equal(ds.level(16), made.images)
    assert not np.array_equal(ds.level(4), np.rint(downsample_box(ds.level(8).astype(np.float32))))


def test_tfrecords_resolution_and_max_images(tmp_path):
    made = tfrecords(tmp_path)
    exp = np.load(fixture("tfrecords/rgb16_cond3_expected.npz"))
    ds = build_dataset(made.path, resolution=8, max_images=5, progress=False)
    assert (ds.resolution, len(ds)) == (8, 5)
    assert np.array_equal(ds.level(8), exp["images_r03"][:5]) and np.array_equal(ds.level(4), exp["images_r02"][:5])
    assert np.array_equal(ds.labels, made.labels[:5])
    with pytest.raises(UserError, match="at most 16"):
        build_dataset(made.path, resolution=32, progress=False)


@pytest.mark.slow
def test_tfrecords_truncated_one_line_exit_2(tmp_path):
    made = tfrecords(tmp_path)
    path = os.path.join(made.path, "rgb16_cond3-r03.tfrecords")
    data = open(path, "rb").read()
    last = record_spans(path)[-1]
    for cut, what in ((len(data) - 3, "past the end"), (last[0] + 5, "ends inside its header")):
        with open(path, "wb") as f:
            f.write(data[:cut])
        rc, _, err = cli("info", made.path, "--cache-dir", str(tmp_path / "c"))
        assert_one_line_error(
            rc,
            err,
            "rgb16_cond3-r03.tfrecords",
            f"record {len(record_spans(path)) - 1}" if what == "past the end" else "record 23",
            what,
        )
    # the trainer says the same, before anything else happens
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastpggan.train",
            "--data",
            made.path,
            "--out",
            str(tmp_path / "r"),
            "--device",
            "cpu",
            "--no-progress",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = p.stderr.splitlines()
    assert p.returncode == 2 and len(err) == 1 and "rgb16_cond3-r03.tfrecords' record 23" in err[0], p.stderr
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("where", ["length", slow("length crc"), slow("data"), slow("data crc")])
def test_tfrecords_flipped_byte_one_line_exit_2(tmp_path, where):
    made = tfrecords(tmp_path)
    path = os.path.join(made.path, "rgb16_cond3-r04.tfrecords")
    start, data_start, end = record_spans(path)[7]
    at = {"length": start + 1, "length crc": start + 9, "data": data_start + 200, "data crc": end - 2}[where]
    raw = bytearray(open(path, "rb").read())
    raw[at] ^= 0x04
    open(path, "wb").write(raw)
    rc, _, err = cli("info", made.path, "--cache-dir", str(tmp_path / "c"))
    assert_one_line_error(rc, err, "rgb16_cond3-r04.tfrecords' record 7", "CRC")


def test_tfrecords_disagreeing_folders_are_refused(tmp_path):
    exp = np.load(fixture("tfrecords/rgb16_cond3_expected.npz"))

    def variant(name, change):
        made = tfrecords(tmp_path / name)
        change(made.path)
        with pytest.raises(UserError) as e:
            build_dataset(made.path, progress=False)
        return str(e.value)

    r03 = "rgb16_cond3-r03.tfrecords"
    odd = exp["images_r03"].copy()[:, :, :, :]
    msg = variant("shape", lambda p: write_tfrecord(os.path.join(p, r03), list(odd[:3]) + [odd[3][:, :4]]))
    assert r03 in msg and "record 3" in msg
    msg = variant("count", lambda p: write_tfrecord(os.path.join(p, r03), odd[:20]))
    assert r03 in msg and "20 records" in msg
    msg = variant("missing", lambda p: os.remove(os.path.join(p, r03)))
    assert "no 8x8 file" in msg
    msg = variant(
        "labels",
        lambda p: np.save(
            open(os.path.join(p, "rgb16_cond3-rxx.labels"), "wb"), np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
        ),
    )
    assert "rxx.labels" in msg and "(5, 3)" in msg
    msg = variant("gray", lambda p: write_tfrecord(os.path.join(p, r03), odd[:, :1]))
    assert "1-channel" in msg
    with pytest.raises(UserError, match="pass its folder"):
        build_dataset(os.path.join(tfrecords(tmp_path / "one").path, r03), progress=False)


def test_tfrecords_train_conditional(tmp_path):
    from conftest import tiny_train_args, train_quietly

    made = tfrecords(tmp_path)
    t = train_quietly(tiny_train_args(made.path, tmp_path / "runs", "--cond", "--kimg", "0.048"))
    assert t.cfg.network["label_size"] == 3 and t.cfg.network["num_channels"] == 3
    assert t.nimg == 48


# ---- LSUN lmdb


def test_lsun_crop_resize_cap_and_skip_as_create_lsun(tmp_path):
    made = lsun(tmp_path, n=6, corrupt=(2,))
    data_mdb = os.path.join(made.path, "data.mdb")
    before = open(data_mdb, "rb").read()
    lines = []
    ds = build_dataset(made.path, resolution=32, progress=False, log=lines.append)
    exp = lsun_expected(made.path, 32)
    assert len(exp) == 5 and np.array_equal(ds.level(32), exp)
    assert ds.num_channels == 3 and ds.labels is None and ds.meta["format"] == "lsun"
    assert any("skipped 1 corrupt" in line for line in lines)
    # upscaled too, as create_lsun resizes whatever the size; the cap counts images kept, not values read
    ds = build_dataset(made.path, resolution=64, max_images=3, progress=False)
    assert len(ds) == 3 and np.array_equal(ds.level(64), lsun_expected(made.path, 64, limit=3))
    # opened read-only and unlocked: the database is untouched and no lock file appears
    assert sorted(os.listdir(made.path)) == ["data.mdb"] and open(data_mdb, "rb").read() == before
    ds = build_dataset(data_mdb, resolution=16, max_images=2, progress=False)  # the file itself works too
    assert np.array_equal(ds.level(16), lsun_expected(made.path, 16, limit=2))


def test_lsun_default_resolution_is_create_lsuns(tmp_path):
    made = lsun(tmp_path, n=2)
    ds = build_dataset(made.path, max_images=1, progress=False)
    assert ds.resolution == 256 and np.array_equal(ds.level(256), lsun_expected(made.path, 256, limit=1))


def test_lsun_pixel_bound_and_strict(tmp_path, monkeypatch):
    made = lsun(tmp_path, n=3)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 36 - 1)  # only the 36x64 image is over it
    lines = []
    ds = build_dataset(made.path, resolution=16, progress=False, log=lines.append)
    assert len(ds) == 2 and any("skipped 1 corrupt" in line and "2304 pixels" in line for line in lines), lines
    with pytest.raises(UserError, match="corrupt image"):
        build_dataset(made.path, resolution=8, strict=True, progress=False)


def test_lsun_not_a_database(tmp_path):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "data.mdb").write_bytes(b"\0" * 100)
    with pytest.raises(UserError, match="lmdb"):
        build_dataset(str(tmp_path / "db"), progress=False)


# ---- CIFAR-10


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_cifar10_training_batches_in_order(tmp_path, archive):
    made = cifar(tmp_path, archive=archive)
    ds = build_dataset(made.path, progress=False)
    assert (len(ds), ds.resolution, ds.num_channels) == (15, 32, 3) and ds.meta["format"] == "cifar10"
    assert np.array_equal(ds.level(32), made.images) and np.array_equal(ds.labels, made.labels)


@pytest.mark.parametrize("archive", [False, slow(True)], ids=["folder", "tar.gz"])
def test_cifar10_malicious_batch_is_refused_and_never_run(tmp_path, archive):
    marker = str(tmp_path / "pwned")
    payload = malicious_batch(marker)
    import pickle

    pickle.loads(payload)  # the payload works when unpickled plainly...
    assert os.path.exists(marker)
    os.remove(marker)
    made = cifar(tmp_path / "d", archive=archive, replace={3: payload})
    rc, _, err = cli("info", made.path, "--cache-dir", str(tmp_path / "c"))  # ...and never runs here
    assert_one_line_error(rc, err, "data_batch_3", "needs io.open", "nothing it names was run")
    assert not os.path.exists(marker)


@pytest.mark.parametrize("bad, msg", [(b"\x80\x02}q\x00", "truncated or corrupt"), (b"\x80\x02]q\x00.", "not a dict")])
def test_cifar10_damaged_batches(tmp_path, bad, msg):
    made = cifar(tmp_path, replace={5: bad})
    with pytest.raises(UserError, match=msg):
        build_dataset(made.path, progress=False)


def test_cifar10_missing_batch(tmp_path):
    made = cifar(tmp_path)
    os.remove(os.path.join(made.path, "cifar-10-batches-py", "data_batch_4"))
    with pytest.raises(UserError, match="no data_batch_4"):
        build_dataset(made.path, progress=False)


def test_restricted_unpickler_latin1_only():
    import pickle

    data = pickle.dumps(b"\x00\xffbytes", protocol=2)  # Python 3 bytes at protocol 2: _codecs.encode(..., latin1)
    import io

    allowed = safe_pickle.LATIN1_BYTES
    assert safe_pickle.load(io.BytesIO(data), allowed) == b"\x00\xffbytes"
    evil = data.replace(b"latin1", b"rot13\x00"[:6])
    with pytest.raises(safe_pickle.Refused, match="rot13"):
        safe_pickle.load(io.BytesIO(evil), allowed)


# ---- MNIST idx


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (False, True)], ids=["gz", "plain", "dotted"])
def test_mnist_idx_padded_as_create_mnist(tmp_path, gz, dotted):
    made = mnist(tmp_path, gz=gz, dotted=dotted)
    ds = build_dataset(made.path, progress=False)
    assert (ds.resolution, ds.num_channels, ds.meta["format"]) == (32, 1, "mnist-idx")
    assert np.array_equal(ds.level(32), made.images) and np.array_equal(ds.labels, made.labels)
    assert ds.level(32)[:, :, :2].max() == 0 and ds.level(32)[:, :, :, 30:].max() == 0
    # one file works too, with its labels found beside it
    name = "train-images" + (".idx3-ubyte" if dotted else "-idx3-ubyte") + (".gz" if gz else "")
    ds = build_dataset(os.path.join(made.path, name), resolution=16, progress=False)
    assert np.array_equal(ds.labels, made.labels) and len(ds) == len(made.images)


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda a: idx_bytes(a)[:-7], "truncated"),
        slow(lambda a: idx_bytes(a) + b"x", "longer than its header"),
        slow(lambda a: b"\x00\x01" + idx_bytes(a)[2:], "not an idx file"),
        slow(lambda a: idx_bytes(a)[:3] + b"\x02" + idx_bytes(a)[4:], "2 dimensions, expected 3"),
        slow(lambda a: idx_bytes(a)[:2] + b"\x0d" + idx_bytes(a)[3:], "type 0x0d"),
    ],
)
def test_mnist_idx_damaged(tmp_path, make, msg):
    made = mnist(tmp_path, gz=False)
    x = np.zeros((12, 28, 28), np.uint8)
    open(os.path.join(made.path, "train-images-idx3-ubyte"), "wb").write(make(x))
    rc, _, err = cli("info", made.path, "--cache-dir", str(tmp_path / "c"))
    assert_one_line_error(rc, err, "train-images-idx3-ubyte", msg)


def test_mnist_label_count_must_match(tmp_path):
    made = mnist(tmp_path, gz=False)
    open(os.path.join(made.path, "train-labels-idx1-ubyte"), "wb").write(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(UserError, match="5 labels for the 12 images"):
        build_dataset(made.path, progress=False)


def test_builtin_mnist_likes_use_the_same_padding(monkeypatch, tmp_path):
    made = mnist(tmp_path, gz=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(made.path, name), os.path.join(made.path, name.replace("train", "t10k")))
    monkeypatch.setattr(builtin_data, "FASHION_MNIST_DIR", made.path)
    x, y, _ = builtin_data.load_fashion_mnist()
    assert np.array_equal(x, np.concatenate([made.images, made.images]))
    assert np.array_equal(y, np.concatenate([made.labels, made.labels]))


def test_lsun_max_images_trains_and_resumes_on_the_same_images(tmp_path):
    from conftest import tiny_train_args, train_quietly

    made = lsun(tmp_path, n=5)
    runs = tmp_path / "runs"
    t = train_quietly(tiny_train_args(made.path, runs, "--resolution", "16", "--max-images", "3", "--kimg", "0.032"))
    assert len(t.dataset) == 3 and t.cfg.max_images == 3 and t.dataset.resolution == 16
    assert np.array_equal(t.dataset.level(16), lsun_expected(made.path, 16, limit=3))
    t = train_quietly(
        [
            "--resume",
            "latest",
            "--out",
            str(runs),
            "--name",
            "run",
            "--kimg",
            "0.048",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert len(t.dataset) == 3 and t.nimg == 48
    from fastpggan import checkpoint, evaluate

    out = tmp_path / "m.json"
    evaluate.main(
        [
            "--checkpoint",
            checkpoint.latest(str(runs / "run")),
            "--data",
            made.path,
            "--max-images",
            "3",
            "--metrics",
            "swd",
            "--num",
            "3",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    caches = [f for f in os.listdir(os.environ["FASTPGGAN_CACHE"]) if f.startswith("bedroom_train_lmdb-")]
    assert out.exists() and len(caches) == 1  # the training run's cache, reused
