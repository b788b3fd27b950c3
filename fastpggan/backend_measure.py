"""Steps 1 and 2 of fastpggan.autotune, in a child process: every available backend of each case is checked
against `_ref` (output, first-order and, where the op promises them, float64 second-order gradients, within
ops.TOLERANCE) and, where it passes, timed (a warm-up, then the median of several runs on synchronised clocks).

`measure(cases)` runs them in `python -m fastpggan.backend_measure`, fed the cases as JSON: an illegal memory
access poisons a CUDA context, and a crash there cannot take the caller down. After a crash a new child goes on
with the next backend; a backend that hangs past ITEM_TIMEOUT_S is killed and excluded for that case.
"""

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

from .ops import backends, opspec, tolerance_ratio, tune_cache
from .ops.opspec import Probe

MARK = "@fastpggan-tune "  # prefix of the protocol lines the child writes on its stdout
ITEM_TIMEOUT_S = 600.0  # a backend that takes longer than this on one case is treated as hung
TIME_BUDGET_S = 0.25  # timing per backend and case, after the warm-up (at least MIN_RUNS runs)
MIN_RUNS, MAX_RUNS = 5, 50


@dataclass
class Case:
    """One op call's kind, with a representative shape (the key keeps only its shape class). `variant` is the op's
    variant type (ops: OpSpec.variant); its text, as in a case key, is parsed on construction."""

    op: str
    variant: Any
    shape: tuple
    dtype: str
    layout: str
    device: str
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.variant, str):
            self.variant = backends.op_spec(self.op).parse_variant(self.variant)

    @property
    def key(self) -> str:
        return tune_cache.case_key(self.op, self.variant, getattr(torch, self.dtype), self.layout, self.shape)

    def to_json(self) -> dict:
        return dict(
            op=self.op,
            variant=str(self.variant),
            shape=list(self.shape),
            dtype=self.dtype,
            layout=self.layout,
            device=self.device,
            extra=self.extra,
        )

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        return cls(
            d["op"], d["variant"], tuple(d["shape"]), d["dtype"], d["layout"], d["device"], dict(d.get("extra") or {})
        )


def cases_from_records(records: Iterable[dict], batch: Optional[int] = None) -> List[Case]:
    """Distinct cases of `ops.backends.recording()` records, in order; `batch` replaces every shape's dim 0."""
    out = {}
    for r in records:
        shape = tuple(r["shape"])
        if batch is not None:
            shape = (batch,) + shape[1:]
        case = Case(r["op"], r["variant"], shape, r["dtype"], r["layout"], r["device"], r["extra"])
        out.setdefault(case.key, case)
    return list(out.values())


# -- one case: its inputs, the call, the check and the clock -------------------------------------------------------


def make_probe(case: Case, dtype: Optional[str] = None, seed: int = 0) -> Probe:
    """Fresh random inputs of `case` (in `dtype` if given: the float64 second-order check) and its call, from the
    op's declaration."""
    inputs = opspec.Inputs(case.dtype, case.layout, case.device, seed, dtype)
    return backends.op_spec(case.op).probe(case.variant, tuple(case.shape), case.extra, inputs)


def _output_grad(out, seed=1):
    gen = torch.Generator(device=out.device).manual_seed(seed)
    return torch.randn(out.shape, generator=gen, device=out.device).to(out.dtype)


def _outputs_and_grads(probe, impl, create_graph=False):
    out = probe.call(impl)
    grads = torch.autograd.grad(out, probe.inputs, _output_grad(out), create_graph=create_graph, allow_unused=True)
    return out, [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, probe.inputs)]


def _second_order(probe, impl):
    _, grads = _outputs_and_grads(probe, impl, create_graph=True)
    gen = torch.Generator(device=grads[0].device).manual_seed(2)
    s = sum(
        (g * torch.randn(g.shape, generator=gen, device=g.device).to(g.dtype)).sum() for g in grads if g.requires_grad
    )
    if not isinstance(s, torch.Tensor):
        return [torch.zeros_like(x) for x in probe.inputs]
    gg = torch.autograd.grad(s, probe.inputs, allow_unused=True)
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(gg, probe.inputs)]


class Mismatch(Exception):
    """A backend's answer differs from the reference's."""


class Uncompiled(Exception):
    """impl='compiled' ran the uncompiled body (a failed compile or dynamo's recompile limit)."""


def validate(case: Case, impl: str, seed: int) -> dict:
    """Check `impl` against 'ref' on fresh inputs of `case`: the output, the first-order gradients (with the
    rounding the op declares for its backward, Probe.grad_slack), and the second-order ones in float64 where the op
    promises them. Returns {"ratio": the worst error / tolerance (<= 1),
    "max_error": the output's largest absolute error}, or raises Mismatch naming what differs."""
    dtype = getattr(torch, case.dtype)
    worst = 0.0
    probe = make_probe(case, seed=seed)
    (y0, g0), (y1, g1) = (_outputs_and_grads(probe, which) for which in ("ref", impl))
    slack = probe.grad_slack(_output_grad(y0)) if probe.grad_slack is not None else [None] * len(g0)
    named = [("output", y1, y0, 1, None)] + [
        (f"gradient of input {i}", *args) for i, args in enumerate(zip(g1, g0, probe.counts, slack))
    ]
    if probe.second_order:
        probe64 = make_probe(case, dtype="float64", seed=seed)
        s0, s1 = _second_order(probe64, "ref"), _second_order(probe64, impl)
        named += [
            (f"second-order gradient of input {i}", a, e, c, None)
            for i, (a, e, c) in enumerate(zip(s1, s0, probe64.counts))
        ]
    for what, actual, expected, count, extra in named:
        tol_dtype = torch.float64 if what.startswith("second") else dtype
        ratio = tolerance_ratio(actual, expected, tol_dtype, count, extra)
        if not ratio <= 1.0:
            err = (actual.detach().double() - expected.detach().double()).abs()
            detail = (
                "non-finite values"
                if not bool(torch.isfinite(actual).all())
                else f"max error {err.max().item():.3g}, {ratio:.3g}x the "
                f"{str(tol_dtype).replace('torch.', '')} tolerance"
            )
            raise Mismatch(f"{what} differs from ref ({detail})")
        worst = max(worst, ratio)
    return dict(ratio=worst, max_error=(y1.detach().double() - y0.detach().double()).abs().max().item())


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(case: Case, impl: str, budget_s: float = TIME_BUDGET_S) -> float:
    """Median seconds of forward + backward of `impl` on `case` after a warm-up (CUDA events on a GPU)."""
    probe = make_probe(case, seed=3)
    device = torch.device(case.device)
    out = probe.call(impl)
    dy = torch.randn_like(out)

    def run():
        torch.autograd.grad(probe.call(impl), probe.inputs, dy, allow_unused=True)

    for _ in range(2):
        run()
    _sync(device)
    times, start = [], time.perf_counter()
    while len(times) < MIN_RUNS or (len(times) < MAX_RUNS and time.perf_counter() - start < budget_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, mib: int = 64) -> float:
    """Bytes per second of a device-to-device copy (read + write), the roofline the op figures are compared to."""
    device = torch.device(device)
    src = torch.empty(mib * 2**20 // 4, device=device).normal_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    _sync(device)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def candidates(case: Case) -> List[str]:
    """The backends that can run `case` here (ref first)."""
    x = torch.empty(case.shape, dtype=getattr(torch, case.dtype), device=case.device)
    if case.layout == "channels_last" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return [i for i in backends.IMPLS if backends.unavailable(case.op, i, x) is None]


# -- the child process -------------------------------------------------------------------------------------------


def _emit(**msg):
    sys.stdout.write(MARK + json.dumps(msg) + "\n")
    sys.stdout.flush()


def worker(job: dict) -> None:
    """The child's side: validate, then time, each (case, backend) of `job`, reporting on stdout as it goes."""
    torch.set_num_threads(job["threads"])
    for name, path in job.get("modules", {}).items():  # ops declared outside fastpggan
        _import_declaring_module(name, path)
    cases = [Case.from_json(c) for c in job["cases"]]
    skip = {tuple(s) for s in job.get("skip", ())}
    if job.get("bandwidth"):
        _emit(bandwidth=copy_bandwidth(cases[0].device))
    for i, case in enumerate(cases):
        if i < job.get("start", 0):
            continue
        for impl in candidates(case):
            if (i, impl) in skip:
                continue
            _emit(start=[i, impl])
            try:
                before = backends.compile_stats(total=True) if impl == "compiled" else None
                checked = dict(ratio=0.0, max_error=0.0) if impl == "ref" else validate(case, impl, job["seed"] + i)
                seconds = time_case(case, impl) if job.get("time", True) else None
                if impl == "compiled":  # compiled code ran, never the uncompiled body; and what compiling cost
                    after = backends.compile_stats(total=True)
                    if after.fallbacks != before.fallbacks:
                        raise Uncompiled(f"ran uncompiled ({after.failure})")
                    checked["compile_seconds"] = after.compile_s - before.compile_s
                _emit(done=[i, impl], ok=True, seconds=seconds, **checked)
            except (Mismatch, Uncompiled) as e:
                _emit(done=[i, impl], ok=False, error=str(e))
            except Exception as e:  # any error excludes the backend for this case
                _emit(
                    done=[i, impl],
                    ok=False,
                    error=f"raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    if str(e)
                    else f"raised {type(e).__name__}",
                )


def _declaring_modules(cases) -> Dict[str, str]:
    """{module: file} of the ops in `cases` declared outside fastpggan, for the child to import."""
    out = {}
    for op in {c.op for c in cases}:
        name = backends.op_spec(op).ref.__module__
        module = sys.modules.get(name)
        if not name.startswith("fastpggan.") and getattr(module, "__file__", None):
            out[name] = module.__file__
    return out


def _import_declaring_module(name: str, path: str) -> None:
    import importlib.util

    if name in sys.modules:
        return
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _read_lines(stream, q):
    for line in stream:
        q.put(line)
    q.put(None)


def measure(
    cases: Sequence[Case], seed: Optional[int] = None, timeout_s: float = ITEM_TIMEOUT_S, timed: bool = True
) -> dict:
    """Validate and (if `timed`) time every available backend on each case, in child processes. Returns
    {"bandwidth": copy bytes/s or None, "results": [{impl: {"ok": True, "ratio", "max_error", "seconds"} or
    {"ok": False, "error"}} per case]}."""
    results: List[Dict[str, dict]] = [{} for _ in cases]
    seed = int(time.time_ns() % 2**31) if seed is None else seed  # fresh inputs on every tuning
    job = dict(
        cases=[c.to_json() for c in cases],
        threads=torch.get_num_threads(),
        seed=seed,
        time=timed,
        modules=_declaring_modules(cases),
    )
    bandwidth, start, skip = None, 0, []
    while start < len(cases):
        job.update(start=start, skip=skip, bandwidth=timed and bandwidth is None)
        current, finished = _run_child(job, results, timeout_s)
        if "bandwidth" in finished:
            bandwidth = finished["bandwidth"]
        if current is None:
            break
        i, impl, error = current  # the (case, backend) the child died on: excluded, and a new child goes on
        results[i][impl] = dict(ok=False, error=error)
        skip.append([i, impl])
        start = i
    return dict(bandwidth=bandwidth, results=results)


def _run_child(job, results, timeout_s):
    """One child over job['cases'][job['start']:]; fills `results`. Returns ((case, impl, why) it died on, or None,
    {'bandwidth': ...} if it reported one)."""
    info = {}
    with (
        tempfile.TemporaryFile(mode="w+") as err,
        subprocess.Popen(
            [sys.executable, "-m", "fastpggan.backend_measure"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as proc,
    ):
        try:
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
        except BrokenPipeError:  # it died before reading its job: its exit status and stderr say why, below
            pass
        lines = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        current = None
        while True:
            try:
                line = lines.get(timeout=timeout_s)
            except queue.Empty:
                proc.kill()
                proc.wait()
                return (*current, f"no answer within {timeout_s:g} s (hung)") if current else None, info
            if line is None:
                break
            if not line.startswith(MARK):
                continue
            msg = json.loads(line[len(MARK) :])
            if "bandwidth" in msg:
                info["bandwidth"] = msg["bandwidth"]
            elif "start" in msg:
                current = tuple(msg["start"])
            elif "done" in msg:
                i, impl = msg.pop("done")
                results[i][impl] = msg
                current = None
        code = proc.wait()
        if current is None and code == 0:
            return None, info
        err.seek(0)
        tail = [ln.strip() for ln in err.read().splitlines() if ln.strip()]
        why = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        why = f"the process {why}" + (f" ({tail[-1][:160]})" if tail else "")
        if current is None:  # died between items (at start-up): nothing to blame, so stop here
            raise RuntimeError(f"fastpggan.autotune: the tuning process failed: {why}")
        return (*current, why), info


if __name__ == "__main__":  # the child process of measure(), run by the imported module (one copy of its state)
    from fastpggan.backend_measure import worker as _worker

    _worker(json.loads(sys.stdin.read()))
