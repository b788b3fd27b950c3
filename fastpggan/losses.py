"""WGAN-GP losses as in the official loss.py (D_wgangp_acgan, G_wgan_acgan).

    L_D = D(fake) - D(real) + lambda/target^2 * (||grad_xhat D(xhat)|| - target)^2 + drift * D(real)^2
    xhat = real + u * (fake - real),   u ~ U(0, 1) per sample
    L_G = -D(fake)

With labels, D returns (N, 1 + L): column 0 is the score and the rest are AC-GAN logits, which add a softmax
cross-entropy term for reals and fakes (D) or fakes (G), weight 1. The per-sample losses are averaged over the
minibatch, as officially (tfutil.Optimizer gets tf.reduce_mean of them).
`D` is any callable mapping images to scores. The fakes are detached in the D loss.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import ops
from .ops import upcast


def _split(out):
    out = upcast(out)
    return out[:, :1], out[:, 1:]


def _label_term(logits, labels):
    if labels is None or logits.shape[1] == 0:
        return 0.0
    target = labels.long() if not labels.is_floating_point() else labels.to(logits.dtype)
    return F.cross_entropy(logits, target, reduction="none")


def penalty_points(reals: torch.Tensor, fakes: torch.Tensor, u: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """The points where the gradient penalty is taken: xhat = real + u * (fake - real), u of shape (N,), the fakes
    in the reals' dtype (ops.gp_interpolate computes it)."""
    return ops.gp_interpolate(reals, fakes.to(reals.dtype), u, impl=impl)


def d_loss_wgan_gp(
    D: Callable[[torch.Tensor], torch.Tensor],
    reals: torch.Tensor,
    fakes: torch.Tensor,
    *,
    lambda_gp: float = 10.0,
    drift: float = 1e-3,
    labels: Optional[torch.Tensor] = None,
    target: float = 1.0,
    impl: str = "auto",
    u: Optional[torch.Tensor] = None,
    grad_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Scalar WGAN-GP critic loss, averaged over the minibatch (official loss.py D_wgangp_acgan).

    Args:
        D: any callable images -> (N, 1 + L) scores (column 0 the score, the rest AC-GAN logits).
        reals, fakes: (N, C, R, R) images; the fakes are detached.
        lambda_gp: the gradient-penalty weight; the penalty is divided by target^2, as officially.
        drift: the epsilon-drift weight on D(real)^2.
        labels: (N,) class indices for the AC-GAN terms, or None.
        target: the gradient norm the penalty pulls towards.
        impl: the ops backend of the interpolation and the penalty.
        u: (N,) per-sample mixing factors of the GP sample (default U(0, 1)).
        grad_scale: fp16 training: a 0-d tensor S, the GradScaler's scale. The penalty's gradient is then taken of
            S * D(xhat), which keeps D's fp16 backward from underflowing, and divided by S before the fp32 norm
            (PyTorch's AMP gradient-penalty recipe).

    Returns:
        0-d fp32 tensor (fp64 for fp64 scores).
    """
    fakes = fakes.detach()
    real_scores, real_logits = _split(D(reals))
    fake_scores, fake_logits = _split(D(fakes))
    if u is None:
        u = torch.rand(reals.shape[0], device=reals.device)
    xhat = penalty_points(reals.detach(), fakes, u, impl).requires_grad_(True)
    mixed_scores = D(xhat)[:, :1]
    out = upcast(mixed_scores).sum()
    (grads,) = torch.autograd.grad(out if grad_scale is None else out * grad_scale, xhat, create_graph=True)
    if grad_scale is not None:
        grads = upcast(grads) / grad_scale
    gp = ops.gradient_penalty(grads, target=target, impl=impl)
    loss = (
        (fake_scores - real_scores).squeeze(1) + gp * (lambda_gp / target**2) + drift * real_scores.square().squeeze(1)
    )
    loss = loss + _label_term(real_logits, labels) + _label_term(fake_logits, labels)
    return loss.mean()


def g_loss_wgan(
    D: Callable[[torch.Tensor], torch.Tensor], fakes: torch.Tensor, *, labels: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Scalar WGAN generator loss -D(fake), plus the AC-GAN term with labels, averaged over the minibatch
    (official loss.py G_wgan_acgan)."""
    scores, logits = _split(D(fakes))
    return (-scores.squeeze(1) + _label_term(logits, labels)).mean()
