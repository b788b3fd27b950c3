"""The drop-in step ratio with the variants interleaved: `python benchmarks/dropin_ratio.py [--res 32] [--rounds 15]`.

benchmarks/test_dropin.py times each variant in its own block, so a machine whose speed drifts by tens of percent
over a minute (a shared 2-core VM) shows the drift as a ratio. Here each round runs one step of every variant in
turn, and the ratio is of the medians: drift hits all variants alike. Prints a markdown table. `--profile` prints
instead the share of each variant's step spent in convolutions (torch.profiler's self CPU time over 3 steps).
"""

import argparse
import statistics
import time

import torch

from _child import commit
from test_dropin import VARIANTS, WIDTHS, make_step


def convolution_share(step) -> float:
    """The fraction of the self CPU time of 3 steps (after 2 warm-up steps) in ops named *convolution*."""
    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / sum(e.self_cpu_time_total for e in events)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, nargs="+", default=sorted(WIDTHS), choices=sorted(WIDTHS))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="print the convolutions' share of each step instead")
    args = p.parse_args(argv)
    print(f"commit {commit()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, fp32")
    if args.profile:
        print("\n| res | variant | convolutions' share of the step |\n|---|---|---:|")
        for res in args.res:
            for v in VARIANTS:
                print(f"| {res}x{res} | {v} | {convolution_share(make_step(v, res, args.device)):.0%} |")
        return
    print("\n| res | variant | median ms | vs ref |\n|---|---|---:|---:|")
    for res in args.res:
        steps = {v: make_step(v, res, args.device) for v in VARIANTS}
        times = {v: [] for v in VARIANTS}
        for r in range(args.rounds + 2):  # two warm-up rounds
            for v, step in steps.items():
                start = time.perf_counter()
                step()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if r >= 2:
                    times[v].append(time.perf_counter() - start)
        med = {v: statistics.median(t) for v, t in times.items()}
        for v in VARIANTS:
            print(f"| {res}x{res} | {v} | {med[v] * 1e3:.1f} | {med['ref'] / med[v]:.2f}x |")


if __name__ == "__main__":
    main()
