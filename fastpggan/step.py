"""One PGGAN training step, the official one (official train.py: `[D_train_op, Gs_update_op]`, then `G_train_op`):

    D step:  L_D = D(G(z)) - D(x) + lambda/t^2 (||grad D(xhat)|| - t)^2 + drift D(x)^2   (WGAN-GP, losses.py)
    EMA:     G_ema <- G_ema + (1 - beta) (G - G_ema)         (official Gs: averages G as it was before its step)
    G step:  L_G = -D(G(z'))
    Adam:    TensorFlow's (optim.TFAdam): eps added to sqrt(v) before the bias correction

The penalty's target t is 2^floor(lod) = (full resolution) / (current resolution). The official D takes every
image at full resolution (reals and fakes nearest-upscaled, official train.py process_reals and G_paper) and
box-downscales it itself (networks.py D_paper), and the gradient is taken w.r.t. the full-resolution mix
(loss.py D_wgangp_acgan). Its norm is ||g_native|| / t, and lambda (||g_native|| / t - 1)^2 is the term above.
`gp_native_res=True` takes target 1 at every resolution instead (the paper's text read literally).

A step is a function of its inputs only (`StepInputs`: uint8 reals, mirror flags, latents, GP mixing factors and
labels, drawn by the caller), of alpha and of the learning rate. It never reads a value back to the host, so the
same code runs eagerly (`TrainStep`) or is captured once per stage and replayed (cuda_graph.CudaGraphStep), with
the same numbers either way.

Mixed precision (`amp_dtype`):
- bf16: autocast, nothing else.
- fp16: autocast plus one torch.amp.GradScaler per network. The gradient penalty follows PyTorch's recipe: the
  gradient is taken of the scaled output with create_graph=True and unscaled by hand before its norm, and the
  whole loss is then scaled for backward. A step whose gradients overflow is skipped on the device (TFAdam
  reads the scaler's found_inf), with no host sync.
In every backend the pixel-norm and minibatch-stddev statistics, the GP norm and the losses are computed in fp32;
parameters, Adam state and G_ema stay fp32.
"""

import functools
from dataclasses import dataclass, fields
from typing import Optional, Union

import torch
import torch.nn.functional as F

from . import distributed, losses, ops
from .images import from_uint8

# What a checkpoint's config records as "step_version": 2, the official step (this module's doc). Checkpoints without
# it were written by fastpggan 0.1, whose step took the penalty at target 1 at every resolution, added Adam's eps
# after the bias correction and updated G_ema after the G step.
STEP_VERSION = 2


@dataclass
class StepInputs:
    """Everything random or data-dependent that one step consumes, as tensors on the training device."""

    reals: torch.Tensor  # (N, C, R, R) uint8
    z_d: torch.Tensor  # (N, latent) latents of the D step's fakes
    u: torch.Tensor  # (N,) GP mixing factors
    z_g: torch.Tensor  # (N, latent) latents of the G step
    flip: Optional[torch.Tensor] = None  # (N,) bool mirror flags, or None without --mirror
    labels_d: Optional[torch.Tensor] = None  # (N,) labels of the reals (and of the D step's fakes)
    labels_g: Optional[torch.Tensor] = None  # (N,) labels of the G step's fakes

    def tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def random_inputs(
    n: int,
    channels: int,
    res: int,
    latent_size: int,
    device: torch.device,
    generator: torch.Generator,
    mirror: bool = False,
    labels: bool = False,
) -> StepInputs:
    """Inputs of one step from `generator` (random images, latents, GP factors; no flips, class 0): what
    autotune records a stage's op calls with, and what the self-test times the step on."""
    dev = torch.device(device)
    flags = torch.zeros(n, dtype=torch.bool, device=dev) if mirror else None
    classes = torch.zeros(n, dtype=torch.long, device=dev) if labels else None
    return StepInputs(
        reals=torch.randint(0, 256, (n, channels, res, res), generator=generator, device=dev, dtype=torch.uint8),
        z_d=torch.randn(n, latent_size, generator=generator, device=dev),
        u=torch.rand(n, generator=generator, device=dev),
        z_g=torch.randn(n, latent_size, generator=generator, device=dev),
        flip=flags,
        labels_d=classes,
        labels_g=classes,
    )


def reals_to_float(
    reals_u8: torch.Tensor,
    flip: Optional[torch.Tensor],
    alpha: Union[float, torch.Tensor],
    fading: bool,
    channels_last: bool,
    impl: str,
) -> torch.Tensor:
    """uint8 -> [-1, 1], per-sample mirror, and official process_reals: lerp(upsample(avgpool(x)), x, alpha)."""
    x = from_uint8(reals_u8)
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if fading:
        x = ops.fade_in(F.avg_pool2d(x, 2), x, alpha, impl=impl)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class TrainStep:
    """The eager step. `step(inputs, res, alpha)` -> fp32 tensor [loss_D, loss_G]; the lr is set on the optimizers.

    `alpha` is passed to the networks as a 0-d device tensor while fading (alpha < 1), so that the eager and the
    graphed step compute the same kernels with the same arguments.

    Args:
        G, D, G_ema: the networks, on one device; G_ema is updated in place.
        opt_G, opt_D: their optimizers (optim.make_optimizer).
        lambda_gp, drift: the WGAN-GP loss weights (losses.d_loss_wgan_gp).
        ema: G_ema's smoothing per step (official 0.999).
        gp_native_res: penalty target 1 at every resolution, instead of the official 2^floor(lod) (module doc).
        impl: the ops backend.
        amp_dtype: None (fp32), torch.bfloat16 (autocast), or torch.float16 (autocast and a GradScaler per network).
        channels_last: convert the reals to channels_last (run the networks in it too).
        ctx: the distributed context; gradients are averaged over its ranks.
        batch_gpu: rows per forward pass; fewer than the minibatch accumulate gradients.
    """

    def __init__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        G_ema: torch.nn.Module,
        opt_G: torch.optim.Optimizer,
        opt_D: torch.optim.Optimizer,
        *,
        lambda_gp: float = 10.0,
        drift: float = 1e-3,
        ema: float = 0.999,
        gp_native_res: bool = False,
        impl: str = "auto",
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        ctx: Optional[distributed.Context] = None,
        batch_gpu: Optional[int] = None,
    ):
        self.G, self.D, self.G_ema, self.opt_G, self.opt_D = G, D, G_ema, opt_G, opt_D
        self.lambda_gp, self.drift, self.ema, self.impl = lambda_gp, drift, ema, impl
        self.gp_native_res = gp_native_res
        self.full_res = getattr(D, "module", D).resolution
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.ctx = ctx or distributed.Context()
        self.batch_gpu = batch_gpu
        self.device = next(G.parameters()).device
        fp16 = amp_dtype == torch.float16
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.alpha_t = torch.zeros((), device=self.device)
        self._params_G, self._params_ema = list(G.parameters()), list(G_ema.parameters())

    # -- state --------------------------------------------------------------------------------------------------
    def scaler_state(self):
        if not self.scaler_D.is_enabled():
            return None
        return {"D": self.scaler_D.state_dict(), "G": self.scaler_G.state_dict()}

    def load_scaler_state(self, state):
        if state and self.scaler_D.is_enabled():
            self.scaler_D.load_state_dict(state["D"])
            self.scaler_G.load_state_dict(state["G"])

    # -- the step -----------------------------------------------------------------------------------------------
    def _autocast(self):
        # No weight-cast cache: it would be captured into a graph, and without it each of D's three calls per
        # D step casts its own copy, so their weight gradients are summed in fp32 rather than in fp16.
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
            cache_enabled=False,
        )

    def _chunks(self, n):
        """Row slices of at most --batch-gpu rows (gradient accumulation)."""
        size = min(self.batch_gpu or n, n)
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def alpha_arg(self, alpha: float) -> Union[float, torch.Tensor]:
        """What the networks get for alpha: 1.0 when not fading, else the device tensor (filled in place)."""
        if alpha >= 1.0:
            return 1.0
        self.alpha_t.fill_(alpha)
        return self.alpha_t

    def _loss_scale(self, scaler: torch.amp.GradScaler) -> Optional[torch.Tensor]:
        """fp16: the scaler's current scale as a device tensor (scaler.scale(1)), which the losses are multiplied by
        (GradScaler.scale itself is outside what torch.compile traces); else None."""
        return scaler.scale(torch.ones((), device=self.device)) if scaler.is_enabled() else None

    def step(self, inputs: StepInputs, res: int, alpha: float) -> torch.Tensor:
        return self.run(inputs, res, self.alpha_arg(alpha))

    def run(self, inputs: StepInputs, res: int, alpha: Union[float, torch.Tensor], update: bool = True) -> torch.Tensor:
        """The step body; alpha is 1.0 or a 0-d tensor. No host syncs: this is what a CUDA graph captures.
        update=False runs the losses and their backward passes only (no all-reduce, optimizer step or EMA) and
        leaves no gradients: what fastpggan.autotune records the step's op calls with."""
        fading = isinstance(alpha, torch.Tensor)
        reals = reals_to_float(inputs.reals, inputs.flip, alpha, fading, self.channels_last, self.impl)

        # D step
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        loss_D = self.d_pass(reals, inputs.z_d, inputs.u, inputs.labels_d, res, alpha, self._loss_scale(self.scaler_D))
        if update:
            distributed.all_reduce_grads_(self.D, self.ctx)
            self.scaler_D.step(self.opt_D)
            self.scaler_D.update()
            # G_ema, from G before its step (official: Gs_update_op runs with D_train_op)
            with torch.no_grad():
                torch._foreach_lerp_(self._params_ema, self._params_G, 1.0 - self.ema)

        # G step
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        loss_G = self.g_pass(inputs.z_g, inputs.labels_g, res, alpha, self._loss_scale(self.scaler_G))
        if update:
            distributed.all_reduce_grads_(self.G, self.ctx)
            self.scaler_G.step(self.opt_G)
            self.scaler_G.update()
        else:
            self.opt_D.zero_grad(set_to_none=True)
            self.opt_G.zero_grad(set_to_none=True)
        self.D.requires_grad_(True)
        return torch.stack([loss_D.float(), loss_G.float()])

    def d_pass(
        self,
        reals: torch.Tensor,
        z: torch.Tensor,
        u: torch.Tensor,
        labels: Optional[torch.Tensor],
        res: int,
        alpha: Union[float, torch.Tensor],
        loss_scale: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """D's loss on reals, fakes and the penalty, and its backward into D's .grad (chunk by chunk), scaled by
        `loss_scale` (fp16's GradScaler; None: 1); -> the detached loss. What fastpggan.compiled_step compiles as
        one graph."""
        n = reals.shape[0]
        gp_target = 1.0 if self.gp_native_res else self.full_res / res
        loss = torch.zeros((), device=self.device)
        for c in self._chunks(n):
            lab = labels[c] if labels is not None else None
            with self._autocast():
                with torch.no_grad():
                    fakes = self.G(z[c], res, alpha, lab)
                part = losses.d_loss_wgan_gp(
                    functools.partial(self.D, alpha=alpha),
                    reals[c],
                    fakes,
                    lambda_gp=self.lambda_gp,
                    drift=self.drift,
                    labels=lab,
                    target=gp_target,
                    impl=self.impl,
                    u=u[c],
                    grad_scale=loss_scale,
                )
            part = part * ((c.stop - c.start) / n)
            (part if loss_scale is None else part * loss_scale).backward()
            loss = loss + part.detach()
        return loss

    def g_pass(
        self,
        z: torch.Tensor,
        labels: Optional[torch.Tensor],
        res: int,
        alpha: Union[float, torch.Tensor],
        loss_scale: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """G's loss -D(G(z)) and its backward into G's .grad (D frozen), scaled by `loss_scale`; -> the detached
        loss."""
        n = z.shape[0]
        loss = torch.zeros((), device=self.device)
        for c in self._chunks(n):
            lab = labels[c] if labels is not None else None
            with self._autocast():
                part = losses.g_loss_wgan(
                    functools.partial(self.D, alpha=alpha), self.G(z[c], res, alpha, lab), labels=lab
                )
            part = part * ((c.stop - c.start) / n)
            (part if loss_scale is None else part * loss_scale).backward()
            loss = loss + part.detach()
        return loss
