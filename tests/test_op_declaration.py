"""An op declared in one place is tuned, self-tested and benchmarked with no edit anywhere else: the toy ops of
tests/toy_ops.py (one OpSpec each, a `ref` body and a pure-Python second backend; `toy_wrong`'s is off by 5 %).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from fastpggan import autotune, selftest
from fastpggan.ops import _dispatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def toys():
    """The toy ops, declared for each test here only (tests/toy_ops.py)."""
    import toy_ops

    toy_ops.declare()
    yield toy_ops
    toy_ops.undeclare()


def test_the_declaration_is_all_the_dispatcher_needs(toys):
    toy, Shift = toys.toy, toys.Shift
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(toy(x, True, "ref"), x * 2 + 1) and torch.equal(toy(x, True, "ext"), toys.toy_fast(x, True))
    assert _dispatch.AUTO_ORDER["toy_scale"] == {"cpu": ("ext", "ref")}  # the declared static order
    assert _dispatch.auto_backend("toy_scale", Shift(True), (2, 3, 4, 4), torch.float32, "contiguous", "cpu") == "ext"
    with pytest.raises(_dispatch.BackendUnavailable, match="no Triton kernel for toy_scale"):
        toy(x, impl="triton")
    case = autotune.Case("toy_scale", "shift", (2, 3, 4, 4), "float32", "contiguous", "cpu")
    assert case.variant == Shift(True) and case.key == "toy_scale(shift) float32 contiguous n2x3x4x4"
    assert autotune.traffic_bytes(case) == 4 * 96 * 4 and autotune.traffic_bytes(case, backward=False) == 2 * 96 * 4
    with pytest.raises(ValueError, match="'shift' or 'plain'"):
        autotune.Case("toy_scale", "sideways", (2, 3, 4, 4), "float32", "contiguous", "cpu")


def test_autotune_checks_times_and_caches_the_toy_ops(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path))
    cases = [
        autotune.Case(op, "shift", (2, 3, 8, 8), "float32", "contiguous", "cpu") for op in ("toy_scale", "toy_wrong")
    ]
    with pytest.warns(UserWarning, match="toy_wrong.*excluding impl='ext': output differs from ref"):
        result = autotune.tune_cases(cases, log=lambda *a: None)
    good, bad = (result["entries"][c.key] for c in cases)
    assert set(good["seconds"]) == {"ref", "ext"} and good["bytes"] == 4 * 2 * 3 * 8 * 8 * 4
    assert bad["impl"] == "ref" and "ext" in bad["excluded"]
    (name,) = [n for n in os.listdir(tmp_path / "tune") if n.endswith(".json")]
    with open(tmp_path / "tune" / name) as f:
        assert set(json.load(f)["choices"]) == {c.key for c in cases}


def test_the_self_test_checks_the_toy_ops():
    cases = selftest.kernel_cases(torch.device("cpu"), ops=["toy_scale"])
    assert {c.op for c in cases} == {"toy_scale"} and len(cases) == len(selftest.DTYPES) * len(selftest.LAYOUTS)
    lines = []
    report = selftest.check_kernels(torch.device("cpu"), lines.append, ops=["toy_scale", "toy_wrong"])
    assert report["passed"] == {"ext": len(cases)}
    assert len(report["failures"]) == len(cases) and all("toy_wrong" in f for f in report["failures"]), report
    assert not selftest.check_kernels(torch.device("cpu"), lines.append, ops=["toy_wrong"])["ok"]


def test_the_op_benchmarks_collect_the_toy_op():
    code = (
        "import importlib.util, sys; import pytest\n"
        f"s = importlib.util.spec_from_file_location('toy_ops', {os.path.join(REPO, 'tests', 'toy_ops.py')!r})\n"
        "m = importlib.util.module_from_spec(s); sys.modules['toy_ops'] = m; s.loader.exec_module(m)\n"
        "sys.exit(pytest.main(['benchmarks/test_ops.py', '--collect-only', '--long', '-q',"
        " '-p', 'no:cacheprovider']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    ids = [line for line in p.stdout.splitlines() if "::test_op[" in line]
    toy_ids = [i for i in ids if "[cpu-toy_scale-" in i]
    assert "benchmarks/test_ops.py::test_op[cpu-toy_scale-8-float32-fwd+bwd-ext]" in toy_ids
    # the CPU resolutions 4, 8, 32; fwd (--long) and fwd+bwd; every backend
    assert len(toy_ids) == 3 * 2 * len(_dispatch.IMPLS)
