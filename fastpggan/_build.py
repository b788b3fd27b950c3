"""How the C++/CUDA extension fastpggan._C is built: shared by setup.py (loaded by path) and the lazy JIT build
in fastpggan.ops._ext. Standard library only at import; torch is imported by the callers.

- The CUDA toolkit is found even when the `nvcc` on PATH is a wrapper script (torch's own search would then
  pick the wrapper's folder): CUDA_HOME / CUDA_PATH, the folder a wrapper execs, /usr/local/cuda*, /opt/cuda.
- Headers the toolkit may lack (cusparse.h on this project's machines) are taken from the `nvidia` wheels that
  torch's CUDA builds install (site-packages/nvidia/cu*/include).
- With no GPU visible, the CUDA kernels are compiled for DEFAULT_ARCHS: machine code for every NVIDIA
  generation CUDA 13 compiles for, and PTX of the newest, which the driver compiles for later GPUs. What a
  built library holds is read back from its fatbinary (`fatbin_archs`), and `cuda_mismatch` says whether it
  runs on a GPU, so that fastpggan.ops._ext never launches a kernel that has no image for the device.
"""

import glob
import hashlib
import os
import re
import shutil
import struct
import subprocess
from typing import Optional, Tuple

SOURCES_CPU = ("ops_cpu.cpp",)
SOURCES_CUDA = ("ops_cuda.cu",)
HEADERS = ("common.h", "tail.h")
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
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "bin", "nvcc"))
        and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))
    )


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


def toolkit_version(home: str) -> Optional[str]:
    """The release ('13.0') that `nvcc --version` of the toolkit at `home` reports, or None."""
    try:
        out = subprocess.run(
            [os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True, timeout=120
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def cuda_available_for_build(torch):
    """(toolkit folder, None), or (None, why the CUDA kernels cannot be built here). A toolkit of another major
    version than torch's CUDA is one of the reasons: torch's build refuses it (`_check_cuda_version`), and the
    install would fail instead of building the CPU part."""
    if not torch.version.cuda:
        return None, "this torch build has no CUDA"
    home = find_cuda_home()
    if home is None:
        return None, "no CUDA toolkit (nvcc) found; set CUDA_HOME to the toolkit folder"
    have, want = toolkit_version(home), torch.version.cuda
    if have and have.split(".")[0] != want.split(".")[0]:
        return None, (
            f"the CUDA toolkit at {home} is {have}, and this torch was built with CUDA {want}; torch refuses to "
            f"build against a toolkit of another major version. For the CUDA kernels, set CUDA_HOME to a CUDA "
            f"{want.split('.')[0]}.x toolkit (or install a torch built for CUDA {have.split('.')[0]}) and reinstall"
        )
    return home, None


def use_cuda_home(torch, home):
    """Point torch.utils.cpp_extension (which reads CUDA_HOME once, at import) at `home`."""
    os.environ["CUDA_HOME"] = home
    import torch.utils.cpp_extension as cpp

    cpp.CUDA_HOME = home


# Turing (T4, RTX 20), Ampere (A100; A10, RTX 30), Ada (L4, RTX 40), Hopper (H100), Blackwell (B200; RTX 50), and
# PTX of the newest. CUDA 13, which torch's cu13x builds use, compiles for sm_75 and up only: on an sm_70 (V100)
# the CUDA kernels are refused by the load check and 'auto' runs the other backends.
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def arch_list(torch):
    """TORCH_CUDA_ARCH_LIST to compile for: the user's setting, else the visible GPUs, else DEFAULT_ARCHS."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps)
    return DEFAULT_ARCHS


_FATBIN_MAGIC = 0xBA55ED50
_ELF_SASS, _ELF_PTX = 2, 1


def _elf_section(data: bytes, name: bytes) -> Optional[bytes]:
    """The bytes of section `name` of a 64-bit little-endian ELF file, or None."""
    if data[:6] != b"\x7fELF\x02\x01":
        return None
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for sh_name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_at + sh_name)
        if data[names_at + sh_name : end] == name:
            return data[offset : offset + size]
    return None


def fatbin_archs(path: str) -> Optional[dict]:
    """{'sass': {90, ...}, 'ptx': {120, ...}}: the compute capabilities (major*10 + minor) a library's CUDA
    fatbinary holds machine code and PTX for, read from its .nv_fatbin section; None when it has none (a
    CPU-only build). A fatbinary is a run of blobs (magic, version, header size, payload size), each a list of
    entries whose 64- or 80-byte header holds the kind (1 PTX, 2 ELF) at byte 0 and the arch at byte 28; the
    tests hold this reading to cuobjdump's."""
    with open(path, "rb") as f:
        section = _elf_section(f.read(), b".nv_fatbin")
    if section is None:
        return None
    out = {"sass": set(), "ptx": set()}
    pos = 0
    while pos + 16 <= len(section):
        magic, _version, header, size = struct.unpack_from("<IHHQ", section, pos)
        if magic != _FATBIN_MAGIC:
            pos += 8  # blobs are 8-byte aligned, with padding between them
            continue
        entry, end = pos + header, pos + header + size
        while entry + 32 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", section, entry)
            (arch,) = struct.unpack_from("<I", section, entry + 28)
            if kind in (_ELF_SASS, _ELF_PTX):
                out["sass" if kind == _ELF_SASS else "ptx"].add(arch)
            entry += entry_header + payload
        pos = end
    return out


def cuda_mismatch(archs: Optional[dict], capability: Tuple[int, int]) -> Optional[str]:
    """Why a library holding `archs` (fatbin_archs) cannot run its CUDA kernels on a GPU of `capability`, or
    None if it can: machine code for sm_XY runs on X.Y' with Y' >= Y of the same major version, and PTX for
    compute_XY is compiled by the driver for any X.Y' >= X.Y."""
    cap = capability[0] * 10 + capability[1]
    if archs and (any(a // 10 == cap // 10 and a <= cap for a in archs["sass"]) or any(p <= cap for p in archs["ptx"])):
        return None

    def names(kind):
        return ", ".join(f"{a // 10}.{a % 10}" for a in sorted(archs[kind])) if archs and archs[kind] else "none"

    return (
        f"its CUDA kernels hold machine code for {names('sass')} and PTX for {names('ptx')}, none of which runs "
        f"on this GPU of compute capability {capability[0]}.{capability[1]}"
    )


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
    h.update(
        f"{torch.__version__}|{torch.version.cuda}|{with_cuda}|{archs}|{CXX_FLAGS}|{NVCC_FLAGS}|{LINK_FLAGS}".encode()
    )
    return h.hexdigest()[:16]
