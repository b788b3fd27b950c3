"""The training step eager and compiled whole (`train --compile-step on`), with the reference ops and with ours:
four variants timed in one process, interleaved, at each resolution; then their compile cost with a cold and a
warm inductor cache.

    python benchmarks/compiled_step.py [--threads 1] [--res 16 32] [--rounds 7] [--amp] [--out RESULTS.md]

Variants: eager ref (step.TrainStep, impl='ref'), eager ext (our C++ kernels), compiled ref
(compiled_step.CompiledStep, impl='ref': inductor sees plain PyTorch) and compiled ext (our kernels inside the
compiled passes as opaque custom ops). The workload is one whole training step (D pass with the WGAN-GP double
backward, Adam, EMA, G pass, Adam) in fp32 (--amp: bf16 autocast, as `train --amp`) at the stable stage of a
network whose full resolution is R, minibatch 16, fmap_base 1024, fmap_max 128, latent 128 (the widths of the
issue that asked for this measurement). Each round times every variant once, in order; the table gives each
variant's median over the rounds.

A child process runs the whole measurement with an empty inductor cache (TORCHINDUCTOR_CACHE_DIR; cold), then a
second child with that cache filled (warm); the step times are the cold child's, the compile seconds both.
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import _child

VARIANTS = (("eager", "ref"), ("eager", "ext"), ("compiled", "ref"), ("compiled", "ext"))
MINIBATCH, FMAP_BASE, FMAP_MAX, LATENT = 16, 1024, 128, 128


def child(resolutions, rounds: int, threads: int, amp: bool) -> list:
    import torch

    torch.set_num_threads(threads)
    from fastpggan.compiled_step import CompiledStep
    from fastpggan.networks import Discriminator, Generator
    from fastpggan.ops import backends
    from fastpggan.optim import make_optimizer
    from fastpggan.step import TrainStep, random_inputs

    backends.prepare("cpu")
    rows = []
    for res in resolutions:
        steps = {}
        for mode, impl in VARIANTS:  # the same weights in each (one seed)
            torch.manual_seed(0)
            G = Generator(resolution=res, fmap_base=FMAP_BASE, fmap_max=FMAP_MAX, latent_size=LATENT, impl=impl)
            D = Discriminator(resolution=res, fmap_base=FMAP_BASE, fmap_max=FMAP_MAX, mbstd_group_size=4, impl=impl)
            cls, kw = (CompiledStep, dict(log=lambda *a: None)) if mode == "compiled" else (TrainStep, {})
            steps[(mode, impl)] = cls(
                G,
                D,
                copy.deepcopy(G).eval().requires_grad_(False),
                make_optimizer(G.parameters(), "cpu"),
                make_optimizer(D.parameters(), "cpu"),
                impl=impl,
                amp_dtype=torch.bfloat16 if amp else None,
                **kw,
            )
        gen = torch.Generator().manual_seed(1)
        inputs = random_inputs(MINIBATCH, 3, res, LATENT, "cpu", gen)
        first = {}
        for key, s in steps.items():  # the first step: compiles the compiled variants' two passes
            t0 = time.perf_counter()
            s.step(inputs, res, 1.0)
            first[key] = time.perf_counter() - t0
        times = {key: [] for key in steps}
        for _ in range(rounds):
            for key, s in steps.items():
                t0 = time.perf_counter()
                s.step(inputs, res, 1.0)
                times[key].append(time.perf_counter() - t0)
        for (mode, impl), s in steps.items():
            rows.append(
                dict(
                    res=res,
                    mode=mode,
                    impl=impl,
                    step_ms=1e3 * statistics.median(times[(mode, impl)]),
                    first_s=first[(mode, impl)],
                    graphs=getattr(s, "graphs", 0),
                    compile_s=sum(getattr(s, "compile_seconds", {}).values()),
                    failure=getattr(s, "failure", None),
                )
            )
    return rows


def _run_child(args, cache: str) -> list:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--threads",
        str(args.threads),
        "--rounds",
        str(args.rounds),
        "--res",
        *map(str, args.res),
    ] + (["--amp"] if args.amp else [])
    return _child.run(cmd, "the measurement", env)


def table(cold: list, warm: list, args) -> str:
    import torch

    from fastpggan.ops import tune_cache

    commit = _child.commit()
    out = [
        f"# the training step, eager and compiled whole ({tune_cache.device_info('cpu')['name']}, {args.threads} "
        f"thread(s), torch {torch.__version__}, Python {platform.python_version()}, commit {commit}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())})\n",
        f"`python benchmarks/compiled_step.py --threads {args.threads} --res {' '.join(map(str, args.res))} "
        f"--rounds {args.rounds}{' --amp' if args.amp else ''}`\n",
        f"One {'bf16-autocast' if args.amp else 'fp32'} training step at the stable stage, minibatch {MINIBATCH}, "
        f"fmap_base {FMAP_BASE}, fmap_max "
        f"{FMAP_MAX}, latent {LATENT}; median of {args.rounds} interleaved rounds. Compile s: the compiled "
        "passes' first calls (D and G), with an empty and with a filled inductor cache. Break-even: steps "
        "until the cold compile is paid back against eager ext.\n",
        "| res | step | ms per step | vs eager ref | vs compiled ref | compile s cold | compile s warm "
        "| break-even steps | failure |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    warm_by = {(r["res"], r["mode"], r["impl"]): r for r in warm}
    for r in cold:
        base = {
            m: next(x for x in cold if x["res"] == r["res"] and (x["mode"], x["impl"]) == m)
            for m in (("eager", "ref"), ("compiled", "ref"), ("eager", "ext"))
        }
        ratios = (
            f"| {r['res']} | {r['mode']} {r['impl']} | {r['step_ms']:.0f} | "
            f"{base[('eager', 'ref')]['step_ms'] / r['step_ms']:.2f}x | "
            f"{base[('compiled', 'ref')]['step_ms'] / r['step_ms']:.2f}x |"
        )
        if r["mode"] != "compiled":
            out.append(ratios + " | | | |")
            continue
        gain = base[("eager", "ext")]["step_ms"] - r["step_ms"]
        even = f"{1e3 * r['compile_s'] / gain:.0f}" if gain > 0 else "never"
        w = warm_by[(r["res"], r["mode"], r["impl"])]
        out.append(ratios + f" {r['compile_s']:.1f} | {w['compile_s']:.1f} | {even} | {r['failure'] or ''} |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--res", type=int, nargs="+", default=[16, 32])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (train --amp) instead of fp32")
    p.add_argument("--out", default=None, help="write the table (markdown) and its JSON beside it")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child.result(child(args.res, args.rounds, args.threads, args.amp))
        return
    with tempfile.TemporaryDirectory() as cache:
        cold = _run_child(args, cache)
        print(json.dumps(cold), flush=True)
        warm = _run_child(args, cache)
    text = table(cold, warm, args)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(dict(cold=cold, warm=warm), f, indent=1)


if __name__ == "__main__":
    main()
