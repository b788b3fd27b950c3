"""A set of metrics of a generator against a dataset: what `fastpggan.evaluate` and the trainer both run.

fakes = generate_uint8(G, num, res, alpha, seed=0, device=dev)
reals = sample_reals(dataset, num, res, seed=0)
compute(parse_metrics("swd,msssim,fid"), reals, fakes, seed=0, device=dev)
"""

from typing import Callable, Optional

import numpy as np
import torch

from ..errors import UserError
from ..images import to_uint8
from . import fid
from .ms_ssim import ms_ssim
from .sliced_wasserstein import swd

METRICS = ("swd", "msssim", "fid")


def parse_metrics(text: str) -> list:
    """'swd,ms-ssim' -> ['swd', 'msssim']; anything else is a UserError naming the choices."""
    names = [m.strip().lower().replace("-", "") for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics takes a comma list of {', '.join(METRICS)}; got {text!r}")
    return names


@torch.no_grad()
def generate_uint8(
    G: torch.nn.Module,
    num: int,
    res: int,
    alpha: float,
    *,
    seed: int,
    device,
    batch: int = 64,
    progress: Optional[Callable[[int], object]] = None,
) -> torch.Tensor:
    """`num` images of G at (res, alpha) from seeded latents (and random labels for a conditional G), as uint8 on
    the CPU."""
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


def sample_reals(dataset, num: int, res: int, seed: int) -> torch.Tensor:
    """A seeded random subset of `num` images of the dataset's `res` level, uint8 (num, C, res, res)."""
    level = dataset.level(res)
    if num > len(level):
        raise UserError(f"--num {num} is more than the {len(level)} images of dataset '{dataset.name}'")
    idx = np.sort(np.random.default_rng(seed).choice(len(level), size=num, replace=False))
    return torch.from_numpy(np.ascontiguousarray(level[idx]))


def compute(
    names,
    reals: torch.Tensor,
    fakes: torch.Tensor,
    *,
    seed: int = 0,
    device="cpu",
    inception: Optional[str] = None,
    real_stats_key: Optional[str] = None,
    progress=None,
) -> dict:
    """{'swd': {...}, 'msssim': float, 'fid': float} for the requested metric names."""
    out = {}
    if "swd" in names:
        if reals.shape[-1] < 16:
            out["swd"] = None  # SWD's pyramid stops at 16x16: nothing to compare below it
        else:
            out["swd"] = {str(k): v for k, v in swd(reals, fakes, seed=seed, device=device).items()}
    if "msssim" in names:
        out["msssim"] = ms_ssim(fakes)
    if "fid" in names:
        model = load_inception(inception, device=device)

        def real_statistics():
            return fid.statistics(fid.features(model, reals, device, progress=progress))

        if real_stats_key:
            key = fid.real_statistics_key(real_stats_key, inception or fid.default_weights_path(), reals)
            mu_r, s_r = fid.cached_real_statistics(key, real_statistics)
        else:
            mu_r, s_r = real_statistics()
        mu_f, s_f = fid.statistics(fid.features(model, fakes, device, progress=progress))
        out["fid"] = fid.frechet_distance(mu_r, s_r, mu_f, s_f)
    return out


def load_inception(path: Optional[str] = None, device="cpu"):
    """fid.load_inception, with missing weights as a UserError saying what to install."""
    try:
        return fid.load_inception(path, device=device)
    except fid.WeightsMissing as e:
        raise UserError(str(e)) from None
