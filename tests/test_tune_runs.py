"""Tuning inside runs and the commands: the trainer tunes at start-up and freezes its choices (graph capture, resume,
an explicit impl, two gloo processes), tune_model on a user's model, `python -m fastpggan.tune` and
`python -m fastpggan.selftest` (see test_tune.py for how broken backends are made)."""

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import tiny_train_args, train_quietly
from fastpggan import autotune, ops
from fastpggan import checkpoint as ckpt
from fastpggan.cuda_graph import CudaGraphStep, _Rerun
from fastpggan.ops import _dispatch, tune_cache
from fastpggan.step import random_inputs
from fastpggan.tune import training_config, training_trainer
from tuning import BIAS, FADE, _tuning_on, broken_ext, case, in_children, read_json, spy, tune_entry  # noqa: F401  (_tuning_on: autouse)

pytestmark = pytest.mark.skipif(ops._ext.load_error() is not None, reason="the extension is needed as a candidate")


def test_the_graph_capture_path_runs_the_run_s_frozen_choices(tmp_path, monkeypatch):
    args = SimpleNamespace(
        resolution=8, channels=1, preset="auto", amp="off", channels_last=False, batch_gpu=None, minibatch="4"
    )
    trainer = training_trainer(training_config(args, torch.device("cpu")), log=lambda *a: None)
    cases = [c for cs in trainer.training_cases().values() for c in cs]
    trainer.choose_backends(dict(device="x", choices={c.key: "ref" for c in cases}))
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured during the capture"))
    counts = {op: spy(monkeypatch, op) for op in ("bias_act", "minibatch_stddev", "gradient_penalty", "fade_in")}
    seen = []

    def capture(fn):
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        before = {op: dict(c) for op, c in counts.items()}
        fn()
        seen.append({op: {i: n - before[op].get(i, 0) for i, n in c.items()} for op, c in counts.items()})
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
        return _Rerun(fn)

    runner = CudaGraphStep(trainer.train_step, log=lambda *a: None, capture=capture)
    inputs = random_inputs(4, 1, 8, trainer.G.latent_size, trainer.device, torch.Generator().manual_seed(0))
    runner.step(inputs, 8, 1.0)
    assert seen and all(set(c) <= {"ref"} and c.get("ref", 0) > 0 for op, c in seen[0].items() if op != "fade_in"), seen


def _npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8))
    return str(path)


def test_the_trainer_tunes_at_start_up_names_each_op_s_backend_and_records_them(tmp_path):
    lines = []
    trainer = train_quietly(tiny_train_args(_npz(tmp_path), tmp_path / "runs", "--kimg", "0.032"), log=lines.append)
    cfg = read_json(tmp_path / "runs" / "run" / "config.json")
    choices = cfg["backends"]["choices"]
    assert choices and set(choices.values()) <= {"ref", "ext"}
    assert cfg["backends"]["device"] == tune_cache.device_key("cpu")
    assert any(line.startswith("tune: measured") for line in lines)
    per_op = {line.split(":")[0][len("backend ") :]: line for line in lines if line.startswith("backend ")}
    assert set(per_op) == {"bias_act", "fade_in", "minibatch_stddev", "gradient_penalty", "gp_interpolate"}
    for op, line in per_op.items():
        stated = {impl for part in line.split(": ", 1)[1].split() for impl in part.split(":")[1].split("+")}
        assert stated == {impl for key, impl in choices.items() if key.startswith(op + "(")}, line
    assert _dispatch._run_choices == choices
    assert trainer.cfg.backends["choices"] == choices
    assert ckpt.load(ckpt.latest(str(tmp_path / "runs" / "run")))["config"]["backends"]["choices"] == choices


@pytest.mark.slow
def test_a_resumed_run_keeps_its_choices_whatever_the_cache_says_now(tmp_path, monkeypatch):
    data = _npz(tmp_path)
    train_quietly(tiny_train_args(data, tmp_path / "runs", "--kimg", "0.032"))
    recorded = read_json(tmp_path / "runs" / "run" / "config.json")["backends"]["choices"]
    flipped = {k: tune_entry("ext" if v == "ref" else "ref") for k, v in recorded.items()}
    tune_cache.write(torch.device("cpu"), flipped)
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("a resumed run measured"))
    _dispatch.use_choices(None)
    trainer = train_quietly(tiny_train_args(data, tmp_path / "runs", "--resume", "latest", "--kimg", "0.064"))
    assert _dispatch._run_choices == recorded == trainer.cfg.backends["choices"]
    x = torch.randn(8, 8, 4, 4)  # a case the run recorded, dispatched as recorded, not as the cache says now
    key = next(k for k in recorded if k.startswith("bias_act(lrelu,bias,pn) float32 contiguous n8x8x4x4"))
    counts = spy(monkeypatch, "bias_act")
    ops.bias_act(x, torch.randn(8), pixel_norm=True)
    assert counts == {recorded[key]: 1}


def test_an_explicit_impl_tunes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured with an explicit impl"))
    train_quietly(tiny_train_args(_npz(tmp_path), tmp_path / "runs", "--kimg", "0.016", "--impl", "ref"))
    monkeypatch.setenv("FASTPGGAN_IMPL", "ext")
    train_quietly(tiny_train_args(_npz(tmp_path), tmp_path / "runs2", "--kimg", "0.016"))
    assert "backends" not in read_json(tmp_path / "runs2" / "run" / "config.json")


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no gloo backend",
)
def test_two_gloo_processes_use_rank_0_s_choices(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys
        from fastpggan import autotune, train
        from fastpggan.ops import _dispatch
        rank = int(os.environ["RANK"])
        if rank != 0:   # only rank 0 may measure; the others receive its choices
            def refuse(*a, **k):
                raise AssertionError("rank %d measured" % rank)
            autotune.measure = refuse
        train.run(train.build_parser().parse_args(sys.argv[2:]), log=lambda *a: None)
        json.dump(_dispatch._run_choices, open(os.path.join(sys.argv[1], "choices-%d.json" % rank), "w"))
    """)
    )
    args = tiny_train_args(_npz(tmp_path), tmp_path / "runs", "--kimg", "0.016", "--mbstd-group", "1")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(script),
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    c0, c1 = (read_json(tmp_path / f"choices-{i}.json") for i in (0, 1))
    assert c0 and c0 == c1 == read_json(tmp_path / "runs" / "run" / "config.json")["backends"]["choices"]


def test_tune_model_tunes_a_user_s_own_model_and_auto_then_uses_it(monkeypatch):
    from fastpggan.layers import EqualizedConv2d, MinibatchStdDev

    model = torch.nn.Sequential(
        EqualizedConv2d(3, 5, 3, padding=1, act="lrelu", pixel_norm=True),
        MinibatchStdDev(2),
        EqualizedConv2d(6, 7, 3, padding=1, act="lrelu"),
    )
    x = torch.randn(4, 3, 8, 8)
    result = autotune.tune_model(model, (x,))
    assert result["measured"] == 3
    assert {k.split("(")[0] for k in result["choices"]} == {"bias_act", "minibatch_stddev"}
    counts = spy(monkeypatch, "minibatch_stddev")
    model(x)
    key = next(k for k in result["choices"] if k.startswith("minibatch_stddev"))
    assert counts == {result["choices"][key]: 1}
    assert autotune.tune_model(model, (x,))["measured"] == 0


@pytest.mark.slow
def test_tune_command_prints_the_table_and_writes_the_report(tmp_path):
    report = tmp_path / "tune.md"
    cmd = [sys.executable, "-m", "fastpggan.tune", "--resolution", "8", "--device", "cpu", "--report", str(report)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0]
    for col in ("op", "shape", "dtype", "layout", "time per backend", "GB/s", "of copy", "max err vs ref", "choice"):
        assert col in header
    rows = [line for line in r.stdout.splitlines()[1:] if line.split()[:1] in (["4"], ["8"])]
    assert rows and all(line.split()[-1] in ("ref", "ext") for line in rows)
    assert "copy bandwidth" in r.stdout and "case(s) measured" in r.stdout
    md = report.read_text()
    assert "| res | op |" in md and tune_cache.versions()["torch"] in md
    again = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 case(s) measured" in again.stdout
    kept = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # the report is never overwritten
    assert (
        kept.returncode == 2
        and kept.stderr.strip().splitlines() == [f"error: --report '{report}' exists; remove it or choose another path"]
        and report.read_text() == md
    )


def test_tune_command_errors_are_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "fastpggan.tune", "--resolution", "12"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_selftest_command_errors_are_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "fastpggan.selftest", "--bogus"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--bogus" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_selftest_passes_on_the_cpu_and_writes_its_reports(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTPGGAN_NO_COMPILE")  # the self-test leaves impl='compiled' out by itself (no --compiled)
    r = subprocess.run(
        [sys.executable, "-m", "fastpggan.selftest", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (js,) = [f for f in os.listdir(tmp_path) if f.startswith("fastpggan-selftest-") and f.endswith(".json")]
    report = read_json(tmp_path / js)
    assert report["ok"] is True and report["checks"]["kernels"]["ok"] is True
    assert report["checks"]["kernels"]["passed"]["ext"] > 50 and "compiled" not in report["checks"]["kernels"]["passed"]
    assert report["checks"]["graph_equals_eager"]["ok"] is True
    assert report["checks"]["no_host_sync"]["ok"] is None
    assert {r["variant"] for r in report["benchmark"]["rows"]} == {"fast", "ref-fp32", "ref-bf16-cl"}
    assert os.path.exists(tmp_path / js.replace(".json", ".md"))


@pytest.mark.slow
def test_selftest_fails_with_status_1_on_a_wrong_kernel(tmp_path, monkeypatch):
    broken_ext(tmp_path, monkeypatch, "return ops.bias_act_ref(x, bias, gain, slope) + 0.01")
    r = subprocess.run(
        [sys.executable, "-m", "fastpggan.selftest", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "kernels: FAILED" in r.stdout and "impl='ext': output differs from ref" in r.stdout
