"""`python tests/inject_fault.py ERRNO COMMAND ARGS...`: run `python -m fastpggan.COMMAND ARGS...` with every file
write failing as a full (ERRNO=ENOSPC) or read-only (EROFS) disk would make it fail.

The fault table's rows for machines where no small file system can be mounted: writes.atomic fsyncs every file
it writes, and writes.reserve reserves every memory-mapped cache file, so failing os.fsync and
os.posix_fallocate reaches each write the commands make through fastpggan.writes.
"""

import errno
import os
import runpy
import sys


def _fail(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


if __name__ == "__main__":
    code = getattr(errno, sys.argv[1])
    os.fsync = os.posix_fallocate = _fail(code)
    command = sys.argv[2]
    sys.argv = [f"fastpggan.{command}"] + sys.argv[3:]
    runpy.run_module(f"fastpggan.{command}", run_name="__main__", alter_sys=True)
