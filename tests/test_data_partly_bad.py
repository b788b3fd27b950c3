"""Data that is partly bad is named, not fatal (issue 43, step 2): unreadable folders and files counted and named
in one line, images below the resolution skipped and counted, and a hard error only when none is usable."""

import os

import numpy as np
import pytest
from PIL import Image

from fastpggan.data import IGNORED_SHOWN, build_dataset
from fastpggan.errors import UserError


def _folder(root, sizes, sub=""):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(root, sub, f"{i:02d}.png")
        )
    return str(root)


def _build(path, tmp_path, **kw):
    lines = []
    ds = build_dataset(path, cache_dir=str(tmp_path / "cache"), progress=False, log=lines.append, **kw)
    return ds, lines


@pytest.mark.parametrize("resolution", [None, 16])
def test_a_thumbnail_first_is_skipped_and_counted_not_fatal(tmp_path, resolution):
    path = _folder(tmp_path / "d", [2] + [16] * 9)  # 00.png, the first in order, is 2x2
    ds, lines = _build(path, tmp_path, resolution=resolution)
    assert ds.resolution == 16 and len(ds) == 9
    assert any(
        "skipped 0 corrupt and 1 too-small images of 10 (first: 00.png is smaller than 16x16)" in x for x in lines
    )


def test_none_usable_is_one_error(tmp_path):
    path = _folder(tmp_path / "d", [8] * 3)
    with pytest.raises(UserError, match=r"no usable images in 'd': 3 smaller than 16x16, 0 corrupt"):
        _build(path, tmp_path, resolution=16)


def test_an_unreadable_subfolder_is_named_in_one_line(tmp_path, monkeypatch):
    path = _folder(tmp_path / "d", [8] * 4)
    _folder(tmp_path / "d", [8] * 4, sub="locked")
    real = os.scandir

    def scandir(p="."):  # what a folder without read permission does (root reads every folder: simulated)
        if os.path.basename(os.fspath(p)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    ds, lines = _build(path, tmp_path)
    assert len(ds) == 4
    said = [x for x in lines if "ignored" in x]
    assert said == [
        "data: ignored 1 entries of 'd' that are not readable regular files or folders: "
        f"locked{os.sep} (Permission denied)"
    ]


def test_many_unreadable_entries_name_the_first_few_and_count_the_rest(tmp_path):
    path = _folder(tmp_path / "d", [8] * 2)
    for i in range(IGNORED_SHOWN + 3):
        os.symlink(f"nowhere{i}.png", os.path.join(path, f"dangling{i}.png"))
    ds, lines = _build(path, tmp_path)
    said = [x for x in lines if "ignored" in x]
    assert len(ds) == 2 and len(said) == 1
    assert said[0].count("No such file or directory") == IGNORED_SHOWN and said[0].endswith("; and 3 more")
    assert said[0].startswith(f"data: ignored {IGNORED_SHOWN + 3} entries of 'd'")
