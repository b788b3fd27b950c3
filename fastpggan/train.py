"""Progressive WGAN-GP training from the command line: `python -m fastpggan.train [--amp] [--data D] [--preset P] ...`.

This module is the command line only: opening the dataset and the run folder, resuming, and what the run says.
The flags are fastpggan.train_args', the configuration is built in fastpggan.config and the loop runs in
fastpggan.trainer.
"""

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional

import torch

from . import checkpoint as ckpt
from . import distributed, resume, writes
from .config import RunConfig, resolve_config
from .data import build_dataset, check_resolution
from .errors import UserError, cli_entry, env_flag, is_disk_full
from .metrics import suite
from .ops import backends
from .rundir import RunLock, remove_partial_writes, rewind_log
from .runtime import silent
from .train_args import build_parser, config_kwargs
from .trainer import Terminated, Trainer


def _unique_run_dir(out, name):
    path, i = os.path.join(out, name), 1
    while os.path.exists(path):
        path, i = os.path.join(out, f"{name}-{i}"), i + 1
    return path


def describe(cfg: RunConfig, dataset, G, D, run_dir) -> str:
    """The start-up lines: the data, the network, the schedule and how this process runs them (cfg.to_dict() in
    full goes to config.json and log.jsonl)."""
    net, s = cfg.network, cfg.schedule
    pG = sum(p.numel() for p in G.parameters()) / 1e6
    pD = sum(p.numel() for p in D.parameters()) / 1e6
    mb = ", ".join(f"{k}:{v}" for k, v in sorted(s["minibatch"].items())) or "-"
    precision = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + GradScaler"}[cfg.amp_dtype]
    return "\n".join(
        [
            f"fastpggan: {dataset.name}, {len(dataset)} images, "
            f"{dataset.resolution}x{dataset.resolution}x{dataset.num_channels}"
            f"{', %d classes' % dataset.num_classes if dataset.num_classes else ''} on {cfg.device}",
            f"  preset {cfg.preset}: fmap_base {net['fmap_base']}, fmap_max {net['fmap_max']}, "
            f"latent {net['latent_size']}{'' if net.get('fused_scale', True) else ', fused_scale 0'}"
            f" (G {pG:.2f}M, D {pD:.2f}M params)",
            f"  schedule: {s['lod_training_kimg']:g}+{s['lod_transition_kimg']:g} kimg per resolution, minibatch "
            f"{s['minibatch_base']} ({mb}), lr {s['lr_base']:g}, G EMA {cfg.ema:g}/step, "
            f"total {cfg.total_kimg:g} kimg; "
            f"amp {cfg.amp}" + ("; gradient penalty at target 1 (--gp-native-res)" if cfg.gp_native_res else ""),
            f"  step: {precision}"
            + (f" from {cfg.amp_min_res}x{cfg.amp_min_res}" if cfg.amp_min_res else "")
            + f", impl {cfg.impl}{', channels_last' if cfg.channels_last else ''}"
            f"{', CUDA graphs' if cfg.cuda_graphs else ''}{', passes compiled whole' if cfg.compile_step else ''}"
            f"{f', {cfg.batch_gpu} rows per pass' if cfg.batch_gpu else ''}",
            f"  writing to {run_dir}"
            + ("" if cfg.preset != "auto" else "   (official configuration: --preset v2-1gpu)"),
        ]
        + (
            [
                f"distributed: {cfg.world} processes, rank 0 of {cfg.world}; each process takes 1/{cfg.world} of every "
                "global minibatch"
            ]
            if cfg.world > 1
            else []
        )
    )


def run(args: argparse.Namespace, log: Callable = print) -> Trainer:
    """Train as the parsed command line says (a new run, or --resume); returns the Trainer at the end."""
    backends.forced()  # FASTPGGAN_IMPL and FASTPGGAN_TUNE are read later: checked here, before any work
    env_flag("FASTPGGAN_TUNE")
    ctx, device = distributed.init(args.device)
    if not ctx.main:
        log = silent  # rank 0 speaks for the run
        args.no_progress = True
    check_resolution(args.resolution)
    check_resolution(args.amp_min_res, what="--amp-min-res")
    state = path = init = None
    if not ctx.main:
        distributed.barrier(ctx)  # rank 0 builds the dataset cache first
    if args.resume:
        path, state = resume.find_resume(args, log)
        defaults = vars(build_parser().parse_args([]))
        if args.resume != "latest":  # the newest when looked up; a newer one means a concurrent run (the lock's error)
            resume.refuse_rewinding(path, state)
        cfg = resume.resumed_config(state, path, args, defaults, config_kwargs(args), device, ctx.world, log)
        data = resume.data_to_open(cfg, args, defaults, path)
        dataset = build_dataset(
            data,
            resolution=cfg.resolution,
            strict=cfg.strict,
            max_images=cfg.max_images,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            log=log,
        )
        cfg = resume.check_relocated(dataset, cfg, data, path, log)
        resume.check_dataset_matches(dataset, cfg, path)
        run_dir = os.path.dirname(os.path.abspath(path))
    else:
        if ctx.main:
            writes.check_folder(args.out, "--out")  # before the dataset cache is built
        init = ckpt.load(args.init) if args.init else None  # a bad checkpoint is refused before any data is read
        dataset = build_dataset(
            args.data,
            resolution=args.resolution,
            strict=args.strict,
            max_images=args.max_images,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            log=log,
        )
        cfg = resolve_config(dataset, **dict(config_kwargs(args), device=device, world=ctx.world), log=log)
        if init is not None:
            cfg, *init = resume.init_config(args, vars(build_parser().parse_args([])), init, cfg, dataset)
        run_dir = _unique_run_dir(args.out, args.name or f"{dataset.name}-{dataset.resolution}") if ctx.main else None
    if ctx.main:
        distributed.barrier(ctx)
    run_dir = distributed.broadcast_object(run_dir, ctx)
    metrics = None
    if args.metrics:
        metrics = dict(
            names=suite.parse_metrics(args.metrics),
            kimg=args.metric_kimg,
            num=args.metric_num,
            inception=args.inception,
        )
        if "fid" in metrics["names"]:
            suite.load_inception(args.inception)  # missing weights: say so now, not at the first metric run
        usable = min(args.metric_num, len(dataset)) // ctx.world * ctx.world  # what each metric run compares
        if usable < 2:
            raise UserError(
                f"--metrics compares at least 2 images (a pair for MS-SSIM, a spread for SWD and FID); "
                f"the data '{cfg.data}' has {len(dataset)} over {ctx.world} process(es); use more "
                "images or leave out --metrics"
            )
    lock = None
    if ctx.main:  # everything is checked: only now does the run folder appear
        os.makedirs(run_dir, exist_ok=True)
        lock = RunLock(run_dir)
        remove_partial_writes(run_dir, log)
    try:
        return _train(args, cfg, state, path, dataset, run_dir, metrics, ctx, log, init)
    finally:
        if lock is not None:
            lock.release()


def _train(args, cfg, state, path, dataset, run_dir, metrics, ctx, log, init=None):
    try:
        trainer = Trainer(cfg, dataset, run_dir, progress=not args.no_progress, log=log, metrics=metrics, dist_ctx=ctx)
    except (RuntimeError, MemoryError) as e:
        if not isinstance(e, MemoryError) and "memory" not in str(e):
            raise
        net = cfg.network
        raise UserError(
            f"the networks do not fit in memory on {cfg.device} (fmap_base {net['fmap_base']}, "
            f"fmap_max {net['fmap_max']}, latent {net['latent_size']}); use a smaller --fmap-base, "
            "--fmap-max or --latent-size"
        ) from None
    if cfg.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log(describe(cfg, dataset, trainer.G, trainer.D, run_dir))
    if state is not None:
        # the backends the run chose at its start (none recorded: it ran the static order, and goes on with it)
        trainer.choose_backends(cfg.backends or dict(device=None, choices={}))
        trainer.load_state_dict(state, path)
        if ctx.main:
            rewind_log(run_dir, trainer.nimg / 1000)
        log(f"resumed from {path} at kimg {trainer.nimg / 1000:g}")
    else:
        if init is not None:
            trainer.start_from(*init)
            log(
                f"init: G, D and G_ema from {args.init} (lod {cfg.init['lod']:g}); starting at kimg "
                f"{cfg.init['kimg']:g} with fresh optimizer state"
            )
        trainer.choose_backends()  # before the first step, so before any CUDA-graph capture
        if ctx.main:
            writes.write_text(os.path.join(run_dir, "config.json"), json.dumps(trainer.cfg.to_dict(), indent=2))
    try:
        if ctx.main:  # what this process runs, in the log beside the ticks it explains (kept by rewind_log)
            with open(os.path.join(run_dir, "log.jsonl"), "a") as f:
                f.write(
                    json.dumps(
                        dict(
                            config=trainer.cfg.to_dict(), kimg=round(trainer.nimg / 1000, 3), time=round(time.time(), 3)
                        )
                    )
                    + "\n"
                )
        last = trainer.run()
    except Terminated:
        latest = ckpt.latest(run_dir)
        print(
            f"error: rank {ctx.rank}: stopped by SIGTERM (torchrun sends it when another process of the run dies); "
            f"the last checkpoint {latest} is intact, continue with --resume {latest}",
            file=sys.stderr,
        )
        raise SystemExit(143) from None
    except writes.WriteFailed as e:  # a checkpoint, grid or report of the run
        latest = ckpt.latest(run_dir)
        raise UserError(
            f"cannot write '{e.path}': {e.why}; the last intact checkpoint is {latest}; "
            f"{'free space' if e.disk_full else 'fix that'}, then continue with --resume {latest}"
        ) from None
    except (OSError, RuntimeError, distributed.dist.DistBackendError) as e:
        if is_disk_full(e):
            latest = ckpt.latest(run_dir)
            raise UserError(
                f"the disk of {run_dir} is full ({getattr(e, 'strerror', None) or e}); the last intact "
                f"checkpoint is {latest}; free space, then continue with --resume {latest}"
            ) from None
        if ctx.world == 1 or isinstance(e, (OSError, torch.cuda.OutOfMemoryError)):
            raise
        latest = ckpt.latest(run_dir)
        raise UserError(
            f"rank {ctx.rank}: the process group failed, most likely because another process of this "
            f"run stopped ({str(e).splitlines()[0][:200]}); the last checkpoint {latest} is intact, "
            f"continue with --resume {latest}"
        ) from None
    finally:
        distributed.shutdown()
    log(f"done: {trainer.nimg / 1000:g} kimg; checkpoint {last}; images in {run_dir}")
    return trainer


@cli_entry
def main(argv: Optional[list] = None) -> None:
    args = build_parser().parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()
