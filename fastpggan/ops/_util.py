"""What every op module needs: the upcast to the accumulator dtype, and whether Triton can run on a tensor."""

import importlib
import re
from typing import List, Optional

import torch

from fastpggan.kernels._tensors import accumulator_dtype

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# (atol, rtol) per dtype for a fast backend against `_ref` run on the same inputs: the tests' and the tuner's.
TOLERANCE = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def tolerance_ratio(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    count: int = 1,
    slack: Optional[torch.Tensor] = None,
) -> float:
    """max |actual - expected| / bound, elementwise bound = atol * max(1, max|expected|) * sqrt(count) + rtol *
    |expected| (+ slack) with TOLERANCE[dtype]: within tolerance iff <= 1 (inf for non-finite values or other
    shapes).

    atol is relative to the tensor's scale because a gradient's absolute error follows its largest terms; count is
    the number of terms a value sums over (bias gradients, the upsampled fade's dlow), 1 elsewhere. slack is an
    elementwise error the op declares for its fast backward beyond that (opspec.Probe.grad_slack)."""
    if actual.shape != expected.shape:
        return float("inf")
    atol, rtol = TOLERANCE[dtype]
    actual, expected = actual.detach().double(), expected.detach().double()
    if not bool(torch.isfinite(actual).all()):
        return float("inf")
    if actual.numel() == 0:
        return 0.0
    err = (actual - expected).abs()
    bound = atol * max(1.0, expected.abs().max().item()) * count**0.5 + rtol * expected.abs()
    if slack is not None:
        bound = bound + slack.detach().double()
    return (err / bound).max().item()


_kernels_error: List[Optional[str]] = []  # [] until checked, then [None] or [reason]
_interpreter_error: List[Optional[str]] = [None]  # interpreter_broken(), read once with the kernels' import


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in its accumulator dtype: fp16/bf16 become fp32, fp32 and fp64 (for gradcheck) stay as they are."""
    return x.to(accumulator_dtype(x.dtype))


def _kernels_import_error():
    if not _kernels_error:
        try:
            importlib.import_module("fastpggan.kernels._common")  # imports triton
            _kernels_error.append(None)
            _interpreter_error[0] = interpreter_broken()  # once, eagerly: dynamo (torch 2.6) cannot trace re
        except Exception as e:  # an ImportError, or a Triton that cannot initialise
            _kernels_error.append(f"{type(e).__name__}: {e}")
    return _kernels_error[0]


def triton_unavailable(x: torch.Tensor):
    """None if the Triton kernels can run on tensor x, else a sentence saying why not and what to do."""
    err = _kernels_import_error()
    if err is not None:
        return f"Triton cannot be imported ({err}); install it with `pip install triton`"
    from fastpggan.kernels._common import INTERPRETED

    if x.device.type == "cpu" and not INTERPRETED:
        return (
            "Triton kernels run on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before importing "
            "fastpggan (the slow interpreter, meant for tests)"
        )
    if INTERPRETED and _interpreter_error[0] is not None:
        return _interpreter_error[0]
    if x.device.type not in ("cpu", "cuda"):
        return f"there are no Triton kernels for {x.device.type} tensors"
    if x.dtype not in TRITON_DTYPES:
        return f"the Triton kernels take float16/bfloat16/float32/float64, not {x.dtype}"
    return None


def _major_minor(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def interpreter_broken() -> Optional[str]:
    """Why this Triton's CPU interpreter (TRITON_INTERPRET=1) cannot run our kernels, or None.

    Before Triton 3.7 the interpreter reads a run-time loop bound with int() on a 1-element array, which NumPy
    2.4 made an error ("only 0-dimensional arrays can be converted to Python scalars"); 3.7 squeezes it first."""
    import numpy
    import triton

    if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
        return (
            f"Triton {triton.__version__}'s CPU interpreter cannot run with NumPy {numpy.__version__} "
            "(it calls int() on 1-element arrays, an error since NumPy 2.4): "
            "install 'numpy<2.4', or a torch whose Triton is 3.7 or newer"
        )
    return None
