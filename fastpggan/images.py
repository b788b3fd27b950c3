"""Images in and out: decoded pictures to uint8 arrays for the datasets, and G's [-1, 1] output to uint8, PIL
images and PNG grids. numpy, torch and Pillow (imported when first needed) only; any module may import it.
"""

import io
import math
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import writes

# Bounds on untrusted image files (README "Robustness"), read at call time so that tests can lower them.
MAX_FILE_BYTES = 1 << 28  # 256 MiB: an encoded image bigger than this is not a training image
MAX_IMAGE_PIXELS = 1 << 28  # 16384^2 decoded pixels (Pillow's own bound, set explicitly)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """G's [-1, 1] output as uint8 (the official conversion: round((x + 1) * 127.5), clipped to [0, 255])."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as fp32 in [-1, 1] (official process_reals: adjust_dynamic_range [0, 255] -> [-1, 1])."""
    return images_uint8.float() / 127.5 - 1.0


def to_pil(image_uint8: torch.Tensor):
    """One (C, H, W) uint8 tensor, C = 1 or 3, as a PIL image ("L" or "RGB")."""
    from PIL import Image

    x = image_uint8.cpu()
    if x.shape[0] == 1:
        return Image.fromarray(x[0].numpy(), "L")
    return Image.fromarray(x.permute(1, 2, 0).numpy(), "RGB")


def write_grid(images: torch.Tensor, path: str, upscale_to: Optional[int] = None) -> None:
    """Save (N, C, H, W) images in [-1, 1] as a near-square PNG grid, nearest-upscaled to `upscale_to`."""
    x = images.detach().float().cpu()
    if upscale_to and x.shape[-1] < upscale_to:
        x = F.interpolate(x, size=(upscale_to, upscale_to), mode="nearest")
    x = to_uint8(x)
    n, c, h, w = x.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = torch.zeros(c, rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = x[i]
    writes.atomic(path, lambda tmp: to_pil(grid).save(tmp, format="PNG"))


WIDE_GRAY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16- and 32-bit integer grayscale
GRAY_MODES = ("1", "L", "LA", "La", "F") + WIDE_GRAY_MODES


def channels_of(img) -> int:
    """1 for a grayscale PIL image, else 3 (palette images count as colour)."""
    return 1 if img.mode in GRAY_MODES else 3


def to_8bit(img):
    """16- and 32-bit grayscale ("I;16*", "I") scaled to 8-bit "L" (x / 257, so 65535 -> 255) rather than clipped;
    an "I" image whose values all fit in 0..255 is taken as 8-bit. Other modes are returned as they are."""
    from PIL import Image

    if img.mode not in WIDE_GRAY_MODES:
        return img
    a = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or a.max(initial=0) > 255:
        a = a / 257.0
    return Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L")


def to_square_array(img, channels: int, resolution: int) -> Optional[np.ndarray]:
    """PIL image -> uint8 (C, R, R), or None if its centre square is smaller than R.

    Non-square images are centre-cropped; larger ones are resized with Lanczos; 16-bit grayscale is scaled to 8
    bits; transparency is composited over black; `channels` 1 gives grayscale, 3 RGB.
    """
    from PIL import Image

    img = to_8bit(img)
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) * alpha[..., None]
        img = Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    if side < resolution:
        return None
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def too_big(size: int) -> str:
    return f"{size} bytes, over the bound of {MAX_FILE_BYTES} bytes for one image"


def decode(data: bytes):
    """Encoded image bytes as a loaded PIL image, within the bounds: at most MAX_FILE_BYTES encoded and
    MAX_IMAGE_PIXELS decoded, the latter checked from the header before any pixel is decoded. Raises ValueError
    (or Pillow's errors) for what is out of bounds or undecodable."""
    from PIL import Image

    if len(data) > MAX_FILE_BYTES:
        raise ValueError(too_big(len(data)))
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with warnings.catch_warnings():  # Pillow only warns between 1x and 2x its bound: make that an error too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
        raise ValueError(f"{img.size[0]}x{img.size[1]} pixels, over the bound of {MAX_IMAGE_PIXELS}")
    img.load()
    return img
