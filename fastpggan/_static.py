"""What the compiled CUDA kernels of fastpggan._C are, read from the compiled code itself (no GPU needed).

`compile_cubin(arch)` compiles csrc/ops_cuda.cu (or another source) for one architecture with the extension's flags
and ptxas' report; `kernels(cubin, ptxas_report)` gives, for every kernel: registers, spill bytes, stack frame, static
shared memory, the number of 128-bit global loads and stores and of local-memory loads and stores (LDL/STL) in its
SASS, the 64-bit integer division routines it calls, and its theoretical occupancy at the launch block size.
tests/test_cuda_static.py holds the kernels to the design with it, and benchmarks/static_report.py writes it out
(benchmarks/results/static-sm90-<date>.md).
"""

import dataclasses
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

from . import _build

BLOCK_THREADS = 256  # every kernel of ops_cuda.cu launches 256 threads per block (kThreads)
# sm_90 (H100) per SM: 65536 registers, 2048 threads, 32 blocks, 228 KiB shared memory (1 KiB reserved per block);
# registers are allocated per warp in units of 256
SM90 = dict(regs=65536, threads=2048, blocks=32, smem=233472, smem_reserved=1024, reg_unit=256)
INT64_DIVISION = re.compile(r"__cuda_sm\d+_(?:div|rem)_[su]64")
LOCAL_LOAD = re.compile(r"\bLDL(?:\.[A-Z0-9]+)*\s")
LOCAL_STORE = re.compile(r"\bSTL(?:\.[A-Z0-9]+)*\s")


@dataclasses.dataclass
class Kernel:
    name: str  # demangled, without the namespace
    registers: int
    spill_bytes: int  # spill stores + spill loads
    shared_bytes: int
    ld128: int  # 128-bit global loads in the SASS
    st128: int
    int64_division: List[str]  # 64-bit integer division/remainder routines it calls
    stack_bytes: int = 0  # the stack frame: per-thread arrays the compiler could not keep in registers
    local_loads: int = 0  # LDL instructions in the SASS
    local_stores: int = 0  # STL instructions

    @property
    def local_memory(self) -> Optional[str]:
        """What the kernel does in local memory (stack frame, spills, LDL/STL), or None if nothing."""
        if not (self.stack_bytes or self.spill_bytes or self.local_loads or self.local_stores):
            return None
        return (
            f"{self.stack_bytes}-byte stack frame, {self.spill_bytes} spill bytes, {self.local_loads} LDL, "
            f"{self.local_stores} STL"
        )

    @property
    def occupancy(self) -> float:
        """Theoretical occupancy on sm_90 at BLOCK_THREADS threads per block: resident warps / 64."""
        return occupancy(self.registers, self.shared_bytes, BLOCK_THREADS)


def occupancy(registers: int, shared_bytes: int, threads: int) -> float:
    """Theoretical occupancy on sm_90 of a kernel using `registers` per thread and `shared_bytes` per block at
    `threads` per block: resident warps / 64."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // SM90["reg_unit"]) * SM90["reg_unit"]
    by_regs = SM90["regs"] // (per_warp * warps) if registers else SM90["blocks"]
    by_smem = SM90["smem"] // (shared_bytes + SM90["smem_reserved"])
    blocks = min(by_regs, by_smem, SM90["blocks"], SM90["threads"] // (warps * 32))
    return blocks * warps / (SM90["threads"] // 32)


def cubin_facts(cubin: str) -> Dict[str, dict]:
    """{mangled function: dict(registers, stack, local, shared, ld128, st128, ldl, stl, int64_division)} of a
    cubin, from cuobjdump's resource usage and nvdisasm's SASS (what the Triton test reads of Triton's cubins)."""
    tools = tools_dir()
    if tools is None:
        raise RuntimeError("cuobjdump/nvdisasm are not installed (they come with Triton)")
    usage = subprocess.run(
        [os.path.join(tools, "cuobjdump"), "--dump-resource-usage", cubin], capture_output=True, text=True, check=True
    ).stdout
    out = {}
    for name, line in re.findall(r"Function (\S+):\n\s*(REG:.*)", usage):
        fields = dict(re.findall(r"(\w+):(\d+)", line))
        out[name] = dict(
            registers=int(fields.get("REG", 0)),
            stack=int(fields.get("STACK", 0)),
            local=int(fields.get("LOCAL", 0)),
            shared=int(fields.get("SHARED", 0)),
        )
    text = subprocess.run(
        [os.path.join(tools, "nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True
    ).stdout
    for part in re.split(r"\n\s*\.text\.", text)[1:]:
        name = part.split(":", 1)[0].strip()
        if name in out:
            out[name].update(
                ld128=len(re.findall(r"\bLDG\.E[.A-Z0-9]*\.128\b", part)),
                st128=len(re.findall(r"\bSTG\.E[.A-Z0-9]*\.128\b", part)),
                ldl=len(LOCAL_LOAD.findall(part)),
                stl=len(LOCAL_STORE.findall(part)),
                int64_division=sorted(set(m.group(0) for m in INT64_DIVISION.finditer(part))),
            )
    return out


def tools_dir() -> Optional[str]:
    """Triton's copies of cuobjdump and nvdisasm, or None."""
    try:
        import triton
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return path if os.path.exists(os.path.join(path, "nvdisasm")) else None


def build_archs() -> List[str]:
    """The architectures a build with no GPU visible compiles machine code for (_build.DEFAULT_ARCHS), as sm_XY."""
    return ["sm_" + a.split("+")[0].replace(".", "") for a in _build.DEFAULT_ARCHS.split(";")]


def compile_cubin(arch: str, out_dir: str, source: Optional[str] = None) -> tuple:
    """Compile `source` (default csrc/ops_cuda.cu) to `out_dir`/<name>.<arch>.cubin with the extension's flags and
    include paths; returns (cubin path, ptxas' -v report). Needs a CUDA toolkit; raises RuntimeError with the
    compiler's message if it fails."""
    import sysconfig

    import torch.utils.cpp_extension as cpp

    home = _build.find_cuda_home()
    if home is None:
        raise RuntimeError("no CUDA toolkit (nvcc) found")
    _build.use_cuda_home(__import__("torch"), home)
    includes = (
        cpp.include_paths(device_type="cuda")
        + _build.extra_include_dirs()
        + [_build.csrc_dir(), sysconfig.get_paths()["include"]]
    )
    source = source or os.path.join(_build.csrc_dir(), "ops_cuda.cu")
    cubin = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(source))[0]}.{arch}.cubin")
    cmd = [
        os.path.join(home, "bin", "nvcc"),
        "-cubin",
        f"-arch={arch}",
        "-std=c++20",
        *_build.NVCC_FLAGS,
        *cpp.COMMON_NVCC_FLAGS,
        "-DTORCH_EXTENSION_NAME=_C",
        "-Xptxas",
        "-v",
        *[f"-I{i}" for i in includes],
        source,
        "-o",
        cubin,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"nvcc failed: {p.stderr[-2000:]}")
    return cubin, p.stderr


def _demangle(names):
    p = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = p.stdout.splitlines() if p.returncode == 0 else names
    return [re.sub(r"^void |fastpggan::|\(anonymous namespace\)::", "", n) for n in out]


def kernels(cubin: str, ptxas_report: str) -> Dict[str, Kernel]:
    """{demangled kernel name: Kernel} of a cubin compiled by compile_cubin: registers, spills, stack frame and
    shared memory from ptxas' report, the SASS facts from cubin_facts."""
    info = {}
    for block in ptxas_report.split("Compiling entry function '")[1:]:
        mangled = block.split("'", 1)[0]
        regs = re.search(r"Used (\d+) registers", block)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        smem = re.search(r"(\d+) bytes smem", block)
        stack = re.search(r"(\d+) bytes stack frame", block)
        info[mangled] = (
            int(regs.group(1)) if regs else 0,
            int(spill.group(1)) + int(spill.group(2)) if spill else 0,
            int(smem.group(1)) if smem else 0,
            int(stack.group(1)) if stack else 0,
        )
    sass = cubin_facts(cubin)
    names = sorted(info)
    out = {}
    for mangled, pretty in zip(names, _demangle(names)):
        regs, spill, smem, stack = info[mangled]
        facts = sass.get(mangled, {})
        out[pretty] = Kernel(
            pretty,
            regs,
            spill,
            smem,
            facts.get("ld128", 0),
            facts.get("st128", 0),
            facts.get("int64_division", []),
            max(stack, facts.get("stack", 0)),
            facts.get("ldl", 0),
            facts.get("stl", 0),
        )
    return out


if __name__ == "__main__":  # python -m fastpggan._static [arch]: the table, for a quick look
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        table = kernels(*compile_cubin(sys.argv[1] if len(sys.argv) > 1 else "sm_90", d))
    for k in table.values():
        print(
            f"{k.registers:3d} regs {k.spill_bytes:4d} spill {k.stack_bytes:4d} stack {k.occupancy:4.0%} "
            f"ld128 {k.ld128:2d} st128 {k.st128:2d} ldl {k.local_loads:3d} stl {k.local_stores:3d} "
            f"{'div64 ' if k.int64_division else ''}{k.name}"
        )
