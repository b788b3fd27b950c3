"""The tune cache: the case an op call belongs to, the device it runs on, and the file of measured choices. This
module alone reads and writes the file.

A *case* is one op call's kind: the op and its variant (what changes the kernel: pixel norm, a bias, the upsampling
fade, the stddev group), the dtype, the memory layout and a shape class (the exact C, H, W and the batch rounded up
to a power of two). Its key is one readable string, e.g. `bias_act(lrelu,bias,pn) bfloat16 channels_last
n32x64x8x8`. fastpggan.autotune measures cases and writes the choices through `write`.

The cache is `$FASTPGGAN_CACHE/tune/<device key>.json` (`cache_path(device)`), one file per device model, a JSON
object: {"format": "fastpggan-tune", "format_version": 1, "device": device_info(), "versions": versions() (torch,
CUDA, Triton, fastpggan), "choices": {case key: entry}}; an entry holds "impl" (the choice), "shape", "bytes" (the
least traffic), "seconds" per backend that passed, "compile_seconds" (what compiling cost impl='compiled' while
the case was checked and timed), "tolerance_ratio" and "max_error" per fast backend, "excluded" (backend: why),
"measured" (a timestamp) and, where measured, "copy_bytes_per_s". A file that cannot be read, or one from other
versions or another device, is ignored with one warning (the next tuning rewrites it).
"""

import fcntl
import json
import os
import platform
import re
import warnings
from typing import Annotated, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypedDict, Union

import torch

from ..runtime import cache_root
from ..state_schema import Count, NonNegative, one_of, problem
from ..writes import check_folder, explain, write_text
from .opspec import IMPLS

DeviceLike = Union[str, torch.device]
Impl = Annotated[str, one_of(*IMPLS)]


class _Measured(TypedDict):
    impl: Impl
    shape: List[Count]
    bytes: Count
    seconds: Dict[Impl, NonNegative]


class Entry(_Measured, total=False):
    """One case's measured choice in the cache file (the module docstring says what each field is)."""

    compile_seconds: Dict[Impl, NonNegative]
    tolerance_ratio: Dict[Impl, NonNegative]
    max_error: Dict[Impl, NonNegative]
    excluded: Dict[Impl, str]
    measured: str
    copy_bytes_per_s: Optional[NonNegative]


FORMAT = "fastpggan-tune"
FORMAT_VERSION = 1

_read: Dict[str, Dict[str, Any]] = {}  # cache path -> {case key: impl} ({} when unreadable), read once per process
_by_device: Dict[
    Tuple[Any, ...], Tuple[int, Dict[str, Any]]
] = {}  # (device type, index, $FASTPGGAN_CACHE) -> (threads, the same dict)
_on_forget: List[Callable[[], None]] = []  # what else forgets with it (the dispatcher's memo of backend orders)
_warned: Set[str] = set()


def layout_of(x: torch.Tensor) -> str:
    """'contiguous', 'channels_last' or 'strided'."""
    if x.is_contiguous():
        return "contiguous"
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def shape_class(shape: Sequence[int]) -> str:
    """'n<batch rounded up to a power of two>x<the other dims>', e.g. n32x64x8x8."""
    n = int(shape[0]) if len(shape) else 1
    bucket = 1 << max(n - 1, 0).bit_length()
    return "x".join([f"n{bucket}"] + [str(int(d)) for d in shape[1:]])


def case_key(op: str, variant: object, dtype: torch.dtype, layout: str, shape: Sequence[int]) -> str:
    return f"{op}({variant}) {str(dtype).replace('torch.', '')} {layout} {shape_class(shape)}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device: DeviceLike) -> dict:
    """What identifies a device for timing: its model (and compute capability), or the CPU model and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30),
        }
    return {
        "type": device.type,
        "name": _cpu_name() if device.type == "cpu" else device.type,
        "threads": torch.get_num_threads(),
    }


def versions() -> dict:
    """The software a measurement holds for: torch (and its CUDA), Triton, fastpggan."""
    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version, "fastpggan": __version__}


def device_key(device: DeviceLike) -> str:
    """The cache file's name for a device: its model, capability or thread count, as a safe file name."""
    info = device_info(device)
    extra = f"sm{info['capability'].replace('.', '')}" if info["type"] == "cuda" else f"{info.get('threads', 1)}t"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{info['type']}-{info['name']}-{extra}").strip("_")


def cache_folder() -> str:
    return os.path.join(cache_root(), "tune")


def cache_path(device: DeviceLike) -> str:
    return os.path.join(cache_folder(), device_key(device) + ".json")


def check_writable() -> None:
    """Refuse, before minutes of measuring, a tune cache folder that cannot be written (one line)."""
    check_folder(cache_folder(), "the tune cache (FASTPGGAN_CACHE)")


def check_file(data: Any, device: DeviceLike) -> Optional[str]:
    """Why a parsed cache file cannot be used for `device` with this software, or None."""
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("choices"), dict):
        return "it is not a fastpggan tune file"
    if data.get("format_version") != FORMAT_VERSION:
        return f"it has format version {data.get('format_version')!r}, this fastpggan writes {FORMAT_VERSION}"
    now = versions()
    if data.get("versions") != now:
        old = data.get("versions") or {}
        diff = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in now.items() if old.get(k) != v)
        return f"it was measured with other versions ({diff})"
    if data.get("device") != device_info(device):
        return "it was measured on another device"
    for key, entry in data["choices"].items():
        wrong = problem(entry, Entry)
        if wrong:
            return f"its choice {key!r} is damaged: {wrong}"
    return None


def read_file(path: str, device: DeviceLike) -> Optional[dict]:
    """The parsed file if it is usable for `device`, else None (a missing file silently; anything else with one
    warning per process)."""
    try:
        with open(path) as f:
            data = json.load(f)
        reason = check_file(data, device)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        reason = f"it cannot be read ({type(e).__name__}: {str(e)[:120]})"
    if reason is None:
        return data
    if path not in _warned:
        _warned.add(path)
        warnings.warn(
            f"fastpggan: ignoring the tune cache {path}: {reason}; the static backend order applies until "
            "it is rebuilt (python -m fastpggan.tune)",
            stacklevel=3,
        )
    return None


def read(device: DeviceLike) -> Optional[dict]:
    """The parsed tune cache of `device` if it is usable here, else None (see read_file)."""
    return read_file(cache_path(device), device)


def write(device: DeviceLike, entries: dict) -> str:
    """Merge {case key: entry} into the device's cache file under an exclusive lock (a file that is not valid now is
    rebuilt from `entries` alone), and replace it atomically; returns its path. Two processes writing at once leave
    a valid file holding both."""
    path = cache_path(device)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = open(path + ".lock", "a")
    except OSError as e:
        raise explain(e, e.filename or path, "set FASTPGGAN_CACHE to a folder you may write to") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bad file was reported when it was read
            old = read_file(path, device)
        data: Dict[str, Any] = dict(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            device=device_info(device),
            versions=versions(),
            choices={**(old or {}).get("choices", {}), **entries},
        )
        data["choices"] = dict(sorted(data["choices"].items()))
        write_text(path, json.dumps(data, indent=1) + "\n")
    forget_cached()
    return path


def cached_choices(device: DeviceLike) -> dict:
    """{case key: impl} from this device's cache file, read once per process ({} if none). Once read, a lookup
    touches no file and computes no path (so a torch.compile trace can make it)."""
    device = torch.device(device)
    memo = (device.type, device.index, os.environ.get("FASTPGGAN_CACHE"))
    found = _by_device.get(memo)
    # the CPU's file depends on the thread count, which a trace cannot read (the file read before it stands)
    if found is None or (not torch.compiler.is_compiling() and found[0] != torch.get_num_threads()):
        path = cache_path(device)
        if path not in _read:
            data = read_file(path, device)
            _read[path] = {k: v["impl"] for k, v in data["choices"].items()} if data else {}
        found = _by_device[memo] = (torch.get_num_threads(), _read[path])
    return found[1]


def forget_cached() -> None:
    """Read the cache files again at the next lookup (after a tuning wrote one)."""
    _read.clear()
    _by_device.clear()
    for callback in _on_forget:
        callback()
