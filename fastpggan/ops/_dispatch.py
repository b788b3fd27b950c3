"""Backend selection shared by every op: impl='auto'|'ref'|'triton'|'ext'|'compiled'.

Each op module registers its backends here through `_backends.register_backends`. A backend is a function plus
an `unavailable(x)` check that returns None when the backend can run on tensor `x`, or a sentence saying what is
missing.

- An explicit impl that is unavailable raises `BackendUnavailable` with that sentence.
- 'auto' can be forced to one backend: by the innermost `pin(impl)` block, else `set_default(impl)`, else the
  environment variable FASTPGGAN_IMPL (read here only, at each call). A forced backend that cannot run a call falls
  back to 'ref' with one warning.
- 'auto' runs the backend measured fastest for the call's case (tune_cache): the choices a run froze
  (`use_choices`, the trainer's), else this device's tune cache, else the static AUTO_ORDER. It falls back to
  the next backend with one warning per op, backend and reason, and never errors. It never measures anything
  itself (fastpggan.autotune does, when asked), so a CUDA-graph capture, torch.compile trace or export only reads.
- While a model is exported (torch.export, torch.onnx.export, torch.jit.trace), 'auto' runs 'ref', FASTPGGAN_IMPL
  notwithstanding, so that the exported graph holds only standard operators. torch.compile keeps the fast ops.
- Under forward-mode AD, torch.func.grad/vjp/jacrev or vmap (`transform`), 'auto' runs 'ref' too (a forced
  backend with one warning), and an explicit fast impl raises, except under vmap alone.
- What choosing needs done once per device (loading the extension, checking Triton and the compiler, reading the
  tune cache) is done by `prepare(device)`: by the first eager call on the device, by the layers when they are
  built (the CPU), and by torch.compile before it traces once torch._dynamo was imported before that; inside a
  trace choosing is dict lookups only, and an unprepared device stops the trace with the advice to prepare it.
"""

import contextlib
import os
import warnings
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import UserError
from . import opspec, tune_cache
from ._import_hook import AfterImport
from ._transforms import exporting, transform
from .opspec import IMPLS

# The static order: fastest-first backends per op and device type for the cases that nothing tuned, from each
# op's declaration (OpSpec.auto_order, with the measurement it comes from); an op or device not listed uses 'ref'.
AUTO_ORDER: Dict[str, Dict[str, Tuple[str, ...]]] = {}

_registry: Dict[str, Dict[str, Any]] = {}  # op name -> {impl: (fn, unavailable)}
_warned: Set[Any] = set()
_run_choices: Dict[str, str] = {}  # case key -> impl, frozen for a run (use_choices)
_frozen = [False]
# (op, variant, dtype, shape, layout, device, cache root) -> (the backend order of that call, where it came from)
_orders: Dict[Tuple[Any, ...], Tuple[Tuple[str, ...], str]] = {}
_recorder: List[List[dict]] = []  # [list] while recording() is active
_pins: List[str] = []  # pin() blocks, innermost last (a plain list, not a ContextVar: torch.compile traces resolve)
_default: List[Optional[str]] = [None]  # set_default()
_choice_logs: List[List[dict]] = []  # [list] while choices_made() is active


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this op here."""


def declare(spec: opspec.OpSpec, backends: Optional[dict] = None) -> None:
    """Declare an op (its OpSpec) and register its 'ref' backend (spec.ref), and the other `backends`: {impl: fn or
    (fn, unavailable)}. Backends may also follow with `register`."""
    opspec.add(spec)
    AUTO_ORDER[spec.name] = {device: tuple(order) for device, order in spec.auto_order.items()}
    register(spec.name, "ref", spec.ref)
    for impl, backend in (backends or {}).items():
        register(spec.name, impl, *(backend if isinstance(backend, tuple) else (backend,)))


def undeclare(op: str) -> None:
    """Remove an op declared with `declare` and all its backends (tests declare toy ops for a while)."""
    opspec.remove(op)
    AUTO_ORDER.pop(op, None)
    _registry.pop(op, None)
    _orders.clear()


def register(op, impl, fn, unavailable=lambda x: None):
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}")
    _registry.setdefault(op, {})[impl] = (fn, unavailable)


def _missing(op, impl, x):
    entry = _registry.get(op, {}).get(impl)
    if entry is None:
        what = {
            "triton": "fastpggan.kernels has no Triton kernel",
            "ext": "the fastpggan._C extension has no kernel",
            "compiled": "no plain-PyTorch kernel bodies to compile",
            "ref": "no reference implementation",
        }[impl]
        return f"{what} for {op} in this version"
    return entry[1](x)


def unavailable(op, impl, x):
    """Why `impl` cannot run `op` on tensor x, or None."""
    return _missing(op, impl, x)


# (device str, $FASTPGGAN_CACHE) prepare() has run for: the tune cache read is per cache folder
_prepared: Set[Tuple[str, Optional[str]]] = set()
# the devices (str) whose backends' availability has been checked (all an explicit impl needs)
_checked: Set[str] = set()


def prepare(device="cpu", _x=None) -> None:
    """Do now what choosing a backend on `device` may need to do once: load the extension (building it if needed),
    check Triton and the compiler, read the tune cache. After it, choosing touches no lock, file or library, so a
    torch.compile trace can choose (fullgraph=True). The first eager call on a device runs it, and so does
    torch.compile before it traces, for the devices in use, once torch._dynamo is imported before fastpggan's first
    op call or layer."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), os.environ.get("FASTPGGAN_CACHE"))
    if key in _prepared:
        return
    _check_backends(torch.zeros(1, 1, 1, 1, device=device) if _x is None else _x)
    if device.type in ("cpu", "cuda"):
        tune_cache.cached_choices(device)
    _prepared.add(key)


def _check_backends(x) -> None:
    """Ask every backend of every op whether it can run on x's device (which loads what each needs)."""
    for op in list(_registry):
        for impl in IMPLS:
            _missing(op, impl, x)
    _checked.add(str(x.device))
    _hook_compiler()


def _prepare_in_use(_args=None) -> None:
    """prepare() the devices a model may be on: the CPU, and the current CUDA device once CUDA is initialised."""
    import torch

    prepare("cpu")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        prepare("cuda")


def _on_compile_start(args=None) -> None:
    _prepare_in_use(args)  # looked up at each compile (tests replace it)


def _hook_compiler() -> None:
    """Have torch.compile run _prepare_in_use before it traces, if torch._dynamo is imported (importing it here
    would make every process that uses fastpggan import all of dynamo, 3 s). torch._dynamo.reset() drops the
    callbacks, so each prepare() puts it back if it is gone."""
    import sys

    if "torch._dynamo" in sys.modules:
        from torch._dynamo.callback import callback_handler, on_compile_start

        if _on_compile_start not in getattr(callback_handler, "start_callbacks", ()):
            on_compile_start(_on_compile_start)


def _hook_compiler_when_imported() -> None:
    import sys

    if "torch._dynamo" in sys.modules:
        _hook_compiler()
    elif not any(isinstance(f, AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, AfterImport("torch._dynamo", _hook_compiler))


_hook_compiler_when_imported()


class UnknownImpl(UserError, ValueError):
    """An impl name that is none of ours: a ValueError to the library's callers, one line on a command line."""


def _check_impl(impl, source):
    if impl not in ("auto",) + IMPLS:
        raise UnknownImpl(f"{source} must be one of {', '.join(repr(i) for i in ('auto',) + IMPLS)}; got {impl!r}")


def available(op=None, device="cpu", dtype=None) -> dict:
    """{op: {impl: None if it can run, else why not}} for `op` (None: every registered op), checked on a small
    tensor of `dtype` (default fp32) on `device`."""
    import torch

    x = torch.zeros(1, 1, 4, 4, dtype=dtype or torch.float32, device=device)
    return {name: {impl: _missing(name, impl, x) for impl in IMPLS} for name in ([op] if op else sorted(_registry))}


def impl_unavailable(impl, device):
    """Why an explicit `impl` cannot run the ops on `device` (checked on a small fp32 tensor there), or None;
    'auto' always can. Lets a command line refuse a backend in one line before it starts anything."""
    if impl == "auto":
        return None
    return next((f"{op}: {row[impl]}" for op, row in available(device=device).items() if row[impl] is not None), None)


def use_choices(choices: Optional[dict]) -> None:
    """Freeze {case key: impl} for this process (a run's recorded choices): those cases run them, and every other
    case the static order, whatever the tune cache says. None unfreezes (back to the tune cache)."""
    _run_choices.clear()
    _run_choices.update(choices or {})
    _frozen[:] = [choices is not None]
    _orders.clear()


def forget() -> None:
    """Look the choices up again at the next call (the tune cache was rewritten)."""
    tune_cache.forget_cached()


tune_cache._on_forget.append(_orders.clear)
tune_cache._on_forget.append(_prepared.clear)  # the cache is read again by the next prepare()


@contextlib.contextmanager
def recording():
    """Within it, every impl='auto' call runs the reference and is recorded in the list this yields, as a dict of
    op, variant, shape, dtype, layout, device and extra: how fastpggan.autotune learns the cases a model runs."""
    calls: List[dict] = []
    _recorder.append(calls)
    try:
        yield calls
    finally:
        _recorder.remove(calls)
        _orders.clear()


def forced() -> tuple:
    """(impl, why): the backend 'auto' is forced to and by what ('pin', 'set_default', 'FASTPGGAN_IMPL'), or
    ('auto', '') when nothing forces it."""
    if _pins:
        return _pins[-1], "pin"
    if _default[0] is not None:
        return _default[0], "set_default"
    env = os.environ.get("FASTPGGAN_IMPL", "auto").strip().lower() or "auto"
    _check_impl(env, "FASTPGGAN_IMPL")
    return env, ("FASTPGGAN_IMPL" if env != "auto" else "")


@contextlib.contextmanager
def pin(impl: str):
    """Within the block, every impl='auto' call runs `impl` ('auto' lifts an outer pin, set_default and
    FASTPGGAN_IMPL). Explicit impl= arguments are unchanged."""
    _check_impl(impl, "impl")
    _pins.append(impl)
    try:
        yield
    finally:
        _pins.pop()


def set_default(impl: Optional[str]) -> None:
    """Force every impl='auto' call outside pin() blocks to `impl`, over FASTPGGAN_IMPL; None lifts it."""
    if impl is not None:
        _check_impl(impl, "impl")
    _default[0] = impl


@contextlib.contextmanager
def choices_made():
    """Within it, each impl='auto' call appends to the list this yields a dict of op, case (its tune-cache key),
    impl (the backend that ran) and why: 'pin', 'set_default', 'FASTPGGAN_IMPL', 'run choices' (use_choices),
    'tune cache', 'static order' or 'export', with ', fallback' when the first candidate could not run."""
    log: List[dict] = []
    _choice_logs.append(log)
    try:
        yield log
    finally:
        _choice_logs.remove(log)


def _log_choice(op, variant, x, impl, why, first):
    key = tune_cache.case_key(op, variant, x.dtype, tune_cache.layout_of(x), x.shape)
    _choice_logs[-1].append(dict(op=op, case=key, impl=impl, why=why + (", fallback" if impl != first else "")))


def _auto_order(op, variant, dtype, shape, layout, device):
    """(backend order, where its first entry comes from: 'run choices', 'tune cache' or 'static order')."""
    memo = (op, str(variant), dtype, shape, layout, device, os.environ.get("FASTPGGAN_CACHE"))
    found = _orders.get(memo)
    if found is None:
        order, source = AUTO_ORDER.get(op, {}).get(device.type, ("ref",)), "static order"
        key = tune_cache.case_key(op, variant, dtype, layout, shape)
        chosen = _run_choices.get(key)
        if chosen is not None:
            source = "run choices"
        elif not _frozen[0] and device.type in ("cpu", "cuda"):
            chosen = tune_cache.cached_choices(device).get(key)
            source = "tune cache" if chosen is not None else source
        if chosen is not None:
            order = (chosen,) + tuple(i for i in order if i != chosen)
        found = _orders[memo] = (order, source)
    return found


def auto_backend(op: str, variant, shape, dtype, layout: str, device) -> str:
    """The backend impl='auto' runs for this case here when nothing forces it (no pin, set_default or
    FASTPGGAN_IMPL): the run's choices, else the tune cache, else the static order, then the first available."""
    import torch

    dtype, device = (getattr(torch, dtype) if isinstance(dtype, str) else dtype), torch.device(device)
    probe = torch.empty((1, *tuple(shape)[1:2], *[1] * max(len(shape) - 2, 0)), dtype=dtype, device=device)
    order, _ = _auto_order(op, variant, dtype, torch.Size(shape), layout, device)
    return next((i for i in tuple(order) + ("ref",) if _missing(op, i, probe) is None), "ref")


def resolve(op, impl, x, variant=opspec.NoVariant(), extra=None, others=()):
    """Return the function that runs `op` on tensor `x` for the requested `impl`. `variant` (the op's variant type)
    is what selects the kernel besides x (the case key's part in parentheses); `extra` is what a recording keeps to
    rebuild the call's other inputs; `others` are the call's other tensors (a forward-mode tangent may be on any).

    Under an autodiff transform the fast backends cannot carry (`transform`) 'auto' runs 'ref', as under export;
    a forced backend does too, with one warning; an explicit fast impl raises BackendUnavailable, except under
    vmap alone, where torch's own loop over the batch is correct."""
    _check_impl(impl, "impl")
    if impl == "auto" and exporting():
        if _choice_logs:
            _log_choice(op, variant, x, "ref", "export", "ref")
        return _registry[op]["ref"][0]
    if impl == "ref":
        return _registry[op]["ref"][0]
    under = transform((x, *others))
    if under is not None and not (impl != "auto" and under == "vmap"):
        if impl != "auto":
            raise BackendUnavailable(
                f"{op}: impl='{impl}' cannot run under {under} (its kernels have no such "
                f"rule); use impl='auto' (which runs 'ref' there) or impl='ref'"
            )
        env, why = forced()
        key = (op, env, under)
        if env not in ("auto", "ref") and key not in _warned:
            _warned.add(key)
            warnings.warn(f"fastpggan: {op} impl='{env}' ({why}) cannot run under {under}; running 'ref'", stacklevel=3)
        if _choice_logs:
            _log_choice(op, variant, x, "ref", under, "ref")
        return _registry[op]["ref"][0]
    device = str(x.device)
    if (impl == "auto" and (device, os.environ.get("FASTPGGAN_CACHE")) not in _prepared) or (
        impl != "auto" and device not in _checked
    ):  # the first such call on this device
        import torch

        if torch.compiler.is_compiling():
            raise BackendUnavailable(
                f"{op}: fastpggan has not prepared {device} before this trace; call "
                f"fastpggan.ops.backends.prepare({device!r}) (or run the model once) before torch.compile"
            )
        if impl == "auto":
            prepare(x.device, x)
        else:
            _check_backends(x)
    if impl == "auto":
        env, why = forced()
        if env == "auto" and _recorder:
            _recorder[-1].append(
                dict(
                    op=op,
                    variant=variant,
                    shape=list(x.shape),
                    dtype=opspec.dtype_name(x),
                    layout=tune_cache.layout_of(x),
                    device=str(x.device),
                    extra=dict(extra or {}),
                )
            )
            return _registry[op]["ref"][0]
        if env == "auto":
            order, why = _auto_order(op, variant, x.dtype, x.shape, tune_cache.layout_of(x), x.device)
        else:
            order = (env,)
        for cand in tuple(order) + tuple(i for i in ("ref",) if i not in order):
            reason = _missing(op, cand, x)
            if reason is None:
                if _choice_logs:
                    _log_choice(op, variant, x, cand, why, order[0])
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
