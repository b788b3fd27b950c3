"""benchmarks/gpu_run.sh (its --dry-run, which needs no GPU) and benchmarks/train_summary.py."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # three pytest collections and three CLI start-ups
def test_gpu_run_dry_run_plans_every_phase(tmp_path):
    out = subprocess.run(
        ["bash", "benchmarks/gpu_run.sh", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    plan = [line for line in out.stdout.splitlines() if line.startswith("gpu_run: plan: ")]
    names = [line.split()[2] for line in plan]
    # most valuable first: the self-test, the ops against bandwidth and compiled, the steps, the training run
    assert names == [
        "build",
        "selftest",
        "ops",
        "ops-compiled",
        "steps",
        "steps-compiled",
        "random-data",
        "train",
        "train-summary",
        "static",
    ]
    # the plan fits the budget only as maxima: each phase's limit is its own, cut to what the budget has left
    assert all(int(line.split("at most ")[1].split("s)")[0]) <= 480 for line in plan)
    assert all("selects 0 cases" not in line for line in out.stdout.splitlines())
    assert "--resolution 256" in plan[names.index("train")]
    assert "cuda-1024-" in plan[names.index("steps")] and "cuda-256-" in plan[names.index("steps")]
    assert os.listdir(tmp_path) == ["gpu_run.log"]  # a dry run measures and writes nothing else


def test_gpu_run_refuses_an_unknown_argument_and_a_machine_without_a_gpu(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "unknown argument --fast" in out.stderr
    out = subprocess.run(
        ["bash", "benchmarks/gpu_run.sh", "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert out.returncode == 2 and "no CUDA GPU visible" in out.stderr and not (tmp_path / "o").exists()


def test_train_summary_takes_the_median_after_the_stage_start(tmp_path, bench_module):
    summary = bench_module("train_summary")
    log = tmp_path / "log.jsonl"
    recs = [
        dict(tick=1, kimg=1.0, res=128, img_per_s=900.0),
        dict(tick=2, kimg=2.0, res=256, img_per_s=50.0),
        dict(tick=3, kimg=3.0, res=256, img_per_s=400.0),
        dict(tick=4, kimg=4.0, res=256, img_per_s=420.0),
        dict(tick=5, kimg=5.0, res=256, img_per_s=380.0),
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary.main([str(log), "--res", "256", "--copy", str(tmp_path / "copy.jsonl"), "-o", str(tmp_path / "t.md")])
    md = (tmp_path / "t.md").read_text()
    assert "**400.0**" in md and "first tick 50.0" in md and "| 5 | 5.0 |" in md and "| 1 |" not in md
    assert (tmp_path / "copy.jsonl").read_text() == log.read_text()
    assert "resolutions reached: [128]" in summary.summarize(recs[:1], 256)
