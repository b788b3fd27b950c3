"""The 'compiled' backend's kernel bodies: each op module's plain-PyTorch kernel ops (TORCH_KERNELS) through
`torch.compile(fullgraph=True)`, one compiled function per kernel op and *case class*.

A case class is what makes dynamo recompile besides the sizes: each tensor argument's dtype, rank, layout and
sizes of 1, which optional arguments are None, and the scalars' values (a layer's gain, the slope). Each class gets
its own copy of the body's code object, so dynamo's per-code recompile limit (8) counts only the recompiles for
sizes within one class (automatic dynamic shapes: a static graph, then at most one recompile per dimension that
changes), never the classes a training run or a test suite visits. With one code object per kernel op, dynamo
guarding on its own recompiled up to 9 times per kernel op and hit the limit within tests/test_backends.py.

What runs is always compiled code or a stated fallback: with fullgraph=True a graph break or the recompile limit
raises instead of running eagerly, and that error (or a failed compile) is caught here, recorded in `stats()`,
warned about once, and the call computed by the eager body; the kernel op's backend is `unavailable` from then on,
so impl='auto' moves to the next backend. Autotune and the tests compare `stats()` before and after a call, so a
fallback is never timed or passed as 'compiled'.

`dynamic=None` (automatic) and the default mode were chosen by measurement: see DYNAMIC below.
"""

import dataclasses
import shutil
import threading
import time
import warnings
from typing import Callable, Dict, Optional

import torch

from ..errors import env_flag
from ..runtime import compile_failure, dynamo_errors, own_code
from ._util import TRITON_DTYPES, _kernels_import_error
from .tune_cache import layout_of

# Chosen by measurement (benchmarks/compiled_settings.py; benchmarks/results/cpu-2core-20261203-compiled-settings.md):
# automatic dynamic shapes (a static graph first, then dynamic in the sizes that changed) steady at 0.130 s for the
# small GAN's passes, against 0.143-0.152 s with every size marked dynamic at the first call and 0.141-0.171 s with
# dynamic=True (whose floats inductor specialises anyway, and whose warm-cache compile took 32 s, not 9 s).
# dynamic=False was as fast (0.124-0.138 s) but recompiles for every size, and a class's ninth size hits dynamo's
# recompile limit (tests/test_compiled.py). The default mode: 'max-autotune-no-cudagraphs' gained nothing on the
# CPU, and 'reduce-overhead' would nest CUDA graphs inside the trainer's.
DYNAMIC: Optional[bool] = None  # torch.compile(dynamic=...)
MARK_DYNAMIC = False  # every tensor dimension dynamic from the first compile (maybe_mark_dynamic)
MODE: Optional[str] = None  # torch.compile(mode=...)


@dataclasses.dataclass
class Stats:
    """What the compiled backend did in this process, per kernel op: graphs compiled, seconds spent in calls that
    compiled, calls that ran compiled code, and fallbacks to the eager body (with the reason of the first)."""

    graphs: int = 0
    compile_s: float = 0.0
    calls: int = 0
    fallbacks: int = 0
    failure: Optional[str] = None


_stats: Dict[str, Stats] = {}
_functions: Dict[tuple, Callable] = {}  # (kernel op, case class) -> compiled function
_lock = threading.Lock()


def stats() -> Dict[str, Stats]:
    """{kernel op name: Stats} (copies) of every compiled kernel op called in this process."""
    return {name: dataclasses.replace(s) for name, s in _stats.items()}


def totals() -> Stats:
    """The sum of stats() over kernel ops (failure: the first recorded)."""
    out = Stats()
    for s in _stats.values():
        out.graphs, out.compile_s, out.calls = out.graphs + s.graphs, out.compile_s + s.compile_s, out.calls + s.calls
        out.fallbacks += s.fallbacks
        out.failure = out.failure or s.failure
    return out


def _case_class(args) -> tuple:
    """What dynamo would otherwise guard on by value: each tensor's dtype, rank, layout and which of its sizes are 1
    (0/1 specialization), and the value of each scalar (gain and slope choose branches and get specialized)."""

    def part(a):
        if isinstance(a, torch.Tensor):
            return str(a.dtype), layout_of(a), tuple(n == 1 for n in a.shape)
        return a if a is None or isinstance(a, (bool, int, float)) else type(a).__name__

    return tuple(part(a) for a in args)


def _function(name: str, body: Callable, args) -> Callable:
    key = (name, _case_class(args))
    fn = _functions.get(key)
    if fn is None:
        with _lock:
            fn = _functions.get(key)
            if fn is None:
                stat = _stats.setdefault(name, Stats())

                def backend(gm, example_inputs):  # inductor, counting the graphs dynamo hands it
                    from torch._inductor import list_mode_options
                    from torch._inductor.compile_fx import compile_fx

                    stat.graphs += 1
                    return compile_fx(gm, example_inputs, config_patches=list_mode_options(MODE) if MODE else None)

                copy = own_code(body, f"{body.__name__}_class{len(_functions)}")
                fn = _functions[key] = torch.compile(copy, fullgraph=True, dynamic=DYNAMIC, backend=backend)
    return fn


def kernel_body(name: str, body: Callable) -> Callable:
    """The body of the custom op `fastpggan::<name>_compiled`: `body` compiled for the call's case class."""

    def run(*args):
        # Detached: autograd is handled outside the custom op, and requires_grad would be one more guard.
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        if MARK_DYNAMIC:  # one graph for all sizes, not one recompile per dimension that changes
            for a in args:
                if isinstance(a, torch.Tensor) and a.dim():
                    torch._dynamo.maybe_mark_dynamic(a, list(range(a.dim())))
        stat = _stats.setdefault(name, Stats())
        if stat.failure is None:
            fn, graphs, start = None, stat.graphs, time.perf_counter()
            try:
                fn = _function(name, body, args)  # torch.compile itself refuses a Python dynamo does not support
                with torch.no_grad():  # inference graphs
                    out = fn(*args)
                stat.calls += 1
                if stat.graphs != graphs:
                    stat.compile_s += time.perf_counter() - start
                return out
            except Exception as e:
                if fn is not None and not isinstance(e, dynamo_errors()):
                    raise  # an error of the compiled code itself (out of memory, ...), not of compiling
                stat.failure = f"torch.compile failed on {name}: {compile_failure(e)}"
                warnings.warn(
                    f"fastpggan: {stat.failure}; this call ran uncompiled, and impl='compiled' is "
                    "unavailable for the op from now on",
                    stacklevel=2,
                )
        stat.fallbacks += 1
        return body(*args)

    run.__name__ = name
    return run


def failure(names) -> Optional[str]:
    """The recorded compile failure of any of the kernel ops `names`, or None."""
    return next((_stats[n].failure for n in names if n in _stats and _stats[n].failure), None)


_missing_memo: Dict[str, Optional[str]] = {}  # a plain dict, not functools.cache: a torch.compile trace reads it


def _compiler_missing(device_type: str) -> Optional[str]:
    if device_type not in _missing_memo:
        _missing_memo[device_type] = _find_compiler_missing(device_type)
    return _missing_memo[device_type]


def _find_compiler_missing(device_type: str) -> Optional[str]:
    # Whether dynamo supports this Python is found by the first compile (a failure like any other): importing
    # torch._dynamo to ask would make the first op call import all of dynamo.
    if device_type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH"
        return None
    if device_type == "cuda":
        err = _kernels_import_error()
        if err is not None:
            return f"torch.compile on CUDA needs Triton ({err}); install it with `pip install triton`"
        if torch.cuda.get_device_capability() < (7, 0):
            return "torch.compile's Triton kernels need a GPU of compute capability 7.0 or newer"
        return None
    return f"the compiled backend runs on CPU and CUDA tensors, not {device_type}"


def unavailable(names) -> Callable[[torch.Tensor], Optional[str]]:
    """The backend's check for an op whose kernel ops are `names`."""

    def check(x: torch.Tensor) -> Optional[str]:
        if env_flag("FASTPGGAN_NO_COMPILE"):
            return "FASTPGGAN_NO_COMPILE is set, which turns the compiled backend off"
        missing = _compiler_missing(x.device.type)
        if missing is not None:
            return missing
        if x.dtype not in TRITON_DTYPES:
            return f"the compiled kernels take float16/bfloat16/float32/float64, not {x.dtype}"
        return failure(names)

    return check


def reset() -> None:
    """Forget every compiled function, count and recorded failure (tests; a new process starts so)."""
    with _lock:
        _functions.clear()
        _stats.clear()
