"""The time tuning takes: validating, timing and choosing the backends of every op case of the bare command's CPU
configuration (`python -m fastpggan.train` on fashion-mnist: 32x32, 1 channel, --preset auto), as the trainer
does at start-up; `--amp` (bf16) and fp32, with and without impl='compiled' among the candidates (its compile
time depends on the inductor cache: a first run on a machine compiles everything). Each round measures every case
again (force=True); the tune cache is a private folder. The bound an earlier issue set, 30 s on this project's
2-core CPU, holds without compiled, and with it only once inductor's cache is warm. The default run tunes without
compiled; `--long` with it too."""

import argparse

import pytest

from conftest import LONG, record
from fastpggan.tune import tune_training


@pytest.mark.parametrize("compiled", [pytest.param("with-compiled", marks=LONG), "no-compiled"])
@pytest.mark.parametrize("amp", ["on", "off"])
def test_tune_bare_command_cpu(benchmark, tmp_path, monkeypatch, amp, compiled):
    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the CPU candidates a user has: ext, compiled and ref
    monkeypatch.setenv("FASTPGGAN_NO_COMPILE", "1" if compiled == "no-compiled" else "0")
    args = argparse.Namespace(
        device="cpu",
        resolution=32,
        channels=1,
        preset="auto",
        amp=amp,
        channels_last=False,
        batch_gpu=None,
        minibatch=None,
        force=True,
    )
    benchmark.group = "tune the bare command (cpu)"
    result = benchmark.pedantic(lambda: tune_training(args, log=lambda line: None), rounds=1, iterations=1)
    record(
        benchmark,
        "cpu",
        impl=f"tune, --amp {amp}, {compiled}",
        cases=len(result["entries"]),
        measured=result["measured"],
        choices={k: e["impl"] for k, e in result["entries"].items()},
    )
    assert result["measured"] == len(result["entries"]) > 0
