"""Check fastpggan on this machine, in a few minutes: `python -m fastpggan.selftest [--device D] [--out DIR]`.

On a GPU, run this first. It runs every check the kernels owe to the device they run on, and writes
`fastpggan-selftest-<device>-<date>.json` and `.md` (attach them to a bug report):

- kernels: every fast backend against `_ref` on this device, for each op, dtype (fp32, bf16, fp16) and layout
  (contiguous, channels_last), at odd shapes: values, first-order and (float64) second-order gradients, in a
  child process so that a crash is reported rather than fatal;
- graph = eager: the CUDA-graphed step against the eager step, over steps at two stages (stable and fading). On the
  CPU the graph is stood in for by re-running the recorded step, which checks the buffer handling only;
- no host sync: the eager step under torch.cuda.set_sync_debug_mode('error') (CUDA only);
- step benchmark: img/s of the training step, fast (impl auto, tuned; bf16; on a GPU channels_last and CUDA
  graphs) against ref in fp32 and ref in bf16 + channels_last, at a few resolutions;
- the tune table of the benchmark's configuration (fastpggan.tune).

It exits with status 1 if a correctness check fails. On the CPU it runs the CPU subset.
"""

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace
from typing import Callable, List, Optional, Sequence

import torch

from . import autotune
from .autotune import Case
from .cuda_graph import CudaGraphStep, _Rerun
from .errors import ArgumentParser, cli_entry
from .ops import backends, tune_cache
from .runtime import pick_device
from .step import random_inputs
from .tune import format_table, training_config, training_trainer, tune_training
from .writes import check_folder, check_output, write_text

DTYPES = ("float32", "bfloat16", "float16")
LAYOUTS = ("contiguous", "channels_last")


def kernel_cases(device: torch.device, ops: Optional[Sequence[str]] = None) -> List[Case]:
    """Every declared op's self-test cases (OpSpec.check_cases: odd shapes, C not a power of two, N=1, 4x4 up, both
    forms of every CUDA kernel) per dtype and layout; `ops` keeps only those ops."""
    dev, out, big = str(device), [], device.type == "cuda"
    for spec in backends.declared():
        if ops is not None and spec.name not in ops:
            continue
        for dtype in DTYPES:
            for layout in LAYOUTS:
                out += [
                    Case(spec.name, variant, tuple(shape), dtype, layout, dev, dict(extra))
                    for variant, shape, extra in spec.check_cases(dtype, layout, big)
                ]
    return out


def check_kernels(device: torch.device, log: Callable, ops: Optional[Sequence[str]] = None) -> dict:
    cases = kernel_cases(device, ops)
    t0 = time.time()
    results = autotune.measure(cases, timed=False)["results"]
    failures, passed = [], {}
    for case, res in zip(cases, results):
        for impl, r in res.items():
            if impl == "ref":
                continue
            if r.get("ok"):
                passed[impl] = passed.get(impl, 0) + 1
            else:
                failures.append(f"{case.key}: impl='{impl}': {r['error']}")
    for line in failures:
        log(f"  FAIL {line}")
    return dict(
        ok=not failures,
        cases=len(cases),
        passed=passed,
        failures=failures,
        seconds=round(time.time() - t0, 1),
        detail=f"{sum(passed.values())} backend x case checks passed ({passed}), {len(failures)} failed",
    )


def _bench_args(device, **kw):
    a = dict(
        resolution=32,
        channels=3,
        preset="auto",
        amp="on",
        channels_last=device.type == "cuda",
        batch_gpu=None,
        minibatch=None,
        impl="auto",
        force=False,
        device=str(device),
    )
    a.update(kw)
    return SimpleNamespace(**a)


def _inputs(trainer, res, n, seed):
    gen = torch.Generator(device=trainer.device).manual_seed(seed)
    return random_inputs(n, trainer.cfg.network["num_channels"], res, trainer.G.latent_size, trainer.device, gen)


def check_graph_equals_eager(device: torch.device, log: Callable) -> dict:
    args = _bench_args(device, resolution=16, amp="off", minibatch="8")
    cuda = device.type == "cuda"
    eager = training_trainer(training_config(args, device), log=lambda *a: None)
    # on a GPU the trainer's own graphed runner (capturable optimizers); on the CPU a re-run stands in for the graph
    graphed = training_trainer(training_config(args, device, cuda_graphs="on" if cuda else "off"), log=lambda *a: None)
    runner = graphed.runner if cuda else CudaGraphStep(graphed.train_step, log=log, capture=_Rerun)
    worst, stages = 0.0, [(8, 1.0), (8, 1.0), (8, 1.0), (16, 0.3), (16, 0.5), (16, 0.7)]
    for i, (res, alpha) in enumerate(stages):
        a = eager.train_step.step(_inputs(eager, res, 8, i), res, alpha)
        b = runner.step(_inputs(graphed, res, 8, i), res, alpha)
        worst = max(worst, ((a - b).abs() / a.abs().clamp_min(1)).max().item())
    for net in ("G", "D", "G_ema"):
        for (name, p), q in zip(getattr(eager, net).named_parameters(), getattr(graphed, net).parameters()):
            worst = max(worst, ((p - q).abs() / p.abs().clamp_min(1)).max().item())
    tol = 0.0 if device.type == "cpu" else 1e-4  # a GPU's atomics may sum in another order
    captured = "CUDA graphs" if device.type == "cuda" else "re-run stand-in (CPU)"
    return dict(
        ok=worst <= tol and not runner.failed,
        max_relative_difference=worst,
        tolerance=tol,
        detail=f"{len(stages)} steps at 8x8 and 16x16 (fading), {captured}: max relative difference "
        f"{worst:.3g} (tolerance {tol:g})" + (", capture FAILED" if runner.failed else ""),
    )


def check_no_host_sync(device: torch.device, log: Callable) -> dict:
    if device.type != "cuda":
        return dict(ok=None, detail="CUDA only (torch.cuda.set_sync_debug_mode)")
    args = _bench_args(device, resolution=16, minibatch="8")
    trainer = training_trainer(training_config(args, device), log=lambda *a: None)
    inputs = _inputs(trainer, 16, 8, 0)
    trainer.train_step.step(inputs, 16, 0.5)  # lazy state and first-call work outside the check
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step.step(inputs, 16, 0.5)
        ok, why = True, "no synchronising call in one eager step at 16x16 (fading)"
    except RuntimeError as e:
        ok, why = False, f"a host sync in the step: {str(e).splitlines()[0][:200]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return dict(ok=ok, detail=why)


def bench_steps(device: torch.device, log: Callable) -> dict:
    resolutions = [16, 128, 512] if device.type == "cuda" else [8, 32]
    variants = {
        "fast": dict(impl="auto", amp="on", channels_last=device.type == "cuda"),
        "ref-fp32": dict(impl="ref", amp="off", channels_last=False),
        "ref-bf16-cl": dict(impl="ref", amp="bf16", channels_last=True),
    }
    steps = 5 if device.type == "cuda" else 3
    rows = []
    for name, v in variants.items():
        args = _bench_args(device, resolution=max(resolutions), **v)
        graphs = "on" if device.type == "cuda" and name == "fast" else "off"
        trainer = training_trainer(training_config(args, device, cuda_graphs=graphs), log=lambda *a: None)
        if name == "fast":
            trainer.choose_backends()
        for res in resolutions:
            n = trainer.schedule.at(trainer.schedule.kimg_to_reach(res) * 1000).minibatch
            inputs = _inputs(trainer, res, n, 0)
            for _ in range(2):
                trainer.runner.step(inputs, res, 1.0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.runner.step(inputs, res, 1.0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            sec = (time.perf_counter() - t0) / steps
            rows.append(
                dict(
                    variant=name,
                    resolution=res,
                    minibatch=n,
                    ms_per_step=round(sec * 1e3, 3),
                    img_per_s=round(n / sec, 1),
                )
            )
        backends.use_choices(None)  # the next variant runs without the fast one's frozen choices
    for row in rows:
        base = {r["variant"]: r["img_per_s"] for r in rows if r["resolution"] == row["resolution"]}
        row["speedup_vs_ref_fp32"] = round(row["img_per_s"] / base["ref-fp32"], 3)
        row["speedup_vs_ref_bf16_cl"] = round(row["img_per_s"] / base["ref-bf16-cl"], 3)
    return dict(rows=rows, steps=steps, args=vars(_bench_args(device, resolution=max(resolutions))))


def run_checks(device: torch.device, log: Callable = print) -> dict:
    report = dict(
        device=tune_cache.device_info(device),
        versions=tune_cache.versions(),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        checks={},
    )
    for name, fn in [
        ("kernels", check_kernels),
        ("graph_equals_eager", check_graph_equals_eager),
        ("no_host_sync", check_no_host_sync),
    ]:
        t0 = time.time()
        try:
            out = fn(device, log)
        except Exception as e:  # a check that cannot run has failed
            out = dict(ok=False, detail=f"raised {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        out["seconds"] = round(time.time() - t0, 1)
        report["checks"][name] = out
        status = {True: "ok", False: "FAILED", None: "skipped"}[out["ok"]]
        log(f"{name}: {status}: {out['detail']} ({out['seconds']} s)")
    t0 = time.time()
    report["benchmark"] = bench_steps(device, log)
    log(f"step benchmark: {len(report['benchmark']['rows'])} timings ({time.time() - t0:.1f} s)")
    t0 = time.time()
    tune_args = _bench_args(device, resolution=max(r["resolution"] for r in report["benchmark"]["rows"]))
    tuned = tune_training(tune_args, log=log)
    report["tune"] = dict(
        entries=tuned["entries"],
        stages={str(k): v for k, v in tuned["stages"].items()},
        bandwidth=tuned["bandwidth"],
        measured=tuned["measured"],
        table=format_table(tuned),
    )
    report["tune_markdown"] = format_table(tuned, markdown=True)
    log(f"tune table: {len(tuned['entries'])} cases ({time.time() - t0:.1f} s)")
    report["ok"] = all(c["ok"] is not False for c in report["checks"].values())
    return report


def markdown(report: dict, command: str) -> str:
    lines = [
        f"# fastpggan self-test: {report['device']['name']}",
        "",
        f"- command: `{command}`",
        f"- date: {report['date']}",
        f"- device: {report['device']}",
        f"- versions: {report['versions']}",
        f"- result: {'all correctness checks passed' if report['ok'] else 'a correctness check FAILED'}",
        "",
        "## Correctness",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    for name, c in report["checks"].items():
        lines.append(f"| {name} | {({True: 'ok', False: 'FAILED', None: 'skipped'})[c['ok']]} | {c['detail']} |")
    fails = report["checks"]["kernels"].get("failures") or []
    if fails:
        lines += ["", "Kernel failures:", ""] + [f"- {f}" for f in fails]
    b = report["benchmark"]
    lines += [
        "",
        "## Training step",
        "",
        f"Mean of {b['steps']} steps after 2 warm-up steps (and capture), alpha 1; networks of "
        f"`--preset auto` on this device at {b['args']['channels']} channels. fast = impl auto (tuned), "
        "bf16 autocast" + (", channels_last, CUDA graphs" if report["device"]["type"] == "cuda" else "") + ".",
        "",
        "| resolution | minibatch | variant | ms/step | img/s | vs ref-fp32 | vs ref-bf16-cl |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in b["rows"]:
        lines.append(
            f"| {r['resolution']} | {r['minibatch']} | {r['variant']} | {r['ms_per_step']} | "
            f"{r['img_per_s']} | {r['speedup_vs_ref_fp32']}x | {r['speedup_vs_ref_bf16_cl']}x |"
        )
    lines += ["", "## Tune table", "", report["tune_markdown"], ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.selftest",
        description="Check the kernels, the graphed step and "
        "the step's speed on this device; write a JSON and a markdown report.",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--out", default=".", help="folder of the two report files (created if missing)")
    p.add_argument("--force", action="store_true", help="overwrite today's reports in --out")
    p.add_argument(
        "--compiled",
        action="store_true",
        help="check, time and tune impl='compiled' too (compiling "
        "every case adds minutes; without it the self-test runs as with FASTPGGAN_NO_COMPILE=1)",
    )
    return p


@cli_entry
def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    if not args.compiled:  # for this process and the tuner's children
        os.environ["FASTPGGAN_NO_COMPILE"] = "1"
    stem = os.path.join(args.out, f"fastpggan-selftest-{tune_cache.device_key(device)}-{time.strftime('%Y%m%d')}")
    check_folder(args.out, "--out")  # before the minutes of checks, not after them
    tune_cache.check_writable()
    for path in (stem + ".json", stem + ".md"):
        check_output(path, "--out", args.force)
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(f"fastpggan self-test on {tune_cache.device_info(device)['name']} ({device}); this takes a few minutes")
    report = run_checks(device, log)
    write_text(stem + ".json", json.dumps(report, indent=1, default=str) + "\n")
    write_text(stem + ".md", markdown(report, "python -m fastpggan.selftest " + " ".join(argv)))
    log(f"wrote {stem}.json and {stem}.md")
    if not report["ok"]:
        log("a correctness check FAILED: see the report; impl='auto' never picks a backend that failed its check")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
