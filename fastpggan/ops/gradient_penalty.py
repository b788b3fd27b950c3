"""gradient_penalty: the WGAN-GP term of Gulrajani et al., as the official loss.py computes it per sample:

    gp[n] = (||g_n||_2 - target)^2        with g_n the gradient of D's score w.r.t. sample n's input

The norm is taken in fp32 (fp64 stays fp64). Uses torch.linalg.vector_norm, whose gradient at g_n = 0 is 0 rather than NaN.
"""
import torch

from . import _dispatch
from ._util import upcast


def gradient_penalty_ref(grads, target):
    g = upcast(grads)
    norms = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
    return (norms - target).square()


_dispatch.register("gradient_penalty", "ref", gradient_penalty_ref)


def gradient_penalty(grads, *, target=1.0, impl="auto"):
    """Per-sample (||g_n|| - target)^2, shape (N,), in fp32 (fp64 for fp64 input)."""
    if grads.ndim < 1 or grads.shape[0] == 0:
        raise ValueError(f"gradient_penalty expects (N, ...) gradients, got shape {tuple(grads.shape)}")
    return _dispatch.resolve("gradient_penalty", impl, grads)(grads, float(target))
