"""PGGAN Generator and Discriminator (paper Table 2; official networks.py G_paper / D_paper).

nf(stage) = min(fmap_base / 2^stage, fmap_max); the block at resolution 2^k has nf(k-1) feature maps.
Blocks are indexed by k - 2, so block 0 is 4x4. Both networks run at any power-of-two resolution up to
their maximum, and `alpha` in [0, 1] fades in the newest block (paper Fig. 2):

    G: lerp(upsample2x(toRGB_low(x_low)), toRGB_high(block(x_low)), alpha)
    D: lerp(fromRGB_low(avgpool2x(img)), block(fromRGB_high(img)), alpha)

`fused_scale` has the official meaning (G_paper / D_paper's argument, default True): True runs G's upsample + conv
and D's conv + downscale each as one stride-2 conv with the summed 4x4 kernel; False runs them apart, as the
released networks do (official legacy.py imports them with fused_scale=False). For G both are the same function;
for D they are not, since unfused D pools after the bias and LReLU (the order of paper Table 2).

Mixed precision per resolution (`amp_min_res`, the stylegan2-ada practice): under an enabled autocast, only the
layers at resolutions >= amp_min_res run in low precision; the lower ones run in fp32. In fp16 the outputs of
the low-precision layers are clamped to +-AMP_CLAMP (stylegan2-ada's conv_clamp 256) so that they cannot overflow.
None (the default) leaves autocast on everywhere.
"""

import math
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev

LRELU = "lrelu"  # PGGAN's activation, leaky ReLU 0.2, explicit at each layer (the layers' default is linear)


def _log2_res(res: int, max_res: int, what: str) -> int:
    k = int(round(math.log2(res))) if res and res > 0 else -1
    if res < 4 or 2**k != res or res > max_res:
        raise ValueError(f"{what}: resolution must be a power of two in [4, {max_res}], got {res}")
    return k


def _nf(fmap_base: int, fmap_max: int) -> Callable[[int], int]:
    # Clamped at 1 so that narrow test/CPU configurations stay valid at high resolutions (official: no clamp).
    return lambda stage: max(min(int(fmap_base / 2.0**stage), fmap_max), 1)


def conv_outputs_per_image(fmap_base: int, fmap_max: int, res: int) -> int:
    """Elements the convolutions of G (and, mirrored, of D) write per image up to `res`: two per block."""
    nf = _nf(fmap_base, fmap_max)
    return sum(2 * nf(int(math.log2(s)) - 1) * s * s for s in (4 << i for i in range(int(math.log2(res)) - 1)))


AMP_CLAMP = 256.0


class _Precision:
    """Runs each layer group at resolution `res` in the caller's autocast or in fp32 (below amp_min_res)."""

    def __init__(self, x: torch.Tensor, min_res: Optional[int]) -> None:
        dev = x.device.type
        self.on = torch.is_autocast_enabled(dev) if min_res is not None else False
        self.dev, self.min_res = dev, min_res
        self.fp16 = self.on and torch.get_autocast_dtype(dev) == torch.float16

    def __call__(self, res: int, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        if not self.on or self.min_res is None:
            return fn(*args)
        if res < self.min_res:
            with torch.autocast(self.dev, enabled=False):
                return fn(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
        y = fn(*args)
        return y.clamp(-AMP_CLAMP, AMP_CLAMP) if self.fp16 else y


def _labels_to_onehot(labels: torch.Tensor, label_size: int, dtype: torch.dtype) -> torch.Tensor:
    if labels.dtype in (torch.int32, torch.int64, torch.uint8, torch.int16):
        return F.one_hot(labels.long(), label_size).to(dtype)
    return labels.to(dtype)


class Generator(nn.Module):
    """G(z, res=None, alpha=1.0, labels=None) -> (N, num_channels, res, res) images in about [-1, 1].

    Args:
        resolution: the largest output resolution, a power of two >= 4.
        latent_size: length of z.
        num_channels: image channels.
        fmap_base, fmap_max: nf(stage) = min(fmap_base / 2^stage, fmap_max) feature maps per block.
        label_size: classes of a conditional G (one-hot labels concatenated to z), 0 for none.
        fused_scale: official G_paper's fused_scale (see the module docstring).
        impl: the ops backend ('auto', 'ref', 'triton', 'ext', 'compiled').
    """

    def __init__(
        self,
        resolution: int = 1024,
        latent_size: int = 512,
        num_channels: int = 3,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        label_size: int = 0,
        fused_scale: bool = True,
        impl: str = "auto",
    ):
        super().__init__()
        self.resolution_log2 = _log2_res(resolution, 2**30, "Generator")
        self.resolution, self.latent_size, self.num_channels = resolution, latent_size, num_channels
        self.label_size, self.fused_scale, self.impl = label_size, bool(fused_scale), impl
        self.amp_min_res = None
        nf = _nf(fmap_base, fmap_max)
        c4 = nf(1)
        # 4x4: dense latent -> c4*16 with gain sqrt(2)/4 (official "to match the original Theano implementation"),
        # reshaped to (c4, 4, 4), then per-channel bias, LReLU, pixel norm.
        self.dense = EqualizedLinear(
            latent_size + label_size, c4 * 16, gain=math.sqrt(2) / 4, bias=False, act="linear", impl=impl
        )
        self.dense_bias = nn.Parameter(torch.zeros(c4))
        self.blocks = nn.ModuleList([EqualizedConv2d(c4, c4, 3, padding=1, act=LRELU, pixel_norm=True, impl=impl)])
        for k in range(3, self.resolution_log2 + 1):
            self.blocks.append(
                nn.Sequential(
                    EqualizedConv2d(
                        nf(k - 2),
                        nf(k - 1),
                        3,
                        padding=1,
                        up=True,
                        fused_scale=fused_scale,
                        act=LRELU,
                        pixel_norm=True,
                        impl=impl,
                    ),
                    EqualizedConv2d(nf(k - 1), nf(k - 1), 3, padding=1, act=LRELU, pixel_norm=True, impl=impl),
                )
            )
        self.to_rgb = nn.ModuleList(
            [
                EqualizedConv2d(nf(k - 1), num_channels, 1, gain=1.0, act="linear", impl=impl)
                for k in range(2, self.resolution_log2 + 1)
            ]
        )

    def _block4(self, z: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        x = (
            z
            if labels is None or self.label_size == 0
            else torch.cat([z, _labels_to_onehot(labels, self.label_size, z.dtype)], 1)
        )
        x = ops.bias_act(x, None, negative_slope=1.0, pixel_norm=True, impl=self.impl)  # normalize_latents
        x = self.dense(x).reshape(x.shape[0], -1, 4, 4)
        x = ops.bias_act(x, self.dense_bias, pixel_norm=True, impl=self.impl)
        return self.blocks[0](x)

    def forward(
        self,
        z: torch.Tensor,
        res: Optional[int] = None,
        alpha: Union[float, torch.Tensor] = 1.0,
        labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Images at `res` (default: the largest), with the newest block faded in by `alpha` (a float or 0-d
        tensor); `labels`: (N,) class indices or (N, label_size) vectors, required for a conditional G."""
        k = _log2_res(res or self.resolution, self.resolution, "Generator")
        if self.label_size and labels is None:
            raise ValueError(f"Generator was built with label_size={self.label_size}; pass labels=")
        run = _Precision(z, self.amp_min_res)
        x = run(4, self._block4, z, labels)
        for i in range(1, k - 2):
            x = run(2 ** (i + 2), self.blocks[i], x)
        if k == 2:
            return run(4, self.to_rgb[0], x)
        high = run(2**k, lambda x: self.to_rgb[k - 2](self.blocks[k - 2](x)), x)
        if isinstance(alpha, (int, float)) and alpha >= 1:
            return high
        return ops.fade_in(run(2 ** (k - 1), self.to_rgb[k - 3], x), high, alpha, impl=self.impl)


class Discriminator(nn.Module):
    """D(images, alpha=1.0) -> (N, 1 + label_size) scores; the resolution is taken from the images.

    Args:
        resolution: the largest input resolution, a power of two >= 4.
        num_channels: image channels.
        fmap_base, fmap_max: as for Generator.
        mbstd_group_size: minibatch-stddev group size at 4x4; 0 or 1 leaves the layer out.
        label_size: AC-GAN class logits after the score, 0 for none.
        fused_scale: official D_paper's fused_scale; False pools after each block's second conv, bias and LReLU.
        impl: the ops backend ('auto', 'ref', 'triton', 'ext', 'compiled').
    """

    def __init__(
        self,
        resolution: int = 1024,
        num_channels: int = 3,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        mbstd_group_size: int = 4,
        label_size: int = 0,
        fused_scale: bool = True,
        impl: str = "auto",
    ):
        super().__init__()
        self.resolution_log2 = _log2_res(resolution, 2**30, "Discriminator")
        self.resolution, self.num_channels, self.label_size, self.impl = resolution, num_channels, label_size, impl
        self.fused_scale = bool(fused_scale)
        self.amp_min_res = None
        nf = _nf(fmap_base, fmap_max)
        self.from_rgb = nn.ModuleList(
            [
                EqualizedConv2d(num_channels, nf(k - 1), 1, act=LRELU, impl=impl)
                for k in range(2, self.resolution_log2 + 1)
            ]
        )
        c4 = nf(1)
        layers4 = [MinibatchStdDev(mbstd_group_size, impl=impl)] if mbstd_group_size > 1 else []
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    *layers4,
                    EqualizedConv2d(c4 + len(layers4), c4, 3, padding=1, act=LRELU, impl=impl),
                    EqualizedLinear(
                        c4 * 16, nf(0), act=LRELU, flatten=True, impl=impl
                    ),  # the paper's conv 4x4; officially dense
                    EqualizedLinear(nf(0), 1 + label_size, gain=1.0, act="linear", impl=impl),
                )
            ]
        )
        for k in range(3, self.resolution_log2 + 1):
            self.blocks.append(
                nn.Sequential(
                    EqualizedConv2d(nf(k - 1), nf(k - 1), 3, padding=1, act=LRELU, impl=impl),
                    EqualizedConv2d(
                        nf(k - 1), nf(k - 2), 3, padding=1, down=True, fused_scale=fused_scale, act=LRELU, impl=impl
                    ),
                )
            )

    def forward(self, images: torch.Tensor, alpha: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """Scores of (N, num_channels, R, R) images, R a power of two up to `resolution`; `alpha` fades in the
        newest block (a float or 0-d tensor)."""
        if images.ndim != 4 or images.shape[1] != self.num_channels or images.shape[2] != images.shape[3]:
            raise ValueError(f"Discriminator expects (N, {self.num_channels}, R, R) images, got {tuple(images.shape)}")
        k = _log2_res(images.shape[-1], self.resolution, "Discriminator")
        run = _Precision(images, self.amp_min_res)
        x = run(2**k, self.from_rgb[k - 2], images)
        if k > 2:
            x = run(2**k, self.blocks[k - 2], x)
            if not (isinstance(alpha, (int, float)) and alpha >= 1):
                low = run(2 ** (k - 1), self.from_rgb[k - 3], F.avg_pool2d(images, 2))
                x = ops.fade_in(low, x, alpha, impl=self.impl)
            for i in range(k - 3, 0, -1):
                x = run(2 ** (i + 2), self.blocks[i], x)
        return run(4, self.blocks[0], x)
