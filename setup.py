"""The build of the C++/CUDA extension fastpggan._C; the project itself is declared in pyproject.toml.

The C++/CUDA extension fastpggan._C is built here when torch is importable at build time, which needs
`pip install --no-build-isolation ...` (pip's isolated build env has no torch): a CUDAExtension for the visible
GPUs, else _build.DEFAULT_ARCHS (sm_75 to sm_120 + PTX), or TORCH_CUDA_ARCH_LIST, when a CUDA toolkit and a CUDA
torch exist, else a CPU-only
CppExtension, always with ninja. The build is optional: if it fails, or is skipped (FASTPGGAN_NO_EXT=1 or no
torch), fastpggan installs anyway and builds the extension on first use (fastpggan/ops/_ext.py).
"""

import copy
import importlib.util
import os

from setuptools import setup

CPU_ONLY_ATTRS = (
    "sources",
    "include_dirs",
    "library_dirs",
    "runtime_library_dirs",
    "libraries",
    "define_macros",
    "extra_compile_args",
    "extra_link_args",
)


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
    cpu_only = CppExtension(
        sources=[os.path.relpath(p) for p in build.sources(False)],
        extra_compile_args={"cxx": build.CXX_FLAGS},
        **common,
    )

    class BuildOrCpuOnly(BuildExtension.with_options(use_ninja=True)):
        """torch's build, and the CPU part alone where torch refuses or fails the CUDA part (a host compiler
        outside the toolkit's bounds, an nvcc error): the install never fails for the toolkit."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except (RuntimeError, ValueError, OSError) as e:
                (ext,) = self.extensions
                if not any(str(p).endswith(".cu") for p in ext.sources):
                    raise
                why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                print(
                    f"fastpggan: the CUDA kernels were left out ({why}); building the CPU-only extension. Fix the "
                    "toolkit and reinstall to get them"
                )
                for attr in CPU_ONLY_ATTRS:  # in place: setuptools has finalized this Extension object
                    setattr(ext, attr, copy.deepcopy(getattr(cpu_only, attr)))
                super().build_extensions()

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
        print(f"fastpggan: building the CPU-only extension, without the CUDA kernels ({why_not})")
        ext = cpu_only
    return [ext], {"build_ext": BuildOrCpuOnly}


EXT_MODULES, CMDCLASS = _extension()

# Everything else (metadata, packages, dependencies, entry points) is in pyproject.toml.
setup(ext_modules=EXT_MODULES, cmdclass=CMDCLASS)
