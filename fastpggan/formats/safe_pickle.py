"""Pickles read with the least power that reads them: only the globals a format needs may be loaded.

A pickle is a program: every global it names is looked up and may be called. `load` refuses any global outside
`allowed` when the pickle names it, before any object is built, so nothing a hostile file names ever runs.
"""

import codecs
import pickle
from typing import Any, BinaryIO, Callable, Dict, Tuple

import numpy as np

_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray

# What a pickled numpy array needs: numpy 1 writes numpy.core, numpy 2 numpy._core.
NUMPY_ARRAYS: Dict[Tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{
        (m, f): getattr(_multiarray, f)
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
        for f in ("_reconstruct", "scalar")
    },
}


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """`_codecs.encode` as protocol-2 pickles of bytes use it (Python 3 writing bytes for Python 2), latin1 only."""
    if encoding.replace("-", "").lower() not in ("latin1", "iso88591") or not isinstance(text, str):
        raise Refused(f"_codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1", errors)


LATIN1_BYTES = {("_codecs", "encode"): _latin1_encode}


class Refused(pickle.UnpicklingError):
    """The pickle names something outside the allowed set; the message is that name."""


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, allowed, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = allowed

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        raise Refused(f"persistent id {str(pid)[:80]!r}")


# What a corrupt or truncated pickle raises while loading (besides Refused).
LOAD_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    MemoryError,
    UnicodeDecodeError,
    OverflowError,
    RecursionError,
)


def load(file: BinaryIO, allowed: Dict[Tuple[str, str], Callable], encoding: str = "ASCII") -> Any:
    """Unpickle `file`, resolving only the globals in `allowed` ({(module, name): object}).

    Args:
        file: a binary file object positioned at the pickle.
        allowed: the globals the format needs, for example NUMPY_ARRAYS.
        encoding: how Python 2 strings are decoded ('latin1' for Python 2 pickles holding numpy arrays).

    Raises:
        Refused: naming the first global outside `allowed`; one of LOAD_ERRORS for a corrupt or truncated file.
    """
    return _Unpickler(file, allowed, encoding=encoding).load()
