"""benchmarks/: the default run is the short form; --long and FASTPGGAN_BENCH_LONG=1 give every case."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _collected(*args, env=None):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/",
            "--collect-only",
            "-q",
            "-k",
            "cpu",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "FASTPGGAN_BENCH_LONG"}, **(env or {})},
    )
    return {line for line in out.stdout.splitlines() if "::" in line}


def test_default_benchmark_run_is_the_short_form():
    default, long = _collected(), _collected("--long")
    assert default < long
    assert long == _collected(env={"FASTPGGAN_BENCH_LONG": "1"})
    # the default keeps the training pass and 8x8 steps, with the compiled baselines and the peer
    assert not any("-fwd-" in t or "cpu-16-" in t or "with-compiled" in t for t in default)
    assert {
        "benchmarks/test_train_step.py::test_train_step[cpu-8-ref-compiled-fp32]",
        "benchmarks/test_peer.py::test_peer_step[cpu-8]",
    } <= default
    assert any("-fwd+bwd-compiled]" in t for t in default)


@pytest.mark.slow  # a benchmark run in a subprocess
def test_results_jsonl_is_written_per_case_and_read_by_the_report(tmp_path, bench_module):
    jsonl = tmp_path / "r.jsonl"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/test_optim.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-k",
            "cpu",
            "--benchmark-only",
            "--benchmark-min-rounds=1",
            "--benchmark-max-time=0.01",
            "--results-jsonl",
            str(jsonl),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # pytest-benchmark disables itself where it sees an xdist worker, as the suite may run in
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert "header" in lines[0] and len(lines) == 3  # the header, then the two optimizers on the CPU
    assert {x["extra_info"]["impl"] for x in lines[1:]} == {"ref", "tfadam"}
    assert "## Ratios" in out.stdout  # the closing table of the run
    report = bench_module("report")
    data = report.load(str(jsonl))
    assert len(data["benchmarks"]) == 2 and data["commit_info"]["id"]
    subprocess.run(
        [sys.executable, "benchmarks/report.py", str(jsonl), "-o", str(tmp_path / "r.md")], cwd=ROOT, check=True
    )
    assert "adam step cpu" in (tmp_path / "r.md").read_text()
