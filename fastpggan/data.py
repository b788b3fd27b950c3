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

from . import builtin_data, writes
from . import data_levels as levels
from .data_levels import downsample_box  # noqa: F401  (data.downsample_box, as before)
from .errors import UserError, is_disk_full
from .runtime import cache_root
from .sources import Source, check_labels, open_source

CACHE_VERSION = 2  # 2: 16-bit grayscale scaled, channel count decided by the whole set


class BrokenCache(Exception):
    """A cache folder that fails its checks; it is rebuilt."""


def check_resolution(res, what="resolution"):
    if res is None:
        return None
    if not isinstance(res, int) or res < 4 or res & (res - 1):
        raise UserError(f"{what} must be a power of two and at least 4 (4, 8, 16, ...), got {res}")
    return res


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
    def content_fingerprint(self) -> dict:
        """A cheap identity of the images wherever they lie (a moved or copied dataset keeps it; train --resume
        --data checks it): the format, count, channels, classes and resolution, and a digest of the first and last
        images' pixels and of the labels. Never a hash of the whole data."""
        a = self.level(self.resolution)
        h = hashlib.blake2b(digest_size=8)
        for part in (a[0], a[-1], self.labels if self.labels is not None else np.zeros(0)):
            h.update(np.ascontiguousarray(part).data)
        return dict(
            format=self.meta.get("format"),
            images=len(a),
            channels=self.num_channels,
            classes=self.num_classes,
            resolution=self.resolution,
            pixels=h.hexdigest(),
        )

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


def recorded_spec(spec: Optional[str]) -> Optional[str]:
    """A --data value as a run records it: absolute where it is a path that exists, else as given (a built-in
    name), so that the run can be resumed from any working directory."""
    return os.path.abspath(spec) if spec and os.path.exists(spec) else spec


def is_gone(spec: Optional[str]) -> bool:
    """Whether a recorded --data value names a path that is no longer there (a built-in name never is)."""
    return bool(spec) and spec not in builtin_data.BUILTINS and not os.path.exists(spec)


IGNORED_SHOWN = 5  # unreadable entries named in the one line that reports them


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
        shown = "; ".join(src.ignored[:IGNORED_SHOWN]) + (
            f"; and {len(src.ignored) - IGNORED_SHOWN} more" if len(src.ignored) > IGNORED_SHOWN else ""
        )
        log(
            f"data: ignored {len(src.ignored)} entries of '{src.name}' that are not readable regular files or "
            f"folders: {shown}"
        )
    native = levels.native_resolution(src, strict)
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
        channels = levels.set_channels(src, log)
        corrupt = small = 0
        if src.levels is not None:
            kept = levels.write_record_levels(src, resolution, tmp, progress, max_images)
        else:
            mm, kept, corrupt, small, first_bad = levels.write_levels(
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
                levels.shrink(mm, len(kept), tmp)
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
