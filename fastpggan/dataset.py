"""The datasets fastpggan reads, inspected and converted: `python -m fastpggan.dataset info|grid|export DATA`.

The counterpart of official dataset_tool.py's `display`, `compare` and `extract` for every format fastpggan reads
(README "Data"). Each subcommand opens DATA exactly as `fastpggan.train --data DATA` does, through the same cache,
so what it shows is what training sees:
- `info`: the format, count, resolution and levels, channels, labels with per-class counts, what was skipped, and
  the cache folder and its size;
- `grid --out grid.png`: random images of one level as a PNG grid;
- `export --to out.npz|folder/`: one level as a .npz (`images` uint8 (N, C, R, R), `labels` int64) or as PNG
  files (`img%08d.png`, in one folder per class when labelled), both of which --data reads back. Written to a
  temporary name and renamed, so an interrupted export leaves nothing half-written.
"""

import argparse
import json
import os
import shutil
from typing import Callable, Optional

import numpy as np
import torch

from . import writes
from .data import ImageDataset, build_dataset, check_resolution
from .errors import ArgumentParser, cli_entry, number
from .images import from_uint8, to_pil, write_grid


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.dataset",
        description="Inspect or convert a dataset as fastpggan.train --data reads it.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="info|grid|export")
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "data",
        metavar="DATA",
        help="what --data takes: a folder, zip, .npy/.npz, TFRecords "
        "folder, LSUN lmdb, CIFAR-10 batches, MNIST idx files, or a built-in name",
    )
    common.add_argument("--resolution", type=int, default=None, help="cached resolution (default: the data's)")
    common.add_argument("--max-images", type=number(int, min=1), default=None, help="keep the first N images")
    common.add_argument("--strict", action="store_true", help="reject corrupt or too-small images")
    common.add_argument("--cache-dir", default=None, help="dataset cache (default $FASTPGGAN_CACHE)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar while caching")
    i = sub.add_parser("info", parents=[common], help="count, resolution, channels, labels, cache")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    g = sub.add_parser("grid", parents=[common], help="a PNG grid of random images")
    g.add_argument("--out", required=True, help="PNG file to write")
    g.add_argument("--res", type=int, default=None, help="level to show (default: the cached resolution)")
    g.add_argument("--num", type=number(int, min=1, max=4096), default=64, help="images in the grid")
    g.add_argument("--seed", type=number(int, min=0), default=0, help="which random images")
    g.add_argument(
        "--upscale", type=number(int, min=1, max=4096), default=None, help="nearest-upscale each image to this size"
    )
    e = sub.add_parser("export", parents=[common], help="one level as .npz or PNG files")
    e.add_argument("--to", required=True, help="out.npz, or a folder for PNG files")
    e.add_argument("--res", type=int, default=None, help="level to export (default: the cached resolution)")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    e.add_argument("--force", action="store_true", help="replace --to if it exists")
    return p


def _open(args, log) -> ImageDataset:
    check_resolution(args.resolution)
    return build_dataset(
        args.data,
        resolution=args.resolution,
        strict=args.strict,
        max_images=args.max_images,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        log=log,
    )


def _level(ds: ImageDataset, res: Optional[int]) -> int:
    res = check_resolution(res, what="--res") or ds.resolution
    ds.level(res)  # one line if there is no such level
    return res


def describe(ds: ImageDataset) -> dict:
    """What `info` prints, as a dict."""
    size = sum(os.path.getsize(os.path.join(ds.folder, f)) for f in os.listdir(ds.folder))
    counts = np.bincount(ds.labels, minlength=ds.num_classes).tolist() if ds.labels is not None else None
    m = ds.meta
    return dict(
        name=ds.name,
        format=m.get("format", "unknown"),
        images=ds.num_images,
        resolution=ds.resolution,
        levels=ds.resolutions,
        channels=ds.num_channels,
        classes=ds.num_classes,
        class_counts=counts,
        skipped_corrupt=m.get("skipped_corrupt", 0),
        skipped_small=m.get("skipped_small", 0),
        max_images=m.get("max_images"),
        cache=ds.folder,
        cache_bytes=size,
    )


def info(args, log):
    d = describe(_open(args, log))
    if args.json:
        log(json.dumps(d))
        return d
    labels = (
        "none"
        if not d["classes"]
        else f"{d['classes']} classes, images per class "
        + ", ".join(f"{k}: {n}" for k, n in enumerate(d["class_counts"]))
    )
    log(f"data:       {args.data} ({d['format']})")
    log(
        f"images:     {d['images']}"
        + (f" (the first of the source, --max-images {d['max_images']})" if d["max_images"] else "")
    )
    log(f"resolution: {d['resolution']}x{d['resolution']}, levels {', '.join(map(str, d['levels']))}")
    log(f"channels:   {d['channels']}")
    log(f"labels:     {labels}")
    log(f"skipped:    {d['skipped_corrupt']} corrupt, {d['skipped_small']} too small")
    log(f"cache:      {d['cache']} ({d['cache_bytes'] / 2**20:.1f} MiB)")
    return d


def grid(args, log):
    writes.check_output(args.out, "--out", args.force, (args.data,))
    ds = _open(args, log)
    res = _level(ds, args.res)
    pick = np.sort(np.random.default_rng(args.seed).choice(ds.num_images, min(args.num, ds.num_images), replace=False))
    x = from_uint8(torch.from_numpy(np.array(ds.level(res)[pick])))
    write_grid(x, args.out, upscale_to=args.upscale)
    log(f"wrote {args.out}: {len(pick)} random images at {res}x{res} (seed {args.seed})")
    return args.out


def export(args, log):
    dst = args.to.rstrip("/") or args.to
    writes.check_output(dst, "--to", args.force, (args.data,), folder_ok=True)  # before the cache is built
    ds = _open(args, log)
    res = _level(ds, args.res)
    if dst.endswith(".npz"):
        arrays = dict(images=ds.level(res))
        if ds.labels is not None:
            arrays["labels"] = ds.labels
        writes.write_npz(dst, **arrays)
    else:
        tmp = f"{dst}.tmp-{os.getpid()}"
        try:
            _write_pngs(ds, res, tmp)
            _replace(tmp, dst)
        except OSError as e:
            raise writes.explain(e, dst) from None
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"wrote {dst}: {ds.num_images} images at {res}x{res}"
        + (f" with {ds.num_classes} classes" if ds.labels is not None else "")
    )
    return dst


def _write_pngs(ds, res, folder):
    """img%08d.png per image, inside a folder per class (zero-padded so that name order is class order) when the
    dataset has two or more classes, which is how --data reads a folder's labels back."""
    os.makedirs(folder)
    level, width = ds.level(res), len(str(max(ds.num_classes - 1, 0)))
    by_class = ds.labels is not None and ds.num_classes >= 2
    for i in range(ds.num_images):
        sub = os.path.join(folder, f"{ds.labels[i]:0{width}d}") if by_class else folder
        os.makedirs(sub, exist_ok=True)
        to_pil(torch.from_numpy(np.array(level[i]))).save(os.path.join(sub, f"img{i:08d}.png"))


def _replace(tmp, dst):
    """Put tmp at dst; a dst that exists (--force) is moved aside first and removed after."""
    aside = None
    if os.path.exists(dst):
        aside = f"{dst}.old-{os.getpid()}"
        os.rename(dst, aside)
    os.rename(tmp, dst)
    if aside:
        shutil.rmtree(aside) if os.path.isdir(aside) else os.remove(aside)


COMMANDS = {"info": info, "grid": grid, "export": export}


def run(args: argparse.Namespace, log: Callable = print):
    """Run the parsed subcommand; returns what it made (info: its dict; grid, export: the path written)."""
    return COMMANDS[args.command](args, log)


@cli_entry
def main(argv: Optional[list] = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
