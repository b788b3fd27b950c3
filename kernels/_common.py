"""Launch helpers shared by the kernels: output allocation, block sizes, index width and the Triton
accumulator dtype (layouts and the accumulator rule itself are in _tensors)."""

import os

import torch
import triton
import triton.language as tl

from ._tensors import accumulator_dtype

# Set at import: @triton.jit reads TRITON_INTERPRET when a kernel is defined, so this tells how ours were built.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Tests set POISON = True so every output starts as NaN: an element a kernel forgets to write then fails the test.
POISON = False

# One config each, no autotuning. The interpreter pays per program, so it gets bigger blocks.
ELEMENTWISE_BLOCK = 16384 if INTERPRETED else 1024
TILE_ELEMENTS = 16384 if INTERPRETED else 4096
# Pixel norm keeps a pixel's channels in one tile up to this many; above, it loops over chunks of this many (a
# wider tile spills on sm_90: 3.8-9.4 KB of stack per thread at 8192).
MAX_TILE_CHANNELS = 1024


def empty(shape, *, like=None, dtype=None, device=None, memory_format=None):
    """torch.empty (or empty_like), NaN-filled when POISON is set."""
    if like is not None:
        kw = {"dtype": dtype} if dtype is not None else {}
        if memory_format is not None:
            kw["memory_format"] = memory_format
        out = torch.empty_like(like, **kw)
    else:
        out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format or torch.contiguous_format)
    if POISON and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def acc_dtype(t):
    """The Triton dtype of t's accumulator (see accumulator_dtype)."""
    return tl.float64 if accumulator_dtype(t.dtype) == torch.float64 else tl.float32


def needs_int64(*tensors):
    """Whether element offsets can pass int32 (with a block of slack); int64 index arithmetic costs far more."""
    return any(t.numel() >= 2**31 - 2**16 for t in tensors)


@triton.jit
def program_start(BLOCK: tl.constexpr, INT64: tl.constexpr):
    """First index of this program's block, in int64 only where offsets can overflow int32."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    return pid * BLOCK


def cdiv(a, b):
    return triton.cdiv(a, b)


def pow2(n):
    return triton.next_power_of_2(max(int(n), 1))
