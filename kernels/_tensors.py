"""What the kernels' tensors look like, in plain torch (no Triton), so that the ops' fake functions and the
kernels' launchers share one rule each: the memory layouts they accept and keep, and the dtype they sum in."""

import torch


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and statistics are computed in: float64 for float64 (gradcheck), float32 for everything
    else (fp16/bf16 inputs are upcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_channels_last(t):
    """True for a 4-d tensor stored NHWC and not also NCHW-contiguous (then both orders are the same)."""
    return t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def dense(t):
    """t itself if it is NCHW-contiguous or channels_last, else an NCHW-contiguous copy."""
    return t if t.is_contiguous() or is_channels_last(t) else t.contiguous()


def like_layout(t, ref):
    """t stored in ref's layout (NCHW-contiguous or channels_last)."""
    if is_channels_last(ref):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def empty_in_layout_of(ref, shape=None, dtype=None):
    """An empty tensor laid out as the kernels lay out their output for input `ref`."""
    fmt = torch.channels_last if is_channels_last(ref) else torch.contiguous_format
    return torch.empty(
        ref.shape if shape is None else shape, dtype=dtype or ref.dtype, device=ref.device, memory_format=fmt
    )
