"""Sliced Wasserstein distance over Laplacian-pyramid patches (paper Sec. 5, official metrics/sliced_wasserstein.py).

For each level of a Laplacian pyramid (5x5 binomial filter [1,4,6,4,1]/16 separable, mirror borders) from the full
resolution down to 16x16:
  - 128 random 7x7 neighbourhoods per image (all channels) are the descriptors;
  - each set's descriptors are normalised per channel by that set's own mean and std;
  - SWD = mean over 4 repeats x 128 unit random directions of mean |sort(proj_real) - sort(proj_fake)|;
  - reported x1e3 per level, plus their average.
Pixels enter as uint8 values (0..255) in float, as officially. Runs on `device` (the GPU when present).
"""

import numpy as np
import torch
import torch.nn.functional as F

BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _as_uint8_tensor(x, name):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(
            f"{name} must be an N x C x H x W uint8 tensor or array, got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )
    return x


def gaussian_kernel(device=None, dtype=torch.float32):
    """The 5x5 binomial filter (outer product of [1,4,6,4,1]/16)."""
    k = torch.tensor(BINOMIAL, device=device, dtype=dtype) / 16.0
    return torch.outer(k, k)


def _filter(x, kernel):
    c = x.shape[1]
    w = kernel.to(x.dtype).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w, groups=c)


def pyr_down(x):
    return _filter(x, gaussian_kernel(x.device))[:, :, ::2, ::2]


def pyr_up(x):
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, h * 2, w * 2)
    up[:, :, ::2, ::2] = x
    return _filter(up, gaussian_kernel(x.device) * 4.0)


def laplacian_pyramid(x, num_levels):
    """[band at full res, band at 1/2, ..., low-pass at the coarsest]: each level minus the upsampled next one."""
    pyramid = [x.float()]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def _descriptors(level, nhoods, size, generator):
    n, c, h, w = level.shape
    ys = torch.randint(0, h - size + 1, (n, nhoods), generator=generator).to(level.device)
    xs = torch.randint(0, w - size + 1, (n, nhoods), generator=generator).to(level.device)
    offs = torch.arange(size, device=level.device)
    rows = (ys[..., None] + offs)[..., :, None].expand(n, nhoods, size, size)
    cols = (xs[..., None] + offs)[..., None, :].expand(n, nhoods, size, size)
    idx = torch.arange(n, device=level.device)[:, None, None, None].expand_as(rows)
    patches = level.permute(0, 2, 3, 1)[idx, rows, cols]  # (n, nhoods, size, size, c)
    return patches.permute(0, 1, 4, 2, 3).reshape(n * nhoods, c, size, size)


def _normalize(desc):
    mean = desc.mean(dim=(0, 2, 3), keepdim=True)
    std = desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return ((desc - mean) / std.clamp_min(1e-12)).reshape(desc.shape[0], -1)


def sliced_wasserstein(a, b, dir_repeats, dirs_per_repeat, generator):
    """Mean over repeats of the mean absolute difference of sorted projections onto unit random directions."""
    results = []
    for _ in range(dir_repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=generator).to(a.device)
        dirs = dirs / dirs.square().sum(dim=0, keepdim=True).sqrt()
        pa = torch.sort(a @ dirs, dim=0).values
        pb = torch.sort(b @ dirs, dim=0).values
        results.append((pa - pb).abs().mean())
    return torch.stack(results).mean().item()


def swd(
    reals,
    fakes,
    *,
    seed=0,
    nhoods_per_image=128,
    nhood_size=7,
    dir_repeats=4,
    dirs_per_repeat=128,
    min_resolution=16,
    device=None,
    batch=256,
):
    """{level resolution: SWD x 1e3, ..., 'avg': mean} between two uint8 image sets of the same shape."""
    reals, fakes = _as_uint8_tensor(reals, "reals"), _as_uint8_tensor(fakes, "fakes")
    if reals.shape[1:] != fakes.shape[1:]:
        raise ValueError(f"reals {tuple(reals.shape)} and fakes {tuple(fakes.shape)} differ in C x H x W")
    res = reals.shape[-1]
    if reals.shape[-2] != res or res < min_resolution:
        raise ValueError(
            f"SWD needs square images of at least {min_resolution}x{min_resolution}, got {tuple(reals.shape[-2:])}"
        )
    resolutions = []
    r = res
    while r >= min_resolution:
        resolutions.append(r)
        r //= 2
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator().manual_seed(seed)
    per_level = {"reals": [[] for _ in resolutions], "fakes": [[] for _ in resolutions]}
    for key, images in (("reals", reals), ("fakes", fakes)):
        for i in range(0, images.shape[0], batch):
            pyramid = laplacian_pyramid(images[i : i + batch].to(device), len(resolutions))
            for lvl, level in enumerate(pyramid):
                per_level[key][lvl].append(_descriptors(level, nhoods_per_image, nhood_size, gen))
    out = {}
    for lvl, r in enumerate(resolutions):
        a = _normalize(torch.cat(per_level["reals"][lvl]))
        b = _normalize(torch.cat(per_level["fakes"][lvl]))
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"SWD compares equally many images; got {reals.shape[0]} reals and {fakes.shape[0]} fakes")
        out[r] = sliced_wasserstein(a, b, dir_repeats, dirs_per_repeat, gen) * 1e3
    out["avg"] = float(np.mean([out[r] for r in resolutions]))
    return out
