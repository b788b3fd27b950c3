"""The fault table: each row is a command line run as a user would (a subprocess), the state it meets, what it
must answer (one `error:` line and exit status 2, or success), and what must still be true afterwards: nothing
the user had was lost (checkpoints load, files keep their bytes) and nothing partial was left (`*.tmp-*`).

Rows that train or compute are `slow`; refusals, which stop before any work, are quick. The shared run (a tiny
4x4 -> 8x8 training with checkpoints at kimg 0.004, 0.008 and 0.012) is made once per module and copied into each
row's folder.
"""

import dataclasses
import glob
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from typing import Callable, List, Optional

import pytest
import torch

import official
from fastpggan import checkpoint as ckpt
from fastpggan.ops import tune_cache
from test_bad_inputs import FAST, cli, one_line_error, succeeded, tiny_npz

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = tiny_npz(root / "d.npz")
    succeeded(
        cli(
            "train",
            "--data",
            data,
            *FAST,
            "--keep",
            "0",
            "--impl",
            "ref",
            "--out",
            "runs",
            "--name",
            "run",
            cwd=root,
            env={"FASTPGGAN_CACHE": str(root / "cache")},
        )
    )
    return root


@dataclasses.dataclass
class Row:
    """One fault: `args` of `python -m fastpggan.<command>` in a copy of the shared run's folder (`setup` may
    change it first); `error`: fragments of the one error line, or None for success; `after(root, template)`:
    checks on the folder afterwards (`template`: the shared run's folder, as it was)."""

    name: str
    command: str
    args: List[str]
    error: Optional[List[str]]
    after: Callable[[str, str], None] = lambda root, template: None
    setup: Callable[[str], None] = lambda root: None
    slow: bool = False
    inject: Optional[str] = None  # an errno name: every write fails so (tests/inject_fault.py)
    full_disk: bool = False  # `full/` is a tmpfs with no space left (skipped where none can be mounted)
    may_change: tuple = ()  # files a failed command may change (a run's log, rewound on resume)
    env: dict = dataclasses.field(default_factory=dict)  # environment variables set for the command


RUN = os.path.join("runs", "run")
CK = [os.path.join(RUN, f"checkpoint_000000.{k:03d}.pt") for k in (4, 8, 12)]
EVAL = ["--data", "d.npz", "--metrics", "swd", "--num", "8", "--device", "cpu", "--no-progress"]


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _loads(*paths):
    def check(root, template):
        for p in paths:
            ckpt.load(os.path.join(root, p))  # raises if missing or damaged

    return check


def _holds(path, text):
    def check(root, template):
        with open(os.path.join(root, path)) as f:
            assert f.read() == text, path

    return check


def _write(path, text):
    def setup(root):
        with open(os.path.join(root, path), "w") as f:
            f.write(text)

    return setup


def _all(*checks):
    def check(root, template):
        for c in checks:
            c(root, template)

    return check


def _checkpoints_are(*names):
    def check(root, template):
        assert [os.path.basename(p) for p in ckpt.list_checkpoints(os.path.join(root, RUN))] == list(names)

    return check


def _metrics_json(path):
    def check(root, template):
        with open(os.path.join(root, path)) as f:
            assert "swd" in json.load(f)["metrics"]

    return check


def _unchanged_log(root, template):
    with open(os.path.join(root, RUN, "log.jsonl")) as f, open(os.path.join(template, RUN, "log.jsonl")) as g:
        assert f.read() == g.read()


def _absent(*paths):
    def check(root, template):
        for p in paths:
            assert not os.path.exists(os.path.join(root, p)), p

    return check


def _selftest_report(folder):
    """Today's self-test report on the CPU in `folder`, as the self-test names it."""

    def setup(root):
        os.makedirs(os.path.join(root, folder))
        name = f"fastpggan-selftest-{tune_cache.device_key(torch.device('cpu'))}-{time.strftime('%Y%m%d')}"
        _write(os.path.join(folder, name + ".json"), "keep me")(root)

    return setup


def _no_new_entries(root, template):
    assert sorted(os.listdir(root)) == sorted(os.listdir(template)), "a refused command created files"


def _tamper(path, part, **values):
    """Change `values` in the `part` of checkpoint `path` (a damaged or hostile checkpoint)."""

    def setup(root):
        state = torch.load(os.path.join(root, path), weights_only=True)
        state[part].update(values)
        torch.save(state, os.path.join(root, path))

    return setup


ROWS = [
    # evaluate --out: the checkpoint under evaluation is never overwritten, not even with --force
    Row(
        "evaluate --out is the checkpoint",
        "evaluate",
        ["--checkpoint", CK[2], "--out", CK[2], *EVAL],
        ["--out", "is one of this command's inputs"],
        _loads(*CK),
    ),
    Row(
        "evaluate --out is the checkpoint, --force",
        "evaluate",
        ["--checkpoint", CK[2], "--out", CK[2], "--force", *EVAL],
        ["is one of this command's inputs"],
        _loads(*CK),
    ),
    Row(
        "evaluate --out is the data",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "d.npz", "--force", *EVAL],
        ["is one of this command's inputs"],
    ),
    Row(
        "evaluate --out is an existing file",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "mine.json", *EVAL],
        ["--out 'mine.json' exists; add --force"],
        _holds("mine.json", "keep me"),
        _write("mine.json", "keep me"),
    ),
    Row(
        "evaluate --out is a folder",
        "evaluate",
        ["--checkpoint", CK[2], "--out", RUN, "--force", *EVAL],
        ["is a folder"],
        _loads(*CK),
    ),
    Row(
        "evaluate --out existing file, --force",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "mine.json", "--force", *EVAL],
        None,
        _metrics_json("mine.json"),
        _write("mine.json", "old"),
        slow=True,
    ),
    # --resume of an older checkpoint of a run with newer ones: refused, nothing pruned or rewound
    Row(
        "train --resume an older checkpoint --keep 2",
        "train",
        ["--resume", CK[0], "--keep", "2", "--no-progress", "--device", "cpu"],
        ["is at kimg 0.004", "2 newer checkpoint(s)", "--resume latest"],
        _all(_loads(*CK), _unchanged_log),
        slow=True,
    ),
    # outputs that cannot be written: one line before any work, nothing created, nothing overwritten
    Row(
        "generate --out is a file",
        "generate",
        ["--checkpoint", CK[2], "--out", "d.npz", "--device", "cpu"],
        ["--out 'd.npz' is a file, not a folder"],
    ),
    Row(
        "train --out is a file",
        "train",
        ["--data", "d.npz", "--out", "d.npz", *FAST],
        ["--out 'd.npz' is a file, not a folder"],
        _no_new_entries,
    ),
    Row(
        "evaluate --out under a file",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "d.npz/m.json", *EVAL],
        ["cannot write", "d.npz", "is a file, not a folder"],
    ),
    Row(
        "evaluate --out in a new folder",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "new/deeper/m.json", *EVAL],
        None,
        _metrics_json("new/deeper/m.json"),
        slow=True,
    ),
    # an output that is the command's own input: refused, --force or not
    Row(
        "export --onnx and --torchscript the same file",
        "export",
        ["--checkpoint", CK[2], "--onnx", "g.x", "--torchscript", "g.x"],
        ["name the same file 'g.x'"],
        _no_new_entries,
    ),
    Row(
        "export --torchscript is the checkpoint, --force",
        "export",
        ["--checkpoint", CK[2], "--torchscript", CK[2], "--force"],
        ["is one of this command's inputs"],
        _loads(*CK),
    ),
    Row(
        "convert DST is SRC, --force",
        "convert",
        ["d.npz", "d.npz", "--force"],
        ["DST 'd.npz' is one of"],
        _no_new_entries,
    ),
    Row(
        "dataset grid --out is the data",
        "dataset",
        ["grid", "d.npz", "--out", "d.npz"],
        ["--out 'd.npz' is one of"],
        _no_new_entries,
    ),
    Row(
        "dataset export --to is the data, --force",
        "dataset",
        ["export", "d.npz", "--to", "d.npz", "--force"],
        ["--to 'd.npz' is one of"],
        _no_new_entries,
    ),
    # --keep never deletes the checkpoint the run resumed from, nor the one it just wrote
    Row(
        "train --resume latest --keep 1",
        "train",
        [
            "--resume",
            "latest",
            "--out",
            "runs",
            "--name",
            "run",
            "--keep",
            "1",
            "--kimg",
            "0.02",
            "--no-progress",
            "--device",
            "cpu",
        ],
        None,
        _all(_checkpoints_are("checkpoint_000000.012.pt", "checkpoint_000000.020.pt"), _loads(CK[2])),
        slow=True,
    ),
    # an explicit output that exists: refused before any work without --force (tune: kept, its --force re-measures)
    Row(
        "tune --report exists",
        "tune",
        ["--report", "r.md", "--device", "cpu"],
        ["--report 'r.md' exists; remove it or choose another path"],
        _holds("r.md", "keep me"),
        _write("r.md", "keep me"),
    ),
    Row(
        "selftest: today's report exists",
        "selftest",
        ["--out", "st", "--device", "cpu"],
        ["exists; add --force to overwrite it"],
        setup=_selftest_report("st"),
    ),
    Row(
        "selftest --out is a file",
        "selftest",
        ["--out", "d.npz", "--device", "cpu"],
        ["--out 'd.npz' is a file, not a folder"],
        _no_new_entries,
    ),
    Row(
        "dataset grid --out exists",
        "dataset",
        ["grid", "d.npz", "--out", "g.png"],
        ["--out 'g.png' exists; add --force"],
        _holds("g.png", "keep me"),
        _write("g.png", "keep me"),
    ),
    Row(
        "export --onnx exists",
        "export",
        ["--checkpoint", CK[2], "--onnx", "g.onnx"],
        ["--onnx 'g.onnx' exists; add --force"],
        _holds("g.onnx", "keep me"),
        _write("g.onnx", "keep me"),
    ),
    Row(
        "convert DST under a file",
        "convert",
        [official.fixture("pggan_gray16_nonfused_cond3.pkl"), "d.npz/c.pt"],
        ["DST", "d.npz", "is a file, not a folder"],
        _no_new_entries,
    ),
    # a missing folder of an explicit output is created, as every write does
    Row(
        "convert DST in a new folder",
        "convert",
        [official.fixture("pggan_gray16_nonfused_cond3.pkl"), "new/c.pt"],
        None,
        _loads("new/c.pt"),
        slow=True,
    ),
    Row(
        "export --torchscript in a new folder",
        "export",
        ["--checkpoint", CK[2], "--torchscript", "new/g.pt"],
        None,
        lambda root, template: torch.jit.load(os.path.join(root, "new/g.pt")),
        slow=True,
    ),
    # a full disk: one line, nothing partial; on a real full file system where one can be mounted, else injected
    Row(
        "train --out on a full disk",
        "train",
        ["--data", "d.npz", "--out", "full/runs", *FAST],
        ["--out", "the disk is full"],
        _absent("full/runs"),
        full_disk=True,
    ),
    Row(
        "evaluate --out on a full disk",
        "evaluate",
        ["--checkpoint", CK[2], "--out", "full/m.json", *EVAL],
        ["--out", "the disk is full"],
        _absent("full/m.json"),
        full_disk=True,
    ),
    Row(
        "dataset info, the cache on a full disk",
        "dataset",
        ["info", "d.npz", "--cache-dir", "full/c"],
        ["cannot write", "the disk is full; free space or choose another --cache-dir"],
        full_disk=True,
    ),
    Row(
        "dataset info, the cache's space cannot be reserved (injected)",
        "dataset",
        ["info", "d.npz", "--cache-dir", "c2"],
        ["res8.npy': the disk is full"],
        _absent("c2/d.npz"),
        inject="ENOSPC",
    ),
    Row(
        "generate on a read-only disk (injected)",
        "generate",
        ["--checkpoint", CK[2], "--out", "gen", "--device", "cpu"],
        ["cannot write", "grid.png': the file system is read-only"],
        _absent("gen/grid.png"),
        inject="EROFS",
    ),
    Row(
        "export --torchscript on a full disk (injected)",
        "export",
        ["--checkpoint", CK[2], "--torchscript", "g.pt"],
        ["cannot write 'g.pt': the disk is full"],
        _absent("g.pt"),
        inject="ENOSPC",
        slow=True,
    ),
    # hangs and bounds
    Row(
        "train --resume a checkpoint whose sampler position is negative",
        "train",
        ["--resume", "latest", "--out", "runs", "--name", "run", "--kimg", "0.016", "--no-progress", "--device", "cpu"],
        ["sampler state", "pos -3", "damaged"],
        _checkpoints_are(*map(os.path.basename, CK)),
        _tamper(CK[2], "sampler", pos=-3),
    ),
    Row(
        "train --kimg 1e308",
        "train",
        ["--data", "d.npz", *FAST, "--kimg", "1e308"],
        ["--kimg", "<= 1e+07", "'1e308'"],
        _no_new_entries,
    ),
    Row(
        "train --lod-training-kimg 1e308",
        "train",
        ["--data", "d.npz", *FAST, "--lod-training-kimg", "1e308"],
        ["--lod-training-kimg: must be 0 or a finite number"],
        _no_new_entries,
    ),
    Row(
        "train with FASTPGGAN_IMPL=junk",
        "train",
        ["--data", "d.npz", *FAST, "--out", "new"],
        ["FASTPGGAN_IMPL must be one of", "got 'junk'"],
        _no_new_entries,
        env={"FASTPGGAN_IMPL": "junk"},
    ),
    Row(
        "train with WORLD_SIZE=two",
        "train",
        ["--data", "d.npz", *FAST, "--out", "new"],
        ["environment variable WORLD_SIZE must be a whole number", "'two'"],
        _no_new_entries,
        env={"WORLD_SIZE": "two"},
    ),
    Row(
        "train with FASTPGGAN_TUNE=yes",
        "train",
        ["--data", "d.npz", *FAST, "--out", "new"],
        ["FASTPGGAN_TUNE must be 0 or 1"],
        _no_new_entries,
        env={"FASTPGGAN_TUNE": "yes"},
    ),
    Row(
        "train --minibatch 100000000",
        "train",
        ["--data", "d.npz", *FAST, "--minibatch", "100000000", "--out", "new"],
        ["100000000 images per forward pass at 4x4 need at least", "lower --minibatch"],
        _absent("new"),
    ),
    Row(
        "train --metrics msssim on a 1-image dataset",
        "train",
        ["--data", "one.npz", *FAST, "--metrics", "msssim", "--out", "new"],
        ["--metrics compares at least 2 images", "'one.npz' has 1"],
        _absent("new"),
        lambda root: tiny_npz(os.path.join(root, "one.npz"), n=1),
    ),
    Row(
        "generate --seeds 0-99999 --interp 10000",
        "generate",
        ["--checkpoint", CK[2], "--seeds", "0-99999", "--interp", "10000", "--out", "gen", "--device", "cpu"],
        ["make 1000090001 images", "more than 100000", "--force"],
        _absent("gen"),
    ),
    Row(
        "generate --seeds 0-99999 --interp 10000 --force",
        "generate",
        [
            "--checkpoint",
            CK[2],
            "--seeds",
            "0-99999",
            "--interp",
            "10000",
            "--out",
            "gen",
            "--device",
            "cpu",
            "--force",
        ],
        ["GiB of memory and this machine has"],
        _absent("gen"),
    ),
    # a device, pipe or socket is never replaced (as root, the rename once replaced /dev/full itself)
    Row(
        "export --torchscript onto a named pipe, --force",
        "export",
        ["--checkpoint", CK[2], "--torchscript", "pipe", "--force"],
        ["--torchscript 'pipe' is not a regular file"],
        lambda root, template: os.path.isfile(os.path.join(root, "pipe")) and pytest.fail("the pipe was replaced"),
        lambda root: os.mkfifo(os.path.join(root, "pipe")),
    ),
    # --cache-dir or FASTPGGAN_CACHE naming a file
    Row(
        "dataset info --cache-dir is a file",
        "dataset",
        ["info", "d.npz", "--cache-dir", "d.npz"],
        ["cannot write 'd.npz'", "is a file, not a folder", "--cache-dir"],
        _no_new_entries,
    ),
    Row(
        "train with FASTPGGAN_CACHE a file",
        "train",
        ["--data", "d.npz", *FAST, "--out", "new"],
        ["cannot write", "d.npz", "is a file, not a folder"],
        _absent("new"),
        env={"FASTPGGAN_CACHE": "d.npz"},
    ),
    Row(
        "tune with FASTPGGAN_CACHE a file",
        "tune",
        ["--resolution", "4", "--device", "cpu"],
        ["the tune cache (FASTPGGAN_CACHE)", "d.npz/tune", "is a file, not a folder"],
        _no_new_entries,
        env={"FASTPGGAN_CACHE": "d.npz"},
    ),
    Row(
        "selftest with FASTPGGAN_CACHE a file",
        "selftest",
        ["--out", "st", "--device", "cpu"],
        ["the tune cache (FASTPGGAN_CACHE)", "is a file, not a folder"],
        _no_new_entries,
        env={"FASTPGGAN_CACHE": "d.npz"},
    ),
    # silently wrong once; now one line each
    Row(
        "generate --seeds=-3-5",
        "generate",
        ["--checkpoint", CK[2], "--seeds=-3-5", "--out", "gen"],
        ["--seeds are whole numbers >= 0", "'-3-5'"],
        _absent("gen"),
    ),
    Row(
        "generate --res 0",
        "generate",
        ["--checkpoint", CK[2], "--res", "0", "--out", "gen", "--device", "cpu"],
        ["--res must be a power of two", "got 0"],
        _absent("gen"),
    ),
    Row(
        "generate --class on an unconditional model",
        "generate",
        ["--checkpoint", CK[2], "--class", "7", "--out", "gen", "--device", "cpu"],
        ["--class picks a label of a conditional model", "is unconditional"],
        _absent("gen"),
    ),
    Row(
        "generate --gif without --interp",
        "generate",
        ["--checkpoint", CK[2], "--gif", "--out", "gen"],
        ["--gif writes the --interp frames", "add --interp"],
        _absent("gen"),
    ),
    Row(
        "generate --no-grid alone",
        "generate",
        ["--checkpoint", CK[2], "--no-grid", "--out", "gen"],
        ["leaves nothing to write"],
        _absent("gen"),
    ),
    Row(
        "generate --interp with one seed",
        "generate",
        ["--checkpoint", CK[2], "--seeds", "3", "--interp", "4", "--out", "gen"],
        ["--interp needs at least two seeds"],
        _absent("gen"),
    ),
    Row(
        "export --res 0",
        "export",
        ["--checkpoint", CK[2], "--torchscript", "g.pt", "--res", "0"],
        ["--res must be a power of two", "got 0"],
        _absent("g.pt"),
    ),
    Row(
        "export --opset without --onnx",
        "export",
        ["--checkpoint", CK[2], "--torchscript", "g.pt", "--opset", "20"],
        ["--opset sets the ONNX file's opset; add --onnx"],
        _absent("g.pt"),
    ),
    Row(
        "export --opset 99",
        "export",
        ["--checkpoint", CK[2], "--onnx", "g.onnx", "--opset", "99"],
        ["--opset 99 is newer than the installed onnx knows"],
        _absent("g.onnx"),
    ),
    Row(
        "train: a write on a full disk (injected)",
        "train",
        ["--resume", "latest", "--out", "runs", "--name", "run", "--kimg", "0.016", "--no-progress", "--device", "cpu"],
        ["the disk is full; the last intact checkpoint is", "checkpoint_000000.012.pt", "then continue with --resume"],
        _all(_loads(*CK), _checkpoints_are(*map(os.path.basename, CK))),
        inject="ENOSPC",
        slow=True,
        may_change=(os.path.join(RUN, "log.jsonl"),),
    ),
]


def _bounded():
    """A row's process may not grow past 4 GiB of data (a tiny run needs far less): a row that would grow without
    bound fails instead of taking the machine down."""
    resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))


def _fill(folder):
    """Mount a tmpfs at `folder` and fill it (or skip: mounting needs root and a container that allows it)."""
    os.makedirs(folder)
    if os.geteuid() != 0:
        pytest.skip("mounting a full tmpfs needs root; the injected rows cover a full disk")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the injected rows cover a full disk")
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("row", [pytest.param(r, id=r.name, marks=[pytest.mark.slow] if r.slow else []) for r in ROWS])
def test_fault(row, run_template, tmp_path):
    shutil.copytree(run_template, tmp_path, dirs_exist_ok=True)
    root = str(tmp_path)
    row.setup(root)
    full = os.path.join(root, "full")
    if row.full_disk:
        _fill(full)
    try:
        _run_row(row, root, run_template)
    finally:
        if row.full_disk:
            subprocess.run(["umount", full], check=True)


def _run_row(row, root, run_template):
    before = {
        p: _digest(p)
        for p in glob.glob(os.path.join(root, "**"), recursive=True)
        if os.path.isfile(p) and not p.startswith(os.path.join(root, "cache"))
    }
    argv = [os.path.join(HERE, "inject_fault.py"), row.inject] if row.inject else ["-m"]
    r = subprocess.run(
        [sys.executable, *argv, (f"fastpggan.{row.command}" if not row.inject else row.command), *row.args],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=240,
        preexec_fn=_bounded,
        env={**os.environ, "FASTPGGAN_CACHE": os.path.join(root, "cache"), **row.env},
    )
    if row.error is None:
        succeeded(r)
    else:
        one_line_error(r, *row.error)
        changed = [
            p
            for p, d in before.items()
            if (not os.path.exists(p) or _digest(p) != d) and os.path.relpath(p, root) not in row.may_change
        ]
        assert not changed, f"a refused command changed or removed {changed}"
    row.after(root, str(run_template))
    assert not glob.glob(os.path.join(root, "**", "*.tmp-*"), recursive=True)
