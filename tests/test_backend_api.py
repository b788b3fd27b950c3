"""The public backend API (fastpggan.ops.backends, fastpggan.ops.tune_cache): what can run, forcing 'auto', what it
chose and why, and the tune cache's file; and that nothing outside fastpggan/ops reaches into its private modules."""

import os
import re
import warnings

import pytest
import torch

from fastpggan import ops
from fastpggan.ops import backends, tune_cache
from tuning import tune_entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGGAN_OPS = {"bias_act", "fade_in", "minibatch_stddev", "gradient_penalty", "gp_interpolate"}


def _bias_act_choice(x=None):
    x = torch.randn(2, 5, 4, 4) if x is None else x
    with backends.choices_made() as log:
        ops.bias_act(x, torch.randn(x.shape[1]))
    (entry,) = log
    return entry


def test_available_says_which_backends_run_here_and_why_not():
    table = backends.available()
    assert PGGAN_OPS <= set(table) and all(set(row) == set(backends.IMPLS) for row in table.values())
    assert all(row["ref"] is None for row in table.values())
    if not os.environ.get("TRITON_INTERPRET"):
        assert "CUDA" in table["bias_act"]["triton"]  # a sentence, not a flag
    assert set(backends.available("fade_in")) == {"fade_in"}
    assert {s.name for s in backends.declared()} >= PGGAN_OPS
    assert backends.op_spec("bias_act").auto_order["cpu"][0] == ops.AUTO_ORDER["bias_act"]["cpu"][0]


def test_auto_reports_what_it_chose_and_why(monkeypatch):
    first = ops.AUTO_ORDER["bias_act"]["cpu"][0]
    available = backends.available("bias_act")["bias_act"]
    entry = _bias_act_choice()
    assert entry["op"] == "bias_act" and entry["case"] == "bias_act(lrelu,bias) float32 contiguous n2x5x4x4"
    assert entry == dict(
        entry,
        impl=first if available[first] is None else "ref",
        why="static order" if available[first] is None else "static order, fallback",
    )
    backends.use_choices({entry["case"]: "ref"})
    assert _bias_act_choice() == dict(entry, impl="ref", why="run choices")
    backends.use_choices(None)
    tune_cache.write(torch.device("cpu"), {entry["case"]: tune_entry("ref")})
    assert _bias_act_choice() == dict(entry, impl="ref", why="tune cache")


def test_pin_set_default_and_the_environment_force_auto_in_that_order(monkeypatch):
    assert backends.forced() == ("auto", "")
    monkeypatch.setenv("FASTPGGAN_IMPL", "ref")
    assert _bias_act_choice()["why"] == "FASTPGGAN_IMPL" and backends.forced() == ("ref", "FASTPGGAN_IMPL")
    backends.set_default("ref")
    assert _bias_act_choice()["why"] == "set_default"
    with backends.pin("ref"):
        assert _bias_act_choice()["why"] == "pin"
        with backends.pin("auto"):  # lifts the pins outside, set_default and the environment
            assert _bias_act_choice()["why"].startswith("static order")
            assert backends.forced() == ("auto", "pin")
        assert backends.forced() == ("ref", "pin")
    backends.set_default(None)
    monkeypatch.delenv("FASTPGGAN_IMPL")
    assert backends.forced() == ("auto", "")
    x = torch.randn(2, 5, 4, 4)
    with backends.pin("ref"):  # an explicit impl= is unchanged by a pin
        with backends.choices_made() as log:
            ops.bias_act(x, impl="ref")
        assert log == []  # only 'auto' calls are reported


def test_a_pinned_backend_that_cannot_run_falls_back_with_one_warning():
    import toy_ops  # toy ops with no Triton backend

    toy_ops.declare()
    try:
        x = torch.randn(2, 3, 4, 4)
        with backends.pin("triton"), backends.choices_made() as log, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                y = toy_ops.toy(x, True)
    finally:
        toy_ops.undeclare()
    assert torch.equal(y, x * 2 + 1)
    assert [e["impl"] for e in log] == ["ref"] * 3 and log[0]["why"] == "pin, fallback"
    assert len([w for w in caught if "toy_scale impl='triton' unavailable" in str(w.message)]) == 1


def test_bad_backend_names_are_refused():
    with pytest.raises(ValueError, match="must be one of 'auto', 'ref', 'triton', 'ext'"):
        with backends.pin("fast"):
            pass
    with pytest.raises(ValueError, match="must be one of"):
        backends.set_default("cuda")


def test_the_tune_cache_reads_back_what_it_wrote_in_its_documented_format(tmp_path):
    cpu = torch.device("cpu")
    assert tune_cache.read(cpu) is None  # the test's empty cache folder
    key = tune_cache.case_key("fade_in", "up", torch.float32, "contiguous", (3, 4, 8, 8))
    assert key == "fade_in(up) float32 contiguous n4x4x8x8"
    path = tune_cache.write(cpu, {key: tune_entry("ref")})
    assert path == tune_cache.cache_path(cpu) and path.startswith(os.environ["FASTPGGAN_CACHE"])
    data = tune_cache.read(cpu)
    assert data["format"] == tune_cache.FORMAT and data["format_version"] == tune_cache.FORMAT_VERSION
    assert data["device"] == tune_cache.device_info(cpu) and data["versions"] == tune_cache.versions()
    assert data["choices"] == {key: tune_entry("ref")}
    tune_cache.write(cpu, {"other": tune_entry("ext")})  # merged, not replaced
    assert set(tune_cache.read(cpu)["choices"]) == {key, "other"}


PRIVATE = re.compile(r"ops\._(dispatch|choices)|import .*\b_(dispatch|choices)\b|\b_(dispatch|choices)\.")


def test_nothing_outside_fastpggan_ops_reaches_into_its_private_modules():
    """The issue's check: no `ops._dispatch`/`_choices` outside fastpggan/ops (lint-imports also forbids importing
    any private ops module there)."""
    hits = []
    for top in ("fastpggan", "benchmarks"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            if os.path.relpath(root, REPO).startswith(os.path.join("fastpggan", "ops")):
                continue
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(root, name)) as f:
                        hits += [f"{name}:{i}" for i, line in enumerate(f, 1) if PRIVATE.search(line)]
    assert not hits
    assert PRIVATE.search("from .ops import _dispatch") and PRIVATE.search("x = ops._choices.read()")


@pytest.mark.parametrize(
    "triton_version, numpy_version, broken",
    [
        ("3.5.1", "2.4.6", True),
        ("3.0.0", "2.4.0", True),
        ("3.5.1", "2.3.5", False),
        ("3.0.0", "1.26.4", False),
        ("3.7.0", "2.4.6", False),
        ("3.10.0+git1", "2.5.0", False),
    ],
)
def test_the_triton_interpreter_is_refused_where_numpy_breaks_it(monkeypatch, triton_version, numpy_version, broken):
    import numpy
    import triton

    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    why = ops._util.interpreter_broken()
    assert (why is not None) == broken
    monkeypatch.setattr(ops._util, "_interpreter_error", [why])  # as read with the kernels' import
    if broken:
        assert f"Triton {triton_version}'s CPU interpreter" in why and "'numpy<2.4'" in why
        assert ops._util.triton_unavailable(torch.zeros(1)) == why  # the tests' `fast` fixture skips on this line


def test_the_interpreter_gate_is_not_wider_than_the_fault():
    """Where the gate refuses the interpreter, a kernel run past it fails with the TypeError it names."""
    why = ops._util.interpreter_broken()
    if why is None:
        pytest.skip("this Triton's CPU interpreter runs our kernels (the gate is open; every Triton test runs)")
    from fastpggan.kernels.minibatch_stddev import minibatch_stddev

    with pytest.raises(Exception, match="only 0-dimensional arrays can be converted to Python scalars"):
        minibatch_stddev(torch.randn(4, 3, 4, 4), 2)
