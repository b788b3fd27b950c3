"""fastpggan.writes, in-process: every OSError of a write is one line naming the path, nothing partial is left,
and the checks before work refuse what they promise to. The command lines' rows are in tests/test_faults.py."""

import errno
import os

import pytest

from fastpggan import writes
from fastpggan.errors import UserError


@pytest.mark.parametrize(
    "code,why",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EDQUOT, "the disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EISDIR, "is a folder"),
        (errno.ENOTDIR, "is a file, not a folder"),
        (errno.EIO, "Input/output error"),
    ],
)
def test_a_failed_write_is_one_line_naming_the_path_and_leaves_nothing(tmp_path, code, why):
    target = tmp_path / "out.json"
    target.write_text("old")

    def fails(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(UserError) as e:
        writes.atomic(str(target), fails)
    line = str(e.value)
    assert "\n" not in line and f"cannot write '{target}'" in line and why in line, line
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_the_hint_replaces_the_advice_and_other_errors_pass_through(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="the disk is full; the last intact checkpoint is X$"):
        writes.atomic(str(tmp_path / "c.pt"), full, hint="the last intact checkpoint is X")

    def bug(tmp):
        raise RuntimeError("a bug, not a write")

    with pytest.raises(RuntimeError, match="a bug"):
        writes.atomic(str(tmp_path / "c.pt"), bug)
    assert os.listdir(tmp_path) == []


def test_writes_create_parents_and_replace_whole(tmp_path):
    path = tmp_path / "a" / "b" / "r.md"
    writes.write_text(str(path), "one")
    writes.write_text(str(path), "two")
    assert path.read_text() == "two" and os.listdir(path.parent) == ["r.md"]
    with pytest.raises(UserError, match="it is a folder"):
        writes.write_text(str(tmp_path / "a"), "x")


def test_check_output_refuses_inputs_always_existing_files_without_force_and_folders(tmp_path):
    data, out = tmp_path / "data.npz", tmp_path / "out.json"
    data.write_bytes(b"d")
    out.write_text("o")
    with pytest.raises(UserError, match="is one of this command's inputs"):
        writes.check_output(str(data), "--out", force=True, inputs=[str(data)])
    with pytest.raises(UserError, match="exists; add --force"):
        writes.check_output(str(out), "--out", force=False, inputs=[str(data)])
    writes.check_output(str(out), "--out", force=True, inputs=[str(data), None])
    with pytest.raises(UserError, match="is a folder"):
        writes.check_output(str(tmp_path), "--out", force=True)
    writes.check_output(str(tmp_path / "new" / "x.json"), "--out", force=False)
    assert sorted(os.listdir(tmp_path)) == ["data.npz", "out.json"]  # the probe made and removed "new"


def test_check_folder_refuses_a_file_and_an_unwritable_path(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        writes.check_folder(str(f), "--out")
    with pytest.raises(UserError, match=r"--out: cannot write .*is a file, not a folder"):
        writes.check_folder(str(f / "sub"), "--out")
    writes.check_folder(str(tmp_path / "fresh"), "--out")
    assert sorted(os.listdir(tmp_path)) == ["f"]


def _npy_with_zeros(path, n):
    import numpy as np

    mm = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.uint8, shape=(n,))
    return mm.offset, mm.nbytes, open(path, "rb").read(mm.offset)


def test_reserve_gives_a_sparse_file_its_blocks_and_keeps_its_header(tmp_path, monkeypatch):
    path = tmp_path / "a.npy"
    offset, nbytes, header = _npy_with_zeros(path, 1 << 20)
    before = os.stat(path).st_blocks
    writes.reserve(str(path), offset, nbytes)
    assert os.stat(path).st_blocks * 512 >= nbytes > before * 512  # sparse before, allocated after

    # where the file system has no fallocate, zeros are written instead; the header stays
    path2 = tmp_path / "b.npy"
    offset, nbytes, header = _npy_with_zeros(path2, 3 << 20 | 5)

    def unsupported(fd, off, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    writes.reserve(str(path2), offset, nbytes)
    data = path2.read_bytes()
    assert data[:offset] == header and len(data) == offset + nbytes and not any(data[offset:])
    assert os.stat(path2).st_blocks * 512 >= nbytes


def test_reserve_on_a_full_disk_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "c.npy"
    offset, nbytes, _ = _npy_with_zeros(path, 4096)

    def full(fd, off, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as e:
        writes.reserve(str(path), offset, nbytes)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert "the disk is full" in str(writes.explain(e.value, e.value.filename))


def test_an_unwritable_fid_cache_is_one_warning_and_the_statistics_still_come(tmp_path, monkeypatch):
    import torch

    from fastpggan.metrics import fid

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path / "a-file"))
    mu, sigma = torch.arange(3.0), torch.eye(3)
    with pytest.warns(UserWarning, match="FID statistics of the real images were not cached: cannot write"):
        got = fid.cached_real_statistics("k", lambda: (mu, sigma))
    assert torch.equal(got[0], mu) and torch.equal(got[1], sigma)
    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path / "cache"))  # and a writable one is read back
    fid.cached_real_statistics("k", lambda: (mu, sigma))
    again = fid.cached_real_statistics("k", lambda: pytest.fail("computed again instead of read from the cache"))
    assert torch.equal(again[0], mu) and torch.equal(again[1], sigma)


def test_a_device_or_pipe_is_never_replaced_by_a_rename(tmp_path):
    """A path like /dev/full exists and is not a regular file: the atomic rename would replace the device node
    itself (as root it did), so both the check before work and the write refuse it, --force or not."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="--out '.*pipe' is not a regular file"):
        writes.check_output(str(fifo), "--out", force=True)
    with pytest.raises(UserError, match="cannot write '.*pipe': it is not a regular file"):
        writes.write_text(str(fifo), "x")
    assert fifo.is_fifo() and sorted(os.listdir(tmp_path)) == ["pipe"]
