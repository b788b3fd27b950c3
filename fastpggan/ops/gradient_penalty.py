"""gradient_penalty: the WGAN-GP term of Gulrajani et al., as the official loss.py computes it per sample:

    gp[n] = (||g_n||_2 - target)^2        with g_n the gradient of D's score w.r.t. sample n's input

The norm is taken in fp32 (fp64 stays fp64). Uses torch.linalg.vector_norm, whose gradient at g_n = 0 is 0 rather than NaN.
"""
import torch

from fastpggan.kernels._layout import empty_in_layout_of

from . import _dispatch, _ext
from ._util import triton_unavailable, upcast


def gradient_penalty_ref(grads, target):
    g = upcast(grads)
    norms = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
    return (norms - target).square()


_dispatch.register("gradient_penalty", "ref", gradient_penalty_ref)


def gradient_penalty_double_backward(ddg, dgp, g, r, target):
    """Gradients of dg = dgp * h(r) * g, h(r) = 2 (r - t) / r, w.r.t. (dgp, g), given ddg; r = ||g_n||.

        d dgp = h(r) <ddg, g>
        d g   = dgp h(r) ddg + dgp <ddg, g> 2 t g / r^3          (both 0 where r = 0)

    Plain PyTorch, so it is itself differentiable.
    """
    n = g.shape[0]
    gf, ddf = upcast(g).reshape(n, -1), upcast(ddg).reshape(n, -1)
    dgp, r = upcast(dgp), r.to(gf.dtype)
    nonzero = r > 0
    safe_r = torch.where(nonzero, r, torch.ones_like(r))
    h = torch.where(nonzero, 2 * (r - target) / safe_r, torch.zeros_like(r))
    dot = (ddf * gf).sum(dim=1)
    d_dgp = h * dot
    d_g = (dgp * h)[:, None] * ddf + torch.where(nonzero, dgp * dot * 2 * target / safe_r ** 3,
                                                   torch.zeros_like(r))[:, None] * gf
    return d_dgp, d_g.reshape(g.shape).to(g.dtype)


# Fast backends: (||g|| - t)^2 and its backward are kernels (a Triton custom op, or an extension op); the
# backward's backward is the formula above.

def _acc(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fake(grads, target):
    n = grads.shape[0]
    return grads.new_empty((n,), dtype=_acc(grads)), grads.new_empty((n,), dtype=_acc(grads))


def _fake_grad(dgp, grads, r, target):
    return empty_in_layout_of(grads)


def wire(fwd, grad):
    """Register fake tensors and autograd for one backend's (penalty, backward) ops; fwd returns (gp, r)."""
    def setup(ctx, inputs, output):
        grads, ctx.target = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(grads, output[1])

    def backward(ctx, dgp, _dr):
        grads, r = ctx.saved_tensors
        return grad(dgp, grads, r, ctx.target), None

    def grad_setup(ctx, inputs, output):
        dgp, grads, r, ctx.target = inputs
        ctx.save_for_backward(dgp, grads, r)

    def grad_backward(ctx, ddg):
        dgp, grads, r = ctx.saved_tensors
        d_dgp, d_g = gradient_penalty_double_backward(ddg, dgp, grads, r, ctx.target)
        return d_dgp.to(dgp.dtype), d_g, None, None

    torch.library.register_fake(fwd, _fake)
    torch.library.register_fake(grad, _fake_grad)
    torch.library.register_autograd(fwd, backward, setup_context=setup)
    torch.library.register_autograd(grad, grad_backward, setup_context=grad_setup)


def _kernels():
    from fastpggan.kernels import gradient_penalty as k
    return k


@torch.library.custom_op("fastpggan::gradient_penalty_triton", mutates_args=())
def _gp_triton_op(grads: torch.Tensor, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(gp, r): the penalty and the norms r = ||g_n||, saved for the backward."""
    return _kernels().gradient_penalty(grads, target)


@torch.library.custom_op("fastpggan::gradient_penalty_grad_triton", mutates_args=())
def _gp_grad_triton_op(dgp: torch.Tensor, grads: torch.Tensor, r: torch.Tensor, target: float) -> torch.Tensor:
    return _kernels().gradient_penalty_grad(dgp, grads, r, target)


wire(_gp_triton_op, _gp_grad_triton_op)


def gradient_penalty_triton(grads, target):
    return _gp_triton_op(grads, float(target))[0]


_dispatch.register("gradient_penalty", "triton", gradient_penalty_triton, triton_unavailable)


@_ext.on_load
def _wire_ext():
    wire(_ext.op("gradient_penalty"), _ext.op("gradient_penalty_grad"))


def gradient_penalty_ext(grads, target):
    return _ext.op("gradient_penalty")(grads, float(target))[0]


_dispatch.register("gradient_penalty", "ext", gradient_penalty_ext, _ext.ext_unavailable)


def gp_interpolate_ref(reals, fakes, u):
    """xhat = real + u[n] * (fake - real): the WGAN-GP sample between a real and a fake image."""
    return torch.lerp(reals, fakes.to(reals.dtype), u.to(reals.dtype).reshape(-1, *([1] * (reals.ndim - 1))))


_dispatch.register("gp_interpolate", "ref", gp_interpolate_ref)


def _gp_interpolate_setup(ctx, inputs, output):
    reals, fakes, u = inputs
    ctx.save_for_backward(reals, fakes, u)


def _gp_interpolate_backward(ctx, dy):
    reals, fakes, u = ctx.saved_tensors
    uu = u.to(dy.dtype).reshape(-1, *([1] * (dy.ndim - 1)))
    du = ((fakes.to(dy.dtype) - reals.to(dy.dtype)) * dy).reshape(dy.shape[0], -1).sum(1).to(u.dtype)
    return ((1 - uu) * dy).to(reals.dtype), (uu * dy).to(fakes.dtype), du


def wire_interpolate(op):
    """Register fake tensors and autograd (the linear map's transpose, in PyTorch) for a gp_interpolate op."""
    torch.library.register_fake(op, lambda reals, fakes, u: empty_in_layout_of(reals))
    torch.library.register_autograd(op, _gp_interpolate_backward, setup_context=_gp_interpolate_setup)


@torch.library.custom_op("fastpggan::gp_interpolate_triton", mutates_args=())
def _gp_interpolate_triton_op(reals: torch.Tensor, fakes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return _kernels().gp_interpolate(reals, fakes, u)


wire_interpolate(_gp_interpolate_triton_op)
_dispatch.register("gp_interpolate", "triton", _gp_interpolate_triton_op, triton_unavailable)


@_ext.on_load
def _wire_gp_interpolate_ext():
    wire_interpolate(_ext.op("gp_interpolate"))


def gp_interpolate_ext(reals, fakes, u):
    return _ext.op("gp_interpolate")(reals, fakes, u)


_dispatch.register("gp_interpolate", "ext", gp_interpolate_ext, _ext.ext_unavailable)


def gp_interpolate(reals, fakes, u, *, impl="auto"):
    """Per-sample interpolation real + u[n] * (fake - real), u of shape (N,) (official loss.py `mixed_images`)."""
    if reals.shape != fakes.shape or u.ndim != 1 or u.shape[0] != reals.shape[0]:
        raise ValueError(f"gp_interpolate: reals {tuple(reals.shape)} and fakes {tuple(fakes.shape)} must match "
                         f"and u must be ({reals.shape[0]},), got {tuple(u.shape)}")
    return _dispatch.resolve("gp_interpolate", impl, reals)(reals, fakes, u)


def gradient_penalty(grads, *, target=1.0, impl="auto"):
    """Per-sample (||g_n|| - target)^2, shape (N,), in fp32 (fp64 for fp64 input)."""
    if grads.ndim < 1 or grads.shape[0] == 0:
        raise ValueError(f"gradient_penalty expects (N, ...) gradients, got shape {tuple(grads.shape)}")
    return _dispatch.resolve("gradient_penalty", impl, grads)(grads, float(target))
