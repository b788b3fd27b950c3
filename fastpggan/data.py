"""Datasets cached once per resolution, from any source fastpggan.sources opens (folders, zips, arrays, built-ins,
official TFRecords, LSUN lmdb, CIFAR-10, MNIST idx).

The cache holds one uint8 (N, C, R, R) copy per resolution from the full one down to 4x4. From an official
TFRecords folder each copy is that resolution's file, record for record. From any other source it is made by 2x2
box downsampling of the float image with each level rounded to uint8, as the official dataset_tool.py
TFRecordExporter does (L76-80). It is memory-mapped, keyed by the source's fingerprint and the preprocessing,
built in a temporary folder and renamed into place, so concurrent builds are safe.

Preprocessing of encoded images (folders, zips): non-square images are centre-cropped; larger images are resized
to the target with Lanczos; 16-bit grayscale is scaled to 8 bits; transparency is composited over black. A set
whose images are all grayscale stays 1 channel; if any image is colour the whole set is RGB (one line says so when
they are mixed). Images smaller than the target, or that fail to decode, are counted and skipped (or rejected with
strict=True). LSUN values are cropped and resized as official create_lsun does (fastpggan.formats.lsun).
`max_images` keeps the first N usable images in the source's order. A cache that fails its checks on opening is
rebuilt, with one line.
"""

import hashlib
import json
import os
import shutil
from typing import Callable, Optional

import numpy as np

from . import images, writes
from .errors import UserError, is_disk_full
from .images import channels_of
from .runtime import cache_root
from .sources import Source, check_labels, open_source, quantize

CACHE_VERSION = 2  # 2: 16-bit grayscale scaled, channel count decided by the whole set


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
            if not (
                type(res) is int
                and res >= 4
                and not res & (res - 1)
                and self.num_channels in (1, 3)
                and type(self.num_images) is int
                and self.num_images > 0
                and isinstance(m["source_hash"], str)
            ):
                raise BrokenCache("meta.json has impossible values")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BrokenCache(f"meta.json: {e}") from None
        self._levels = {}
        r = self.resolution
        while r >= 4:
            p = os.path.join(folder, f"res{r}.npy")
            try:
                a = np.load(p, mmap_mode="r", allow_pickle=False)  # a truncated file fails here
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

    @property
    def resolutions(self):
        """The cached levels, largest first."""
        return sorted(self._levels, reverse=True)

    def level(self, res):
        """The (N, C, res, res) uint8 copy at `res`, memory-mapped."""
        if res not in self._levels:
            raise UserError(f"dataset '{self.name}' has no {res}x{res} copy (its resolution is {self.resolution})")
        return self._levels[res]

    def __len__(self):
        return self.num_images


def _set_channels(src: Source, log):
    """The source's fixed channel count, else 1 if every image's header says grayscale, else 3; reads headers only.
    One line when the set is mixed."""
    if src.channels is not None:
        return 1 if src.channels == 1 else 3
    from PIL import Image

    gray = colour = 0
    for name, _ in src.entries():
        try:
            with src.header(name) as f, Image.open(f) as img:
                c = channels_of(img)
        except Exception:  # undecodable: counted as corrupt when the pixels are read
            continue
        gray, colour = gray + (c == 1), colour + (c == 3)
    if gray and colour:
        log(
            f"data: '{src.name}' mixes {gray} grayscale and {colour} colour images; caching all as RGB "
            "(grayscale ones repeated in 3 channels)"
        )
    return 3 if colour else 1


def _native_resolution(src: Source, strict):
    """The source's default resolution, or the largest power of two that fits its images: an array's size, a
    TFRecords folder's largest file, or the first decodable encoded image."""
    if src.default_resolution:
        return src.default_resolution
    if src.levels is not None:
        return src.levels.resolution
    if src.array is not None:
        side = min(src.array.shape[-2:])
        return 1 << (side.bit_length() - 1)
    first = None
    for name, read in src.entries():
        try:
            img = images.decode(read())
        except Exception as e:
            if strict:
                raise UserError(f"corrupt image {name} ({e}); remove it or drop --strict") from None
            first = first or f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            continue
        side = min(img.size)
        return 1 << (side.bit_length() - 1)
    raise UserError(f"none of the {src.count} images in '{src.name}' could be decoded (first: {first})")


def _array_images(src, channels, resolution):
    """(index, name, uint8 (C, R, R) or None when too small) of an in-memory source."""
    from PIL import Image

    for i in range(src.count):
        a = src.array[i]
        if a.shape[0] != channels:
            a = np.repeat(a, channels, 0) if a.shape[0] == 1 else a[:channels]
        arr = None
        if min(a.shape[-2:]) >= resolution:
            arr = (
                a
                if a.shape[-2:] == (resolution, resolution)
                else src.square(Image.fromarray(a[0] if channels == 1 else a.transpose(1, 2, 0)), channels, resolution)
            )
        yield i, str(i), arr


def _encoded_images(src, channels, resolution, strict):
    """(index, name, uint8 (C, R, R), None when too small, or the exception when corrupt) of an encoded source."""
    for i, (name, read) in enumerate(src.entries()):
        try:
            yield i, name, src.square(images.decode(read()), channels, resolution)
        except Exception as e:
            if strict:
                raise UserError(f"corrupt image {name} ({e}); remove it or drop --strict") from None
            yield i, name, e


def _new_memmap(path: str, shape: tuple) -> np.memmap:
    """A new uint8 .npy of `shape`, memory-mapped for writing, with its space on disk reserved first."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    writes.reserve(path, mm.offset, mm.nbytes)
    return mm


def _write_levels(src: Source, resolution, channels, folder, strict, progress, limit):
    """Decode, resize and box-downsample the source into res{R}.npy ... res4.npy; returns (levels, kept indices,
    corrupt, too small, the first bad one)."""
    from tqdm import tqdm

    n = min(src.count, limit or src.count)
    levels = [resolution >> i for i in range(int(np.log2(resolution)) - 1)]  # R, R/2, ..., 4
    mm = {r: _new_memmap(os.path.join(folder, f"res{r}.npy"), (n, channels, r, r)) for r in levels}
    kept, corrupt, small, first_bad = [], 0, 0, None
    stream = (
        _array_images(src, channels, resolution)
        if src.array is not None
        else _encoded_images(src, channels, resolution, strict)
    )
    with tqdm(
        stream,
        total=src.count,
        desc=f"caching {src.name} at {resolution}x{resolution}",
        unit="img",
        disable=not progress,
        leave=False,
    ) as bar:  # closed (and cleared) on an error too
        for i, name, arr in bar:
            if isinstance(arr, Exception):
                corrupt += 1
                first_bad = first_bad or f"{name} ({arr})"
                continue
            if arr is None:
                small += 1
                first_bad = first_bad or f"{name} is smaller than {resolution}x{resolution}"
                if strict:
                    raise UserError(f"image {first_bad}; pass a smaller --resolution or drop --strict")
                continue
            x = arr.astype(np.float32)
            for r in levels:
                if r != resolution:
                    x = downsample_box(x)
                mm[r][len(kept)] = quantize(x)
            kept.append(i)
            if len(kept) == n:
                break
    for m in mm.values():
        m.flush()
    return mm, kept, corrupt, small, first_bad


def _write_record_levels(src: Source, resolution, folder, progress, limit):
    """Each level of an official TFRecords folder from its own file, record for record."""
    from tqdm import tqdm

    n = min(src.count, limit or src.count)
    for r in src.levels.resolutions(resolution):
        mm = _new_memmap(os.path.join(folder, f"res{r}.npy"), (n, src.channels, r, r))
        with tqdm(
            src.levels.level(r, limit=n),
            total=n,
            desc=f"reading {src.name} at {r}x{r}",
            unit="img",
            disable=not progress,
            leave=False,
        ) as bar:
            for i, img in bar:
                mm[i] = img
        mm.flush()
        del mm
    return list(range(n))


def build_dataset(
    spec: Optional[str] = None,
    *,
    resolution: Optional[int] = None,
    strict: bool = False,
    max_images: Optional[int] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    log: Callable = print,
) -> "ImageDataset":
    """Open (building the cache on first use) the dataset named by `spec` at `resolution` (default: native).

    Args:
        spec: a folder of images, a .zip, a .npy/.npz uint8 array, an official TFRecords folder, an LSUN lmdb
            folder, CIFAR-10 batches (folder or .tar.gz), MNIST idx files (folder or file), or a built-in name
            (default fashion-mnist).
        resolution: the largest cached level, a power of two >= 4; images are centre-cropped and resized to it
            (a TFRecords folder: its files up to this resolution). Default: the data's own (LSUN: 256).
        strict: reject corrupt or too-small images instead of skipping them.
        max_images: keep only the first N usable images (in the source's order); None keeps all.
        cache_dir: where the levels are cached (default: runtime.cache_root()).
        progress: show a progress bar while caching.
        log: where the one-line notices go (skipped images).

    Returns:
        An ImageDataset: `.level(res)` is the memory-mapped uint8 (N, C, res, res) copy, `.labels` the int64 labels
        or None.
    """
    check_resolution(resolution)
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise UserError(f"--max-images must be a whole number >= 1, got {max_images}")
    src = open_source(spec)
    if src.ignored:
        log(
            f"data: ignored {len(src.ignored)} entries of '{src.name}' that are not readable regular files "
            f"(first: {src.ignored[0]})"
        )
    native = _native_resolution(src, strict)
    if native < 4:
        raise UserError(f"images in '{src.name}' are smaller than 4x4")
    resolution = resolution or native
    if (src.array is not None or src.levels is not None) and resolution > native:
        raise UserError(f"'{src.name}' images are {native}x{native}; --resolution must be at most {native}")
    key = f"{src.fingerprint}|{resolution}|{strict}|v{CACHE_VERSION}" + (f"|max{max_images}" if max_images else "")
    key = hashlib.sha256(key.encode()).hexdigest()[:20]
    root = cache_dir or cache_root()
    final = os.path.join(root, f"{src.name}-{resolution}-{key}")
    if os.path.exists(final):
        try:
            return ImageDataset(final)
        except BrokenCache as e:
            log(f"data: the cache {final} is damaged ({e}); rebuilding it")
    try:
        return _build(src, resolution, strict, max_images, root, final, progress, log)
    except OSError as e:
        if not os.path.abspath(e.filename or root).startswith(os.path.abspath(root)):
            raise  # not the cache's: reading the source
        raise writes.explain(
            e,
            e.filename or root,
            "free space or choose another --cache-dir (FASTPGGAN_CACHE)"
            if is_disk_full(e)
            else "choose another --cache-dir (FASTPGGAN_CACHE)",
        ) from None


def _build(src: Source, resolution, strict, max_images, root, final, progress, log) -> "ImageDataset":
    """Build the cache of `src` in a temporary folder beside `final`, then rename it into place."""
    os.makedirs(root, exist_ok=True)
    _remove_dead_builds(root)
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        channels = _set_channels(src, log)
        corrupt = small = 0
        if src.levels is not None:
            kept = _write_record_levels(src, resolution, tmp, progress, max_images)
        else:
            mm, kept, corrupt, small, first_bad = _write_levels(
                src, resolution, channels, tmp, strict, progress, max_images
            )
            if not kept:
                raise UserError(
                    f"no usable images in '{src.name}': {small} smaller than {resolution}x{resolution}, "
                    f"{corrupt} corrupt (first: {first_bad}); pass a smaller --resolution"
                )
            if corrupt or small:
                log(
                    f"data: skipped {corrupt} corrupt and {small} too-small images of {len(kept) + corrupt + small} "
                    f"(first: {first_bad}); use --strict to reject instead"
                )
            if len(kept) < next(iter(mm.values())).shape[0]:
                _shrink(mm, len(kept), tmp)
            del mm
        if src.labels is not None:
            np.save(os.path.join(tmp, "labels.npy"), np.asarray(src.labels, dtype=np.int64)[kept])
        meta = dict(
            name=src.name,
            format=src.kind,
            resolution=resolution,
            num_channels=channels,
            num_images=len(kept),
            skipped_corrupt=corrupt,
            skipped_small=small,
            max_images=max_images,
            source_hash=src.fingerprint,
            version=CACHE_VERSION,
        )
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImageDataset(final)


def _shrink(mm, n, folder):
    """Cut every level to its first n images (skipped ones left the tail unused)."""
    for r, m in mm.items():
        out = _new_memmap(os.path.join(folder, f"res{r}.part.npy"), (n,) + m.shape[1:])
        out[:] = m[:n]
        out.flush()
        del out
        os.replace(os.path.join(folder, f"res{r}.part.npy"), os.path.join(folder, f"res{r}.npy"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
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
