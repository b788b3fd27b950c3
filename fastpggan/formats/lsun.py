"""LSUN's lmdb databases (https://github.com/fyu/lsun: `<category>_train_lmdb/` holding data.mdb), as official
dataset_tool.py create_lsun reads them (L402-431): the values in key order, each an encoded image (webp or jpeg),
the centre square cropped and resized to the resolution with Lanczos (PIL ANTIALIAS), RGB, until `max_images`
have been added; an image that fails is reported and skipped.

The database is opened read-only and without locking (lock.mdb is neither read nor created), so it may sit on a
read-only disk and be read by several runs at once. Values are decoded with Pillow within images.decode's bounds.
Official create_lsun decodes with OpenCV first and Pillow as its fallback; the two agree on webp, and on jpeg up
to the decoder's rounding.
"""

import os
from typing import Iterator, Tuple

import numpy as np

from .. import images
from ..errors import UserError

DEFAULT_RESOLUTION = 256  # create_lsun's default


def is_lmdb(path: str) -> bool:
    """A folder holding data.mdb, or a data.mdb file."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "data.mdb"))
    return os.path.basename(path) == "data.mdb"


def data_file(path: str) -> str:
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def open_env(path: str):
    """The lmdb environment of `path`, read-only, unlocked."""
    try:
        import lmdb
    except ImportError:
        raise UserError("reading LSUN lmdb databases needs the lmdb package: run `pip install lmdb`") from None
    try:
        return lmdb.open(
            path, subdir=os.path.isdir(path), readonly=True, lock=False, readahead=False, max_readers=1, meminit=False
        )
    except lmdb.Error as e:
        raise UserError(f"cannot open '{path}' as an lmdb database ({e})") from None


def count(path: str) -> int:
    """The number of entries in the database."""
    env = open_env(path)
    try:
        return int(env.stat()["entries"])
    finally:
        env.close()


def values(path: str) -> Iterator[Tuple[str, bytes]]:
    """(key, value) of every entry in key order, the key as text."""
    import lmdb

    env = open_env(path)
    try:
        with env.begin(write=False, buffers=False) as txn:
            for key, value in txn.cursor():
                yield key.decode("utf-8", "replace"), value
    except lmdb.Error as e:
        raise UserError(f"'{path}' is a damaged lmdb database ({e})") from None
    finally:
        env.close()


def lsun_square(img, resolution: int) -> np.ndarray:
    """A decoded PIL image as create_lsun makes it (L421-426): RGB, the centre min(H, W) square cropped with
    create_lsun's offsets ((H - crop) // 2, (W - crop) // 2), then resized to `resolution`^2 with Lanczos, larger
    or smaller. Returns uint8 (3, resolution, resolution)."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    crop = min(w, h)
    img = img.crop(((w - crop) // 2, (h - crop) // 2, (w + crop) // 2, (h + crop) // 2))
    img = img.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_value(value: bytes, resolution: int) -> np.ndarray:
    """One LSUN value as uint8 (3, resolution, resolution); ValueError/OSError when it cannot be decoded."""
    return lsun_square(images.decode(value), resolution)
