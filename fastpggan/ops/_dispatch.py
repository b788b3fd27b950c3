"""Backend selection shared by every op: impl='auto'|'ref'|'triton'|'ext'.

Each op module registers its backends here through `_backends.register_backends`. A backend is a function plus
an `unavailable(x)` check that returns None when the backend can run on tensor `x`, or a sentence saying what is
missing.

- An explicit impl that is unavailable raises `BackendUnavailable` with that sentence.
- 'auto' (or the FASTPGGAN_IMPL environment variable, which overrides 'auto') tries the backends in the
  order measured fastest for the tensor's device, and falls back to the next with one warning per op,
  backend and reason.
"""
import os
import warnings

IMPLS = ("ref", "triton", "ext")

# Fastest-first backends per op and device type, as measured by benchmarks/ (see README "Backends"); an op or
# device not listed uses 'ref'. Changed only with a committed measurement.
AUTO_ORDER = {
    # CPU: the extension's C++ kernels; forward+backward at 4-32^2, fp32, vs ref: bias_act 2.2-2.9x, with pixel norm
    # 2.7-5.3x, fade_in 1.2-2.4x, minibatch_stddev 3.4x, gradient_penalty 1.1-1.8x
    # (benchmarks/results/cpu-2core-20261122-ops.md). CUDA: ref until the fast backends are timed on a GPU.
    "bias_act": {"cpu": ("ext", "ref"), "cuda": ("ref",)},
    "fade_in": {"cpu": ("ext", "ref"), "cuda": ("ref",)},
    "minibatch_stddev": {"cpu": ("ext", "ref"), "cuda": ("ref",)},
    "gradient_penalty": {"cpu": ("ext", "ref"), "cuda": ("ref",)},
    # torch.lerp is already one pass; per-call overhead makes ext no faster on the CPU
    "gp_interpolate": {"cpu": ("ref",), "cuda": ("ref",)},
}

_registry = {}  # op name -> {impl: (fn, unavailable)}
_warned = set()


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this op here."""


def register(op, impl, fn, unavailable=lambda x: None):
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}")
    _registry.setdefault(op, {})[impl] = (fn, unavailable)


def _missing(op, impl, x):
    entry = _registry.get(op, {}).get(impl)
    if entry is None:
        what = {"triton": "fastpggan.kernels has no Triton kernel", "ext": "the fastpggan._C extension has no kernel",
                "ref": "no reference implementation"}[impl]
        return f"{what} for {op} in this version"
    return entry[1](x)


def _check_impl(impl, source):
    if impl not in ("auto",) + IMPLS:
        raise ValueError(f"{source} must be one of 'auto', 'ref', 'triton', 'ext'; got {impl!r}")


def impl_unavailable(impl, device):
    """Why an explicit `impl` cannot run the ops on `device` (checked on a small fp32 tensor there), or None;
    'auto' always can. Lets a command line refuse a backend in one line before it starts anything."""
    if impl == "auto":
        return None
    import torch
    x = torch.zeros(1, 1, 4, 4, device=device)
    for op in sorted(_registry):
        reason = _missing(op, impl, x)
        if reason is not None:
            return f"{op}: {reason}"
    return None


def resolve(op, impl, x):
    """Return the function that runs `op` on tensor `x` for the requested `impl`."""
    _check_impl(impl, "impl")
    if impl == "auto":
        env = os.environ.get("FASTPGGAN_IMPL", "auto").strip().lower() or "auto"
        _check_impl(env, "FASTPGGAN_IMPL")
        order = AUTO_ORDER.get(op, {}).get(x.device.type, ("ref",)) if env == "auto" else (env,)
        for cand in tuple(order) + tuple(i for i in ("ref",) if i not in order):
            reason = _missing(op, cand, x)
            if reason is None:
                return _registry[op][cand][0]
            key = (op, cand, reason)
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"fastpggan: {op} impl='{cand}' unavailable ({reason}); falling back", stacklevel=3)
        raise BackendUnavailable(f"{op}: no backend can run on {x.device.type} tensors")
    reason = _missing(op, impl, x)
    if reason is not None:
        raise BackendUnavailable(f"{op}: impl='{impl}' is not available: {reason}. Use impl='ref' or 'auto'.")
    return _registry[op][impl][0]
