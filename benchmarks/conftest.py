"""Shared benchmark helpers: devices, PGGAN shapes, a CUDA-synchronising timer wrapper, measured bandwidth."""

import datetime
import json
import os
import platform
import statistics

import pytest
import torch

import _child
import report
from fastpggan.errors import env_flag

# v2-1gpu minibatch per resolution, and the feature maps the G/D block at that resolution has (paper Table 2).
PGGAN_SHAPES = {
    4: (128, 512),
    8: (128, 512),
    16: (128, 512),
    32: (64, 512),
    64: (32, 256),
    128: (16, 128),
    256: (8, 64),
    512: (4, 32),
    1024: (4, 16),
}
CPU_RESOLUTIONS = (4, 8, 16, 32)


def devices():
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
        ),
    ]


def shape_cases():
    """(device, resolution) pairs: all PGGAN resolutions on CUDA, up to 32x32 on the CPU."""
    cases = []
    for dev in devices():
        for res in PGGAN_SHAPES:
            if dev.id == "cpu" and res not in CPU_RESOLUTIONS:
                continue
            cases.append(pytest.param(dev.values[0], res, id=f"{dev.id}-{res}", marks=dev.marks))
    return cases


def run_synced(benchmark, fn, device):
    """Benchmark fn, synchronising CUDA after each call so the timings cover the kernels."""
    if device == "cuda":

        def wrapped():
            out = fn()
            torch.cuda.synchronize()
            return out

        return benchmark(wrapped)
    return benchmark(fn)


def cuda_median_seconds(fn, warmup=3, reps=20):
    """Median time of fn() on the current CUDA stream, from CUDA events, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


_bandwidth = {}


def device_bandwidth_gbs(device):
    """Measured device-to-device copy bandwidth in GB/s (bytes read + written), once per session; None on CPU."""
    if device != "cuda":
        return None
    if "cuda" not in _bandwidth:
        src = torch.empty(256 * 2**20, dtype=torch.float32, device="cuda")  # 1 GiB, far beyond L2
        dst = torch.empty_like(src)
        _bandwidth["cuda"] = 2 * src.numel() * 4 / cuda_median_seconds(lambda: dst.copy_(src)) / 1e9
        del src, dst
    return _bandwidth["cuda"]


_matmul = {}


def matmul_peak_tflops(n=8192, dtype=torch.bfloat16):
    """Measured dense bf16 matmul throughput (n x n x n, median of 20) in TFLOP/s, once per session: the peak that
    MFU is relative to. None without CUDA."""
    if not torch.cuda.is_available():
        return None
    if "cuda" not in _matmul:
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        _matmul["cuda"] = 2 * n**3 / cuda_median_seconds(lambda: a @ b) / 1e12
        del a, b
    return _matmul["cuda"]


def versions():
    info = {"torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # Triton missing or broken: the report says so
        info["triton"] = None
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
    return info


def record(benchmark, device, **info):
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu", **versions(), **info
    )
    bw = device_bandwidth_gbs(device)
    if bw is not None and "bytes" in info:
        benchmark.extra_info["bandwidth_gbs"] = bw


# --- The default run, the long form, CI's smoke run and the peer ---------------------------------------------

SHAPE_PARAMS = ("res", "batch", "case")  # test_ops: the op case holds the shape
LONG = pytest.mark.long  # a case only the long form runs (--long or FASTPGGAN_BENCH_LONG=1)


def pytest_addoption(parser):
    parser.addoption(
        "--smoke",
        action="store_true",
        help="keep only the smallest resolution of each case (CI: with --benchmark-disable, each once)",
    )
    parser.addoption(
        "--long",
        action="store_true",
        default=env_flag("FASTPGGAN_BENCH_LONG"),
        help="run the long form: every case, not only the default's (also FASTPGGAN_BENCH_LONG=1)",
    )
    parser.addoption(
        "--peer",
        default=os.environ.get("FASTPGGAN_PEER"),
        metavar="PATH",
        help="a folder holding the peer pro-gan-pth (pip install --target PATH --no-deps pro-gan-pth "
        "torchvision tensorboard absl-py); without it the peer is imported where it is installed "
        "(also FASTPGGAN_PEER=PATH)",
    )
    parser.addoption(
        "--results-jsonl",
        metavar="PATH",
        default=None,
        help="append each case's result to PATH as one JSON line the moment it is measured, so that a "
        "run stopped part-way keeps what it measured (benchmarks/report.py reads it)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "long: a benchmark case only the long form (--long) runs")
    path = config.getoption("--results-jsonl")
    if path:
        head = {
            "commit_info": {"id": _child.commit(), "dirty": None},
            "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine_info": {"node": platform.node(), "cpu": {"brand_raw": platform.processor() or platform.machine()}},
        }
        _append_line(path, {"header": head})


def _append_line(path, obj):
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    path = item.config.getoption("--results-jsonl")
    fixture = getattr(item, "funcargs", {}).get("benchmark") if call.when == "call" else None
    stats = getattr(fixture, "stats", None)
    if path and stats is not None and not fixture.disabled and not fixture.has_error:
        _append_line(path, stats.as_dict(include_data=False))


def _case_and_res(item):
    params = dict(item.callspec.params) if hasattr(item, "callspec") else {}
    res = params.get("res")
    rest = tuple(sorted((k, repr(v)) for k, v in params.items() if k not in SHAPE_PARAMS))
    return (item.originalname, rest), res


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--long"):
        short = [i for i in items if i.get_closest_marker("long") is None]
        if len(short) < len(items):
            config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("long") is not None])
            items[:] = short
    if not config.getoption("--smoke"):
        return
    smallest = {}
    for item in items:
        case, res = _case_and_res(item)
        if res is not None:
            smallest[case] = min(res, smallest.get(case, res))
    keep, drop = [], []
    for item in items:
        case, res = _case_and_res(item)
        (drop if res is not None and res != smallest[case] else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    """After pytest-benchmark's tables, the one table of ratios (report.ratio_table) of this run."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled:
        return
    rows = [b.as_dict(include_data=False) for b in session.benchmarks if not b.has_error]
    table = report.ratio_table([r for r in rows if r.get("stats")])
    if table:
        terminalreporter.write_line(table)
