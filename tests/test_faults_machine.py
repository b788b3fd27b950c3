"""The fault table (faults.py says what a row is and how it is checked), part 2: the machine misbehaves or is
misused: a full disk, hangs and bounds, devices and pipes, a cache folder that is a file, and the cases that were
once silently wrong."""

import os

import pytest

from faults import (
    CK,
    EVAL,
    FAST,
    RUN,
    Row,
    _absent,
    _all,
    _checkpoints_are,
    _loads,
    _no_new_entries,
    _tamper,
    run_fault,
    run_template,  # noqa: F401  (a fixture)
    tiny_npz,
)

ROWS = [
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
        ["--resume", CK[2], "--kimg", "0.016", "--no-progress", "--device", "cpu"],
        ["is damaged: sampler.pos: expected int >= 0 (it is -3)"],
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
        ["--metrics compares at least 2 images", "one.npz' has 1"],
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


@pytest.mark.parametrize("row", [pytest.param(r, id=r.name, marks=[pytest.mark.slow] if r.slow else []) for r in ROWS])
def test_fault(row, run_template, tmp_path):
    run_fault(row, run_template, tmp_path)
