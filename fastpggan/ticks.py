"""What a training run writes at the end of each tick (`Ticks`): the log.jsonl record (losses, sec/kimg, img/s,
peak memory), TensorBoard scalars, a grid of the fixed latents through G_ema, the metrics during training, and every
`snap_ticks` ticks (or at the end, or on a stop) a checkpoint. Only rank 0 writes; every rank runs the metrics'
generation and the barrier after a snapshot."""

import json
import math
import os
import time

import torch

from . import checkpoint as ckpt
from . import distributed
from .errors import UserError
from .images import write_grid
from .metrics import suite


class Diverged(UserError):
    """A loss became NaN or inf."""


class Ticks:
    """The end-of-tick writes of `trainer` (a Trainer: its networks, position and run folder are read, its tick
    counter advanced)."""

    def __init__(self, trainer):
        self.t = trainer
        self.tb = None  # the TensorBoard writer once opened; False where tensorboard is not installed

    def close(self) -> None:
        if self.tb:
            self.tb.close()

    @torch.no_grad()
    def save_grid(self, path, ph):
        imgs = self.t.G_ema(self.t.grid_z, ph.resolution, ph.alpha, self.t.grid_labels)
        write_grid(imgs, path, upscale_to=self.t.cfg.resolution)

    def tb_writer(self):
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # a resumed run drops the events written past its checkpoint, as log.jsonl does
                self.tb = SummaryWriter(self.t.run_dir, purge_step=self.t.resumed_nimg)
            except Exception:  # tensorboard is optional
                self.tb = False
        return self.tb

    def save_checkpoint(self):
        try:
            return ckpt.save(
                self.t.state_dict(),
                self.t.run_dir,
                self.t.nimg,
                keep=self.t.cfg.keep,
                protect=(self.t.resumed_from,) if self.t.resumed_from else (),
            )
        except ckpt.NonFiniteWeights as e:
            raise Diverged(
                f"{e.part} holds NaN or inf at kimg {self.t.nimg / 1000:g}, so no checkpoint was written; "
                f"the last checkpoint (finite weights) is {ckpt.latest(self.t.run_dir)}. Try a lower --lr, "
                "or --amp off"
            ) from None

    def check_finite(self, values, ph, last_ckpt):
        if not all(math.isfinite(v) for v in values):
            where = f"kimg {self.t.nimg / 1000:.1f} (res {ph.resolution}, alpha {ph.alpha:.3f})"
            keep = f"last checkpoint (finite weights): {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
            raise Diverged(
                f"loss became NaN/inf at {where} (D {values[0]:.4g}, G {values[1]:.4g}); {keep}. "
                "Try a lower --lr, or --amp off"
            )

    def end(self, ph, tick_losses, tick_time, last_ckpt, force_snapshot):
        stacked = torch.stack(tick_losses).float() if tick_losses else torch.full((1, 2), float("nan"))
        finite = torch.isfinite(stacked).all(1)
        overflow_steps = int((~finite).sum()) if self.t.loss_scaling else 0
        if self.t.loss_scaling and finite.any():
            # fp16: a step whose scaled gradients overflowed has a non-finite loss and was skipped (GradScaler);
            # the tick is diverged only if every step was
            stacked = stacked[finite]
        mean = stacked.mean(0).tolist()
        self.check_finite(mean, ph, last_ckpt)
        if self.t.device.type == "cuda":
            torch.cuda.synchronize(self.t.device)
        sec = time.time() - tick_time
        kimg_done = (self.t.nimg - self.t.tick_start_nimg) / 1000.0
        self.t.tick += 1
        self.t.tick_start_nimg = self.t.nimg
        if self.t.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.t.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.t.device)
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rec = dict(
            tick=self.t.tick,
            kimg=round(self.t.nimg / 1000, 3),
            res=ph.resolution,
            alpha=round(ph.alpha, 5),
            lod=round(ph.lod, 5),
            minibatch=ph.minibatch,
            lr=ph.lr,
            loss_D=mean[0],
            loss_G=mean[1],
            sec_per_tick=round(sec, 3),
            sec_per_kimg=round(sec / max(kimg_done, 1e-9), 3),
            img_per_s=round(kimg_done * 1000 / max(sec, 1e-9), 2),
            peak_mem_mb=round(peak, 1),
            **({"overflow_steps": overflow_steps} if self.t.loss_scaling else {}),
            time=round(time.time(), 3),
        )
        snapshot = force_snapshot or self.t.tick % self.t.cfg.snap_ticks == 0
        if self.t.ctx.main:  # only rank 0 writes; the state it writes is the same on every rank
            with open(os.path.join(self.t.run_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
            tb = self.tb_writer()
            if tb:
                for k in ("loss_D", "loss_G", "sec_per_kimg", "img_per_s", "peak_mem_mb", "res", "alpha"):
                    tb.add_scalar(f"train/{k}", rec[k], self.t.nimg)
            self.save_grid(os.path.join(self.t.run_dir, f"fakes_{ckpt.kimg_tag(self.t.nimg)}.png"), ph)
        self.metrics(ph, snapshot)
        path = self.save_checkpoint() if snapshot and self.t.ctx.main else None
        if snapshot:
            distributed.barrier(self.t.ctx)
        return path

    def metrics(self, ph, snapshot):
        """Every metrics['kimg'] kimg (or at each snapshot), the chosen metrics of G_ema at the current resolution."""
        m = self.t.metrics
        if not m:
            return
        if m["kimg"]:
            if self.t.nimg - self.t.last_metric_nimg < m["kimg"] * 1000:
                return
            self.t.last_metric_nimg = self.t.nimg
        elif not snapshot:
            return
        t0 = time.time()
        per_rank = min(m["num"], len(self.t.dataset)) // self.t.ctx.world
        num = per_rank * self.t.ctx.world
        # each rank generates its share of the fakes; rank 0 gathers them and computes the metrics
        fakes = suite.generate_uint8(
            self.t.G_ema,
            per_rank,
            ph.resolution,
            ph.alpha,
            seed=self.t.tick * 1000 + self.t.ctx.rank,
            device=self.t.device,
        )
        fakes = distributed.all_gather_cat(fakes.to(self.t.device, torch.int32), self.t.ctx).to(torch.uint8).cpu()
        if not self.t.ctx.main:
            return
        reals = suite.sample_reals(self.t.dataset, num, ph.resolution, seed=self.t.tick)
        key = f"{os.path.basename(self.t.dataset.folder)}-{ph.resolution}-{num}-{self.t.tick}"
        result = suite.compute(
            m["names"],
            reals,
            fakes,
            seed=self.t.tick,
            device=self.t.device,
            inception=m["inception"],
            real_stats_key=None if "fid" not in m["names"] else key,
        )
        rec = dict(
            metrics=result,
            kimg=round(self.t.nimg / 1000, 3),
            res=ph.resolution,
            alpha=round(ph.alpha, 5),
            num=num,
            metric_sec=round(time.time() - t0, 3),
            time=round(time.time(), 3),
        )
        with open(os.path.join(self.t.run_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        tb = self.tb_writer()
        if tb:
            for name, value in result.items():
                if isinstance(value, dict):
                    for k, v in value.items():
                        tb.add_scalar(f"metrics/{name}_{k}", v, self.t.nimg)
                elif value is not None:
                    tb.add_scalar(f"metrics/{name}", value, self.t.nimg)
