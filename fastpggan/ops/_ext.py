"""The C++/CUDA extension fastpggan._C: loading it, building it on first use, and saying why when neither works.

Order: the library that setup.py built (fastpggan/_C*.so), unless a csrc/ source is newer than it; else a JIT
build with torch.utils.cpp_extension.load into $FASTPGGAN_CACHE/ext/<hash> (default ~/.cache/fastpggan), where
the hash covers the sources, the torch version and the CUDA arch list. cpp_extension locks the build folder, so
concurrent first uses build once. If CUDA kernels cannot be built, a CPU-only build is tried. Importing
fastpggan never triggers any of this; the first impl='ext' or 'auto' call that can use the extension does.

The CUDA kernels must hold an image for the GPU (_build.fatbin_archs, _build.cuda_mismatch). When the first use
finds CUDA already initialized (the usual case: the first call is on a CUDA tensor), a prebuilt library that
cannot run on a visible GPU is not loaded: the first-use build compiles for the visible GPUs instead, and if that
build fails, the prebuilt library is loaded for its CPU kernels. Either way `ext_unavailable` checks each CUDA
tensor's device against what the loaded library holds, so impl='ext' never reaches a launch that would fail: an
explicit 'ext' raises BackendUnavailable saying why, and 'auto' falls back with one warning.

Set FASTPGGAN_NO_EXT=1 to never load or build it, FASTPGGAN_EXT_CUDA=0 to build it without CUDA kernels.
"""

import importlib.util
import os
import threading
from typing import Any, Callable, Dict, List, Optional

import torch

from .. import _build
from ..errors import env_flag
from ..runtime import cache_root

NAMESPACE = "fastpggan_ext"
_lock = threading.Lock()
# "error": str | None once tried; "cuda": bool (CUDA kernels present); "path": the loaded library
_state: Dict[str, Any] = {}
_caps: Dict[int, Optional[str]] = {}  # CUDA device index -> why the loaded kernels cannot run there, or None
# callbacks that wire autograd/fake for the ext ops once the library is loaded
_on_load: List[Callable[[], None]] = []


def on_load(fn):
    """Run fn() once the extension's ops exist (the op modules register their autograd this way): when it loads,
    or now if it already has."""
    with _lock:
        _on_load.append(fn)
        loaded = _state.get("error", "not tried") is None
    if loaded:
        fn()
    return fn


def _prebuilt():
    """Path of the library setup.py built, if it exists and is newer than every source and header (not csrc/'s
    README, whose edits change no code)."""
    spec = importlib.util.find_spec("fastpggan._C")
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    src = _build.csrc_dir()
    if src is not None:
        files = [os.path.join(src, f) for f in _build.SOURCES_CPU + _build.SOURCES_CUDA + _build.HEADERS]
        newest = max(os.path.getmtime(f) for f in files if os.path.exists(f))
        if newest > os.path.getmtime(spec.origin):
            return None  # a source checkout edited since the build: rebuild through the JIT path
    return spec.origin


def _summary(err):
    """The most telling line of a build error."""
    text = str(err)
    lines = [line.strip() for line in text.splitlines()]
    for pattern in ("error:", "fatal", "error"):  # a compiler diagnostic beats ninja's summary
        for line in lines:
            if pattern in line.lower() and len(line) > 10 and not line.startswith("Error building extension"):
                return line[:300]
    return (text.strip().splitlines() or [type(err).__name__])[-1][:300]


def _jit_build(with_cuda):
    """Build (or find built) and load the library; returns its path."""
    from torch.utils import cpp_extension

    archs = _build.arch_list(torch) if with_cuda else None
    key = _build.build_key(torch, with_cuda, archs)
    build_dir = os.path.join(cache_root(), "ext", key)
    os.makedirs(build_dir, exist_ok=True)
    old_archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    try:
        cpp_extension.load(
            name=f"fastpggan_C_{key}",
            sources=_build.sources(with_cuda),
            build_directory=build_dir,
            extra_cflags=_build.CXX_FLAGS,
            extra_cuda_cflags=_build.NVCC_FLAGS,
            extra_ldflags=_build.LINK_FLAGS,
            extra_include_paths=_build.extra_include_dirs(),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
        return os.path.join(build_dir, f"fastpggan_C_{key}.so")
    finally:
        if archs and old_archs is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        elif archs and old_archs is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old_archs


def _visible_mismatch(path):
    """Why the library at `path` cannot run on a visible GPU, when CUDA is initialized already (asking would
    initialize it, which a CPU-only user of the extension should not pay for); else None."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    archs = _build.fatbin_archs(path)
    if archs is None:
        return None  # a CPU-only library: no CUDA kernel to mismatch
    for i in range(torch.cuda.device_count()):
        why = _build.cuda_mismatch(archs, torch.cuda.get_device_capability(i))
        if why:
            return why
    return None


def _load():
    """None once a library is loaded (its path in _state["path"]), else why none could be."""
    if env_flag("FASTPGGAN_NO_EXT"):
        return "disabled by FASTPGGAN_NO_EXT=1"
    path = _prebuilt()
    stale = _visible_mismatch(path) if path is not None else None
    if path is not None and stale is None:
        try:
            torch.ops.load_library(path)
            _state["path"] = path
            return None
        except OSError:
            pass  # built against another torch: rebuild below
    if _build.csrc_dir() is None:
        return "its C++ sources are not installed (reinstall fastpggan)"
    home, _ = _build.cuda_available_for_build(torch)
    if not env_flag("FASTPGGAN_EXT_CUDA", default=True):
        home = None
    errors = []
    if home is not None:
        _build.use_cuda_home(torch, home)
        try:
            _state["path"] = _jit_build(with_cuda=True)
            return None
        except Exception as e:  # compiler or toolkit failure: a CPU-only build may still work
            errors.append(f"CUDA build failed: {_summary(e)}")
    if stale is not None:
        # the prebuilt library's CPU kernels still work; ext_unavailable refuses its CUDA kernels on this GPU
        torch.ops.load_library(path)
        _state["path"] = path
        return None
    try:
        _state["path"] = _jit_build(with_cuda=False)
        return None
    except Exception as e:
        errors.append(f"C++ build failed: {_summary(e)}")
    return (
        "the fastpggan._C extension could not be built (" + "; ".join(errors) + "). Install a C++ compiler "
        "(g++) and ninja, or run `pip install --no-build-isolation -e .` to see the full log; impl='ref' works "
        "without it"
    )


def cuda_unavailable(device) -> Optional[str]:
    """Why the loaded library's CUDA kernels cannot run on `device` (a CUDA device), or None. Checked once per
    device, from the library's fatbinary, before any launch."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in _caps:
        path = _state.get("path")
        try:
            archs = _build.fatbin_archs(path) if path else None
        except OSError:  # the library file is gone: what it holds cannot be told, so nothing is launched
            archs = None
        cap = torch.cuda.get_device_capability(index)
        why = _build.cuda_mismatch(archs, cap)
        _caps[index] = (
            None
            if why is None
            else (
                f"the fastpggan._C library {os.path.basename(path or '?')} cannot run on cuda:{index}: {why}; rebuild "
                f"it for this GPU with `TORCH_CUDA_ARCH_LIST={cap[0]}.{cap[1]} pip install --no-build-isolation -e .` "
                "(a CUDA toolkit is needed), or use impl='triton' or 'ref'"
            )
        )
    return _caps[index]


def load_error():
    """None once the extension is loaded (building it if needed), else why it is not available."""
    if "error" not in _state:
        with _lock:
            if "error" not in _state:
                err = _load()
                if err is None:
                    for fn in _on_load:
                        fn()
                    _state["cuda"] = torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::bias_act", "CUDA")
                _state["error"] = err
    return _state["error"]


def ext_unavailable(x):
    """None if the extension can run on tensor x, else a sentence saying why and what to do."""
    err = load_error()
    if err is not None:
        return err
    if x.device.type == "cuda" and not _state.get("cuda"):
        return (
            "the extension was built without CUDA kernels (no CUDA toolkit of the major version of torch's CUDA "
            f"{torch.version.cuda} at build time; `pip install -v` shows the 'fastpggan:' line saying why); set "
            "CUDA_HOME to such a toolkit's folder and reinstall"
        )
    if x.device.type == "cuda":
        why = cuda_unavailable(x.device)
        if why:
            return why
    if x.device.type not in ("cpu", "cuda"):
        return f"the extension has no kernels for {x.device.type} tensors"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"the extension takes float16/bfloat16/float32/float64, not {x.dtype}"
    return None


def op(name):
    """The extension's op `name` (its default overload), once loaded."""
    return getattr(getattr(torch.ops, NAMESPACE), name).default
