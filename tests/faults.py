"""Helpers of the fault table (test_faults.py, test_faults_machine.py). The fault table: each row is a command
line run as a user would (a subprocess), the state it meets, what it
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

from fastpggan import checkpoint as ckpt
from fastpggan.ops import tune_cache
from hostile import FAST, cli, one_line_error, succeeded, tiny_npz

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


def run_fault(row, run_template, tmp_path):
    """Set up `row`'s state in tmp_path from the shared run, run its command, and check what it must answer
    and leave."""
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


def _edit(path, change):
    """Apply `change(state)` to checkpoint `path` (a damaged or hostile checkpoint the simple _tamper cannot make)."""

    def setup(root):
        state = torch.load(os.path.join(root, path), weights_only=True)
        change(state)
        torch.save(state, os.path.join(root, path))

    return setup
