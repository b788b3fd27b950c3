"""MNIST's idx files (http://yann.lecun.com/exdb/mnist/), gzip-compressed or plain, and official create_mnist's
padding.

An idx file is a 4-byte magic (0, 0, type, ndim), ndim big-endian uint32 sizes, then the values. MNIST images are
type 0x08 (uint8) with ndim 3, labels type 0x08 with ndim 1. The header is read first and exactly the bytes it
declares are read after it, so a gzip bomb never inflates past them.
"""

import gzip
import os
from typing import Optional, Tuple

import numpy as np

from ..errors import UserError

MAX_IDX_BYTES = 1 << 32  # 4 GiB of values: 60k 28x28 images are 47 MB


def _open(path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str, ndim: Optional[int] = None) -> np.ndarray:
    """The uint8 array of an idx file (gz or plain).

    Args:
        path: the file.
        ndim: the number of dimensions it must have (3 for images, 1 for labels), or None for any.

    Raises:
        UserError: one line naming the file, for a foreign, truncated or oversized file.
    """
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or not 1 <= head[3] <= 4:
                raise UserError(f"'{path}' is not an idx file (its magic is {head.hex() or 'missing'})")
            if head[2] != 0x08:
                raise UserError(
                    f"'{path}' holds idx type 0x{head[2]:02x}; only 0x08 (unsigned bytes, as MNIST's) is read"
                )
            if ndim is not None and head[3] != ndim:
                raise UserError(f"'{path}' has {head[3]} dimensions, expected {ndim}")
            raw = f.read(4 * head[3])
            if len(raw) < 4 * head[3]:
                raise UserError(f"'{path}' is truncated inside its header")
            dims = [int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in range(head[3])]
            size = int(np.prod(dims, dtype=np.int64))
            if size > MAX_IDX_BYTES:
                raise UserError(f"'{path}' declares {dims} values, over the bound of {MAX_IDX_BYTES} bytes")
            data = f.read(size + 1)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read '{path}' as an idx file ({e})") from None
    if len(data) != size:
        what = "truncated" if len(data) < size else "longer than its header says"
        raise UserError(
            f"'{path}' is {what}: its header declares {dims} = {size} bytes, and "
            f"{'only ' + str(len(data)) if len(data) < size else 'more'} follow"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def pad_to_power_of_two(x: np.ndarray) -> np.ndarray:
    """(..., H, W) zero-padded, centred, to the next power of two: 28x28 MNIST gets 2 pixels on every side, as
    official dataset_tool.py create_mnist does (L293, np.pad by (2, 2)). Sizes already a power of two pass
    unchanged; nothing is resized."""
    h, w = x.shape[-2:]
    side = 1 << (max(h, w) - 1).bit_length()
    if (h, w) == (side, side):
        return x
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros(x.shape[:-2] + (side, side), dtype=x.dtype)
    out[..., top : top + h, left : left + w] = x
    return out


def find_pair(path: str) -> Tuple[str, Optional[str]]:
    """(images, labels or None) for an idx images file or a folder holding MNIST's training files.

    A folder must hold `train-images-idx3-ubyte` (or `train-images.idx3-ubyte`), gz or plain, as create_mnist
    reads. The labels are the file of the same name with `labels-idx1` for `images-idx3`, gz or plain, beside it."""
    images = path
    if os.path.isdir(path):
        images = training_images(path)
        if images is None:
            raise UserError(f"'{path}' holds no train-images-idx3-ubyte[.gz]")
    folder, name = os.path.split(images)
    stem = name[:-3] if name.endswith(".gz") else name
    labels = stem.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    return images, (_first_file(folder, [labels]) if labels != stem else None)


def training_images(folder: str) -> Optional[str]:
    """MNIST's training images file in `folder`, as create_mnist names it (gz or plain), or None."""
    return _first_file(folder, ["train-images-idx3-ubyte", "train-images.idx3-ubyte"])


def _first_file(folder, names):
    paths = [os.path.join(folder, n + suffix) for n in names for suffix in (".gz", "")]
    return next((p for p in paths if os.path.isfile(p)), None)


def is_idx_images(path: str) -> bool:
    """A path that names an idx images file (`...-idx3-ubyte`, `.idx3-ubyte`, gz or not)."""
    name = os.path.basename(path).lower()
    return name.endswith(("idx3-ubyte", "idx3-ubyte.gz"))


def load_mnist_files(path: str) -> Tuple[np.ndarray, Optional[np.ndarray], list]:
    """MNIST-layout idx images (and labels, when found) as official create_mnist reads them: uint8
    (N, 1, H, W) padded to a power of two, labels as they are.

    Returns:
        (images, labels or None, the files read)."""
    images_path, labels_path = find_pair(path)
    x = read_idx(images_path, ndim=3)
    if x.shape[0] == 0 or min(x.shape[1:]) < 1:
        raise UserError(f"'{images_path}' holds no images ({x.shape})")
    y = None
    if labels_path:
        y = read_idx(labels_path, ndim=1)
        if y.shape[0] != x.shape[0]:
            raise UserError(f"'{labels_path}' holds {y.shape[0]} labels for the {x.shape[0]} images of '{images_path}'")
    return pad_to_power_of_two(x[:, None]), y, [p for p in (images_path, labels_path) if p]
