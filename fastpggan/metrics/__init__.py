"""Metrics of the paper: SWD (Laplacian-pyramid sliced Wasserstein), MS-SSIM, and FID with offline weights.

from fastpggan.metrics import swd, ms_ssim, fid
swd(reals_uint8, fakes_uint8, seed=0)  -> {resolution: SWD x 1e3, ..., 'avg': ...}
ms_ssim(images_uint8)                  -> float
"""

from . import fid
from .ms_ssim import ms_ssim
from .sliced_wasserstein import swd

__all__ = ["swd", "ms_ssim", "fid"]
