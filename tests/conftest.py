import os
import subprocess
import sys

import numpy as np
import pytest

# Under pytest-xdist (`-n 2`), one thread per worker and per subprocess it starts: two workers on two cores with
# torch's default of a thread per core ran the quick suite 3.2x slower than one process, one thread each 1.8x
# faster (CONTRIBUTING.md "Time budget").
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the thread setting above, which torch reads when it loads)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The Triton kernels are tested on the CPU interpreter where there is no GPU. Triton reads this when a kernel is
# defined, so it is set before anything imports fastpggan.kernels (nothing above does).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Fresh RNG, a private dataset and tune cache for every test, and no run's frozen backend choices.

    FASTPGGAN_TUNE=0: a trainer started by a test uses the tune cache and the static backend order without
    measuring (seconds per run saved); the tests of tuning (test_tune.py) turn it back on."""
    from fastpggan.ops import _dispatch

    torch.manual_seed(1234)
    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTPGGAN_IMPL", raising=False)
    monkeypatch.setenv("FASTPGGAN_TUNE", "0")
    yield
    _dispatch.use_choices(None)
    _dispatch.set_default(None)


def slow(*values, id=None):
    """One parametrize case for the full suite only: the quick suite (`-m "not slow"`) runs the others."""
    return pytest.param(*values, marks=pytest.mark.slow, id=id)


def skip_unless_runs(impl: str, device="cpu") -> None:
    """Skip the calling test, saying why, where backend `impl` cannot run on `device` here."""
    from fastpggan import ops

    why = ops.backends.impl_unavailable(impl, device)
    if why is not None:
        pytest.skip(f"impl='{impl}' cannot run here: {why}")


def run_python(code, timeout=900, **env):
    """Run `code` in a fresh Python with extra environment variables; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, **env), timeout=timeout
    )


@pytest.fixture
def bench_module():
    """load(name): import benchmarks/NAME.py by path, with benchmarks/ on sys.path while it loads (its imports)."""
    import importlib.util

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

    def load(name):
        sys.path.insert(0, folder)
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(folder, f"{name}.py"))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
        finally:
            sys.path.remove(folder)

    return load


@pytest.fixture
def ext_broken(monkeypatch):
    """The C++/CUDA extension as if its build had failed."""
    from fastpggan.ops import _ext

    monkeypatch.setattr(_ext, "_state", {"error": "simulated build failure"})


@pytest.fixture
def tiny_npz(tmp_path):
    """64 random 16x16 RGB images with 3 classes, saved as .npz (images NHWC, labels)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=x, labels=rng.integers(0, 3, size=64))
    return str(path)


def train_quietly(argv, log=lambda *a: None):
    """fastpggan.train.run on CLI arguments, in this process; returns the Trainer."""
    from fastpggan import train

    return train.run(train.build_parser().parse_args(argv), log=log)


def checkpoint_tensors(state):
    """{name: tensor} of a checkpoint's G, D, G_ema and both Adam states, for exact comparisons."""
    out = {}
    for part in ("G", "D", "G_ema"):
        out.update({f"{part}.{k}": v for k, v in state[part].items()})
    for part in ("opt_G", "opt_D"):
        for pid, s in state[part]["state"].items():
            out.update({f"{part}.{pid}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def tiny_train_args(data, out, *extra):
    """CLI arguments for a seconds-long run: 4x4 -> 8x8 -> 16x16 with transitions, tiny widths."""
    return [
        "--data",
        data,
        "--out",
        str(out),
        "--name",
        "run",
        "--fmap-base",
        "32",
        "--fmap-max",
        "8",
        "--latent-size",
        "8",
        "--minibatch",
        "8",
        "--lod-training-kimg",
        "0.016",
        "--lod-transition-kimg",
        "0.016",
        "--tick-kimg",
        "0.016",
        "--snap-ticks",
        "2",
        "--kimg",
        "0.08",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]
