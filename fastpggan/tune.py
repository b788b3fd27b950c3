"""Tune the op backends for a training configuration: `python -m fastpggan.tune [--device D] [--resolution R]
[--preset P] [--amp ...] [--channels-last] [--report FILE.md] [--force]`.

It records the op calls of every stage of that configuration's training step (as the trainer does at start-up),
validates every backend against the reference on each, times those that pass, caches the fastest
(fastpggan.autotune) and prints a table: op, shape, dtype, layout, the time of each backend, GB/s and the
fraction of the copy bandwidth measured in the same run, the error against `_ref`, and the choice. With no flags it
tunes the bare command's configuration (`python -m fastpggan.train` on fashion-mnist, 32x32, 1 channel) on this
device. On the CPU the candidates are the extension and ref (Triton only with TRITON_INTERPRET=1).

`tune_model(module, example_inputs)` (from fastpggan.autotune) tunes a model of your own.
"""

import argparse
import os
import sys
import time
from typing import Callable, List, Optional

import torch

from .autotune import tune_cases, tune_model
from .config import PRESET_NAMES, DataShapes, RunConfig, resolve_config
from .data import check_resolution
from .errors import ArgumentParser, cli_entry, number
from .ops import tune_cache
from .runtime import pick_device
from .trainer import Trainer
from .writes import check_output, write_text

__all__ = ["tune_model", "tune_cases", "tune_training", "format_table", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.tune",
        description="Validate, time and choose the op backends for a training configuration, cache "
        "the choices for this device and print the table.",
    )
    a = p.add_argument
    a("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    a("--resolution", type=int, default=32, help="final resolution of the configuration (a power of two >= 4)")
    a("--channels", type=number(int, min=1, max=4), default=1, help="image channels (fashion-mnist: 1, RGB: 3)")
    a("--preset", default="auto", choices=PRESET_NAMES, help="schedule preset, as for fastpggan.train")
    a(
        "--amp",
        nargs="?",
        const="on",
        default="auto",
        choices=["auto", "on", "bf16", "fp16", "off"],
        help="mixed precision, as for fastpggan.train",
    )
    a("--channels-last", action="store_true", help="the networks in channels_last, as for fastpggan.train")
    a("--batch-gpu", type=number(int, min=1), default=None, help="rows per forward pass, as for fastpggan.train")
    a("--minibatch", default=None, help="minibatch per resolution, as for fastpggan.train")
    a("--report", default=None, metavar="FILE.md", help="also write the table, device and versions as markdown")
    a("--force", action="store_true", help="measure again the cases the tune cache already holds")
    return p


def training_config(args: argparse.Namespace, device: torch.device, **overrides) -> RunConfig:
    """The configuration (config.resolve_config, as a library user builds one) of the training run that `args`
    describe (this module's flags; an `impl` attribute, if any, is passed on too); CUDA graphs off unless
    `overrides` say otherwise."""
    check_resolution(args.resolution)
    kw = dict(
        device=device,
        preset=args.preset,
        amp=args.amp,
        channels_last=args.channels_last,
        batch_gpu=args.batch_gpu,
        minibatch=args.minibatch,
        impl=getattr(args, "impl", "auto"),
        cuda_graphs="off",
    )
    kw.update(overrides)
    return resolve_config(DataShapes(args.resolution, args.channels), **kw)


def training_trainer(cfg: RunConfig, log: Callable = print) -> Trainer:
    """A Trainer of `cfg` on shapes only: untrained, writing nothing."""
    return Trainer(
        cfg, DataShapes(cfg.resolution, cfg.network["num_channels"]), run_dir=os.devnull, progress=False, log=log
    )


def tune_training(args: argparse.Namespace, log: Callable = print) -> dict:
    """Tune the cases of every stage of the configuration; returns tune_cases' result plus "stages": {resolution:
    [case keys]}, "seconds" and "device"."""
    device = pick_device(args.device)
    trainer = training_trainer(training_config(args, device), log=lambda *a: None)
    stages = trainer.training_cases()
    t0 = time.time()
    result = tune_cases([c for cs in stages.values() for c in cs], force=args.force, log=log)
    result.update(
        stages={r: [c.key for c in cs] for r, cs in stages.items()}, seconds=time.time() - t0, torch_device=str(device)
    )
    return result


def _us(seconds):
    return f"{seconds * 1e6:.0f}" if seconds < 1e-2 else f"{seconds * 1e6:.3g}"


def table_rows(result: dict) -> List[List[str]]:
    """One row per case, under the first resolution that runs it: op, shape, dtype, layout, time per backend, GB/s,
    % of copy, error, choice."""
    rows, shown = [], set()
    for res, keys in result["stages"].items():
        for key in keys:
            e = result["entries"].get(key)
            if not e or key in shown:
                continue
            shown.add(key)
            op, dtype, layout, _ = key.split(" ")
            compiling = e.get("compile_seconds", {})
            times = " ".join(
                f"{i} {_us(t)}" + (f" (+{compiling[i]:.1f} s compile)" if i in compiling else "")
                for i, t in sorted(e["seconds"].items(), key=lambda kv: kv[1])
            )
            times += "".join(f" {i} excluded" for i in e.get("excluded", {}))
            best = e["seconds"].get(e["impl"])
            gbps = e["bytes"] / best / 1e9 if best else None
            copy = e.get("copy_bytes_per_s")
            err = max(e.get("max_error", {}).values(), default=None)
            ratio = max(e.get("tolerance_ratio", {}).values(), default=None)
            rows.append(
                [
                    str(res),
                    op,
                    "x".join(map(str, e["shape"])),
                    dtype,
                    layout,
                    times,
                    f"{gbps:.2f}" if gbps else "-",
                    f"{100 * gbps * 1e9 / copy:.1f}%" if gbps and copy else "-",
                    f"{err:.2g} ({ratio:.2f} tol)" if err is not None else "-",
                    e["impl"],
                ]
            )
    return rows


HEADER = [
    "res",
    "op",
    "shape",
    "dtype",
    "layout",
    "time per backend (us, fwd+bwd)",
    "GB/s",
    "of copy",
    "max err vs ref",
    "choice",
]


def format_table(result: dict, markdown: bool = False) -> str:
    rows = table_rows(result)
    if markdown:
        return "\n".join(
            ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + ["| " + " | ".join(r) + " |" for r in rows]
        )
    widths = [max(len(x) for x in col) for col in zip(HEADER, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in [HEADER] + rows)


def summary(result: dict) -> str:
    bw = result.get("bandwidth")
    copy = f"copy bandwidth {bw / 1e9:.1f} GB/s (measured in this run); " if bw else ""
    compiling = [
        e["compile_seconds"]["compiled"]
        for e in result["entries"].values()
        if e and "compiled" in e.get("compile_seconds", {})
    ]
    compiled = (
        (
            f"impl='compiled' spent {sum(compiling):.1f} s compiling when its {len(compiling)} case(s) were "
            "measured (less with a warm inductor cache); "
        )
        if compiling
        else ""
    )
    return (
        f"{result['measured']} case(s) measured in {result['seconds']:.1f} s, "
        f"{len(result['entries']) - result['measured']} from the cache; {compiled}{copy}"
        f"cache: {tune_cache.cache_path(torch.device(result['torch_device']))}"
    )


def report_markdown(result: dict, argv: List[str]) -> str:
    device = torch.device(result["torch_device"])
    info, versions = tune_cache.device_info(device), tune_cache.versions()
    return "\n".join(
        [
            f"# fastpggan tune: {info['name']}",
            "",
            f"- command: `python -m fastpggan.tune {' '.join(argv)}`",
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            f"- device: {info}",
            f"- versions: {versions}",
            f"- {summary(result)}",
            "- time: median of forward + backward after a warm-up; GB/s: the least bytes the op must move, "
            "over that time; error: the output's largest absolute error against `_ref` (and the worst ratio to the "
            "tests' tolerance over output and gradients)",
            "",
            format_table(result, markdown=True),
            "",
        ]
    )


@cli_entry
def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.report:  # before the measuring; tune's --force means measuring again, so an old report is kept
        check_output(args.report, "--report", force=False, force_flag=None)
    tune_cache.check_writable()
    result = tune_training(args, log=lambda line: print(line, file=sys.stderr))
    print(format_table(result))
    print(summary(result))
    if args.report:
        write_text(args.report, report_markdown(result, argv))
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
