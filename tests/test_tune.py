"""fastpggan.autotune, fastpggan.tune and fastpggan.selftest on the CPU: backends are validated against `_ref` in a
child process before they are timed, a wrong, raising or crashing backend is never chosen, choices are cached and
reused, bad cache files are survived, runs freeze their choices (resume, distributed), graph capture only reads.

Broken backends are made as a user's torch could make them: a `sitecustomize.py` on PYTHONPATH overrides the
extension's CPU kernel of `fastpggan_ext::bias_act` with torch.library in every child Python, which is where the
tuner validates.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from conftest import run_python, slow
from fastpggan import autotune, ops
from fastpggan.ops import _dispatch, tune_cache
from tuning import BIAS, FADE, _tuning_on, broken_ext, case, in_children, read_json, spy, tune_entry  # noqa: F401  (_tuning_on: autouse)

pytestmark = pytest.mark.skipif(ops._ext.load_error() is not None, reason="the extension is needed as a candidate")


# -- choosing --------------------------------------------------------------------------------------------------


def test_tuning_validates_times_chooses_and_caches(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton is a CPU candidate under its interpreter
    fast = ["ext"] if ops._util.interpreter_broken() else ["ext", "triton"]  # Triton: where its interpreter runs
    result = autotune.tune_cases([BIAS, FADE], seed=5)
    assert result["measured"] == 2 and set(result["choices"]) == {BIAS.key, FADE.key}
    for key, entry in result["entries"].items():
        assert set(entry["seconds"]) == {"ref", *fast}  # all validated and timed
        assert entry["impl"] == min(entry["seconds"], key=entry["seconds"].get)
        for impl in fast:
            assert 0 <= entry["tolerance_ratio"][impl] <= 1
        assert not entry["excluded"]
    data = read_json(tune_cache.cache_path("cpu"))
    assert data["versions"] == tune_cache.versions() and data["device"] == tune_cache.device_info("cpu")
    assert {k: v["impl"] for k, v in data["choices"].items()} == result["choices"]

    # a second tuning measures nothing again
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured a cached case again"))
    again = autotune.tune_cases([BIAS, FADE])
    assert again["measured"] == 0 and again["choices"] == result["choices"]


def test_auto_runs_the_cached_choice_and_explicit_choices_win(monkeypatch):
    tune_cache.write(torch.device("cpu"), {BIAS.key: tune_entry("ref")})
    counts = spy(monkeypatch, "bias_act")
    x, b = torch.randn(BIAS.shape), torch.randn(BIAS.shape[1])
    ops.bias_act(x, b)  # the static CPU order would run ext
    assert counts == {"ref": 1}
    ops.bias_act(x[:3], b)  # same shape class (batch 3 rounds up to 4)
    assert counts == {"ref": 2}
    ops.bias_act(torch.randn(4, 6, 4, 4), b)  # another case: the static order
    assert counts == {"ref": 2, "ext": 1}
    ops.bias_act(x, b, impl="ext")
    assert counts["ext"] == 2
    monkeypatch.setenv("FASTPGGAN_IMPL", "ext")
    ops.bias_act(x, b)
    assert counts["ext"] == 3


def test_a_wrong_backend_is_never_chosen(tmp_path, monkeypatch):
    broken_ext(tmp_path, monkeypatch, "return ops.bias_act_ref(x, bias, gain, slope) * 1.001")
    logged = []
    with pytest.warns(
        UserWarning,
        match=r"bias_act on bias_act\(lrelu,bias\) float32 contiguous n4x6x8x8: "
        r"excluding impl='ext': output differs from ref \(max error",
    ):
        result = autotune.tune_cases([BIAS, FADE], log=logged.append)
    assert result["choices"][BIAS.key] == "ref"
    assert set(result["entries"][BIAS.key]["seconds"]) == {"ref"}
    assert "output differs from ref" in result["entries"][BIAS.key]["excluded"]["ext"]
    assert not result["entries"][FADE.key]["excluded"]  # the other op's ext is fine
    assert len(logged) == 1 and "\n" not in logged[0]


# impl='compiled' in the tuner. Injected, not raced: the child's clock makes compiled the fastest by far, and its
# compiled kernels can be made wrong or made to fail to compile.
FAST_COMPILED = """
from fastpggan import backend_measure
_time_case = backend_measure.time_case
backend_measure.time_case = lambda case, impl, *a, **k: _time_case(case, impl, *a, **k) * (1e-3 if impl == "compiled"
                                                                                         else 1)
"""
WRONG_COMPILED = """
from fastpggan.ops import _compiled
_function = _compiled._function
def _off(name, body, args):
    fn = _function(name, body, args)
    return lambda *a: fn(*a) * 1.01
_compiled._function = _off
"""


def _tune_with_compiled(tmp_path, monkeypatch, child_code, **env):
    monkeypatch.delenv("FASTPGGAN_NO_COMPILE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    in_children(tmp_path, monkeypatch, child_code)
    return autotune.tune_cases([BIAS], force=True, seed=5, log=lambda line: None)


@pytest.mark.slow
def test_auto_picks_compiled_where_it_is_measured_fastest_with_a_cold_and_a_warm_inductor_cache(tmp_path, monkeypatch):
    compile_s = []
    for _ in ("cold", "warm"):  # fresh child processes; the first one fills the empty inductor cache
        entry = _tune_with_compiled(
            tmp_path, monkeypatch, FAST_COMPILED, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor")
        )["entries"][BIAS.key]
        assert entry["impl"] == "compiled" and set(entry["seconds"]) == {"ref", "ext", "compiled"}, entry
        assert not entry["excluded"] and 0 <= entry["tolerance_ratio"]["compiled"] <= 1
        compile_s.append(entry["compile_seconds"]["compiled"])
        monkeypatch.undo()
        monkeypatch.setenv("FASTPGGAN_TUNE", "1")
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert all(s > 0 for s in compile_s), compile_s
    counts = spy(monkeypatch, "bias_act")
    ops.bias_act(torch.randn(BIAS.shape), torch.randn(BIAS.shape[1]))
    assert counts == {"compiled": 1}


@pytest.mark.slow
def test_compiled_is_never_chosen_where_it_fails_its_oracle(tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="excluding impl='compiled': output differs from ref"):
        entry = _tune_with_compiled(tmp_path, monkeypatch, FAST_COMPILED + WRONG_COMPILED)["entries"][BIAS.key]
    assert entry["impl"] != "compiled" and "compiled" not in entry["seconds"]


def test_a_compile_failure_excludes_compiled_with_one_warning(tmp_path, monkeypatch):
    code = FAST_COMPILED + "from fastpggan.ops import _compiled\n_compiled.MODE = 'no-such-mode'\n"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        entry = _tune_with_compiled(tmp_path, monkeypatch, code)["entries"][BIAS.key]
    msgs = [str(w.message) for w in rec if "impl='compiled'" in str(w.message)]
    assert len(msgs) == 1 and "torch.compile failed on bias_act" in msgs[0] and "no-such-mode" in msgs[0], msgs
    assert entry["impl"] != "compiled" and "no-such-mode" in entry["excluded"]["compiled"]


@pytest.mark.slow
def test_a_raising_backend_is_excluded(tmp_path, monkeypatch):
    broken_ext(tmp_path, monkeypatch, "raise RuntimeError('deliberately broken')")
    with pytest.warns(UserWarning, match="excluding impl='ext': raised RuntimeError: deliberately broken"):
        result = autotune.tune_cases([BIAS], log=lambda line: None)
    assert result["choices"][BIAS.key] == "ref"


@pytest.mark.slow
def test_a_backend_that_crashes_the_child_is_excluded_and_tuning_goes_on(tmp_path, monkeypatch):
    broken_ext(tmp_path, monkeypatch, "os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.warns(UserWarning, match="excluding impl='ext': the process killed by signal 11"):
        result = autotune.tune_cases([BIAS, FADE], log=lambda line: None)
    assert result["choices"][BIAS.key] == "ref"
    assert set(result["entries"][FADE.key]["seconds"]) == {"ref", "ext"}  # a new child measured the next case


@pytest.mark.slow
def test_a_hung_backend_is_excluded(tmp_path, monkeypatch):
    broken_ext(tmp_path, monkeypatch, "import time; time.sleep(600)")
    with pytest.warns(UserWarning, match="excluding impl='ext': no answer within 20 s"):
        result = autotune.tune_cases([BIAS], log=lambda line: None, timeout_s=20)
    assert result["choices"][BIAS.key] == "ref"


def test_a_tuner_that_cannot_start_leaves_the_static_order(tmp_path, monkeypatch):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(broken))
    logged = []
    with pytest.warns(UserWarning, match=r"tuning failed \(.*exited with status 3 \(cannot start\)\)"):
        result = autotune.tune_cases([BIAS], log=logged.append)
    assert result["measured"] == 0 and result["choices"] == {} and len(logged) == 1
    assert not os.path.exists(tune_cache.cache_path("cpu"))


@pytest.mark.parametrize("interpret,expected", [("1", "['ref', 'triton', 'ext']"), slow("0", "['ref', 'ext']")])
def test_triton_is_a_cpu_candidate_only_under_the_interpreter(interpret, expected):
    if interpret == "1" and ops._util.interpreter_broken():
        expected = "['ref', 'ext']"  # the gate shuts Triton out: ops._util.interpreter_broken
    r = run_python(
        "from fastpggan import autotune; from fastpggan.autotune import Case; "
        "print(autotune.candidates(Case('bias_act', 'lrelu,bias', (4, 6, 8, 8), 'float32', "
        "'contiguous', 'cpu')))",
        TRITON_INTERPRET=interpret,
    )
    assert r.returncode == 0 and r.stdout.strip() == expected, r.stderr


# -- the cache file --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated", "other version", "other device", "no backend"])
def test_a_bad_cache_file_is_ignored_with_one_warning_and_rebuilt(damage, monkeypatch):
    tune_cache.write(torch.device("cpu"), {BIAS.key: tune_entry("ref")})
    path = tune_cache.cache_path("cpu")
    text = pathlib.Path(path).read_text()
    data = json.loads(text)
    if damage == "garbage":
        text = "\x00\x01 not json"
    elif damage == "truncated":
        text = text[: len(text) // 2]
    else:
        if damage == "other version":
            data["versions"]["fastpggan"] = "0.0.1"
        elif damage == "other device":
            data["device"]["name"] = "another CPU"
        else:
            data["choices"][BIAS.key]["impl"] = "cudnn"
        text = json.dumps(data)
    pathlib.Path(path).write_text(text)
    _dispatch.forget()
    counts = spy(monkeypatch, "bias_act")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            ops.bias_act(torch.randn(BIAS.shape), torch.randn(6))
    ours = [w for w in caught if "tune cache" in str(w.message)]
    assert len(ours) == 1 and "ignoring the tune cache" in str(ours[0].message)
    assert counts == {"ext": 3}  # the static order, not the damaged file's 'ref'
    result = autotune.tune_cases([BIAS])
    assert result["measured"] == 1
    rebuilt = read_json(path)
    assert tune_cache.check_file(rebuilt, "cpu") is None and list(rebuilt["choices"]) == [BIAS.key]


@pytest.mark.slow
def test_two_processes_tuning_at_once_leave_a_valid_file_with_both(tmp_path):
    code = textwrap.dedent("""
        import sys
        from fastpggan import autotune
        from fastpggan.autotune import Case
        c = Case('bias_act', sys.argv[1], (4, 6, 8, 8), 'float32', 'contiguous', 'cpu')
        print(autotune.tune_cases([c], log=lambda line: None)['measured'])
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, v], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for v in ("lrelu,bias", "linear,nobias,pn")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    data = read_json(tune_cache.cache_path("cpu"))
    assert tune_cache.check_file(data, "cpu") is None
    assert set(data["choices"]) == {case(variant=v).key for v in ("lrelu,bias", "linear,nobias,pn")}
    assert not [f for f in os.listdir(os.path.dirname(tune_cache.cache_path("cpu"))) if ".tmp-" in f]


# -- tuning never happens where it must not --------------------------------------------------------------------


def test_nothing_is_measured_while_a_graph_is_captured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured during a capture"))
    with pytest.warns(UserWarning, match="not measuring while a CUDA graph is being captured"):
        result = autotune.tune_cases([BIAS])
    assert result["measured"] == 0 and result["choices"] == {}


def test_nothing_is_measured_while_torch_compile_traces(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured while tracing"))
    with pytest.warns(UserWarning, match="torch.compile is tracing"):
        assert autotune.tune_cases([BIAS])["measured"] == 0


# -- runs --------------------------------------------------------------------------------------------------------


# -- library use ---------------------------------------------------------------------------------------------------


# -- command lines -----------------------------------------------------------------------------------------------
