"""Where a run happens: the device, the log, the cache folder, and what every user of torch.compile here
shares. Shared by every command line and below.

Standard library and torch only; any module of the package may import it.
"""

import os
import types
from typing import Any, Callable, Optional

import torch

from .errors import UserError


def cache_root() -> str:
    """The cache folder of datasets, the extension's builds and FID statistics: $FASTPGGAN_CACHE, else
    ~/.cache/fastpggan."""
    return os.environ.get("FASTPGGAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastpggan")


def device_memory(device: torch.device) -> Optional[int]:
    """Bytes of memory of `device` (a GPU's total, or the machine's RAM for the CPU), or None where unknown."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def pick_device(spec: str) -> torch.device:
    """--device auto|cpu|cuda|cuda:N -> a torch.device; auto is CUDA when a GPU is visible, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: there are only {torch.cuda.device_count()} CUDA GPUs")
    return dev


def silent(*args: Any, **kwargs: Any) -> None:
    """A log that prints nothing: the processes other than rank 0 of a multi-process run."""


def own_code(fn: Callable, name: str) -> Callable:
    """fn with its own code object named `name`: dynamo keeps its graphs, guards and recompile count on the code
    object, so each copy compiled is a separate cache with its own recompile limit."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def compile_failure(e: BaseException) -> str:
    """'Type: first line' of a torch.compile failure, for a one-line warning (BackendCompilerFailed wraps
    inductor's own error, which is the one named)."""
    cause = getattr(e, "inner_exception", None) or e
    return f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}"


def dynamo_errors() -> tuple:
    """The exception types of torch.compile failing to trace or compile (as opposed to the compiled code failing)."""
    import torch._dynamo.exc as exc

    return (exc.TorchDynamoException,) + tuple(e for e in (getattr(exc, "FailOnRecompileLimitHit", None),) if e)
