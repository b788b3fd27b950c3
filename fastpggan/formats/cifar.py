"""CIFAR-10's python batches (https://www.cs.toronto.edu/~kriz/cifar.html): the folder `cifar-10-batches-py/`
or the archive `cifar-10-python.tar.gz` as downloaded, read as official dataset_tool.py create_cifar10 reads them
(L326-341): `data_batch_1` to `data_batch_5` in that order, each a pickled dict whose `data` is uint8 (10000, 3072)
in C, H, W order and `labels` a list of class indices.

A batch is a pickle, and a pickle is code: it is read by safe_pickle with only numpy's array reconstruction (and
latin1 `_codecs.encode`, which Python 3 pickles of bytes need) allowed. The archive is read member by member,
regular files only, each within MAX_BATCH_BYTES; nothing is extracted to disk.
"""

import io
import os
import tarfile
from typing import Callable, List, Tuple

import numpy as np

from ..errors import UserError
from . import safe_pickle

BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
FOLDER = "cifar-10-batches-py"
MAX_BATCH_BYTES = 1 << 28  # a real batch is 31 MB
_ALLOWED = {**safe_pickle.NUMPY_ARRAYS, **safe_pickle.LATIN1_BYTES}


def is_archive(path: str) -> bool:
    return path.lower().endswith((".tar.gz", ".tgz", ".tar"))


def batch_folder(path: str) -> str:
    """The folder holding data_batch_1, `path` itself or its cifar-10-batches-py/; '' if neither."""
    for d in (path, os.path.join(path, FOLDER)):
        if os.path.isfile(os.path.join(d, BATCHES[0])):
            return d
    return ""


def parse_batch(data: bytes, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """One batch's pickle bytes as (uint8 (n, 3, 32, 32), int64 (n,)); one line naming `where` if it is not one."""
    try:
        obj = safe_pickle.load(io.BytesIO(data), _ALLOWED, encoding="latin1")
    except safe_pickle.Refused as e:
        raise UserError(
            f"{where} is not a CIFAR-10 batch: its pickle needs {e}, and only numpy arrays may be "
            "loaded from one (nothing it names was run)"
        ) from None
    except safe_pickle.LOAD_ERRORS as e:
        raise UserError(f"{where} is truncated or corrupt ({type(e).__name__}: {str(e)[:120]})") from None
    if isinstance(obj, dict):
        obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        raise UserError(f"{where} is not a CIFAR-10 batch: it is not a dict with 'data' and 'labels'")
    x, y = obj["data"], obj["labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise UserError(
            f"{where}: 'data' must be uint8 (n, 3072), got "
            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
        )
    try:
        y = np.asarray(y)
    except (ValueError, TypeError):
        y = np.asarray([None])
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise UserError(f"{where}: 'labels' must be {x.shape[0]} integers, got {y.dtype} {y.shape}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _folder_reader(folder) -> Callable[[str], bytes]:
    def read(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise UserError(f"'{folder}' has no {name}: CIFAR-10 needs data_batch_1 to data_batch_5")
        if os.path.getsize(path) > MAX_BATCH_BYTES:
            raise UserError(
                f"'{path}' is {os.path.getsize(path)} bytes, over the bound of {MAX_BATCH_BYTES} for one batch"
            )
        with open(path, "rb") as f:
            return f.read()

    return read


def load(path: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """The 50000 training images of a CIFAR-10 folder or archive.

    Args:
        path: `cifar-10-batches-py/` (or the folder holding it), or `cifar-10-python.tar.gz`.

    Returns:
        (uint8 (N, 3, 32, 32), int64 labels (N,), the batch names read), batches 1 to 5 in order.
    """
    if not is_archive(path):
        folder = batch_folder(path)
        if not folder:
            raise UserError(f"'{path}' holds no CIFAR-10 data_batch_1 (nor {FOLDER}/data_batch_1)")
        return _load_batches(_folder_reader(folder), lambda n: f"'{os.path.join(folder, n)}'")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {}
            for m in tar:  # one pass over the (compressed) stream's headers, nothing extracted
                base = m.name.rsplit("/", 1)[-1]
                if base in BATCHES and base not in members:
                    members[base] = m
                    if len(members) == len(BATCHES):
                        break

            def read(name):
                m = members.get(name)
                if m is None or not m.isfile():
                    raise UserError(
                        f"'{path}' has no regular file {FOLDER}/{name}: CIFAR-10 needs data_batch_1 to data_batch_5"
                    )
                if m.size > MAX_BATCH_BYTES:
                    raise UserError(
                        f"'{path}': {m.name} declares {m.size} bytes, over the bound of {MAX_BATCH_BYTES} for one batch"
                    )
                return tar.extractfile(m).read()

            return _load_batches(read, lambda n: f"'{path}' member {members[n].name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot read '{path}' as a tar archive ({e})") from None


def _load_batches(read, where):
    xs, ys = [], []
    for name in BATCHES:
        x, y = parse_batch(read(name), where(name))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys), list(BATCHES)
