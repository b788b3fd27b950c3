"""The training loop of one run (official train.py's train_progressive_gan): `Trainer(cfg, dataset, ...).run()`.

Per step: the official step of fastpggan.step (a D step on reals faded to the current lod, the G EMA update, a
G step, TF's Adam), with Adam reset whenever lod crosses an integer. A tick of `tick_kimg` images logs, draws a
grid from fixed latents through G_ema and, every `snap_ticks` ticks, writes a checkpoint. Deviation (tiny): the
schedule is re-evaluated every step rather than every 4 minibatches.
"""
import copy
import dataclasses
import json
import math
import os
import signal
import time
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from . import autotune, distributed
from . import checkpoint as ckpt
from .compiled_step import CompiledStep
from .config import RunConfig
from .errors import UserError, env_flag
from .images import write_grid
from .metrics import suite
from .ops import backends, tune_cache
from .sampler import Sampler
from .schedule import Schedule, remaining_seconds
from .step import (
    CudaGraphStep,
    StepInputs,
    TrainStep,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    random_inputs,
    reset_optimizer_,
    set_lr,
)


class Diverged(UserError):
    """A loss became NaN or inf."""


class Terminated(Exception):
    """SIGTERM arrived while training."""


def _raise_terminated(signum, frame):
    raise Terminated()


class Trainer:
    """Holds the networks, optimizers and position of one run; `run()` trains to cfg.total_kimg.

    Args:
        cfg: the run's resolved configuration (config.resolve_config, or config.resume_config of a checkpoint's);
            the trainer follows it and decides nothing.
        dataset: a data.ImageDataset at cfg.resolution.
        run_dir: the folder of log.jsonl, the grids and the checkpoints.
        progress: show a progress bar.
        log: where the one-line notices go.
        metrics: dict(names, kimg, num, inception) of the metrics to compute during training, or None.
        dist_ctx: the distributed context (default: one process); its world size is cfg.world.
    """

    def __init__(self, cfg: RunConfig, dataset, run_dir: str, progress: bool = True, log: Callable = print,
                 metrics: Optional[dict] = None, dist_ctx: Optional[distributed.Context] = None):
        self.cfg, self.dataset, self.run_dir, self.progress, self.log = cfg, dataset, run_dir, progress, log
        self.device = device = cfg.torch_device
        self.ctx = dist_ctx or distributed.Context()
        if self.ctx.world != cfg.world:
            raise ValueError(f"the config is resolved for {cfg.world} process(es), the run has {self.ctx.world}")
        self.metrics = metrics  # dict(names, kimg, num, inception) or None
        self.last_metric_nimg = 0
        torch.manual_seed(cfg.seed)
        self.G, self.D = ckpt.build_networks(cfg.to_dict(), impl=cfg.impl)
        self.G.to(device)
        self.D.to(device)
        self.G.amp_min_res = self.D.amp_min_res = cfg.amp_min_res
        if cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.schedule = Schedule(**cfg.schedule)
        self.opt_G = make_optimizer(self.G.parameters(), device, self.schedule.lr_base, capturable=cfg.cuda_graphs)
        self.opt_D = make_optimizer(self.D.parameters(), device, self.schedule.lr_base, capturable=cfg.cuda_graphs)
        self.amp_dtype = cfg.autocast_dtype
        step_args = dict(lambda_gp=cfg.lambda_gp, drift=cfg.drift, ema=cfg.ema, gp_native_res=cfg.gp_native_res,
                         impl=cfg.impl, amp_dtype=self.amp_dtype, channels_last=cfg.channels_last, ctx=self.ctx,
                         batch_gpu=cfg.batch_gpu)
        if cfg.compile_step:
            step_args["log"] = log
        self.train_step = (CompiledStep if cfg.compile_step else TrainStep)(self.G, self.D, self.G_ema, self.opt_G,
                                                                              self.opt_D, **step_args)
        self.runner = CudaGraphStep(self.train_step, log=log) if cfg.cuda_graphs else self.train_step
        self.stop_flag = None   # multi-process: the all-reduced Ctrl-C flag of the last step (read every 10 steps)
        self.sampler = Sampler(len(dataset), seed=cfg.seed)
        self.nimg, self.prev_lod, self.tick, self.tick_start_nimg = 0, None, 0, 0
        gen = torch.Generator().manual_seed(cfg.seed + 123456789)
        n_grid = cfg.grid or (64 if cfg.resolution <= 64 else 16)
        self.grid_z = torch.randn(n_grid, self.G.latent_size, generator=gen).to(device)
        self.grid_labels = (torch.arange(n_grid) % dataset.num_classes).to(device) if cfg.cond else None
        self.labels = torch.from_numpy(dataset.labels).to(device) if cfg.cond else None
        self.stop_requested = False
        self.sigint_seen = False
        self.tb = None
        self.resumed_nimg = None
        self.resumed_from = None   # the checkpoint this run resumed from: --keep never deletes it
        # for the eta: training time and images per resolution, and the forward-pass probe
        self.measured, self.forward_cost = {}, None

    @property
    def sec_per_img(self):
        """{resolution: measured training seconds per image} (for the eta)."""
        return {r: t / max(n, 1) for r, (t, n) in self.measured.items()}

    @property
    def compile_seconds(self) -> float:
        """Seconds --compile-step has spent in the first calls of its passes (compiling, and running once)."""
        return sum(getattr(self.train_step, "compile_seconds", {}).values())

    @property
    def loss_scaling(self):
        """fp16: GradScaler steps, some of which are skipped on overflow."""
        return self.train_step.scaler_D.is_enabled()

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self):
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return dict(config=self.cfg.to_dict(), G=self.G.state_dict(), D=self.D.state_dict(),
                    G_ema=self.G_ema.state_dict(),
                    opt_G=optimizer_state(self.opt_G), opt_D=optimizer_state(self.opt_D),
                    scaler=self.train_step.scaler_state(), rng=rng,
                    sampler=self.sampler.state_dict(),
                    progress=dict(nimg=self.nimg, prev_lod=self.prev_lod, tick=self.tick,
                                  tick_start_nimg=self.tick_start_nimg, **self._phase_info()))

    def load_state_dict(self, state, path):
        self.resumed_from = path
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
            self.resumed_nimg = self.nimg
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"checkpoint '{path}' is incompatible with this run "
                            f"({str(e).splitlines()[0][:200]})") from None

    def start_from(self, state: dict, nimg: int) -> None:
        """Begin this new run with another checkpoint's G, D and G_ema (train --init) at `nimg` of the schedule; the
        optimizers, sampler and random state stay fresh."""
        for net, part in ((self.G, "G"), (self.D, "D"), (self.G_ema, "G_ema")):
            net.load_state_dict(state[part])
        self.nimg = self.tick_start_nimg = self.last_metric_nimg = int(nimg)

    def _phase_info(self):
        ph = self.schedule.at(self.nimg)
        return dict(kimg=ph.kimg, resolution=ph.resolution, alpha=ph.alpha, lod=ph.lod)

    # -- backends -----------------------------------------------------------------------------------------------
    def training_cases(self) -> dict:
        """{resolution: [autotune.Case]}: the op calls of the step at every resolution of the schedule, stable and
        fading, with this process's rows per forward pass. Recorded from one small step per stage that updates
        nothing and draws from its own generator, so the run's state and random numbers are untouched."""
        gen = torch.Generator(device=self.device).manual_seed(0)
        group = self.cfg.network["mbstd_group_size"]
        out, r = {}, 4
        while r <= self.cfg.resolution:
            per = max(self.schedule.at(self.schedule.kimg_to_reach(r) * 1000).minibatch // self.ctx.world, 1)
            rows = min(self.train_step.batch_gpu or per, per)
            n = min(group, rows) if group > 1 else 1
            inputs = random_inputs(n, self.cfg.network["num_channels"], r, self.G.latent_size, self.device, gen,
                                   mirror=self.cfg.mirror, labels=self.labels is not None)
            records = []
            for alpha in ((1.0, 0.5) if r > 4 else (1.0,)):
                records += autotune.record(self.train_step.run, inputs, r, self.train_step.alpha_arg(alpha),
                                           update=False)
            out[r] = autotune.cases_from_records(records, batch=rows)
            r *= 2
        return out

    def choose_backends(self, recorded: Optional[dict] = None) -> Optional[dict]:
        """Pick the op backends of this run and freeze them (ops.backends.use_choices), before any CUDA graph is
        captured: `recorded` (a resumed run's, so that resume stays exact), else rank 0 tunes the cases of the
        schedule (autotune.tune_cases: validated against the reference, timed, cached) and every rank takes its
        choices. Logs one line per op: the backend at each resolution. Nothing to choose, and None, with an
        explicit --impl or a forced 'auto' (FASTPGGAN_IMPL, ops.backends.pin/set_default); FASTPGGAN_TUNE=0 uses
        the tune cache and the static order unmeasured. The choices go into cfg.backends (config.json and every
        checkpoint)."""
        if self.cfg.impl != "auto" or backends.forced()[0] != "auto":
            return None
        cases, here = self.training_cases(), tune_cache.device_key(self.device)
        if recorded is None:
            result = None
            if self.ctx.main:
                flat = [c for cs in cases.values() for c in cs]
                measure_new = env_flag("FASTPGGAN_TUNE", default=True)
                cached = (tune_cache.read(self.device) or {}).get("choices", {})
                todo = {c.key for c in flat} - set(cached)
                if measure_new and todo and backends.impl_unavailable("compiled", self.device) is None:
                    self.log(f"tune: checking and timing each backend on {len(todo)} op cases, once for this device; "
                             "impl='compiled' compiles each (on a 2-core CPU about 2 min with a cold inductor cache, "
                             "20 s with a warm one; FASTPGGAN_NO_COMPILE=1 leaves it out)")
                t0 = time.time()
                result = autotune.tune_cases(flat, log=self.log, measure_new=measure_new)
                if result["measured"]:
                    self.log(f"tune: measured {result['measured']} op cases in {time.time() - t0:.1f} s "
                             f"(cached in {os.path.dirname(tune_cache.cache_path(self.device))})")
            result = distributed.broadcast_object(result, self.ctx)
            recorded = dict(device=here, choices=result["choices"])
        if recorded["choices"] and recorded.get("device") not in (None, here):
            self.log(f"note: this run's backends were chosen on {recorded['device']}; it goes on with them on "
                     f"{here} (a new run tunes for this device)")
        backends.use_choices(recorded["choices"])
        self.cfg = dataclasses.replace(self.cfg, backends=recorded)
        for op in sorted({c.op for cs in cases.values() for c in cs}):
            per_res = []
            for r, cs in cases.items():
                impls = sorted({backends.auto_backend(c.op, c.variant, c.shape, c.dtype, c.layout, self.device)
                                for c in cs if c.op == op})
                if impls:
                    per_res.append(f"{r}:{'+'.join(impls)}")
            self.log(f"backend {op}: {' '.join(per_res)}")
        return recorded

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
        flip = (torch.rand(n, device=dev) < 0.5)[shard] if self.cfg.mirror else None
        labels_d = self.labels[self._to_device(idx)] if self.labels is not None else None
        z_d = torch.randn(n, self.G.latent_size, device=dev)[shard]
        u = torch.rand(n, device=dev)[shard]
        z_g = torch.randn(n, self.G.latent_size, device=dev)[shard]
        labels_g = self.labels[torch.randint(len(self.labels), (n,), device=dev)[shard]] \
            if self.labels is not None else None
        return StepInputs(reals=reals, z_d=z_d, u=u, z_g=z_g, flip=flip, labels_d=labels_d, labels_g=labels_g)

    def step(self, ph):
        """One D step and one G step at phase `ph`, then the EMA update. Returns fp32 [loss_D, loss_G]."""
        if self.prev_lod is not None and self.cfg.reset_opt and Schedule.lod_crossed_integer(self.prev_lod, ph.lod):
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
        write_grid(imgs, path, upscale_to=self.cfg.resolution)

    def _tb(self):
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # a resumed run drops the events written past its checkpoint, as log.jsonl does
                self.tb = SummaryWriter(self.run_dir, purge_step=self.resumed_nimg)
            except Exception:   # tensorboard is optional
                self.tb = False
        return self.tb

    def save_checkpoint(self):
        try:
            return ckpt.save(self.state_dict(), self.run_dir, self.nimg, keep=self.cfg.keep,
                             protect=(self.resumed_from,) if self.resumed_from else ())
        except ckpt.NonFiniteWeights as e:
            raise Diverged(f"{e.part} holds NaN or inf at kimg {self.nimg / 1000:g}, so no checkpoint was written; "
                           f"the last checkpoint (finite weights) is {ckpt.latest(self.run_dir)}. Try a lower --lr, "
                           "or --amp off") from None

    # -- loop ---------------------------------------------------------------------------------------------------
    def run(self):
        total = int(round(self.cfg.total_kimg * 1000))
        last_ckpt = ckpt.latest(self.run_dir)
        bar = None
        if self.progress:
            # tqdm's own remaining time assumes every kimg costs the same; the eta in the postfix does not
            bar = tqdm(total=round(total / 1000, 3), initial=round(self.nimg / 1000, 3), unit="kimg",
                       dynamic_ncols=True, smoothing=0.05, mininterval=1.0,
                       bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}{postfix}]")
        old_handler = signal.getsignal(signal.SIGINT)   # restored as found, whatever it was

        def on_sigint(signum, frame):
            if self.stop_requested or self.sigint_seen:
                raise KeyboardInterrupt
            if self.ctx.world > 1:
                self.sigint_seen = True   # shared at the end of the step, so that every rank stops at the same one
            else:
                self.stop_requested = True
        old_term = None
        try:
            if old_handler is not signal.SIG_IGN:   # a background job ignores Ctrl-C; so does its training loop
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
                compiled = self.compile_seconds
                try:
                    losses_ = self.step(ph)
                except torch.cuda.OutOfMemoryError:
                    raise UserError(f"CUDA out of memory at {ph.resolution}x{ph.resolution} with minibatch "
                                    f"{ph.minibatch}: pass a smaller one (--minibatch {ph.resolution}:"
                                    f"{max(ph.minibatch // 2, 1)}) or use --amp") from None
                if self.compile_seconds != compiled:   # --compile-step's compiles count in neither sec/kimg nor eta
                    tick_time += self.compile_seconds - compiled
                    rate_mark = (rate_mark[0] + self.compile_seconds - compiled, rate_mark[1])
                tick_losses.append(losses_)
                steps += 1
                if steps % 10 == 1:   # losses are the same on every rank, so all ranks stop together on a NaN
                    values = losses_.tolist()
                    if not self.loss_scaling:   # fp16: an overflow step is skipped; judged per tick instead
                        self._check_finite(values, ph, last_ckpt)
                    if self.stop_flag is not None and self.stop_flag.item() > 0:
                        self.stop_requested = True
                if steps % 10 == 1:
                    now = time.time()
                    rate = (self.nimg - rate_mark[1]) / max(now - rate_mark[0], 1e-9)
                    if steps > 1:
                        eta = self._eta(ph.resolution, now - rate_mark[0], self.nimg - rate_mark[1], total)
                    rate_mark = (time.time(), self.nimg)   # after the eta's one-off forward-pass probe
                    if bar is not None and steps > 1:
                        bar.set_postfix_str(f"<{tqdm.format_interval(eta)}, res {ph.resolution} alpha {ph.alpha:.2f} "
                                            f"D {values[0]:.3f} G {values[1]:.3f} {rate:.0f} img/s", refresh=False)
                if bar is not None:
                    bar.update(round(ph.minibatch / 1000, 3))
                done = self.nimg >= total
                if self.nimg >= self.tick_start_nimg + ph.tick_kimg * 1000 or done or self.stop_requested:
                    last_ckpt = self._end_tick(ph, tick_losses, tick_time, last_ckpt,
                                               force_snapshot=done or self.stop_requested) or last_ckpt
                    tick_time, tick_losses = time.time(), []   # snapshot time is excluded from sec/kimg
                    rate_mark = (tick_time, self.nimg)
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

    def _eta(self, res, seconds, images, total):
        """Seconds left, each remaining resolution at its measured rate (all the time and images of the windows
        spent at it) or one predicted from those measured (schedule.remaining_seconds). The first estimate is
        announced in one line."""
        t, n = self.measured.get(res, (0.0, 0))
        self.measured[res] = (t + seconds, n + images)
        images = self.schedule.images_per_resolution(self.nimg, total)
        first = self.forward_cost is None
        if first:
            self.forward_cost = self.probe_forward_cost(set(images) | set(self.measured))
        eta = remaining_seconds(images, self.sec_per_img, self.forward_cost)
        if first:
            note = f"estimate: about {tqdm.format_interval(eta)} to train the remaining " \
                   f"{(total - self.nimg) / 1000:g} kimg on " \
                   f"this machine (training measured at {res}x{res}; the other resolutions scaled by the time of a " \
                   "G+D forward pass at each; the progress bar's eta is refined as each resolution is trained)"
            if self.progress:
                tqdm.write(note)
            else:
                self.log(note)
        return eta

    @torch.no_grad()
    def probe_forward_cost(self, resolutions, repeats: int = 3) -> dict:
        """{resolution: seconds per image} of a G+D forward pass at each resolution with that stage's per-process
        minibatch, timed here (the best of `repeats` after one warm-up). The scale that the eta gives the
        resolutions not trained yet; it draws from its own generator, so the run's random numbers are untouched."""
        gen = torch.Generator(device=self.device).manual_seed(0)
        out = {}
        for r in sorted(resolutions):
            n = max(self.schedule.at(self.schedule.kimg_to_reach(r) * 1000).minibatch // self.ctx.world, 1)
            n = min(self.train_step.batch_gpu or n, n)
            z = torch.randn(n, self.G.latent_size, generator=gen, device=self.device)
            labels = torch.zeros(n, dtype=torch.long, device=self.device) if self.labels is not None else None
            best = math.inf
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                with self.train_step._autocast():
                    self.D(self.G(z, r, 1.0, labels), 1.0)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                if i:
                    best = min(best, time.perf_counter() - t0)
            out[r] = best / n
        return out

    def _check_finite(self, values, ph, last_ckpt):
        if not all(math.isfinite(v) for v in values):
            where = f"kimg {self.nimg / 1000:.1f} (res {ph.resolution}, alpha {ph.alpha:.3f})"
            keep = f"last checkpoint (finite weights): {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
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
        snapshot = force_snapshot or self.tick % self.cfg.snap_ticks == 0
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
        t0 = time.time()
        per_rank = min(m["num"], len(self.dataset)) // self.ctx.world
        num = per_rank * self.ctx.world
        # each rank generates its share of the fakes; rank 0 gathers them and computes the metrics
        fakes = suite.generate_uint8(self.G_ema, per_rank, ph.resolution, ph.alpha,
                                     seed=self.tick * 1000 + self.ctx.rank, device=self.device)
        fakes = distributed.all_gather_cat(fakes.to(self.device, torch.int32), self.ctx).to(torch.uint8).cpu()
        if not self.ctx.main:
            return
        reals = suite.sample_reals(self.dataset, num, ph.resolution, seed=self.tick)
        key = f"{os.path.basename(self.dataset.folder)}-{ph.resolution}-{num}-{self.tick}"
        result = suite.compute(m["names"], reals, fakes, seed=self.tick, device=self.device,
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
