"""Memory layouts the kernels accept, in plain torch (no Triton), so fake/meta functions can share the rule."""
import torch


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
    return torch.empty(ref.shape if shape is None else shape, dtype=dtype or ref.dtype, device=ref.device,
                       memory_format=fmt)
