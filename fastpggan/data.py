"""Datasets: image folders, zips, .npy/.npz arrays and built-in offline sets, cached once per resolution.

The cache holds one uint8 (N, C, R, R) copy per resolution from the full one down to 4x4, made by 2x2 box
downsampling of the float image with each level rounded to uint8, as the official dataset_tool.py does. It is
memory-mapped, keyed by a hash of the source (file bytes; for folders, names, sizes and modification times) and
the preprocessing, built in a temporary folder and renamed into place, so concurrent builds are safe.

Preprocessing: non-square images are centre-cropped; larger images are resized to the target with Lanczos;
16-bit grayscale is scaled to 8 bits; transparency is composited over black. A set whose images are all
grayscale stays 1 channel; if any image is colour the whole set is RGB (one line says so when they are mixed).
Images smaller than the target, or that fail to decode, are counted and skipped (or rejected with strict=True).

Bounds (README "Robustness"): only regular files are read (symlinks to them are followed; loops, dangling links,
FIFOs and devices are listed once and ignored); an image file or zip member over MAX_FILE_BYTES, or a decoded
image over MAX_IMAGE_PIXELS, counts as corrupt; a zip whose images declare more than MAX_ZIP_RATIO times the
archive's size uncompressed is refused. A cache that fails its checks on opening is rebuilt, with one line.
"""
import hashlib
import io
import json
import os
import shutil
import stat
import warnings
import zipfile
from typing import Callable, Optional

import numpy as np

from . import builtin_data
from .errors import UserError
from .images import channels_of, to_square_array
from .runtime import cache_root

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_VERSION = 2          # 2: 16-bit grayscale scaled, channel count decided by the whole set
MAX_FILE_BYTES = 1 << 28   # 256 MiB: an image file or zip member bigger than this is not a training image
MAX_IMAGE_PIXELS = 1 << 28  # 16384^2 decoded pixels (Pillow's own bound, set explicitly)
MAX_ZIP_RATIO = 100        # images in a zip are already compressed; a bomb declares 1000x its archive's size
MAX_CLASSES = 1 << 16


class BrokenCache(Exception):
    """A cache folder that fails its checks; it is rebuilt."""


def check_resolution(res, what="resolution"):
    if res is None:
        return None
    if not isinstance(res, int) or res < 4 or res & (res - 1):
        raise UserError(f"{what} must be a power of two and at least 4 (4, 8, 16, ...), got {res}")
    return res


def downsample_box(x):
    """2x2 box filter on float (..., H, W): the official dataset_tool's lod step."""
    return (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) * 0.25


def _quantize(x):
    return np.rint(x).clip(0, 255).astype(np.uint8)


class _Source:
    """A list of undecoded items (file paths or zip members) or an in-memory uint8 array."""

    def __init__(self, name, fingerprint, array=None, labels=None, items=None, opener=None, item_labels=None,
                 header=None, ignored=()):
        self.name, self.fingerprint, self.array, self.labels = name, fingerprint, array, labels
        self.items, self.opener, self.item_labels = items, opener, item_labels
        self.header = header      # item -> file object from which Image.open reads the header only
        self.ignored = ignored    # entries that are not readable regular files, with the reason


def _hash_file(h, path):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)


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
        raise UserError(f"{where}: labels must be whole class indices, and some are fractional (first "
                        f"{lab[lab != np.round(lab)][0]:g}); store one integer class per image")
    if lab.shape[0] != n:
        raise UserError(f"{where}: {lab.shape[0]} labels for {n} images")
    if n and (lab.min() < 0 or lab.max() >= MAX_CLASSES):
        raise UserError(f"{where}: labels must be class indices in [0, {MAX_CLASSES}), got values from "
                        f"{lab.min():g} to {lab.max():g}")
    return lab.astype(np.int64)


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
        except Exception as e:   # object arrays need pickle, which is not allowed
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
        raise UserError(f"{path}: expected uint8 images shaped (N, H, W), (N, H, W, C) or (N, C, H, W) with C in "
                        f"1/3/4, got {arr.shape}")
    if arr.shape[1] == 4:
        arr = _quantize(arr[:, :3].astype(np.float32) * (arr[:, 3:4].astype(np.float32) / 255.0))
    if labels is not None:
        labels = check_labels(labels, arr.shape[0], path)
    h = hashlib.sha256()
    _hash_file(h, path)
    return _Source(os.path.basename(path), h.hexdigest(), array=arr, labels=labels)


def _too_big(size):
    return f"{size} bytes, over the bound of {MAX_FILE_BYTES} bytes for one image"


def _folder_source(spec, path):
    """Image files under `path`, recursively: regular files only (symlinks to them are followed)."""
    found, ignored = [], []
    for d, _, fs in os.walk(path):
        for f in fs:
            if not f.lower().endswith(IMAGE_EXTS):
                continue
            r = os.path.relpath(os.path.join(d, f), path)
            try:
                st = os.stat(os.path.join(path, r))   # a symlink loop or a dangling link raises here
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
        raise UserError(f"data folder '{spec}' contains no images ({', '.join(IMAGE_EXTS)}, searched "
                        "recursively)" + (f"; ignored {ignored[0]}" if ignored else ""))

    def read(r):
        with open(os.path.join(path, r), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ValueError(_too_big(size))
            return f.read(MAX_FILE_BYTES + 1)
    return _Source(os.path.basename(os.path.normpath(path)), h.hexdigest(), items=rel, opener=read,
                   item_labels=_labels_from_dirs(rel), header=lambda r: open(os.path.join(path, r), "rb"),
                   ignored=ignored)


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
    if declared > MAX_ZIP_RATIO * archive + MAX_FILE_BYTES:
        raise UserError(f"zip '{spec}' declares {declared / 2 ** 30:.1f} GiB of images in a "
                        f"{archive / 2 ** 20:.1f} MiB archive (over {MAX_ZIP_RATIO}x): refusing a likely zip bomb; "
                        "unpack it yourself and pass the folder")
    h = hashlib.sha256()
    _hash_file(h, path)

    def read(name):
        size = infos[name].file_size
        if size > MAX_FILE_BYTES:
            raise ValueError(_too_big(size))
        with zf.open(name) as f:
            return f.read(MAX_FILE_BYTES + 1)
    return _Source(os.path.basename(path), h.hexdigest(), items=rel, opener=read, item_labels=_labels_from_dirs(rel),
                   header=zf.open)


def open_source(spec):
    """Resolve a --data value to a source: an existing path first, then a built-in name."""
    if spec is None:
        spec = builtin_data.DEFAULT_DATASET
    path = os.path.expanduser(str(spec))
    if not os.path.exists(path):
        if spec in builtin_data.BUILTINS:
            arr, labels, files = builtin_data.BUILTINS[spec]()
            h = hashlib.sha256(spec.encode())
            for f in files:
                st = os.stat(f)
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
            return _Source(spec, h.hexdigest(), array=arr, labels=labels)
        raise UserError(f"data path '{spec}' does not exist; give a folder of images, a .zip, a .npy/.npz array, "
                        f"or a built-in dataset: {', '.join(builtin_data.BUILTINS)}")
    if os.path.isdir(path):
        return _folder_source(spec, path)
    lower = path.lower()
    if lower.endswith(".zip"):
        return _zip_source(spec, path)
    if lower.endswith((".npy", ".npz")):
        return _array_source(path)
    if os.path.getsize(path) == 0:
        raise UserError(f"data file '{spec}' is empty")
    raise UserError(f"don't know how to read '{spec}': give a folder of images, a .zip, or a .npy/.npz array")


class ImageDataset:
    """Multi-resolution uint8 dataset backed by memory-mapped .npy files, one per resolution."""

    def __init__(self, folder):
        """Open a cache folder and check all of it (meta.json, every level's shape and size, the labels); a folder
        that fails raises BrokenCache."""
        self.folder = folder
        try:
            with open(os.path.join(folder, "meta.json")) as f:
                self.meta = json.load(f)
            m = self.meta
            if not isinstance(m, dict) or m.get("version") != CACHE_VERSION:
                raise BrokenCache(f"meta.json is not of cache version {CACHE_VERSION}")
            self.name, self.resolution = str(m["name"]), m["resolution"]
            self.num_channels, self.num_images = m["num_channels"], m["num_images"]
            res = self.resolution
            if not (type(res) is int and res >= 4 and not res & (res - 1)
                    and self.num_channels in (1, 3) and type(self.num_images) is int and self.num_images > 0
                    and isinstance(m["source_hash"], str)):
                raise BrokenCache("meta.json has impossible values")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BrokenCache(f"meta.json: {e}") from None
        self._levels = {}
        r = self.resolution
        while r >= 4:
            p = os.path.join(folder, f"res{r}.npy")
            try:
                a = np.load(p, mmap_mode="r", allow_pickle=False)   # a truncated file fails here
            except (OSError, ValueError) as e:
                raise BrokenCache(f"res{r}.npy: {str(e).splitlines()[0]}") from None
            if a.dtype != np.uint8 or a.shape != (self.num_images, self.num_channels, r, r):
                raise BrokenCache(f"res{r}.npy holds {a.dtype} {a.shape}")
            self._levels[r] = a
            r //= 2
        lp = os.path.join(folder, "labels.npy")
        self.labels = None
        if os.path.exists(lp):
            try:
                raw = np.load(lp, allow_pickle=False)
                self.labels = check_labels(raw, self.num_images, "labels.npy")
            except (OSError, ValueError, UserError) as e:
                raise BrokenCache(f"labels.npy: {e}") from None
            if raw.dtype != np.int64:
                raise BrokenCache(f"labels.npy holds {raw.dtype}, not int64")
        self.num_classes = int(self.labels.max()) + 1 if self.labels is not None else 0

    def level(self, res):
        """The (N, C, res, res) uint8 copy at `res`, memory-mapped."""
        if res not in self._levels:
            raise UserError(f"dataset '{self.name}' has no {res}x{res} copy (its resolution is {self.resolution})")
        return self._levels[res]

    def __len__(self):
        return self.num_images


def _decode(src, i):
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with warnings.catch_warnings():   # Pillow only warns between 1x and 2x its bound: make that an error too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(src.opener(src.items[i])))
    if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:   # from the header, before any pixel is decoded
        raise ValueError(f"{img.size[0]}x{img.size[1]} pixels, over the bound of {MAX_IMAGE_PIXELS}")
    img.load()
    return img


def _set_channels(src, log):
    """1 if every image's header says grayscale, else 3; reads headers only. One line when the set is mixed."""
    if src.array is not None:
        return 1 if src.array.shape[1] == 1 else 3
    from PIL import Image
    gray = colour = 0
    for item in src.items:
        try:
            with src.header(item) as f, Image.open(f) as img:
                c = channels_of(img)
        except Exception:   # undecodable: counted as corrupt when the pixels are read
            continue
        gray, colour = gray + (c == 1), colour + (c == 3)
    if gray and colour:
        log(f"data: '{src.name}' mixes {gray} grayscale and {colour} colour images; caching all as RGB "
            "(grayscale ones repeated in 3 channels)")
    return 3 if colour else 1


def _native_resolution(src, strict):
    """Largest power of two that fits the first decodable image (arrays: their size, padded sizes excluded)."""
    if src.array is not None:
        side = min(src.array.shape[-2:])
        return 1 << (side.bit_length() - 1)
    first = None
    for i in range(len(src.items)):
        try:
            img = _decode(src, i)
        except Exception as e:
            if strict:
                raise UserError(f"corrupt image {src.items[i]} ({e}); remove it or drop --strict") from None
            first = first or f"{src.items[i]}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            continue
        side = min(img.size)
        return 1 << (side.bit_length() - 1)
    raise UserError(f"none of the {len(src.items)} images in '{src.name}' could be decoded (first: {first})")


def _write_levels(src, resolution, channels, folder, strict, progress):
    from tqdm import tqdm
    n = src.array.shape[0] if src.array is not None else len(src.items)
    levels = [resolution >> i for i in range(int(np.log2(resolution)) - 1)]  # R, R/2, ..., 4
    mm = {r: np.lib.format.open_memmap(os.path.join(folder, f"res{r}.npy"), mode="w+", dtype=np.uint8,
                                       shape=(n, channels, r, r)) for r in levels}
    kept, corrupt, small, first_bad = [], 0, 0, None
    bar = tqdm(range(n), desc=f"caching {src.name} at {resolution}x{resolution}", unit="img",
               disable=not progress, leave=False)
    for i in bar:
        if src.array is not None:
            a = src.array[i]
            if a.shape[0] != channels:
                a = np.repeat(a, channels, 0) if a.shape[0] == 1 else a[:channels]
            arr = None
            if min(a.shape[-2:]) >= resolution:
                from PIL import Image
                img = Image.fromarray(a[0] if channels == 1 else a.transpose(1, 2, 0))
                arr = to_square_array(img, channels, resolution)
        else:
            try:
                arr = to_square_array(_decode(src, i), channels, resolution)
            except Exception as e:
                corrupt += 1
                first_bad = first_bad or f"{src.items[i]} ({e})"
                if strict:
                    raise UserError(f"corrupt image {first_bad}; remove it or drop --strict") from None
                continue
        if arr is None:
            small += 1
            first_bad = first_bad or f"{src.items[i] if src.items else i} is smaller than {resolution}x{resolution}"
            if strict:
                raise UserError(f"image {first_bad}; pass a smaller --resolution or drop --strict")
            continue
        j = len(kept)
        x = arr.astype(np.float32)
        for r in levels:
            if r != resolution:
                x = downsample_box(x)
            mm[r][j] = _quantize(x)
        kept.append(i)
    for m in mm.values():
        m.flush()
    return mm, kept, corrupt, small, first_bad


def build_dataset(spec: Optional[str] = None, *, resolution: Optional[int] = None, strict: bool = False,
                  cache_dir: Optional[str] = None, progress: bool = True, log: Callable = print) -> "ImageDataset":
    """Open (building the cache on first use) the dataset named by `spec` at `resolution` (default: native).

    Args:
        spec: a folder of images, a .zip, a .npy/.npz uint8 array, or a built-in name (default fashion-mnist).
        resolution: the largest cached level, a power of two >= 4; images are centre-cropped and resized to it.
        strict: reject corrupt or too-small images instead of skipping them.
        cache_dir: where the levels are cached (default: runtime.cache_root()).
        progress: show a progress bar while caching.
        log: where the one-line notices go (skipped images).

    Returns:
        An ImageDataset: `.level(res)` is the memory-mapped uint8 (N, C, res, res) copy, `.labels` the int64 labels
        or None.
    """
    check_resolution(resolution)
    src = open_source(spec)
    if src.ignored:
        log(f"data: ignored {len(src.ignored)} entries of '{src.name}' that are not readable regular files "
            f"(first: {src.ignored[0]})")
    native = _native_resolution(src, strict)
    if native < 4:
        raise UserError(f"images in '{src.name}' are smaller than 4x4")
    resolution = resolution or native
    if src.array is not None and resolution > native:
        raise UserError(f"'{src.name}' images are {native}x{native}; --resolution must be at most {native}")
    key = hashlib.sha256(f"{src.fingerprint}|{resolution}|{strict}|v{CACHE_VERSION}".encode()).hexdigest()[:20]
    root = cache_dir or cache_root()
    final = os.path.join(root, f"{src.name}-{resolution}-{key}")
    if os.path.exists(final):
        try:
            return ImageDataset(final)
        except BrokenCache as e:
            log(f"data: the cache {final} is damaged ({e}); rebuilding it")
    os.makedirs(root, exist_ok=True)
    _remove_dead_builds(root)
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        channels = _set_channels(src, log)
        mm, kept, corrupt, small, first_bad = _write_levels(src, resolution, channels, tmp, strict, progress)
        if not kept:
            raise UserError(f"no usable images in '{src.name}': {small} smaller than {resolution}x{resolution}, "
                            f"{corrupt} corrupt (first: {first_bad}); pass a smaller --resolution")
        if corrupt or small:
            log(f"data: skipped {corrupt} corrupt and {small} too-small images of {len(kept) + corrupt + small} "
                f"(first: {first_bad}); use --strict to reject instead")
            for r, m in mm.items():
                out = np.lib.format.open_memmap(os.path.join(tmp, f"res{r}.part.npy"), mode="w+", dtype=np.uint8,
                                                shape=(len(kept),) + m.shape[1:])
                out[:] = m[:len(kept)]
                out.flush()
                del out
                os.replace(os.path.join(tmp, f"res{r}.part.npy"), os.path.join(tmp, f"res{r}.npy"))
        del mm
        labels = src.labels if src.labels is not None else src.item_labels
        if labels is not None:
            np.save(os.path.join(tmp, "labels.npy"), np.asarray(labels, dtype=np.int64)[kept])
        meta = dict(name=src.name, resolution=resolution, num_channels=channels, num_images=len(kept),
                    skipped_corrupt=corrupt, skipped_small=small, source_hash=src.fingerprint, version=CACHE_VERSION)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageDataset(final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, someone else's
        return True
    return True


def _remove_dead_builds(root):
    """Remove the `*.tmp-PID` / `*.broken-PID` folders of cache builds whose process is gone (killed mid-build)."""
    for name in os.listdir(root):
        stem, sep, pid = name.rpartition(".tmp-") if ".tmp-" in name else name.rpartition(".broken-")
        if sep and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _install(tmp, final):
    """Rename a finished build into place. If `final` exists, keep it when it passes its checks (another process
    built the same cache first), else put it aside and install ours."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        pass
    try:
        ImageDataset(final)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    except BrokenCache:
        aside = f"{final}.broken-{os.getpid()}"
        os.rename(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.rename(tmp, final)


class Sampler:
    """Endless shuffled minibatches of indices; a fresh permutation per epoch from (seed, epoch). Resumable."""

    def __init__(self, num_images, seed=0):
        self.n, self.seed, self.epoch, self.pos = num_images, seed, 0, 0
        self._perm = None

    def _permutation(self):
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return self._perm

    def next(self, batch):
        out = []
        while batch > 0:
            perm = self._permutation()
            take = perm[self.pos:self.pos + batch]
            out.append(take)
            batch -= len(take)
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        return np.concatenate(out)

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.seed, self.epoch, self.pos, self._perm = int(s["seed"]), int(s["epoch"]), int(s["pos"]), None
