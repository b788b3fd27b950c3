"""The install never fails for the CUDA toolkit (issue 44, step 1): a toolkit whose major version differs from
torch's CUDA, which torch's build refuses, or one whose nvcc fails, leaves the CUDA kernels out with one line and
builds the CPU part. Simulated with a fake toolkit (an `nvcc` script), no second torch needed."""

import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

from fastpggan import _build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_cuda_torch = pytest.mark.skipif(not torch.version.cuda, reason="a CPU-only torch never builds CUDA kernels")


def _toolkit(folder, release, compiles=False):
    """A CUDA toolkit folder whose nvcc reports `release` and compiles nothing (unless `compiles`)."""
    os.makedirs(os.path.join(folder, "bin"))
    os.makedirs(os.path.join(folder, "include"))
    open(os.path.join(folder, "include", "cuda_runtime.h"), "w").close()
    nvcc = os.path.join(folder, "bin", "nvcc")
    with open(nvcc, "w") as f:
        f.write(
            f"#!/bin/sh\ncase \"$*\" in *--version*) echo 'Cuda compilation tools, release {release}, V{release}.1';"
            f" exit 0;; esac\necho 'nvcc: this toolkit compiles nothing' >&2; exit {0 if compiles else 1}\n"
        )
    os.chmod(nvcc, 0o755)
    return str(folder)


def _other_major():
    return "11.8" if not (torch.version.cuda or "").startswith("11.") else "12.4"


def test_the_toolkit_release_is_read_from_nvcc(tmp_path):
    assert _build.toolkit_version(_toolkit(tmp_path / "cuda", "12.6")) == "12.6"
    assert _build.toolkit_version(str(tmp_path / "none")) is None


@needs_cuda_torch
def test_a_toolkit_of_another_major_version_is_left_out_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", _toolkit(tmp_path / "cuda", _other_major()))
    home, why = _build.cuda_available_for_build(torch)
    assert home is None and f"this torch was built with CUDA {torch.version.cuda}" in why
    assert f"set CUDA_HOME to a CUDA {torch.version.cuda.split('.')[0]}.x toolkit" in why
    monkeypatch.setenv("CUDA_HOME", _toolkit(tmp_path / "same", torch.version.cuda.split(".")[0] + ".9"))
    assert _build.cuda_available_for_build(torch) == (str(tmp_path / "same"), None)  # a minor difference: torch warns


@needs_cuda_torch
def test_setup_says_in_one_line_that_the_cuda_kernels_are_left_out(tmp_path):
    env = dict(os.environ, CUDA_HOME=_toolkit(tmp_path / "cuda", _other_major()))
    r = subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    said = [ln for ln in r.stdout.splitlines() if ln.startswith("fastpggan:")]
    assert len(said) == 1 and said[0].startswith("fastpggan: building the CPU-only extension, without the CUDA"), said
    assert f"is {_other_major()}, and this torch was built with CUDA {torch.version.cuda}" in said[0]


@pytest.mark.slow
@needs_cuda_torch
def test_an_nvcc_that_fails_leaves_a_built_cpu_extension(tmp_path):
    """Same major version (torch accepts it), but the CUDA compile fails: the CPU part is built and installed."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.so", "__pycache__", ".venv*"))
    env = dict(os.environ, CUDA_HOME=_toolkit(tmp_path / "cuda", torch.version.cuda), MAX_JOBS="2")
    env["TORCH_CUDA_ARCH_LIST"] = "9.0"
    r = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=src,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    said = [ln for ln in r.stdout.splitlines() if ln.startswith("fastpggan: the CUDA kernels were left out")]
    assert len(said) == 1, r.stdout[-3000:]
    built = [f for f in os.listdir(src / "fastpggan") if f.startswith("_C") and f.endswith(".so")]
    assert len(built) == 1 and _build.fatbin_archs(str(src / "fastpggan" / built[0])) is None  # no CUDA kernels


def test_a_gpu_call_on_an_extension_built_without_cuda_kernels_says_why_and_what_to_do(monkeypatch):
    from fastpggan.ops import _ext

    if _ext.load_error() is not None:
        pytest.skip(f"the extension does not load here: {_ext.load_error()}")
    monkeypatch.setitem(_ext._state, "cuda", False)  # as a build that left the CUDA kernels out
    why = _ext.ext_unavailable(types.SimpleNamespace(device=torch.device("cuda")))
    assert why is not None and "without CUDA kernels" in why and "pip install -v" in why and "CUDA_HOME" in why
