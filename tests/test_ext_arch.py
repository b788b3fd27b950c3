"""The extension's CUDA kernels run only where they hold an image for the GPU: the fatbinary reader against
cuobjdump, the compatibility rules, and a library built for sm_90 on a simulated sm_80 GPU (rebuilt for it, or its
CUDA kernels refused with the reason, never launched)."""

import os
import re
import subprocess
import sys

import pytest

from fastpggan import _build

NVCC = os.path.join(_build.find_cuda_home() or "/nonexistent", "bin", "nvcc")
needs_nvcc = pytest.mark.skipif(not os.path.exists(NVCC), reason="no CUDA toolkit (nvcc) on this machine")


def _cuobjdump():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        pytest.skip("Triton's cuobjdump is not installed")
    return path


def _cuobjdump_archs(lib):
    """What cuobjdump lists: 'ELF file 1: k.1.sm_75.cubin' and 'PTX file 1: k.1.sm_90.ptx' lines."""
    out = {"sass": set(), "ptx": set()}
    text = subprocess.run([_cuobjdump(), "--list-elf", "--list-ptx", lib], capture_output=True, text=True).stdout
    for line in text.splitlines():
        m = re.search(r"\bsm_(\d+)", line)
        if m and line.startswith(("ELF file", "PTX file")):
            out["sass" if line.startswith("ELF") else "ptx"].add(int(m.group(1)))
    return out


@needs_nvcc
def test_fatbin_reader_agrees_with_cuobjdump(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float* x) { x[threadIdx.x] *= 2.f; }\n")
    lib = str(tmp_path / "k.so")
    subprocess.run(
        [
            NVCC,
            "-shared",
            "-Xcompiler",
            "-fPIC",
            "-gencode",
            "arch=compute_75,code=sm_75",
            "-gencode",
            "arch=compute_86,code=sm_86",
            "-gencode",
            "arch=compute_90,code=compute_90",
            str(src),
            "-o",
            lib,
        ],
        check=True,
        capture_output=True,
    )
    assert _build.fatbin_archs(lib) == {"sass": {75, 86}, "ptx": {90}} == _cuobjdump_archs(lib)


def test_the_loaded_library_is_read_as_cuobjdump_reads_it():
    from fastpggan.ops import _ext

    assert _ext.load_error() is None, _ext.load_error()
    lib = _ext._state["path"]
    archs = _build.fatbin_archs(lib)
    if archs is None:
        assert not _ext._state.get("cuda"), "a library with CUDA kernels must carry a fatbinary"
        pytest.skip("the loaded library is a CPU-only build")
    assert archs == _cuobjdump_archs(lib) and archs["sass"] | archs["ptx"]


@pytest.mark.parametrize(
    "archs,cap,runs",
    [
        ({"sass": {90}, "ptx": set()}, (9, 0), True),
        ({"sass": {90}, "ptx": set()}, (8, 0), False),  # no image: the case a launch would fail on
        ({"sass": {80}, "ptx": set()}, (8, 6), True),  # same major, higher minor
        ({"sass": {86}, "ptx": set()}, (8, 0), False),
        ({"sass": {80}, "ptx": set()}, (9, 0), False),  # machine code does not cross majors
        ({"sass": {80}, "ptx": {90}}, (12, 0), True),  # PTX is compiled for newer GPUs
        ({"sass": set(), "ptx": {120}}, (10, 0), False),
        (None, (9, 0), False),
    ],
)
def test_compatibility_rules(archs, cap, runs):
    why = _build.cuda_mismatch(archs, cap)
    assert (why is None) is runs
    if why:
        assert f"{cap[0]}.{cap[1]}" in why


def test_default_arch_list_covers_every_generation_cuda_13_compiles_for():
    archs = {int(a.replace("+PTX", "").replace(".", "")) for a in _build.DEFAULT_ARCHS.split(";")}
    ptx = {int(a.replace("+PTX", "").replace(".", "")) for a in _build.DEFAULT_ARCHS.split(";") if "+PTX" in a}
    lib = {"sass": archs, "ptx": ptx}
    for cap in [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1), (13, 0)]:
        assert _build.cuda_mismatch(lib, cap) is None, cap
    assert _build.cuda_mismatch(lib, (7, 0)) is not None  # V100: CUDA 13 cannot compile for it


# A fresh process, with a GPU of capability 8.0 simulated and the library on disk said to hold sm_90 only.
SIMULATION = r"""
import os, sys, types, warnings
import torch
from fastpggan import _build, ops
from fastpggan.ops import _dispatch, _ext

scenario = sys.argv[1]
real = _ext._prebuilt() or sys.argv[2]
torch.cuda.is_available = lambda: True
torch.cuda.is_initialized = lambda: scenario != "lazy"
torch.cuda.device_count = lambda: 1
torch.cuda.current_device = lambda: 0
torch.cuda.get_device_capability = lambda i=None: (8, 0)
_ext._prebuilt = lambda: real
_build.fatbin_archs = lambda path: {"sass": {90}, "ptx": set()} if path == real else {"sass": {80}, "ptx": set()}
built = []


def jit_build(with_cuda):
    built.append((with_cuda, _build.arch_list(torch)))
    if scenario == "rebuild":
        torch.ops.load_library(real)   # stands in for the library built for sm_80
        return "/rebuilt/fastpggan_C.so"
    raise RuntimeError("error: nvcc failed")


_ext._jit_build = jit_build
_build.cuda_available_for_build = lambda torch: ("/usr/local/cuda", None)
_build.use_cuda_home = lambda torch, home: None
assert _ext.load_error() is None, _ext.load_error()
x = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)
_ext._state["cuda"] = True
why = _ext.ext_unavailable(x)
print("BUILT", built)
print("PATH", _ext._state["path"] == real)
print("WHY", why)
try:
    _dispatch.resolve("bias_act", "ext", x)
    print("RESOLVED ext")
except ops.BackendUnavailable as e:
    print("REFUSED", str(e).splitlines()[0])
"""


def _simulate(scenario):
    from fastpggan.ops import _ext

    assert _ext.load_error() is None
    p = subprocess.run(
        [sys.executable, "-c", SIMULATION, scenario, _ext._state["path"]], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return dict(line.split(" ", 1) for line in p.stdout.splitlines() if " " in line)


@pytest.mark.slow
def test_a_library_for_sm90_on_an_sm80_gpu_is_rebuilt_for_it():
    out = _simulate("rebuild")
    assert out["BUILT"] == "[(True, '8.0')]"  # the first-use build, for the visible GPU
    assert out["PATH"] == "False" and out["WHY"] == "None" and out["RESOLVED"] == "ext"


@pytest.mark.slow
def test_without_a_toolkit_its_cuda_kernels_are_refused_and_never_launched():
    out = _simulate("fallback")
    assert out["BUILT"] == "[(True, '8.0')]" and out["PATH"] == "True"  # the CPU kernels stay usable
    assert "machine code for 9.0" in out["WHY"] and "compute capability 8.0" in out["WHY"]
    assert "TORCH_CUDA_ARCH_LIST=8.0" in out["WHY"]
    assert "impl='ext' is not available" in out["REFUSED"] and "8.0" in out["REFUSED"]


def test_a_first_use_on_the_cpu_loads_it_and_the_gpu_check_comes_at_the_first_cuda_call():
    out = _simulate("lazy")
    assert out["BUILT"] == "[]" and out["PATH"] == "True"  # CUDA was not initialized: nothing asked of it
    assert "machine code for 9.0" in out["WHY"] and "REFUSED" in out
