"""A run folder's housekeeping: one trainer at a time (a lock), no leftovers of killed writes, and a log that
restarts where a resumed checkpoint was written.

Standard library only, below the trainer; `train` uses it before the first step.
"""

import glob
import json
import os
import socket
import time
from typing import Callable, Optional

from .errors import UserError
from .writes import write_text

LOCK = ".lock"


class RunLock:
    """An exclusive lock on a run folder (flock on `<run>/.lock`), held until `release()` or the process ends;
    the kernel drops it when the process dies, so a kill -9 never leaves a stale lock."""

    def __init__(self, run_dir: str):
        self.path, self.file = os.path.join(run_dir, LOCK), None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one trainer per folder is then up to the user
            return
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(
                f"the run folder {run_dir} is in use by {holder}; wait for it to finish, or train "
                "into another folder (--name)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock
            self.file = None


def remove_partial_writes(run_dir: str, log: Callable = print) -> int:
    """Delete `*.tmp-PID` files other than this process's: checkpoint writes cut short by a kill. Call it while
    holding the RunLock, so that no other trainer can be writing them."""
    mine = f".tmp-{os.getpid()}"
    stale = [p for p in glob.glob(os.path.join(run_dir, "*.tmp-*")) if not p.endswith(mine)]
    for p in stale:
        os.remove(p)
    if stale:
        log(
            f"removed {len(stale)} unfinished file{'s' * (len(stale) > 1)} left by an interrupted write "
            f"({os.path.basename(stale[0])})"
        )
    return len(stale)


def rewind_log(run_dir: str, kimg: float, name: str = "log.jsonl") -> Optional[int]:
    """Keep only the records of log.jsonl up to `kimg` (those after it came from training past the checkpoint
    being resumed, and will be written again), and drop a torn last line. Atomic; returns records dropped."""
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        return None
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                keep = isinstance(rec, dict) and float(rec.get("kimg", 0)) <= kimg + 1e-9
            except (ValueError, TypeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        write_text(path, "".join(kept))
    return dropped
