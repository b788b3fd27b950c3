"""The training loop of one run (official train.py's train_progressive_gan): `Trainer(cfg, dataset, ...).run()`.

Per step: the official step of fastpggan.step (a D step on reals faded to the current lod, the G EMA update, a
G step, TF's Adam), with Adam reset whenever lod crosses an integer. A tick of `tick_kimg` images logs, draws a
grid from fixed latents through G_ema and, every `snap_ticks` ticks, writes a checkpoint. Deviation (tiny): the
schedule is re-evaluated every step rather than every 4 minibatches.
"""

import contextlib
import copy
import dataclasses
import signal
import time
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from . import backend_choice, distributed, run_state
from . import checkpoint as ckpt
from .compiled_step import CompiledStep
from .config import RunConfig
from .cuda_graph import CudaGraphStep
from .errors import UserError
from .eta import Eta
from .optim import make_optimizer, reset_optimizer_, set_lr
from .sampler import Sampler
from .schedule import Schedule
from .step import StepInputs, TrainStep
from .ticks import Diverged, Ticks  # noqa: F401  (Diverged: trainer.Diverged, as before)


class Terminated(Exception):
    """SIGTERM arrived while training."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _stop_signals(trainer):
    """While training: Ctrl-C asks `trainer` to stop after the step (with a checkpoint; a second Ctrl-C stops at
    once), shared by every rank at the end of the step in a multi-process run, where SIGTERM (torchrun's, when
    another process of the run died) raises Terminated. The handlers found are restored, whatever they were."""
    old_int, old_term = signal.getsignal(signal.SIGINT), None

    def on_sigint(signum, frame):
        if trainer.stop_requested or trainer.sigint_seen:
            raise KeyboardInterrupt
        if trainer.ctx.world > 1:
            trainer.sigint_seen = True  # shared at the end of the step, so that every rank stops at the same one
        else:
            trainer.stop_requested = True

    try:
        if old_int is not signal.SIG_IGN:  # a background job ignores Ctrl-C; so does its training loop
            signal.signal(signal.SIGINT, on_sigint)
        if trainer.ctx.world > 1:
            old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        old_int = None
    try:
        yield
    finally:
        if old_int is not None:
            signal.signal(signal.SIGINT, old_int)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


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

    def __init__(
        self,
        cfg: RunConfig,
        dataset,
        run_dir: str,
        progress: bool = True,
        log: Callable = print,
        metrics: Optional[dict] = None,
        dist_ctx: Optional[distributed.Context] = None,
    ):
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
        step_args = dict(
            lambda_gp=cfg.lambda_gp,
            drift=cfg.drift,
            ema=cfg.ema,
            gp_native_res=cfg.gp_native_res,
            impl=cfg.impl,
            amp_dtype=self.amp_dtype,
            channels_last=cfg.channels_last,
            ctx=self.ctx,
            batch_gpu=cfg.batch_gpu,
        )
        if cfg.compile_step:
            step_args["log"] = log
        self.train_step = (CompiledStep if cfg.compile_step else TrainStep)(
            self.G, self.D, self.G_ema, self.opt_G, self.opt_D, **step_args
        )
        self.runner = CudaGraphStep(self.train_step, log=log) if cfg.cuda_graphs else self.train_step
        self.stop_flag = None  # multi-process: the all-reduced Ctrl-C flag of the last step (read every 10 steps)
        self.sampler = Sampler(len(dataset), seed=cfg.seed)
        self.nimg, self.prev_lod, self.tick, self.tick_start_nimg = 0, None, 0, 0
        gen = torch.Generator().manual_seed(cfg.seed + 123456789)
        n_grid = cfg.grid or (64 if cfg.resolution <= 64 else 16)
        self.grid_z = torch.randn(n_grid, self.G.latent_size, generator=gen).to(device)
        self.grid_labels = (torch.arange(n_grid) % dataset.num_classes).to(device) if cfg.cond else None
        self.labels = torch.from_numpy(dataset.labels).to(device) if cfg.cond else None
        self.stop_requested = False
        self.sigint_seen = False
        self.resumed_nimg = None
        self.resumed_from = None  # the checkpoint this run resumed from: --keep never deletes it
        self.eta = Eta(self, say=tqdm.write if progress else log)
        self.ticks = Ticks(self)

    @property
    def compile_seconds(self) -> float:
        """Seconds --compile-step has spent in the first calls of its passes (compiling, and running once)."""
        return sum(getattr(self.train_step, "compile_seconds", {}).values())

    @property
    def loss_scaling(self):
        """fp16: GradScaler steps, some of which are skipped on overflow."""
        return self.train_step.scaler_D.is_enabled()

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a checkpoint holds of this run (run_state.trainer_state)."""
        return run_state.trainer_state(self)

    def load_state_dict(self, state: dict, path: str) -> None:
        """Continue exactly from checkpoint `state`, read from `path` (run_state.load_trainer_state)."""
        run_state.load_trainer_state(self, state, path)

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
        """backend_choice.training_cases of this run."""
        return backend_choice.training_cases(self)

    def choose_backends(self, recorded: Optional[dict] = None) -> Optional[dict]:
        """Choose and freeze this run's op backends (backend_choice.choose_backends) before any CUDA graph is
        captured; they go into cfg.backends."""
        recorded = backend_choice.choose_backends(self, recorded)
        if recorded is not None:
            self.cfg = dataclasses.replace(self.cfg, backends=recorded)
        return recorded

    # -- one step -----------------------------------------------------------------------------------------------
    def _to_device(self, array):
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":  # pinned, so the copy overlaps the previous step's kernels
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
        labels_g = (
            self.labels[torch.randint(len(self.labels), (n,), device=dev)[shard]] if self.labels is not None else None
        )
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

    # -- loop ---------------------------------------------------------------------------------------------------
    def run(self):
        total = int(round(self.cfg.total_kimg * 1000))
        last_ckpt = ckpt.latest(self.run_dir)
        bar = None
        if self.progress:
            # tqdm's own remaining time assumes every kimg costs the same; the eta in the postfix does not
            bar = tqdm(
                total=round(total / 1000, 3),
                initial=round(self.nimg / 1000, 3),
                unit="kimg",
                dynamic_ncols=True,
                smoothing=0.05,
                mininterval=1.0,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}{postfix}]",
            )
        tick_time, tick_losses, steps = time.time(), [], 0
        rate_mark = (tick_time, self.nimg)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with _stop_signals(self), contextlib.ExitStack() as cleanup:
            cleanup.callback(self.ticks.close)
            if bar is not None:
                cleanup.callback(bar.close)
            while self.nimg < total and not self.stop_requested:
                ph = self.schedule.at(self.nimg)
                compiled = self.compile_seconds
                try:
                    losses_ = self.step(ph)
                except torch.cuda.OutOfMemoryError:
                    raise UserError(
                        f"CUDA out of memory at {ph.resolution}x{ph.resolution} with minibatch "
                        f"{ph.minibatch}: pass a smaller one (--minibatch {ph.resolution}:"
                        f"{max(ph.minibatch // 2, 1)}) or use --amp"
                    ) from None
                if self.compile_seconds != compiled:  # --compile-step's compiles count in neither sec/kimg nor eta
                    tick_time += self.compile_seconds - compiled
                    rate_mark = (rate_mark[0] + self.compile_seconds - compiled, rate_mark[1])
                tick_losses.append(losses_)
                steps += 1
                if steps % 10 == 1:  # losses are the same on every rank, so all ranks stop together on a NaN
                    values = losses_.tolist()
                    if not self.loss_scaling:  # fp16: an overflow step is skipped; judged per tick instead
                        self.ticks.check_finite(values, ph, last_ckpt)
                    if self.stop_flag is not None and self.stop_flag.item() > 0:
                        self.stop_requested = True
                if steps % 10 == 1:
                    now = time.time()
                    rate = (self.nimg - rate_mark[1]) / max(now - rate_mark[0], 1e-9)
                    if steps > 1:
                        eta = self.eta.update(
                            ph.resolution, now - rate_mark[0], self.nimg - rate_mark[1], self.nimg, total
                        )
                    rate_mark = (time.time(), self.nimg)  # after the eta's one-off forward-pass probe
                    if bar is not None and steps > 1:
                        bar.set_postfix_str(
                            f"<{tqdm.format_interval(eta)}, res {ph.resolution} alpha {ph.alpha:.2f} "
                            f"D {values[0]:.3f} G {values[1]:.3f} {rate:.0f} img/s",
                            refresh=False,
                        )
                if bar is not None:
                    bar.update(round(ph.minibatch / 1000, 3))
                done = self.nimg >= total
                if self.nimg >= self.tick_start_nimg + ph.tick_kimg * 1000 or done or self.stop_requested:
                    last_ckpt = (
                        self.ticks.end(
                            ph, tick_losses, tick_time, last_ckpt, force_snapshot=done or self.stop_requested
                        )
                        or last_ckpt
                    )
                    tick_time, tick_losses = time.time(), []  # snapshot time is excluded from sec/kimg
                    rate_mark = (tick_time, self.nimg)
        if self.stop_requested:  # the tick that saw the request ended with a checkpoint
            self.log(f"interrupted: saved {last_ckpt}; continue with --resume {last_ckpt}")
            raise SystemExit(130)
        return last_ckpt
