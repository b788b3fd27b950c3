"""Helpers of the tuning tests (test_tune.py, test_tune_runs.py): cases, backend spies, broken children."""

import json
import os
import pathlib
import sys
import textwrap

import pytest

from fastpggan.autotune import Case
from fastpggan.ops import _dispatch


@pytest.fixture(autouse=True)
def _tuning_on(monkeypatch):
    """Trainers tune; the tuner's children compare ext and ref only (Triton's CPU interpreter takes seconds per
    case, and impl='compiled' compiles for seconds; the first test and the compiled ones keep them in)."""
    monkeypatch.setenv("FASTPGGAN_TUNE", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FASTPGGAN_NO_COMPILE", "1")


def read_json(path):
    return json.loads(pathlib.Path(path).read_text())


def case(op="bias_act", variant="lrelu,bias", shape=(4, 6, 8, 8), dtype="float32", layout="contiguous", **extra):
    return Case(op, variant, tuple(shape), dtype, layout, "cpu", extra)


BIAS = case()


FADE = case("fade_in", "up", alpha="tensor")


def spy(monkeypatch, op):
    """Count the calls of each backend of `op`."""
    counts = {}
    for impl, (fn, unavailable) in list(_dispatch._registry[op].items()):

        def wrapped(*a, _fn=fn, _impl=impl, **k):
            counts[_impl] = counts.get(_impl, 0) + 1
            return _fn(*a, **k)

        monkeypatch.setitem(_dispatch._registry[op], impl, (wrapped, unavailable))
    _dispatch.forget()
    return counts


def in_children(tmp_path, monkeypatch, code):
    """Python processes this test starts (the tuner's children) run `code` first (a sitecustomize module)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site)] + sys.path))


def broken_ext(tmp_path, monkeypatch, body):
    """Children of this test get an extension whose CPU bias_act kernel is `body` (of x, bias, gain, slope)."""
    in_children(
        tmp_path,
        monkeypatch,
        textwrap.dedent("""
        import os, signal, torch
        from fastpggan import ops
        assert ops._ext.load_error() is None
        _lib = torch.library.Library("fastpggan_ext", "IMPL")
        def _bad(x, bias, gain, slope):
        """)
        + textwrap.indent(textwrap.dedent(body), "    ")
        + '\n_lib.impl("bias_act", _bad, "CPU")\n',
    )


def tune_entry(impl, **extra):
    """A tune-cache entry as autotune writes it (tune_cache.Entry's required fields), choosing `impl`."""
    return dict(dict(impl=impl, shape=[4, 6, 8, 8], bytes=1536, seconds={impl: 1e-4}), **extra)
