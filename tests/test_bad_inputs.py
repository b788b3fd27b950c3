"""Hostile inputs and a flaky machine, through the real command lines in subprocesses (README "Robustness").

Every case asserts the exit status, that stderr is one line with no traceback, that nothing partial is left
behind (no run folder for a refused command, no `*.tmp-*` anywhere), and for the data cases the pixels that
were cached. Images are tiny and the runs seconds long; one process at a time.
"""

import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
import torch

from fastpggan import checkpoint as ckpt
from fastpggan.data import ImageDataset

# The whole battery is in the full suite only: the quick suite's bad-input case of each command line is in that
# command's own test file.
pytestmark = pytest.mark.slow

# a run of a few seconds: 4x4 -> 8x8 at tiny widths, a checkpoint every 4-image tick
FAST = [
    "--fmap-base",
    "32",
    "--fmap-max",
    "8",
    "--latent-size",
    "8",
    "--minibatch",
    "4",
    "--lod-training-kimg",
    "0.004",
    "--lod-transition-kimg",
    "0.004",
    "--tick-kimg",
    "0.004",
    "--snap-ticks",
    "1",
    "--kimg",
    "0.012",
    "--no-progress",
    "--device",
    "cpu",
]


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


def _nan_g_ema(s):
    s["G_ema"]["to_rgb.0.weight"].fill_(float("nan"))


def _shape(s):
    s["G_ema"]["dense.weight"] = torch.zeros(3, 3)


@pytest.mark.parametrize(
    "change,fragment",
    [
        (_nan_g_ema, "NaN or inf weights in G_ema (1 tensor, first: to_rgb.0.weight)"),
        (lambda s: s["config"]["network"].update(fmap_base=10**15), "network fmap_base is 1000000000000000"),
        (lambda s: s["config"]["network"].update(resolution=1 << 40), "network resolution"),
        (lambda s: s["config"]["network"].update(latent_size="8"), "network latent_size is '8'"),
        (lambda s: s["config"]["network"].update(fmap_max=64), "does not match its recorded network"),
        (lambda s: s["config"]["network"].update(fused_scale="yes"), "network fused_scale is 'yes'"),
        (lambda s: s["progress"].update(resolution=1 << 40), "its progress"),
        (lambda s: s["progress"].update(alpha=float("nan")), "its progress"),
        (lambda s: s.pop("config"), "it has no network config"),
        (lambda s: s.pop("progress"), "its progress"),
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
    tiny_npz(tmp_path / "other.npz", size=16)
    out = succeeded(
        cli(
            "train",
            "--resume",
            run / os.path.basename(good_run["ckpt"]),
            "--data",
            "other.npz",
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
    assert len(ignored) == 1 and "--data other.npz, --resolution 4, --seed 5" in ignored[0]
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


# ------------------------------------------------------------------------------------------------------ first run
def test_readme_setup_line_works_as_root_and_as_a_user():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    line = next(ln for ln in readme.splitlines() if "apt-get install" in ln and "fastpggan.train" in ln)
    assert not line.lstrip().startswith("sudo"), line
    # the sudo part is chosen by the shell: empty as root, `sudo` otherwise
    prefix = line.split("apt-get")[0]
    for uid, want in (("0", ""), ("1000", "sudo")):
        got = subprocess.run(
            ["bash", "-c", f"id() {{ echo {uid}; }}; echo {prefix}"], capture_output=True, text=True
        ).stdout.strip()
        assert got == want, (prefix, uid, got)
