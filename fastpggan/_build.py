"""How the C++/CUDA extension fastpggan._C is built: shared by setup.py (loaded by path) and the lazy JIT build
in fastpggan.ops._ext. Standard library only at import; torch is imported by the callers.

- The CUDA toolkit is found even when the `nvcc` on PATH is a wrapper script (torch's own search would then
  pick the wrapper's folder): CUDA_HOME / CUDA_PATH, the folder a wrapper execs, /usr/local/cuda*, /opt/cuda.
- Headers the toolkit may lack (cusparse.h on this project's machines) are taken from the `nvidia` wheels that
  torch's CUDA builds install (site-packages/nvidia/cu*/include).
"""
import glob
import hashlib
import os
import re
import shutil

SOURCES_CPU = ("ops_cpu.cpp",)
SOURCES_CUDA = ("ops_cuda.cu",)
HEADERS = ("common.h",)
# -fopenmp: at::parallel_for is inline OpenMP code, serial unless the extension itself is built with OpenMP (and
# `omp simd` lets the reductions vectorize). -fno-trapping-math: without it GCC will not turn the LReLU select
# into a vector blend (it must not evaluate v * slope where the branch would not); nothing here uses FP traps.
# -fno-math-errno: sqrt vectorizes. Neither changes any result.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3"]


def csrc_dir():
    """csrc/ of a source checkout, else the copy installed as package data (fastpggan/csrc)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(os.path.dirname(here), "csrc"), os.path.join(here, "csrc")):
        if all(os.path.exists(os.path.join(cand, f)) for f in SOURCES_CPU + HEADERS):
            return cand
    return None


def _valid_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    """The CUDA toolkit folder (with bin/nvcc and include/cuda_runtime.h), or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _valid_toolkit(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        if _valid_toolkit(os.path.dirname(os.path.dirname(real))):
            return os.path.dirname(os.path.dirname(real))
        try:  # a wrapper script: `exec /path/to/cuda/bin/nvcc "$@"`
            with open(real, "r", errors="ignore") as f:
                m = re.search(r"(/\S+)/bin/nvcc\b", f.read(4096))
            if m and _valid_toolkit(m.group(1)):
                return m.group(1)
        except OSError:
            pass
    for cand in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/opt/cuda"]:
        if _valid_toolkit(cand):
            return cand
    return None


def extra_include_dirs():
    """Include folders of the nvidia-* wheels that hold headers a bare toolkit may lack (cusparse.h)."""
    try:
        import nvidia
        roots = list(nvidia.__path__)
    except ImportError:
        return []
    found = []
    for root in roots:
        for inc in sorted(glob.glob(os.path.join(root, "*", "include"))):
            if os.path.isfile(os.path.join(inc, "cusparse.h")) and inc not in found:
                found.append(inc)
    return found


def cuda_available_for_build(torch):
    """(toolkit folder, None), or (None, why the CUDA kernels cannot be built here)."""
    if not torch.version.cuda:
        return None, "this torch build has no CUDA"
    home = find_cuda_home()
    if home is None:
        return None, "no CUDA toolkit (nvcc) found; set CUDA_HOME to the toolkit folder"
    return home, None


def use_cuda_home(torch, home):
    """Point torch.utils.cpp_extension (which reads CUDA_HOME once, at import) at `home`."""
    os.environ["CUDA_HOME"] = home
    import torch.utils.cpp_extension as cpp
    cpp.CUDA_HOME = home


def arch_list(torch):
    """TORCH_CUDA_ARCH_LIST to compile for: the user's setting, else the visible GPUs, else Hopper (sm_90)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps)
    return "9.0"


def sources(with_cuda):
    d = csrc_dir()
    names = SOURCES_CPU + (SOURCES_CUDA if with_cuda else ())
    return [os.path.join(d, n) for n in names]


def build_key(torch, with_cuda, archs):
    """Hash of the sources, the torch version, and the CUDA arch list: one cache folder per distinct build."""
    h = hashlib.sha256()
    for path in sources(with_cuda) + [os.path.join(csrc_dir(), n) for n in HEADERS]:
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(f"{torch.__version__}|{torch.version.cuda}|{with_cuda}|{archs}|{CXX_FLAGS}|{NVCC_FLAGS}|{LINK_FLAGS}".encode())
    return h.hexdigest()[:16]
