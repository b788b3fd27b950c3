"""The pixels of a dataset cache (fastpggan.data): the channel count and native resolution of a source, each image
decoded, squared and resized to the target, then box-downsampled level by level into memory-mapped res{R}.npy
files (or, from an official TFRecords folder, each level read from its own file)."""

import os

import numpy as np

from . import images, writes
from .errors import UserError
from .images import channels_of
from .sources import Source, quantize


def downsample_box(x):
    """2x2 box filter on float (..., H, W): the official dataset_tool's lod step."""
    return (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) * 0.25


def set_channels(src: Source, log):
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


NATIVE_SAMPLE = 15


def native_resolution(src: Source, strict):
    """The source's default resolution, or the largest power of two that fits its images: an array's size, a
    TFRecords folder's largest file, or the median of the first NATIVE_SAMPLE decodable encoded images (smaller
    ones are then skipped and counted when the cache is built)."""
    if src.default_resolution:
        return src.default_resolution
    if src.levels is not None:
        return src.levels.resolution
    if src.array is not None:
        side = min(src.array.shape[-2:])
        return 1 << (side.bit_length() - 1)
    first, sides = None, []
    for name, read in src.entries():
        try:
            img = images.decode(read())
        except Exception as e:
            if strict:
                raise UserError(f"corrupt image {name} ({e}); remove it or drop --strict") from None
            first = first or f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            continue
        sides.append(min(img.size))
        if len(sides) == NATIVE_SAMPLE:
            break
    if not sides:
        raise UserError(f"none of the {src.count} images in '{src.name}' could be decoded (first: {first})")
    side = sorted(sides)[len(sides) // 2]  # the median: one thumbnail among the first images does not decide it
    return 1 << (side.bit_length() - 1)


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


def write_levels(src: Source, resolution, channels, folder, strict, progress, limit):
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


def write_record_levels(src: Source, resolution, folder, progress, limit):
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


def shrink(mm, n, folder):
    """Cut every level to its first n images (skipped ones left the tail unused)."""
    for r, m in mm.items():
        out = _new_memmap(os.path.join(folder, f"res{r}.part.npy"), (n,) + m.shape[1:])
        out[:] = m[:n]
        out.flush()
        del out
        os.replace(os.path.join(folder, f"res{r}.part.npy"), os.path.join(folder, f"res{r}.npy"))
