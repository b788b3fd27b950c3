"""The fault table (faults.py says what a row is and how it is checked), part 1: what is written, overwritten and
kept: evaluate's and every command's outputs, an output that is its own input, --keep, --resume of an older
checkpoint, a missing output folder."""

import os

import pytest
import torch

import official
from faults import (
    CK,
    EVAL,
    FAST,
    RUN,
    Row,
    _all,
    _checkpoints_are,
    _holds,
    _loads,
    _metrics_json,
    _no_new_entries,
    _selftest_report,
    _unchanged_log,
    _write,
    run_fault,
    run_template,  # noqa: F401  (a fixture)
)

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
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.name, marks=[pytest.mark.slow] if r.slow else []) for r in ROWS])
def test_fault(row, run_template, tmp_path):
    run_fault(row, run_template, tmp_path)
