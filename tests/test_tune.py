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
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import run_python, slow, tiny_train_args, train_quietly
from fastpggan import autotune, ops
from fastpggan import checkpoint as ckpt
from fastpggan.autotune import Case
from fastpggan.cuda_graph import CudaGraphStep, _Rerun
from fastpggan.ops import _dispatch, tune_cache
from fastpggan.step import random_inputs
from fastpggan.tune import training_config, training_trainer

pytestmark = pytest.mark.skipif(ops._ext.load_error() is not None, reason="the extension is needed as a candidate")


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


# -- choosing --------------------------------------------------------------------------------------------------


def test_tuning_validates_times_chooses_and_caches(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton is a CPU candidate under its interpreter
    result = autotune.tune_cases([BIAS, FADE], seed=5)
    assert result["measured"] == 2 and set(result["choices"]) == {BIAS.key, FADE.key}
    for key, entry in result["entries"].items():
        assert set(entry["seconds"]) == {"ref", "ext", "triton"}  # all validated and timed
        assert entry["impl"] == min(entry["seconds"], key=entry["seconds"].get)
        for impl in ("ext", "triton"):
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
    tune_cache.write(torch.device("cpu"), {BIAS.key: dict(impl="ref")})
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
    tune_cache.write(torch.device("cpu"), {BIAS.key: dict(impl="ref")})
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


# -- runs --------------------------------------------------------------------------------------------------------


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
    flipped = {k: dict(impl="ext" if v == "ref" else "ref") for k, v in recorded.items()}
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


# -- library use ---------------------------------------------------------------------------------------------------


def test_tune_model_tunes_a_user_s_own_model_and_auto_then_uses_it(monkeypatch):
    from fastpggan.layers import EqualizedConv2d, MinibatchStdDev

    model = torch.nn.Sequential(EqualizedConv2d(3, 5, 3, pixel_norm=True), MinibatchStdDev(2), EqualizedConv2d(6, 7, 3))
    x = torch.randn(4, 3, 8, 8)
    result = autotune.tune_model(model, (x,))
    assert result["measured"] == 3
    assert {k.split("(")[0] for k in result["choices"]} == {"bias_act", "minibatch_stddev"}
    counts = spy(monkeypatch, "minibatch_stddev")
    model(x)
    key = next(k for k in result["choices"] if k.startswith("minibatch_stddev"))
    assert counts == {result["choices"][key]: 1}
    assert autotune.tune_model(model, (x,))["measured"] == 0


# -- command lines -----------------------------------------------------------------------------------------------


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
