"""The build of the C++/CUDA extension fastpggan._C; the project itself is declared in pyproject.toml.

The C++/CUDA extension fastpggan._C is built here when torch is importable at build time, which needs
`pip install --no-build-isolation ...` (pip's isolated build env has no torch): a CUDAExtension for the visible
GPUs, else _build.DEFAULT_ARCHS (sm_75 to sm_120 + PTX), or TORCH_CUDA_ARCH_LIST, when a CUDA toolkit and a CUDA
torch exist, else a CPU-only
CppExtension, always with ninja. The build is optional: if it fails, or is skipped (FASTPGGAN_NO_EXT=1 or no
torch), fastpggan installs anyway and builds the extension on first use (fastpggan/ops/_ext.py).
"""

import importlib.util
import os

from setuptools import setup


def _extension():
    if os.environ.get("FASTPGGAN_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("fastpggan: torch is not importable at build time; the extension will be built on first use")
        return [], {}
    spec = importlib.util.spec_from_file_location("_fastpggan_build", os.path.join("fastpggan", "_build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    home, why_not = build.cuda_available_for_build(torch)
    common = dict(
        name="fastpggan._C", include_dirs=[os.path.abspath("csrc")], extra_link_args=build.LINK_FLAGS, optional=True
    )
    if home is not None:
        build.use_cuda_home(torch, home)
        os.environ["TORCH_CUDA_ARCH_LIST"] = build.arch_list(torch)
        print(
            f"fastpggan: building the CUDA extension with {home} for "
            f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
        )
        ext = CUDAExtension(
            sources=[os.path.relpath(p) for p in build.sources(True)],
            extra_compile_args={"cxx": build.CXX_FLAGS, "nvcc": build.NVCC_FLAGS},
            **dict(common, include_dirs=common["include_dirs"] + build.extra_include_dirs()),
        )
    else:
        print(f"fastpggan: building the CPU-only extension ({why_not})")
        ext = CppExtension(
            sources=[os.path.relpath(p) for p in build.sources(False)],
            extra_compile_args={"cxx": build.CXX_FLAGS},
            **common,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


EXT_MODULES, CMDCLASS = _extension()

# Everything else (metadata, packages, dependencies, entry points) is in pyproject.toml.
setup(ext_modules=EXT_MODULES, cmdclass=CMDCLASS)
