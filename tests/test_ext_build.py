"""Building and loading the C++/CUDA extension fastpggan._C, and what happens when that fails."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import run_python
from fastpggan import _build
from fastpggan.ops import _ext


def test_missing_compiler_falls_back_with_one_warning_and_explicit_ext_says_why(tmp_path):
    """No prebuilt library, and a C++ compiler that does not exist: 'auto' falls back, 'ext' raises the reason."""
    code = r"""
import importlib.util, os, warnings
import torch
from fastpggan import ops
from fastpggan.ops import _dispatch, _ext
_ext._prebuilt = lambda: None                              # as if installed without a built extension
_dispatch.AUTO_ORDER['bias_act']['cpu'] = ('ext', 'ref')    # as if ext had been measured fastest here
x = torch.randn(2, 3, 4, 4)
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter('always')
    ys = [ops.bias_act(x, None, gain=0.5) for _ in range(3)]
msgs = [str(w.message) for w in rec if 'fastpggan' in str(w.message)]
assert len(msgs) == 1, msgs
assert "impl='ext' unavailable" in msgs[0] and 'could not be built' in msgs[0] and 'g++' in msgs[0], msgs[0]
assert all(torch.equal(y, ops.bias_act_ref(x, None, 0.5)) for y in ys)
try:
    ops.bias_act(x, impl='ext')
    raise SystemExit('explicit ext should raise')
except ops.BackendUnavailable as e:
    assert 'could not be built' in str(e), e
print('ok')
"""
    p = run_python(
        code,
        CXX="/nonexistent/c++",
        CC="/nonexistent/cc",
        CUDA_HOME="/nonexistent",
        PATH="/usr/bin:/bin",
        FASTPGGAN_CACHE=str(tmp_path),
    )
    assert p.returncode == 0 and "ok" in p.stdout, (p.stdout + p.stderr)[-3000:]


@pytest.mark.slow
def test_concurrent_first_uses_build_once_and_both_work(tmp_path):
    """Two processes that find no built extension JIT-build it into the same cache folder at the same time."""
    code = r"""
import torch
from fastpggan import ops
from fastpggan.ops import _ext
_ext._prebuilt = lambda: None
assert _ext.load_error() is None, _ext.load_error()
x, b = torch.randn(2, 5, 4, 4), torch.randn(5)
assert torch.allclose(ops.bias_act(x, b, gain=0.3, impl='ext'), ops.bias_act_ref(x, b, 0.3), atol=1e-6)
print('ok')
"""
    env = dict(os.environ, FASTPGGAN_CACHE=str(tmp_path), FASTPGGAN_EXT_CUDA="0")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "ok" in out, (out + err)[-3000:]
    assert len(list((tmp_path / "ext").glob("*/*.so"))) == 1


def test_bad_inputs_get_a_clear_message():
    assert _ext.load_error() is None, _ext.load_error()
    with pytest.raises(RuntimeError, match=r"fastpggan_ext::bias_act: bias must have shape \(5,\)"):
        _ext.op("bias_act")(torch.randn(2, 5, 4, 4), torch.randn(3), 1.0, 0.2)
    with pytest.raises(RuntimeError, match="must be divisible by the group size 4"):
        _ext.op("minibatch_stddev")(torch.randn(6, 3, 4, 4), 4)
    with pytest.raises(RuntimeError, match="must be a floating-point tensor"):
        _ext.op("gradient_penalty")(torch.ones(2, 3, dtype=torch.int64), 1.0)


@pytest.mark.slow
def test_import_never_builds_and_no_ext_env_disables_it():
    code = r"""
import fastpggan, fastpggan.ops, fastpggan.networks
from fastpggan.ops import _ext
assert 'error' not in _ext._state, 'importing fastpggan must not load or build the extension'
assert _ext.load_error() == 'disabled by FASTPGGAN_NO_EXT=1'
print('ok')
"""
    p = run_python(code, FASTPGGAN_NO_EXT="1")
    assert p.returncode == 0 and "ok" in p.stdout, (p.stdout + p.stderr)[-3000:]


def test_cuda_home_is_found_behind_a_wrapper_script(tmp_path, monkeypatch):
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    assert _build.find_cuda_home() == str(toolkit)


def test_build_key_changes_with_sources_and_torch(monkeypatch):
    a = _build.build_key(torch, False, None)
    assert a == _build.build_key(torch, False, None)
    assert a != _build.build_key(torch, True, "9.0")
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert a != _build.build_key(torch, False, None)


def test_extension_is_loaded_with_cpu_kernels():
    assert _ext.load_error() is None, _ext.load_error()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastpggan_ext::bias_act", "CPU")


KERNEL_OPS = (
    "bias_act",
    "bias_act_grad",
    "bias_act_pn",
    "bias_act_pn_grad",
    "fade_in",
    "fade_in_grad",
    "minibatch_stddev",
    "minibatch_stddev_grad",
    "gradient_penalty",
    "gradient_penalty_grad",
    "gp_interpolate",
)


def test_triton_and_extension_kernel_ops_have_the_same_schemas():
    """The Python declarations (ops.*, register_backends) and csrc/ops_cpu.cpp's TORCH_LIBRARY write each schema
    once per language; the two backends share one autograd and one call, so they must agree."""
    assert _ext.load_error() is None, _ext.load_error()
    for name in KERNEL_OPS:
        triton_schema = getattr(torch.ops.fastpggan, f"{name}_triton").default._schema
        ext_schema = _ext.op(name)._schema
        assert str(triton_schema).split("(", 1)[1] == str(ext_schema).split("(", 1)[1], name


def test_on_load_after_the_extension_loaded_runs_at_once():
    """An op registered after the library loaded still gets its fake tensors and autograd."""
    assert _ext.load_error() is None, _ext.load_error()
    calls = []
    _ext.on_load(lambda: calls.append(1))
    assert calls == [1]


@pytest.mark.skipif(
    _build.cuda_available_for_build(torch)[0] is None,
    reason=f"no CUDA sources are built here: {_build.cuda_available_for_build(torch)[1]}",
)
def test_cuda_translation_unit_was_compiled_and_linked_for_sm90():
    """The CUDA kernels are registered (ops_cuda.cu was compiled and linked into the loaded library) and the
    library carries device code (.nv_fatbin). Needs no GPU: nothing is launched."""
    assert _ext.load_error() is None, _ext.load_error()
    for op in (
        "bias_act",
        "bias_act_pn_grad",
        "fade_in",
        "minibatch_stddev_grad",
        "gradient_penalty",
        "gp_interpolate",
    ):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastpggan_ext::{op}", "CUDA"), op
    libs = [
        line.split()[-1] for line in open("/proc/self/maps") if "fastpggan" in line and line.rstrip().endswith(".so")
    ]
    assert libs, "the extension library is not mapped into this process"
    readelf = subprocess.run(["readelf", "-S", libs[0]], capture_output=True, text=True)
    if readelf.returncode != 0:
        pytest.skip("readelf is not available to inspect the library")
    assert ".nv_fatbin" in readelf.stdout


def test_the_built_library_is_stale_only_when_a_source_or_header_is_newer(tmp_path, monkeypatch):
    """An edit to csrc/README.md must not send every extension user through a JIT rebuild; a .cpp, .cu or .h edit
    must."""
    src = tmp_path / "csrc"
    src.mkdir()
    for name in _build.SOURCES_CPU + _build.SOURCES_CUDA + _build.HEADERS + ("README.md",):
        (src / name).write_text("x")
        os.utime(src / name, (1000, 1000))
    lib = tmp_path / "_C.so"
    lib.write_text("x")
    os.utime(lib, (2000, 2000))
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(src))
    monkeypatch.setattr(_ext.importlib.util, "find_spec", lambda name: type("Spec", (), {"origin": str(lib)}))
    assert _ext._prebuilt() == str(lib)
    os.utime(src / "README.md", (3000, 3000))
    assert _ext._prebuilt() == str(lib)
    for name in ("tail.h", "ops_cuda.cu"):
        os.utime(src / name, (3000, 3000))
        assert _ext._prebuilt() is None, name
        os.utime(src / name, (1000, 1000))
