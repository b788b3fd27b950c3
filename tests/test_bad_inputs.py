"""Hostile inputs and a flaky machine, through the real command lines in subprocesses (README "Robustness").

Every case asserts the exit status, that stderr is one line with no traceback, that nothing partial is left
behind (no run folder for a refused command, no `*.tmp-*` anywhere), and for the data cases the pixels that
were cached. Images are tiny and the runs seconds long; one process at a time.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from hostile import (
    FAST,
    cached,
    cli,
    good_run,  # noqa: F401  (a fixture)
    leftovers,
    one_line_error,
    png,
    rgb_folder,
    succeeded,
    tiny_npz,
    train,
)

# The whole battery is in the full suite only: the quick suite's bad-input case of each command line is in that
# command's own test file.
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--kimg", "nan"], "argument --kimg: must be a finite number >= 0.001 and <= 1e+07"),
        (["--kimg", "inf"], "argument --kimg: must be a finite number >= 0.001 and <= 1e+07"),
        (["--kimg", "-1"], "argument --kimg: must be a finite number >= 0.001 and <= 1e+07"),
        (["--kimg", "0"], "argument --kimg: must be a finite number >= 0.001 and <= 1e+07"),
        (["--lr", "-1"], "--lr values must be finite and > 0"),
        (["--lr", "nan"], "--lr values must be finite and > 0"),
        (["--lr", "3:0.1"], "--lr: 3 is not a resolution"),
        (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N, got 'meta'"),
        (["--latent-size", "0"], "argument --latent-size: must be a finite number >= 1"),
        (["--fmap-base", "1000000000000"], "argument --fmap-base: must be a finite number >= 1 and <= 1.04858e+06"),
        (["--grid", "-3"], "argument --grid: must be a finite number >= 1"),
        (["--snap-ticks", "0"], "argument --snap-ticks: must be a finite number >= 1"),
        (["--seed", "-1"], "argument --seed"),
        (["--ema", "1.5"], "argument --ema"),
        (["--minibatch", "0"], "--minibatch values must be whole numbers >= 1"),
        (["--minibatch", "4:2.5"], "--minibatch values must be whole numbers >= 1"),
        (["--minibatch", "6"], "not divisible by the minibatch-stddev group size 4"),
        (["--lod-training-kimg", "0", "--lod-transition-kimg", "0"], "never grows"),
        (["--resolution", "12"], "resolution must be a power of two"),
        (["--kimg", "1", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_train_flags_are_one_line_and_leave_no_run_folder(tmp_path, args, fragment):
    data = tiny_npz(tmp_path / "d.npz")
    r = cli("train", "--data", data, "--out", "runs", "--no-progress", "--device", "cpu", *args, cwd=tmp_path)
    one_line_error(r, fragment)
    assert not os.path.exists(tmp_path / "runs") and not leftovers(tmp_path)


def test_unavailable_impl_is_refused_before_the_run_folder_exists(tmp_path):
    data = tiny_npz(tmp_path / "d.npz")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastpggan.train",
            "--data",
            data,
            "--out",
            "runs",
            "--impl",
            "triton",
            "--device",
            "cpu",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )
    one_line_error(r, "--impl triton cannot run on cpu", "use --impl auto or ref")
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize(
    "module,args,fragment",
    [
        ("generate", ["--batch", "0"], "argument --batch"),
        ("generate", ["--seeds", "0-99999999999"], "at most 100000 seeds"),
        ("generate", ["--seeds", "x"], "--seeds must look like"),
        ("evaluate", ["--num", "1", "--data", "d.npz"], "argument --num"),
        ("evaluate", ["--data", "d.npz", "--metrics", "swd", "--seed", "nan"], "argument --seed"),
    ],
)
def test_bad_generate_and_evaluate_flags(tmp_path, good_run, module, args, fragment):
    tiny_npz(tmp_path / "d.npz")
    r = cli(module, "--checkpoint", good_run["ckpt"], *args, "--out", "out", cwd=tmp_path)
    one_line_error(r, fragment)
    assert not os.path.exists(tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------- data
def test_zip_bomb_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "bomb.zip"
    imgs = rgb_folder(tmp_path / "imgs")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(len(imgs)):
            z.write(tmp_path / "imgs" / f"img{i}.png", f"img{i}.png")
        with z.open("zbomb.png", "w", force_zip64=True) as f:  # 512 MiB of zeros in about 0.5 MB
            chunk = bytes(1 << 24)
            for _ in range(32):
                f.write(chunk)
    assert path.stat().st_size < 2 << 20
    # the trainer, run so that it reports its own peak memory on the way out: VmHWM, the high-water mark of this
    # image (getrusage's maxrss would also count the pytest process it was forked from)
    code = (
        "import atexit, re, runpy, sys; atexit.register(lambda: open('maxrss', 'w').write(re.search("
        "r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))); sys.argv[0] = 'fastpggan.train'; "
        "runpy.run_module('fastpggan.train', run_name='__main__')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "--data", str(path), *FAST, "--out", "runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    one_line_error(r, "likely zip bomb", "unpack it yourself")
    assert int(open(tmp_path / "maxrss").read()) < 1 << 20  # KiB: it stayed under 1 GiB, for a 512 MiB member
    assert not os.path.exists(tmp_path / "runs") and not leftovers(tmp_path)


def _png_header_only(width, height):
    """A PNG whose header claims width x height, with almost no pixel data (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def test_header_bomb_and_oversized_files_are_skipped_as_corrupt(tmp_path, monkeypatch):
    imgs = rgb_folder(tmp_path / "d")
    (tmp_path / "d" / "zbomb.png").write_bytes(_png_header_only(60000, 60000))
    r = train("--data", "d", cwd=tmp_path)
    out = succeeded(r)
    assert "skipped 1 corrupt" in out and "decompression bomb" in out
    ds = cached(tmp_path)
    assert np.array_equal(ds.level(8), imgs.transpose(0, 3, 1, 2))
    # the byte bound on one file, in this process with the bound lowered: a file over it is never read whole
    from fastpggan import data, images

    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100)
    from fastpggan.errors import UserError

    with pytest.raises(UserError, match="bytes, over the bound of 100 bytes for one image"):
        data.build_dataset(str(tmp_path / "d"), cache_dir=str(tmp_path / "c2"), progress=False)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 65536, (4, 8, 8), dtype=np.uint16)
    a[0, 0, :3] = (0, 65535, 32896)
    os.makedirs(tmp_path / "d")
    for i in range(4):
        png(tmp_path / "d" / f"{i}.png", a[i])
    succeeded(train("--data", "d", cwd=tmp_path))
    ds = cached(tmp_path)
    assert ds.num_channels == 1
    assert np.array_equal(ds.level(8)[:, 0], np.rint(a / 257.0).astype(np.uint8))
    assert tuple(ds.level(8)[0, 0, 0, :3]) == (0, 255, 128)


def test_mixed_grayscale_and_colour_is_cached_as_rgb_and_said(tmp_path):
    rgb = rgb_folder(tmp_path / "d", n=3)
    gray = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    png(tmp_path / "d" / "a_gray.png", gray)  # sorts first
    out = succeeded(train("--data", "d", cwd=tmp_path))
    assert "mixes 1 grayscale and 3 colour images; caching all as RGB" in out
    ds = cached(tmp_path)
    assert ds.num_channels == 3
    assert np.array_equal(ds.level(8)[0], np.repeat(gray[None], 3, 0))
    assert np.array_equal(ds.level(8)[1:], rgb.transpose(0, 3, 1, 2))


@pytest.mark.parametrize(
    "make,fragment",
    [
        (
            lambda p: np.savez(
                p, images=np.array([np.zeros((8, 8), np.uint8), np.zeros((4, 4), np.uint8)], dtype=object)
            ),
            "store plain numeric arrays",
        ),
        (lambda p: tiny_npz(p, labels=np.array([-1, 0, 1, 0, 1, 0, 1, 0])), "got values from -1 to 1"),
        (lambda p: tiny_npz(p, labels=np.full(8, 10**9)), "labels must be class indices in [0, 65536)"),
        (lambda p: tiny_npz(p, labels=np.linspace(0, 0.9, 8)), "labels must be whole class indices"),
        (lambda p: tiny_npz(p, labels=np.array([0, 1, 2])), "3 labels for 8 images"),
        (lambda p: tiny_npz(p, labels=np.array(["a"] * 8)), "labels must be integer class indices"),
    ],
)
def test_bad_arrays_and_labels_are_one_line(tmp_path, make, fragment):
    make(tmp_path / "d.npz")
    one_line_error(train("--data", "d.npz", cwd=tmp_path), fragment)
    assert not os.path.exists(tmp_path / "runs") and not leftovers(tmp_path, os.environ["FASTPGGAN_CACHE"])


def test_one_hot_and_whole_float_labels_are_class_indices(tmp_path):
    classes = np.array([0, 2, 1, 2, 0, 1, 1, 2])
    tiny_npz(tmp_path / "d.npz", labels=np.eye(3, dtype=np.float32)[classes])  # official dataset_tool's form
    succeeded(train("--data", "d.npz", "--cond", cwd=tmp_path))
    assert np.array_equal(cached(tmp_path).labels, classes)


def test_only_regular_files_are_read(tmp_path):
    imgs = rgb_folder(tmp_path / "d")
    d = tmp_path / "d"
    os.symlink("loop_b.png", d / "loop_a.png")
    os.symlink("loop_a.png", d / "loop_b.png")
    os.symlink("nowhere.png", d / "dangling.png")
    os.mkfifo(d / "fifo.png")
    os.symlink("img0.png", d / "z_link.png")  # a link to a regular file is read
    out = succeeded(train("--data", "d", cwd=tmp_path, timeout=120))  # a FIFO read would hang here
    assert "ignored 4 entries of 'd' that are not readable regular files" in out
    ds = cached(tmp_path)
    assert np.array_equal(ds.level(8), np.concatenate([imgs, imgs[:1]]).transpose(0, 3, 1, 2))
    assert not leftovers(tmp_path, os.environ["FASTPGGAN_CACHE"])


def _truncate_level(folder):
    p = os.path.join(folder, "res8.npy")
    os.truncate(p, os.path.getsize(p) - 7)


def _edit_meta(folder, **changes):
    p = os.path.join(folder, "meta.json")
    meta = json.load(open(p))
    with open(p, "w") as f:
        json.dump(dict(meta, **changes), f)


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (_truncate_level, "res8.npy"),
        (lambda f: open(os.path.join(f, "meta.json"), "w").write("{garbled"), "meta.json"),
        (lambda f: os.remove(os.path.join(f, "meta.json")), "meta.json"),
        (lambda f: _edit_meta(f, num_images=10**12), "res8.npy holds uint8 (8, 3, 8, 8)"),
        (lambda f: _edit_meta(f, version=1), "not of cache version 2"),
        (lambda f: np.save(os.path.join(f, "labels.npy"), np.array([1.5, -3])), "labels.npy"),
    ],
)
def test_a_damaged_cache_is_rebuilt_in_one_line(tmp_path, damage, fragment):
    tiny_npz(tmp_path / "d.npz", labels=np.arange(8) % 2)
    succeeded(train("--data", "d.npz", cwd=tmp_path))
    before = cached(tmp_path)
    pixels, folder = np.array(before.level(8)), before.folder
    del before
    damage(folder)
    shutil.rmtree(tmp_path / "runs")
    out = succeeded(train("--data", "d.npz", cwd=tmp_path))
    notes = [ln for ln in out.splitlines() if "is damaged" in ln]
    assert len(notes) == 1 and "rebuilding it" in notes[0] and fragment in notes[0], out
    after = cached(tmp_path)
    assert np.array_equal(after.level(8), pixels) and np.array_equal(after.labels, np.arange(8) % 2)
    assert not leftovers(os.environ["FASTPGGAN_CACHE"])


# ------------------------------------------------------------------------------------------------------ first run
def test_readme_setup_line_works_as_root_and_as_a_user():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    line = next(ln for ln in readme.splitlines() if "apt-get install" in ln and "fastpggan.train" in ln)
    assert not line.lstrip().startswith("sudo"), line
    # the package lists are fetched first (a fresh container has none), and the sudo part is chosen by the shell:
    # empty as root, `sudo` otherwise
    assign = line.split(";")[0]
    assert assign.startswith("S=$(") and "$S apt-get update && $S apt-get install" in line, line
    for uid, want in (("0", ""), ("1000", "sudo")):
        got = subprocess.run(
            ["bash", "-c", f'id() {{ echo {uid}; }}; {assign}; echo "$S"'], capture_output=True, text=True
        ).stdout.strip()
        assert got == want, (assign, uid, got)
