"""User-facing errors: one clear line, no traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, unusable data or checkpoint). Printed as one line."""


def cli_entry(fn):
    """Wrap a CLI main: a UserError prints `error: ...` on stderr and exits with status 2; a Ctrl-C outside the
    training loop (which handles its own) prints `interrupted` and exits with status 130."""
    @functools.wraps(fn)
    def wrapper(argv=None):
        try:
            return fn(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    return wrapper
