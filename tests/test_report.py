"""benchmarks/report.py: ratios against ref and bandwidth fractions from a pytest-benchmark JSON."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench(group, impl, median, **info):
    return {"group": group, "name": f"test_op[{impl}]", "stats": {"median": median},
            "extra_info": {"impl": impl, "device": "NVIDIA H100", "torch": "2.11", "triton": "3.6", "cuda": "13.0",
                           **info}}


def test_ratios_and_bandwidth_fraction(report):
    data = {"machine_info": {"node": "gpu1"}, "commit_info": {"id": "abcdef1234567890", "dirty": False},
            "datetime": "2026-11-22",
            "benchmarks": [_bench("op fwd", "ref", 4e-3, bytes=8e9, bandwidth_gbs=3000.0),
                           _bench("op fwd", "triton", 1e-3 * 4, bytes=8e9, bandwidth_gbs=3000.0),
                           _bench("op fwd", "ext", 2e-3, bytes=8e9, bandwidth_gbs=3000.0),
                           _bench("step", "ref", 0.5, images=64)]}
    md = report.render(data, command="pytest benchmarks/ --benchmark-only")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in md.splitlines()
            if line.startswith("| op fwd") or line.startswith("| step")}
    assert "2.00x" in rows[("op fwd", "ext")] and "4000.0 GB/s (133%)" in rows[("op fwd", "ext")]
    assert "1.00x" in rows[("op fwd", "triton")] and "2000.0 GB/s (67%)" in rows[("op fwd", "triton")]
    assert "128.0 img/s" in rows[("step", "ref")]
    assert "NVIDIA H100" in md and "abcdef123456" in md and "3000 GB/s" in md and "triton 3.6" in md
