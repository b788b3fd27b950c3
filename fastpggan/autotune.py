"""Backend choice by checking and measuring where the code runs (the way cuDNN's benchmark mode and Triton's
autotuner choose, except that a backend must first give the reference's answer).

For each case (ops.tune_cache: op, variant, dtype, layout, shape class) on a device:
1. validate: every available backend runs the case on fresh random inputs, and its output, its first-order
   gradients and, for the ops that promise them, its second-order gradients (in float64) must match `_ref` within
   the tests' tolerances (ops.TOLERANCE). A backend that differs, raises, hangs or kills the process is
   excluded for that case, with one warning naming op, case, backend and what was found;
2. time forward + backward of the backends that passed: a warm-up, then the median of several runs, on
   synchronised clocks (CUDA events on a GPU);
3. choose the fastest, and write it to the device's tune cache (ops.tune_cache), atomically and under a lock, so
   that two processes tuning at once leave a valid file holding both.

Steps 1 and 2 (fastpggan.backend_measure) run in a child process fed the cases as JSON: an illegal memory access
poisons a CUDA context, and a crash there cannot take the caller down. After a crash a new child goes on with the
next backend. Nothing is measured while a CUDA graph is captured, torch.compile traces or an export
runs: tuning then only reads what is cached.

`tune_model(module, example_inputs)` tunes a user's own model: it records the cases one forward and backward
runs, then tunes those. fastpggan.trainer tunes the cases of its whole schedule at start-up.
"""

import math
import time
import warnings
from typing import Callable, List, Optional, Sequence

import torch

from .backend_measure import ITEM_TIMEOUT_S, Case, candidates, cases_from_records, make_probe, measure, time_case  # noqa: F401  (Case, make_probe, time_case, candidates: this module's API, as before)
from .ops import backends, tune_cache

# -- choosing and the cache --------------------------------------------------------------------------------------


def measuring_forbidden() -> Optional[str]:
    """Why nothing may be measured right now (a CUDA-graph capture, a torch.compile trace, an export), or None."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if backends.exporting():
        return "a model is being exported"
    return None


def _device_of(cases):
    devices = {str(torch.device(c.device)) for c in cases}
    if len(devices) != 1:
        raise ValueError(f"fastpggan.autotune: tune one device at a time, got {sorted(devices)}")
    return torch.device(devices.pop())


def tune_cases(
    cases: Sequence[Case],
    *,
    force: bool = False,
    measure_new: bool = True,
    log: Callable = print,
    seed: Optional[int] = None,
    timeout_s: float = ITEM_TIMEOUT_S,
) -> dict:
    """Choose a backend for each case: the cached choice, or (for cases not cached, or all with `force`) the
    fastest backend that matches the reference, measured now and cached.

    Args:
        cases: the cases, all on one device.
        force: measure again even the cases the cache holds.
        measure_new: False measures nothing: the result then holds the cached choices only.
        log: where the one-line warnings about rejected backends go (also issued as warnings).
        seed: the inputs' seed (default: a fresh one per tuning).
        timeout_s: how long one backend may take on one case before it counts as hung.

    Returns:
        {"device": device key, "choices": {case key: impl}, "entries": {case key: cache entry}, "measured": number
        of cases measured now, "bandwidth": copy bytes/s measured now or None}. Entries hold per backend its time
        (s), tolerance ratio, or the reason it was excluded.
    """
    if not cases:
        return dict(device=None, choices={}, entries={}, measured=0, bandwidth=None)
    device = _device_of(cases)
    data = tune_cache.read(device)
    cached = (data or {}).get("choices", {})
    unique = {c.key: c for c in cases}
    todo = [c for k, c in unique.items() if force or k not in cached] if measure_new else []
    forbidden = measuring_forbidden()
    if forbidden and todo:
        warnings.warn(
            f"fastpggan.autotune: not measuring while {forbidden}; {len(todo)} case(s) keep the static backend order",
            stacklevel=2,
        )
        todo = []
    entries, bandwidth = {}, None
    if todo:
        try:
            measured = measure(todo, seed=seed, timeout_s=timeout_s)
        except (OSError, RuntimeError, ValueError) as e:  # 'auto' never errors: the static order stands in
            _warn(f"tuning failed ({str(e)[:300]}); {len(todo)} case(s) keep the static order", log)
            todo, measured = [], dict(bandwidth=None, results=[])
        bandwidth = measured["bandwidth"]
        for case, res in zip(todo, measured["results"]):
            entries[case.key] = _entry(case, res, bandwidth, log)
        if entries:
            tune_cache.write(device, entries)
    all_entries = {k: entries.get(k) or cached.get(k) for k in unique}
    choices = {k: e["impl"] for k, e in all_entries.items() if e}
    return dict(
        device=tune_cache.device_key(device),
        choices=choices,
        entries=all_entries,
        measured=len(todo),
        bandwidth=bandwidth,
    )


def _warn(what: str, log: Callable) -> None:
    """One warning, and the same line in `log` (unless the log is plain print, which the warning already is)."""
    msg = f"fastpggan.autotune: {what}"
    if log is not print:
        log(f"warning: {what}")
    warnings.warn(msg, stacklevel=3)


def _entry(case, res, bandwidth, log):
    ok = {impl: r for impl, r in res.items() if r.get("ok")}
    for impl, r in res.items():
        if not r.get("ok"):
            _warn(f"{case.op} on {case.key}: excluding impl='{impl}': {r['error']}", log)
    if ok:
        impl = min(ok, key=lambda i: ok[i]["seconds"])
    else:  # nothing passed, not even ref (which is not compared): keep ref, the oracle
        impl = "ref"
    entry = dict(
        impl=impl,
        shape=list(case.shape),
        bytes=traffic_bytes(case),
        seconds={i: r["seconds"] for i, r in ok.items()},
        compile_seconds={i: r["compile_seconds"] for i, r in ok.items() if "compile_seconds" in r},
        tolerance_ratio={i: round(r["ratio"], 4) for i, r in ok.items() if i != "ref"},
        max_error={i: r["max_error"] for i, r in ok.items() if i != "ref"},
        excluded={i: r["error"] for i, r in res.items() if not r.get("ok")},
        measured=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if bandwidth:
        entry["copy_bytes_per_s"] = bandwidth
    return entry


def traffic_bytes(case: Case, backward: bool = True) -> int:
    """The least bytes forward (+ backward) of `case` move, from the op's declaration (the numerator of its GB/s)."""
    forward, both = backends.op_spec(case.op).traffic(case.variant)
    elements = math.prod(case.shape) * torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    return int((both if backward else forward) * elements)


# -- recording the cases of a model ------------------------------------------------------------------------------


def record(fn: Callable, *args, **kwargs) -> List[dict]:
    """The `ops.backends.recording()` records of every impl='auto' op call that fn(*args, **kwargs) makes (the calls
    run the reference)."""
    with backends.recording() as calls:
        fn(*args, **kwargs)
    return calls


def tune_model(
    module: torch.nn.Module,
    example_inputs: Sequence,
    *,
    backward: bool = True,
    force: bool = False,
    log: Callable = print,
) -> dict:
    """Tune the cases that `module(*example_inputs)` runs, ahead of use: drop-in fastpggan layers in a user's own
    model then use the measured backends (impl='auto' reads the tune cache).

    Args:
        module: any nn.Module built on fastpggan ops or layers.
        example_inputs: the positional inputs of one representative call (its batch size is the one tuned).
        backward: also run a backward pass (the backward kernels are timed with each op either way; this records
            the cases of ops that only the backward reaches).
        force: measure again even the cases the cache holds.
        log: where warnings about rejected backends go.

    Returns:
        tune_cases' result: {"device", "choices": {case key: impl}, "entries", "measured", "bandwidth"}.
    """

    def run():
        out = module(*example_inputs)
        if backward:
            outs = [
                o
                for o in (out if isinstance(out, (tuple, list)) else [out])
                if isinstance(o, torch.Tensor) and o.requires_grad
            ]
            if outs:
                torch.autograd.backward([o.float().sum() for o in outs])

    cases = cases_from_records(record(run))
    return tune_cases(cases, force=force, log=log)
