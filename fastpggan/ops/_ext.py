"""The C++/CUDA extension fastpggan._C: loading it, building it on first use, and saying why when neither works.

Order: the library that setup.py built (fastpggan/_C*.so), unless a csrc/ source is newer than it; else a JIT
build with torch.utils.cpp_extension.load into $FASTPGGAN_CACHE/ext/<hash> (default ~/.cache/fastpggan), where
the hash covers the sources, the torch version and the CUDA arch list. cpp_extension locks the build folder, so
concurrent first uses build once. If CUDA kernels cannot be built, a CPU-only build is tried. Importing
fastpggan never triggers any of this; the first impl='ext' or 'auto' call that can use the extension does.

Set FASTPGGAN_NO_EXT=1 to never load or build it, FASTPGGAN_EXT_CUDA=0 to build it without CUDA kernels.
"""
import importlib.util
import os
import threading

import torch

from .. import _build
from ..runtime import cache_root

NAMESPACE = "fastpggan_ext"
_lock = threading.Lock()
_state = {}  # "error": str | None once tried; "cuda": bool (CUDA kernels present)
_on_load = []  # callbacks that wire autograd/fake for the ext ops once the library is loaded


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
    """Path of the library setup.py built, if it exists and is newer than every source."""
    spec = importlib.util.find_spec("fastpggan._C")
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    src = _build.csrc_dir()
    if src is not None:
        newest = max(os.path.getmtime(os.path.join(src, f)) for f in os.listdir(src))
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
    from torch.utils import cpp_extension
    archs = _build.arch_list(torch) if with_cuda else None
    key = _build.build_key(torch, with_cuda, archs)
    build_dir = os.path.join(cache_root(), "ext", key)
    os.makedirs(build_dir, exist_ok=True)
    old_archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    try:
        cpp_extension.load(name=f"fastpggan_C_{key}", sources=_build.sources(with_cuda), build_directory=build_dir,
                           extra_cflags=_build.CXX_FLAGS, extra_cuda_cflags=_build.NVCC_FLAGS,
                           extra_ldflags=_build.LINK_FLAGS,
                           extra_include_paths=_build.extra_include_dirs(), with_cuda=with_cuda,
                           is_python_module=False, verbose=False)
    finally:
        if archs and old_archs is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        elif archs:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old_archs


def _load():
    if os.environ.get("FASTPGGAN_NO_EXT") == "1":
        return "disabled by FASTPGGAN_NO_EXT=1"
    path = _prebuilt()
    if path is not None:
        try:
            torch.ops.load_library(path)
            return None
        except OSError:
            pass  # built against another torch: rebuild below
    if _build.csrc_dir() is None:
        return "its C++ sources are not installed (reinstall fastpggan)"
    home, _ = _build.cuda_available_for_build(torch)
    if os.environ.get("FASTPGGAN_EXT_CUDA") == "0":
        home = None
    errors = []
    if home is not None:
        _build.use_cuda_home(torch, home)
        try:
            _jit_build(with_cuda=True)
            return None
        except Exception as e:  # compiler or toolkit failure: a CPU-only build may still work
            errors.append(f"CUDA build failed: {_summary(e)}")
    try:
        _jit_build(with_cuda=False)
        return None
    except Exception as e:
        errors.append(f"C++ build failed: {_summary(e)}")
    return ("the fastpggan._C extension could not be built (" + "; ".join(errors) + "). Install a C++ compiler "
            "(g++) and ninja, or run `pip install --no-build-isolation -e .` to see the full log; impl='ref' works "
            "without it")


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
        return ("the extension was built without CUDA kernels (no CUDA toolkit at build time); set CUDA_HOME to the "
                "toolkit folder and rebuild")
    if x.device.type not in ("cpu", "cuda"):
        return f"the extension has no kernels for {x.device.type} tensors"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"the extension takes float16/bfloat16/float32/float64, not {x.dtype}"
    return None


def op(name):
    """The extension's op `name` (its default overload), once loaded."""
    return getattr(getattr(torch.ops, NAMESPACE), name).default
