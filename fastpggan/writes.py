"""One way to write a file: atomically (a temporary beside it, then a rename, so a reader, a kill or a full disk
sees the old file or the whole new one), parent folders created, and every OSError of the write turned into one
UserError line that names the path and what to do.

Also the checks a command makes before its work: an explicit output that exists is refused without --force, one
that is the command's own input always (`check_output`), and a folder that cannot take the output is found out
before minutes of work, not after (`check_writable`).
"""

import errno
import os
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import UserError, is_disk_full

# errno -> what went wrong, what to do
_WHY = {
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you may write to"),
    errno.EPERM: ("permission denied", "choose a folder you may write to"),
    errno.EISDIR: ("it is a folder", "give a file path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EEXIST: ("a part of the path is a file, not a folder", "check the path"),  # os.makedirs says EEXIST
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


class WriteFailed(UserError):
    """A write that failed: one line naming `path`, saying `why` (the disk is full, read-only, ...) and what to do."""

    def __init__(self, path: str, why: str, todo: str, disk_full: bool = False):
        super().__init__(f"cannot write '{path}': {why}; {todo}")
        self.path, self.why, self.disk_full = path, why, disk_full


def explain(e: BaseException, path: str, hint: Optional[str] = None) -> WriteFailed:
    """The one-line error for failing to write `path` with `e` (`hint` replaces the default advice)."""
    full = is_disk_full(e)
    if full:
        why, todo = "the disk is full", "free space and try again"
    else:
        why, todo = _WHY.get(getattr(e, "errno", None), (getattr(e, "strerror", None) or str(e), "check the path"))
    return WriteFailed(path, why, hint or todo, disk_full=full)


def atomic(path: str, write: Callable[[str], None], hint: Optional[str] = None) -> None:
    """write(tmp) for a temporary path beside `path` (same folder, so the rename is atomic), fsync, rename it to
    `path`. Parent folders are created. An OSError (or torch.save's short write) is one UserError; nothing
    partial is left."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a folder", path)
        if os.path.exists(path) and not os.path.isfile(path):  # the rename would replace a device node
            raise WriteFailed(path, "it is not a regular file (a device, pipe or socket)", "give a file path")
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not is_disk_full(e):
            raise
        raise explain(e, path, hint) from None
    finally:
        if os.path.lexists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def write_npz(path: str, **arrays) -> None:
    """numpy.savez of `arrays` to `path`, atomically (see atomic); `path` keeps its name, .npz or not."""

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: savez would append .npz to a name
            np.savez(f, **arrays)

    atomic(path, write)


def reserve(path: str, offset: int, length: int) -> None:
    """Give bytes [offset, offset + length) of the existing file `path` their blocks on disk now
    (posix_fallocate, else by writing zeros), so that a full disk is an OSError here, not a SIGBUS at the first
    store into a memory-mapped page that has no block. The bytes must be zero (a fresh file's data). An OSError
    names `path`."""
    try:
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), offset, length)
                return
            except AttributeError:  # no posix_fallocate on this platform
                pass
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            f.seek(offset)
            chunk = bytes(1 << 20)
            for start in range(0, length, len(chunk)):
                f.write(chunk[: min(len(chunk), length - start)])
            f.flush()
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def write_text(path: str, text: str, hint: Optional[str] = None) -> None:
    """`text` to `path`, atomically (see atomic)."""

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic(path, write, hint)


def check_output(
    path: str,
    flag: str,
    force: bool,
    inputs: Sequence[Optional[str]] = (),
    force_flag: Optional[str] = "--force",
    folder_ok: bool = False,
) -> None:
    """Refuse, before any work, an output path that is one of the command's `inputs` (always), a folder (unless
    `folder_ok`), an existing file unless `force`, or one whose folder cannot be written (a missing folder is fine:
    the write creates it). `flag` names the option in the message; `force_flag` the option that allows
    overwriting (None: the command has none)."""
    refuse_inputs(path, flag, inputs)
    if os.path.exists(path):
        if os.path.isdir(path) and not folder_ok:
            raise UserError(f"{flag} '{path}' is a folder; give a file path")
        if not os.path.isdir(path) and not os.path.isfile(path):  # --force or not: the rename would replace it
            raise UserError(f"{flag} '{path}' is not a regular file (a device, pipe or socket); give a file path")
        if not force:
            todo = f"add {force_flag} to overwrite it, or choose" if force_flag else "remove it or choose"
            raise UserError(f"{flag} '{path}' exists; {todo} another path")
    check_writable(os.path.dirname(os.path.abspath(path)), flag)


def refuse_inputs(path: str, flag: str, inputs: Sequence[Optional[str]]) -> None:
    """Refuse an output path that is (the same file as) one of the command's `inputs`, --force or not."""
    if os.path.exists(path):
        for given in inputs:
            if given and os.path.exists(given) and os.path.samefile(given, path):
                raise UserError(f"{flag} '{path}' is one of this command's inputs; choose another path")


def check_folder(folder: str, flag: str) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be written into (it may not exist)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} '{folder}' is a file, not a folder; choose a folder")
    check_writable(folder, flag)


def check_writable(folder: str, flag: str) -> None:
    """Create `folder` if needed and a file in it, then remove both again: an output that cannot be written is
    one line before the work, not after it."""
    made, probe = [], os.path.join(folder, f".fastpggan-probe-{os.getpid()}")
    try:
        head = os.path.abspath(folder)
        while not os.path.exists(head):
            made.append(head)
            head = os.path.dirname(head)
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w") as f:
            f.write("x")
    except OSError as e:
        raise UserError(f"{flag}: {explain(e, folder)}") from None
    finally:
        if os.path.lexists(probe):
            os.remove(probe)
        for d in made:  # deepest first: leave no folder the command did not write into
            try:
                os.rmdir(d)
            except OSError:
                pass
