"""MS-SSIM between pairs of generated images, as the official ms_ssim.py computes it (diversity measure).

Pairs are (0,1), (2,3), ... For each pair, at 5 scales (2x2 box downsampling between them, scipy 'reflect'
borders): SSIM and contrast-structure cs with an 11x11 Gaussian window, sigma 1.5 (the window capped at the image
size and sigma scaled with it), k1 = 0.01, k2 = 0.03, L = 255, 'valid' filtering; each averaged over pixels and
channels per image and clipped at 0. Score = prod_{s<5} cs_s^w_s * ssim_5^w_5, averaged over pairs, with
w = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]. Computed in float64.
"""

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size, sigma):
    """The official _FSpecialGauss: a normalised 2-D Gaussian on a centred grid (half-integer for even sizes)."""
    radius = size // 2
    offset, start, stop = 0.0, -radius, radius + 1
    if size % 2 == 0:
        offset, stop = 0.5, stop - 1
    coords = torch.arange(start, stop, dtype=torch.float64) + offset
    g = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2.0 * sigma**2))
    return g / g.sum()


def _ssim_cs(a, b, max_val=255.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03):
    """Per-image (ssim, cs), each the mean over pixels and channels."""
    _, c, h, w = a.shape
    size = min(filter_size, h, w)
    sigma = size * filter_sigma / filter_size
    win = gaussian_window(size, sigma).to(a)[None, None].expand(c, 1, size, size)

    def f(x):
        return F.conv2d(x, win, groups=c)  # 'valid'

    mu1, mu2 = f(a), f(b)
    s11 = f(a * a) - mu1 * mu1
    s22 = f(b * b) - mu2 * mu2
    s12 = f(a * b) - mu1 * mu2
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1, v2 = 2.0 * s12 + c2, s11 + s22 + c2
    ssim = ((2.0 * mu1 * mu2 + c1) * v1) / ((mu1 * mu1 + mu2 * mu2 + c1) * v2)
    return ssim.mean(dim=(1, 2, 3)), (v1 / v2).mean(dim=(1, 2, 3))


def _downsample(x):
    """scipy.ndimage.convolve with a 2x2 box, mode='reflect', then [::2, ::2]: a 2x2 mean, edge repeated if odd."""
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return F.avg_pool2d(x, 2)


def ms_ssim_pairs(a, b):
    """MS-SSIM of each pair (a[i], b[i]), float64 tensor of shape (N,)."""
    ssims, css = [], []
    for _ in range(len(WEIGHTS)):
        s, c = _ssim_cs(a, b)
        ssims.append(s.clamp_min(0))
        css.append(c.clamp_min(0))
        a, b = _downsample(a), _downsample(b)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    score = torch.ones_like(ssims[0])
    for i in range(len(WEIGHTS) - 1):
        score = score * css[i] ** w[i]
    return score * ssims[-1] ** w[-1]


def ms_ssim(images):
    """Mean MS-SSIM over the pairs (0,1), (2,3), ... of N x C x H x W uint8 images (tensor or array)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError("ms_ssim expects N x C x H x W uint8 images")
    if images.shape[0] < 2:
        raise ValueError("ms_ssim needs at least 2 images (one pair)")
    x = images[: images.shape[0] // 2 * 2].double()
    return float(ms_ssim_pairs(x[0::2], x[1::2]).mean())
