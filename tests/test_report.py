"""benchmarks/report.py: ratios against ref and bandwidth fractions from a pytest-benchmark JSON."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def report(bench_module):
    return bench_module("report")


def _bench(group, impl, median, **info):
    return {
        "group": group,
        "name": f"test_op[{impl}]",
        "stats": {"median": median},
        "extra_info": {"impl": impl, "device": "NVIDIA H100", "torch": "2.11", "triton": "3.6", "cuda": "13.0", **info},
    }


def test_ratios_and_bandwidth_fraction(report):
    data = {
        "machine_info": {"node": "gpu1"},
        "commit_info": {"id": "abcdef1234567890", "dirty": False},
        "datetime": "2026-11-22",
        "benchmarks": [
            _bench("op fwd", "ref", 4e-3, bytes=8e9, bandwidth_gbs=3000.0),
            _bench("op fwd", "triton", 1e-3 * 4, bytes=8e9, bandwidth_gbs=3000.0),
            _bench("op fwd", "ext", 2e-3, bytes=8e9, bandwidth_gbs=3000.0),
            _bench("op fwd", "compiled", 3e-3, bytes=8e9, bandwidth_gbs=3000.0),
            _bench("step", "ref", 0.5, images=64),
        ],
    }
    md, ratios = report.render(data, command="pytest benchmarks/ --benchmark-only").split("## Ratios")
    rows = {
        tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
        for line in md.splitlines()
        if line.startswith("| op fwd") or line.startswith("| step")
    }
    assert "| op fwd | ext | 2.000 | 2.00x | 1.50x | - |" in ratios
    assert "| 2.00x | 1.50x | 4000.0 GB/s (133%)" in rows[("op fwd", "ext")]  # vs ref, vs compiled
    assert "1.00x" in rows[("op fwd", "triton")] and "2000.0 GB/s (67%)" in rows[("op fwd", "triton")]
    assert "128.0 img/s" in rows[("step", "ref")]
    assert "NVIDIA H100" in md and "abcdef123456" in md and "3000 GB/s" in md and "triton 3.6" in md


def _step(res, variant, img_per_s, images=4, flops=None, peak=None):
    med = images / img_per_s
    info = {"impl": variant, "device": "NVIDIA H100", "res": res, "images": images, "torch": "2.11"}
    if flops:
        info.update(flops=flops, matmul_peak_tflops=peak, peak_mem_mb=123.4)
    return {
        "group": f"train step cuda {res}",
        "name": f"test_train_step[cuda-{res}-{variant}]",
        "stats": {"median": med},
        "extra_info": info,
    }


def test_kimg_per_resolution_covers_the_official_schedule(report):
    k = report.kimg_per_resolution("v2-1gpu", 1024)
    # 600 kimg at 4x4; 600 fade-in + 600 stable at each of 8..512; 1024 gets its fade-in and the rest
    assert k == {4: 600, 8: 1200, 16: 1200, 32: 1200, 64: 1200, 128: 1200, 256: 1200, 512: 1200, 1024: 3000}


def test_train_step_table_ratios_mfu_and_projection(report):
    res = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    bench = []
    for r in res:
        bench += [
            _step(r, "ref-fp32", 1000.0),
            _step(r, "ref-bf16-cl", 2000.0),
            _step(r, "ref-bf16-cl-compiled", 2500.0),
            _step(r, "fast-ext", 4000.0, flops=2e12, peak=800.0),
        ]
    bench.append(_step(8, "fast-triton", 3000.0))  # not at every resolution: no projection
    md = report.render({"benchmarks": bench}, command="pytest benchmarks/")
    row = next(line for line in md.splitlines() if line.startswith("| 8 | fast-ext"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 4 images in 1 ms; 2 TFLOP per step / 1 ms = 2000 TFLOP/s; 2000 / 800 = 250%
    assert cells == ["8", "fast-ext", "4000.0", "4.00x", "2.00x", "1.60x", "123.4", "2e+03", "250.0%"]
    hours = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in md.splitlines()
        if line.startswith("| ref-") or line.startswith("| fast-")
    }
    # 12e6 images at 1000 img/s = 3.33 h
    assert hours == {"fast-ext": 0.83, "ref-bf16-cl-compiled": 1.33, "ref-bf16-cl": 1.67, "ref-fp32": 3.33}
    assert "measured bf16 matmul peak" in md and "800 TFLOP/s" in md


def _variant(group, variant, img_per_s, kernels, amp="None", compiled=False, images=16):
    return {
        "group": group,
        "name": f"test_train_step[{variant}]",
        "stats": {"median": images / img_per_s},
        "extra_info": {"impl": variant, "images": images, "kernels": kernels, "amp": amp, "compiled_step": compiled},
    }


def test_ratio_table_against_ref_compiled_and_peer(report):
    g = "train step cpu 8"
    bench = [
        _bench("op fwd+bwd", "ref", 4e-3, dtype="float32"),
        _bench("op fwd+bwd", "ext", 2e-3, dtype="float32"),
        _bench("op fwd+bwd", "compiled", 1e-3, dtype="float32"),
        _bench("op fwd+bwd", "triton", 1e-3, dtype="float32"),  # no time: a skipped or disabled run
        _variant(g, "ref-fp32", 10.0, "ref"),
        _variant(g, "ext-fp32", 12.0, "ext"),
        _variant(g, "ext-bf16", 18.0, "ext", amp="bfloat16"),
        _variant(g, "ref-compiled-fp32", 15.0, "ref", compiled=True),
        _variant(g, "ref-compiled-bf16", 24.0, "ref", amp="bfloat16", compiled=True),
        _variant(g, "ext-compiled-bf16", 30.0, "ext", amp="bfloat16", compiled=True),
        _variant(g, "peer pro-gan-pth", 8.0, "peer"),
    ]
    bench[3]["stats"] = None
    md = report.ratio_table(bench)
    rows = {
        c[1]: c[2:]
        for c in (
            [x.strip() for x in line.strip("|").split("|")]
            for line in md.splitlines()
            if line.startswith("| op") or line.startswith("| train")
        )
    }
    assert set(rows) == {"ext", "ext-fp32", "ext-bf16", "ext-compiled-bf16"}  # ours only, never ref or the peer
    assert rows["ext"] == ["2.000", "2.00x", "0.50x", "-"]
    assert rows["ext-fp32"][1:] == ["1.20x", "0.80x", "1.50x"]
    # no eager bf16 ref in the run: the fp32 one, named; the compiled and the peer baselines
    assert rows["ext-bf16"][1:] == ["1.80x (ref-fp32)", "0.75x", "2.25x (peer pro-gan-pth)"]
    assert rows["ext-compiled-bf16"][1:] == ["3.00x (ref-fp32)", "1.25x", "3.75x (peer pro-gan-pth)"]
    assert report.ratio_table([]) == ""
