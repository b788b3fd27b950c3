"""What a --data value names, opened as a source of images: a folder of image files, a zip, a .npy/.npz array, a
built-in dataset, an official TFRecords folder, an LSUN lmdb database, CIFAR-10 python batches (folder or
.tar.gz), or MNIST idx files (folder or file, gz or plain). fastpggan.data caches a source's levels.

A source is one of three kinds: an in-memory uint8 array (arrays, built-ins, CIFAR-10, MNIST), encoded images
decoded one by one with Pillow (folders, zips, LSUN), or an official dataset's levels, one file per resolution
(TFRecords). Its fingerprint keys the cache: the file bytes of a single file up to FINGERPRINT_BYTES; names,
sizes and modification times for folders and larger files, so a 90 GB dataset is not hashed at each start.

Bounds (README "Robustness"): only regular files are read (symlinks to them are followed; loops, dangling links,
FIFOs and devices are listed once and ignored); an image file, zip member or lmdb value over
images.MAX_FILE_BYTES, or a decoded image over images.MAX_IMAGE_PIXELS, counts as corrupt; a zip whose images
declare more than MAX_ZIP_RATIO times the archive's size uncompressed is refused. Pickles (CIFAR-10) load numpy
arrays only.
"""

import hashlib
import os
import stat
import zipfile
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from . import builtin_data, images
from .errors import UserError
from .formats import cifar, idx, lsun, tfrecords
from .images import to_square_array

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_ZIP_RATIO = 100  # images in a zip are already compressed; a bomb declares 1000x its archive's size
MAX_CLASSES = 1 << 16
FINGERPRINT_BYTES = 1 << 30


class Source:
    """Images to cache, with their labels.

    Args:
        name: names the cache folder and the run (`runs/<name>-<resolution>`).
        kind: "folder", "zip", "array", "builtin", "tfrecords", "lsun", "cifar10" or "mnist-idx".
        fingerprint: changes when the data does.
        array: uint8 (N, C, H, W), for in-memory sources.
        entries: for encoded sources, a function giving (name, read) per image in order, read() its bytes.
        count: how many entries there are.
        square: (PIL image, channels, resolution) -> uint8 (C, R, R), or None when it is too small.
        header: name -> a file object Image.open can read the header from, to decide the channel count; None
            when `channels` is fixed.
        channels: 1 or 3 when the format fixes it.
        levels: the official TFRecords folder, for level sources.
        labels: int64 (count,) class indices, or None.
        default_resolution: the resolution used when none is asked for; None: the largest the images allow.
        ignored: entries of a folder that are not readable regular files, with the reason.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        fingerprint: str,
        *,
        array=None,
        entries=None,
        count=None,
        square=to_square_array,
        header=None,
        channels=None,
        levels=None,
        labels=None,
        default_resolution=None,
        ignored=(),
    ):
        self.name, self.kind, self.fingerprint = name, kind, fingerprint
        self.array, self.entries, self.square, self.header, self.levels = array, entries, square, header, levels
        self.count = array.shape[0] if array is not None else levels.count if levels is not None else count
        self.channels = array.shape[1] if array is not None else levels.num_channels if levels is not None else channels
        self.labels, self.default_resolution, self.ignored = labels, default_resolution, ignored


def hash_file(h, path):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)


def fingerprint(*paths: str) -> str:
    """sha256 of small files' bytes, or of large ones' name, size and modification time."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        if st.st_size <= FINGERPRINT_BYTES:
            hash_file(h, p)
        else:
            h.update(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _labels_from_dirs(relpaths):
    """Class labels from the first folder level, when every image sits in one of 2 or more class folders."""
    tops = [p.replace("\\", "/").split("/")[0] if "/" in p.replace("\\", "/") else None for p in relpaths]
    if None in tops or len(set(tops)) < 2:
        return None
    classes = sorted(set(tops))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[t] for t in tops], dtype=np.int64)


def check_labels(raw, n: int, where: str) -> np.ndarray:
    """Class labels as int64 (n,): class indices (integers, or whole floats) or one-hot rows (n, K), the official
    dataset_tool's form. Negative, fractional, non-finite or over-large labels are refused in one line."""
    lab = np.asarray(raw)
    if lab.dtype.kind not in "iubf":
        raise UserError(f"{where}: labels must be integer class indices, got dtype {lab.dtype}")
    if lab.dtype.kind == "f" and not np.isfinite(lab).all():
        raise UserError(f"{where}: labels contain NaN or inf")
    if lab.ndim == 2 and lab.shape[1] > 1:
        if not (np.isin(lab, (0, 1)).all() and (lab.sum(1) == 1).all()):
            raise UserError(f"{where}: 2-D labels must be one-hot rows (one 1 per row), got shape {lab.shape}")
        lab = lab.argmax(1)
    lab = lab.reshape(-1)
    if lab.dtype.kind == "f" and (lab != np.round(lab)).any():
        raise UserError(
            f"{where}: labels must be whole class indices, and some are fractional (first "
            f"{lab[lab != np.round(lab)][0]:g}); store one integer class per image"
        )
    if lab.shape[0] != n:
        raise UserError(f"{where}: {lab.shape[0]} labels for {n} images")
    if n and (lab.min() < 0 or lab.max() >= MAX_CLASSES):
        raise UserError(
            f"{where}: labels must be class indices in [0, {MAX_CLASSES}), got values from "
            f"{lab.min():g} to {lab.max():g}"
        )
    return lab.astype(np.int64)


def quantize(x):
    return np.rint(x).clip(0, 255).astype(np.uint8)


def _array_source(path):
    try:
        obj = np.load(path, allow_pickle=False)
    except Exception as e:
        raise UserError(f"cannot read {path} as a numpy array ({e})") from None
    labels = None
    if isinstance(obj, np.lib.npyio.NpzFile):
        keys = obj.files
        key = next((k for k in ("images", "x", "arr_0") if k in keys), keys[0] if keys else None)
        if key is None:
            raise UserError(f"{path} holds no arrays")
        lkey = next((k for k in ("labels", "y") if k in keys), None)
        try:
            arr = obj[key]
            labels = obj[lkey] if lkey else None
        except Exception as e:  # object arrays need pickle, which is not allowed
            raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}; store plain numeric arrays") from None
    else:
        arr = obj
    if arr.dtype != np.uint8:
        raise UserError(f"{path}: expected a uint8 image array, got {arr.dtype}; convert it with .astype(np.uint8)")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3, 4) or arr.shape[0] == 0:
        raise UserError(
            f"{path}: expected uint8 images shaped (N, H, W), (N, H, W, C) or (N, C, H, W) with C in "
            f"1/3/4, got {arr.shape}"
        )
    if arr.shape[1] == 4:
        arr = quantize(arr[:, :3].astype(np.float32) * (arr[:, 3:4].astype(np.float32) / 255.0))
    if labels is not None:
        labels = check_labels(labels, arr.shape[0], path)
    return Source(os.path.basename(path), "array", fingerprint(path), array=arr, labels=labels)


def _read_regular(path):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > images.MAX_FILE_BYTES:
            raise ValueError(images.too_big(size))
        return f.read(images.MAX_FILE_BYTES + 1)


def _folder_source(spec, path):
    """Image files under `path`, recursively: regular files only (symlinks to them are followed)."""
    found, ignored = [], []

    def unreadable(e):  # a subfolder os.walk cannot list
        ignored.append(f"{os.path.relpath(e.filename, path)}{os.sep} ({e.strerror})")

    for d, _, fs in os.walk(path, onerror=unreadable):
        for f in fs:
            if not f.lower().endswith(IMAGE_EXTS):
                continue
            r = os.path.relpath(os.path.join(d, f), path)
            try:
                st = os.stat(os.path.join(path, r))  # a symlink loop or a dangling link raises here
            except OSError as e:
                ignored.append(f"{r} ({e.strerror})")
                continue
            if not stat.S_ISREG(st.st_mode):
                ignored.append(f"{r} (not a regular file)")
                continue
            found.append((r, st))
    found.sort(key=lambda e: e[0])
    rel, h = [r for r, _ in found], hashlib.sha256()
    for r, st in found:
        h.update(f"{r}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    ignored.sort()
    if not rel:
        raise UserError(
            f"data folder '{spec}' contains no images ({', '.join(IMAGE_EXTS)}, searched "
            "recursively)" + (f"; ignored {ignored[0]}" if ignored else "")
        )

    def entries():
        return ((r, lambda r=r: _read_regular(os.path.join(path, r))) for r in rel)

    return Source(
        os.path.basename(os.path.normpath(path)),
        "folder",
        h.hexdigest(),
        entries=entries,
        count=len(rel),
        labels=_labels_from_dirs(rel),
        header=lambda r: open(os.path.join(path, r), "rb"),
        ignored=ignored,
    )


def _zip_source(spec, path):
    """Image members of a zip, bounded: each member's declared size (which zipfile enforces while reading) and
    their total against the archive's size."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"'{spec}' is not a readable zip file ({e})") from None
    infos = {i.filename: i for i in zf.infolist() if not i.is_dir() and i.filename.lower().endswith(IMAGE_EXTS)}
    rel = sorted(infos)
    if not rel:
        raise UserError(f"zip '{spec}' contains no images ({', '.join(IMAGE_EXTS)})")
    declared, archive = sum(i.file_size for i in infos.values()), os.path.getsize(path)
    if declared > MAX_ZIP_RATIO * archive + images.MAX_FILE_BYTES:
        raise UserError(
            f"zip '{spec}' declares {declared / 2**30:.1f} GiB of images in a "
            f"{archive / 2**20:.1f} MiB archive (over {MAX_ZIP_RATIO}x): refusing a likely zip bomb; "
            "unpack it yourself and pass the folder"
        )

    def read(name):
        size = infos[name].file_size
        if size > images.MAX_FILE_BYTES:
            raise ValueError(images.too_big(size))
        with zf.open(name) as f:
            return f.read(images.MAX_FILE_BYTES + 1)

    def entries():
        return ((r, lambda r=r: read(r)) for r in rel)

    return Source(
        os.path.basename(path),
        "zip",
        fingerprint(path),
        entries=entries,
        count=len(rel),
        labels=_labels_from_dirs(rel),
        header=zf.open,
    )


def _builtin_source(spec):
    arr, labels, files = builtin_data.BUILTINS[spec]()
    h = hashlib.sha256(spec.encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return Source(spec, "builtin", h.hexdigest(), array=arr, labels=labels)


def _tfrecords_source(path):
    folder = tfrecords.Folder(path)
    files = list(folder.files.values()) + ([folder.labels_file] if folder.labels_file else [])
    h = hashlib.sha256()
    for p in files:  # stat only: official datasets run to tens of GB
        st = os.stat(p)
        h.update(f"{os.path.basename(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    raw = folder.read_labels()
    labels = check_labels(raw, folder.count, folder.labels_file) if raw is not None else None
    return Source(os.path.basename(os.path.abspath(path)), "tfrecords", h.hexdigest(), levels=folder, labels=labels)


def _lsun_source(path):
    data = lsun.data_file(path)
    st = os.stat(data)
    h = hashlib.sha256(f"{os.path.abspath(data)}:{st.st_size}:{st.st_mtime_ns}".encode())
    count = lsun.count(path)
    if count == 0:
        raise UserError(f"lmdb database '{path}' is empty")

    def square(img, channels, resolution):
        return lsun.lsun_square(img, resolution)

    def entries() -> Iterator[Tuple[str, Callable[[], bytes]]]:
        return ((k, lambda v=v: v) for k, v in lsun.values(path))

    name = os.path.basename(os.path.dirname(os.path.abspath(data)))  # <category>_train_lmdb
    return Source(
        name,
        "lsun",
        h.hexdigest(),
        entries=entries,
        count=count,
        square=square,
        channels=3,
        default_resolution=lsun.DEFAULT_RESOLUTION,
    )


def _cifar_source(path):
    x, y, names = cifar.load(path)
    files = [path] if cifar.is_archive(path) else [os.path.join(cifar.batch_folder(path), n) for n in names]
    return Source("cifar10", "cifar10", fingerprint(*files), array=x, labels=y)


def _mnist_source(path):
    x, y, files = idx.load_mnist_files(path)
    labels = check_labels(y, x.shape[0], files[1]) if y is not None else None
    name = os.path.basename(os.path.normpath(path)).split(".")[0].replace("-images-idx3-ubyte", "")
    return Source(name, "mnist-idx", fingerprint(*files), array=x, labels=labels)


def open_source(spec: Optional[str]) -> Source:
    """Resolve a --data value to a Source: an existing path first (its format detected from what it holds), then
    a built-in name."""
    if spec is None:
        spec = builtin_data.DEFAULT_DATASET
    path = os.path.expanduser(str(spec))
    if not os.path.exists(path):
        if spec in builtin_data.BUILTINS:
            return _builtin_source(spec)
        raise UserError(
            f"data path '{spec}' does not exist; give a folder of images, a .zip, a .npy/.npz array, an "
            "official TFRecords folder, an LSUN lmdb folder, CIFAR-10 batches or MNIST idx files, or a "
            f"built-in dataset: {', '.join(builtin_data.BUILTINS)}"
        )
    if os.path.isdir(path):
        if any(f.endswith(".tfrecords") for f in os.listdir(path)):
            return _tfrecords_source(path)
        if lsun.is_lmdb(path):
            return _lsun_source(path)
        if cifar.batch_folder(path):
            return _cifar_source(path)
        if idx.training_images(path):
            return _mnist_source(path)
        return _folder_source(spec, path)
    lower = path.lower()
    if os.path.getsize(path) == 0:
        raise UserError(f"data file '{spec}' is empty")
    if lower.endswith(".zip"):
        return _zip_source(spec, path)
    if lower.endswith((".npy", ".npz")):
        return _array_source(path)
    if cifar.is_archive(path):
        return _cifar_source(path)
    if idx.is_idx_images(path):
        return _mnist_source(path)
    if lsun.is_lmdb(path):
        return _lsun_source(path)
    if lower.endswith(".tfrecords"):
        raise UserError(f"'{spec}' is one file of an official dataset: pass its folder, which holds every resolution")
    raise UserError(
        f"don't know how to read '{spec}': give a folder of images, a .zip, a .npy/.npz array, an "
        "official TFRecords folder, an LSUN lmdb folder, CIFAR-10 batches (folder or .tar.gz) or MNIST "
        "idx files"
    )
