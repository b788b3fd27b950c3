"""The public backend API: which backends can run here and why not, forcing one, what 'auto' chose, and the
declared ops. (The tune cache's location and format: fastpggan.ops.tune_cache; tuning for given shapes or a
model: fastpggan.autotune.tune_cases / tune_model.)

    from fastpggan import ops
    ops.backends.available("bias_act", device="cuda")    # {'ref': None, 'triton': None, 'ext': 'why not', ...}
    with ops.backends.pin("ref"):                         # every impl='auto' call in the block runs 'ref'
        loss = D(x).mean()
    with ops.backends.choices_made() as log:              # what 'auto' ran, per call, and why
        G(z)

'auto' is forced by, innermost first: a `pin(impl)` block, `set_default(impl)`, the environment variable
FASTPGGAN_IMPL. Otherwise it runs the run's frozen choices (`use_choices`, the trainer's), else this device's tune
cache, else the op's static order (`OpSpec.auto_order`). Pins are process-wide, not per thread.
"""

from typing import Dict, List, Optional, Union

import torch

from . import _compiled, _dispatch
from ._compiled import Stats as CompileStats
from ._dispatch import (
    IMPLS,
    BackendUnavailable,
    auto_backend,
    choices_made,
    declare,
    exporting,
    forced,
    forget,
    impl_unavailable,
    pin,
    prepare,
    recording,
    resolve,
    set_default,
    unavailable,
    undeclare,
    use_choices,
)
from .opspec import OpSpec, all_specs, spec

__all__ = [
    "IMPLS",
    "BackendUnavailable",
    "available",
    "pin",
    "set_default",
    "forced",
    "choices_made",
    "auto_backend",
    "use_choices",
    "recording",
    "forget",
    "exporting",
    "unavailable",
    "impl_unavailable",
    "declare",
    "undeclare",
    "declared",
    "op_spec",
    "resolve",
    "compile_stats",
    "CompileStats",
    "prepare",
]


def available(
    op: Optional[str] = None, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32
) -> Dict[str, Dict[str, Optional[str]]]:
    """Which backends can run each op here, checked on a small tensor of `dtype` on `device`.

    Args:
        op: one op's name, or None for every declared op.
        device: where the op would run.
        dtype: the tensors' dtype.

    Returns:
        {op: {impl: None if it can run, else a sentence saying what is missing}}.
    """
    return _dispatch.available(op, device, dtype)


def declared() -> List[OpSpec]:
    """Every declared op's OpSpec, in declaration order (the five PGGAN ops, then any declared since)."""
    return all_specs()


def op_spec(op: str) -> OpSpec:
    """The OpSpec of a declared op (ValueError if there is none)."""
    return spec(op)


def compile_stats(total: bool = False) -> Union[Dict[str, CompileStats], CompileStats]:
    """What impl='compiled' did in this process: per kernel op (or summed, with `total`), the graphs compiled, the
    seconds of the calls that compiled, the calls that ran compiled code, and the calls that ran the uncompiled body
    after a failed compile or the recompile limit (`failure` says why). Compare two readings around a call to know
    that it ran compiled code."""
    return _compiled.totals() if total else _compiled.stats()
