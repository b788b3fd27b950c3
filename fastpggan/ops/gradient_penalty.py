"""gradient_penalty: the WGAN-GP term of Gulrajani et al., as the official loss.py computes it per sample:

    gp[n] = (||g_n||_2 - target)^2        with g_n the gradient of D's score w.r.t. sample n's input

The norm is taken in fp32 (fp64 stays fp64). Uses torch.linalg.vector_norm, whose gradient at g_n = 0 is 0 rather
than NaN. Also gp_interpolate, the sample the penalty is taken at: xhat = real + u[n] * (fake - real).
"""

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from fastpggan.kernels._tensors import accumulator_dtype, empty_in_layout_of, like_layout

from . import _dispatch
from ._backends import KernelOp, register_backends
from ._util import upcast
from .opspec import CPU_OPS_RESULT, EXT_ON_CPU, Inputs, NoVariant, OpSpec, Probe, dtype_name, odd_shapes


def gradient_penalty(grads: torch.Tensor, *, target: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Per-sample (||g_n|| - target)^2 (official loss.py D_wgangp_acgan).

    Args:
        grads: (N, ...) gradients of D's scores w.r.t. its inputs, one sample per row.
        target: the norm the penalty pulls towards (WGAN-GP: 1).
        impl: 'auto', 'ref', 'triton', 'ext' or 'compiled' (see fastpggan.ops).

    Returns:
        (N,) in fp32 (fp64 for fp64 input). Differentiable twice.
    """
    if grads.ndim < 1 or grads.shape[0] == 0:
        raise ValueError(f"gradient_penalty expects (N, ...) gradients, got shape {tuple(grads.shape)}")
    fn = _dispatch.resolve("gradient_penalty", impl, grads, extra=dict(target=float(target)))
    return fn(grads, float(target))


def gp_interpolate(reals: torch.Tensor, fakes: torch.Tensor, u: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """The WGAN-GP sample real + u[n] * (fake - real) (official loss.py `mixed_images`).

    Args:
        reals: (N, ...) real images.
        fakes: fake images of reals' shape.
        u: (N,) mixing factors, one per sample.
        impl: 'auto', 'ref', 'triton', 'ext' or 'compiled' (see fastpggan.ops).

    Returns:
        Tensor of reals' shape and dtype. Differentiable to any order.
    """
    if reals.shape != fakes.shape or u.ndim != 1 or u.shape[0] != reals.shape[0]:
        raise ValueError(
            f"gp_interpolate: reals {tuple(reals.shape)} and fakes {tuple(fakes.shape)} must match "
            f"and u must be ({reals.shape[0]},), got {tuple(u.shape)}"
        )
    fn = _dispatch.resolve(
        "gp_interpolate",
        impl,
        reals,
        extra=dict(fakes_dtype=dtype_name(fakes), u_dtype=dtype_name(u)),
        others=(fakes, u),
    )
    return fn(reals, fakes, u)


def gradient_penalty_ref(grads: torch.Tensor, target: float) -> torch.Tensor:
    """Plain-PyTorch oracle. Differentiable to any order."""
    return (_norms(grads) - target).square()


def _norms(grads):
    """||g_n||_2 per sample, in the accumulator dtype."""
    return torch.linalg.vector_norm(upcast(grads).reshape(grads.shape[0], -1), dim=1)


def _norm_factor(r, target):
    """h(r) = 2 (r - t) / r, the penalty's gradient over g_n; 0 where r = 0."""
    nonzero = r > 0
    return torch.where(nonzero, 2 * (r - target) / torch.where(nonzero, r, torch.ones_like(r)), torch.zeros_like(r))


def gp_interpolate_ref(reals: torch.Tensor, fakes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch oracle: torch.lerp, one pass."""
    return torch.lerp(reals, fakes.to(reals.dtype), u.to(reals.dtype).reshape(-1, *([1] * (reals.ndim - 1))))


def gradient_penalty_double_backward(
    ddg: torch.Tensor,
    dgp: torch.Tensor,
    g: torch.Tensor,
    r: torch.Tensor,
    target: float,
    need_dgp: bool = True,
    need_g: bool = True,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of dg = dgp * h(r) * g, h(r) = 2 (r - t) / r, w.r.t. (dgp, g), given ddg; r = ||g_n||.

        d dgp = h(r) <ddg, g>
        d g   = dgp h(r) ddg + dgp <ddg, g> 2 t g / r^3          (both 0 where r = 0)

    Each is computed only if asked for (None otherwise). Plain PyTorch, so it is itself differentiable.
    """
    n = g.shape[0]
    gf, ddf = upcast(g).reshape(n, -1), upcast(ddg).reshape(n, -1)
    dgp, r = upcast(dgp), r.to(gf.dtype)
    nonzero = r > 0
    safe_r = torch.where(nonzero, r, torch.ones_like(r))
    h = _norm_factor(r, target)
    dot = (ddf * gf).sum(dim=1)
    d_dgp = h * dot if need_dgp else None
    d_g = None
    if need_g:
        radial = torch.where(nonzero, dgp * dot * 2 * target / safe_r**3, torch.zeros_like(r))
        d_g = (dgp * h)[:, None] * ddf + radial[:, None] * gf
        d_g = d_g.reshape(g.shape).to(g.dtype)
    return d_dgp, d_g


# Fast backends: (||g|| - t)^2 and its backward are kernel ops; the backward's backward is the formula above.
#   gradient_penalty       (grads, target) -> (gp, r)       r = ||g_n||, saved for the backward
#   gradient_penalty_grad  (dgp, grads, r, target) -> dgrads
# gp_interpolate is one kernel op; its backward (the linear map's transpose) is PyTorch.


def _fake(grads, target):
    acc = accumulator_dtype(grads.dtype)
    return grads.new_empty((grads.shape[0],), dtype=acc), grads.new_empty((grads.shape[0],), dtype=acc)


def _fake_grad(dgp, grads, r, target):
    return empty_in_layout_of(grads)


def _autograd(k):
    def setup(ctx, inputs, output):
        grads, ctx.target = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(grads, output[1])

    def backward(ctx, dgp, _dr):
        if not ctx.needs_input_grad[0]:
            return None, None
        grads, r = ctx.saved_tensors
        return k.gradient_penalty_grad(dgp, grads, r, ctx.target), None

    def grad_setup(ctx, inputs, output):
        dgp, grads, r, ctx.target = inputs
        ctx.save_for_backward(dgp, grads, r)

    def grad_backward(ctx, ddg):
        dgp, grads, r = ctx.saved_tensors
        need_dgp, need_g = ctx.needs_input_grad[:2]
        d_dgp, d_g = gradient_penalty_double_backward(ddg, dgp, grads, r, ctx.target, need_dgp, need_g)
        return (d_dgp.to(dgp.dtype) if d_dgp is not None else None), d_g, None, None

    return {"gradient_penalty": (setup, backward), "gradient_penalty_grad": (grad_setup, grad_backward)}


def _call(k, grads, target):
    return k.gradient_penalty(grads, float(target))[0]


# The kernel ops in plain PyTorch, computed as the kernels compute them: the bodies of the compiled backend.


def _torch_gradient_penalty(grads, target):
    r = _norms(grads)
    return (r - target).square(), r


def _torch_gradient_penalty_grad(dgp, grads, r, target):
    scale = upcast(dgp) * _norm_factor(r, target)
    dg = scale.reshape(-1, *[1] * (grads.ndim - 1)) * upcast(grads)
    return like_layout(dg.to(grads.dtype), grads)


def _torch_gp_interpolate(real, fake, u):
    return like_layout(gp_interpolate_ref(real, fake, u), real)


TORCH_KERNELS: Dict[str, Callable[..., Any]] = {
    "gradient_penalty": _torch_gradient_penalty,
    "gradient_penalty_grad": _torch_gradient_penalty_grad,
    "gp_interpolate": _torch_gp_interpolate,
}


def _probe(v, shape, extra, inputs: Inputs) -> Probe:
    g = inputs.tensor(shape)
    target = extra.get("target", 1.0)
    return Probe([g], [1], lambda impl: gradient_penalty(g, target=target, impl=impl), True)


def _images(shapes):
    """(res, N, 3, res, res): the images D sees at each stage."""
    return [(res, (n, 3, res, res)) for res, (n, _) in shapes.items()]


register_backends(
    OpSpec(
        "gradient_penalty",
        gradient_penalty_ref,
        NoVariant,
        _probe,
        check_cases=lambda dtype, layout, big: [(NoVariant(), shape, dict(target=2.0)) for shape in odd_shapes(big)],
        bench_cases=lambda shapes: [
            ("gradient_penalty", res, NoVariant(), shape, {}) for res, shape in _images(shapes)
        ],
        # forward reads g; the backward reads g again and writes dg
        traffic=lambda v: (1, 3),
        # forward + backward at 4-32^2, fp32, vs ref: 1.1-1.8x on the CPU; CUDA: ref until checked on the GPU
        auto_order=EXT_ON_CPU,
        auto_order_source=CPU_OPS_RESULT,
    ),
    kernels="gradient_penalty",
    torch_kernels=TORCH_KERNELS,
    autograd=_autograd,
    call=_call,
    kernel_ops={
        "gradient_penalty": KernelOp("(Tensor grads, float target) -> (Tensor, Tensor)", _fake),
        "gradient_penalty_grad": KernelOp("(Tensor dgp, Tensor grads, Tensor r, float target) -> Tensor", _fake_grad),
    },
)


def _interpolate_autograd(k):
    def setup(ctx, inputs, output):
        reals, fakes, u = inputs
        ctx.save_for_backward(reals, fakes, u)

    def backward(ctx, dy):
        reals, fakes, u = ctx.saved_tensors
        need_reals, need_fakes, need_u = ctx.needs_input_grad
        uu = u.to(dy.dtype).reshape(-1, *([1] * (dy.ndim - 1)))
        d_reals = ((1 - uu) * dy).to(reals.dtype) if need_reals else None
        d_fakes = (uu * dy).to(fakes.dtype) if need_fakes else None
        d_u = None
        if need_u:
            d_u = ((fakes.to(dy.dtype) - reals.to(dy.dtype)) * dy).reshape(dy.shape[0], -1).sum(1).to(u.dtype)
        return d_reals, d_fakes, d_u

    return {"gp_interpolate": (setup, backward)}


def _interpolate_probe(v, shape, extra, inputs: Inputs) -> Probe:
    reals = inputs.tensor(shape)
    fakes = inputs.tensor(shape, extra.get("fakes_dtype"))
    u = inputs.tensor((shape[0],), extra.get("u_dtype") or "float32", positive=True, layout="contiguous")
    return Probe(
        [reals, fakes, u],
        [1, 1, reals.numel() // shape[0]],
        lambda impl: gp_interpolate(reals, fakes, u, impl=impl),
        True,
    )


register_backends(
    OpSpec(
        "gp_interpolate",
        gp_interpolate_ref,
        NoVariant,
        _interpolate_probe,
        check_cases=lambda dtype, layout, big: [
            (NoVariant(), shape, dict(fakes_dtype=dtype, u_dtype="float32")) for shape in odd_shapes(big)
        ],
        bench_cases=lambda shapes: [
            ("gp_interpolate", res, NoVariant(), shape, dict(u_dtype="float32")) for res, shape in _images(shapes)
        ],
        # forward reads reals and fakes and writes the sample; the backward reads dy and writes both gradients
        traffic=lambda v: (3, 6),
        # torch.lerp is already one pass; per-call overhead makes ext no faster on the CPU
        auto_order={"cpu": ("ref",), "cuda": ("ref",)},
        auto_order_source=CPU_OPS_RESULT,
    ),
    kernels="gradient_penalty",
    torch_kernels=TORCH_KERNELS,
    autograd=_interpolate_autograd,
    call=lambda k, reals, fakes, u: k.gp_interpolate(reals, fakes, u),
    kernel_ops={
        "gp_interpolate": KernelOp(
            "(Tensor real, Tensor fake, Tensor u) -> Tensor", lambda real, fake, u: empty_in_layout_of(real)
        )
    },
)
