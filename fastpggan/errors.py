"""User-facing errors: one clear line, no traceback. Standard library only; any module may import it."""

import argparse
import errno
import functools
import math
import os
import sys
from typing import Callable, Optional


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, unusable data or checkpoint). Printed as one line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default once: added as "(default: X)" where the help does not already say it, and left out
    where there is none (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (`error: ...`) with exit status 2, like every other user error,
    and whose help says each default once (HelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def number(
    kind: type = float, min: Optional[float] = None, above: Optional[float] = None, max: Optional[float] = None
) -> Callable[[str], float]:
    """An argparse `type=` for a finite int or float within bounds: min <= x, above < x, x <= max."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        bad = (
            not math.isfinite(value)
            or (min is not None and value < min)
            or (above is not None and value <= above)
            or (max is not None and value > max)
        )
        if bad:
            lo = f">= {min:g}" if min is not None else f"> {above:g}" if above is not None else ""
            hi = f"<= {max:g}" if max is not None else ""
            raise argparse.ArgumentTypeError(
                f"must be a finite number {' and '.join(s for s in (lo, hi) if s)}, got {text!r}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def env_flag(name: str, default: bool = False) -> bool:
    """The on/off environment variable `name`: 1 is on, 0 off, unset or empty `default`; anything else is one
    line."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise UserError(f"the environment variable {name} must be 0 or 1 (or unset), got {value!r}")
    return default if not value else value == "1"


def env_int(name: str, default: int, min: int) -> int:
    """The whole-number environment variable `name` (>= min), or `default` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < min:
        raise UserError(f"the environment variable {name} must be a whole number >= {min}, got {value!r}")
    return n


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(e: BaseException) -> bool:
    """An OSError for a full disk or quota, or torch.save's RuntimeError when its write came up short."""
    if isinstance(e, OSError):
        return e.errno in DISK_FULL
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "unexpected pos" in text or "No space left" in text or "file write failed" in text
    )


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
