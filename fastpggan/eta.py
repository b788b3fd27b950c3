"""The training loop's estimate of the time left (`Eta`): each remaining resolution at its measured rate, or,
before it has trained, at one predicted from a G+D forward pass timed at every resolution once."""

import math
import os
import time
from typing import Callable, Dict, Optional

import torch
from tqdm import tqdm

from .schedule import remaining_seconds


class Eta:
    """Seconds left of a run, refined as each resolution trains.

    Args:
        trainer: the run's Trainer: its schedule, G and D, step (autocast, rows per pass), device and world size
            are read; nothing of it is changed.
        say: where the first estimate's one line goes.
    """

    def __init__(self, trainer, say: Callable):
        self.trainer, self.say = trainer, say
        self.measured: Dict[int, tuple] = {}  # {resolution: (training seconds, images)}
        self.forward_cost: Optional[Dict[int, float]] = None  # {resolution: forward seconds per image}

    @property
    def sec_per_img(self) -> Dict[int, float]:
        """{resolution: measured training seconds per image}."""
        return {r: t / max(n, 1) for r, (t, n) in self.measured.items()}

    def update(self, res: int, seconds: float, images: int, nimg: int, total: int) -> float:
        """Seconds left after `images` more trained at `res` in `seconds`, at image `nimg` of `total`: every
        remaining resolution at its measured rate (all the time and images of the windows spent at it) or one
        predicted from those measured (schedule.remaining_seconds). The first estimate is announced in one line."""
        t, n = self.measured.get(res, (0.0, 0))
        self.measured[res] = (t + seconds, n + images)
        left = self.trainer.schedule.images_per_resolution(nimg, total)
        first = self.forward_cost is None
        if first:
            self.forward_cost = self.probe_forward_cost(set(left) | set(self.measured))
        eta = remaining_seconds(left, self.sec_per_img, self.forward_cost)
        if first:
            busy = cpu_contention()
            self.say(
                f"estimate: about {tqdm.format_interval(eta)} to train the remaining {(total - nimg) / 1000:g} "
                f"kimg on this machine (training measured at {res}x{res}; the other resolutions scaled by the "
                "time of a G+D forward pass at each; the progress bar's eta is refined as each resolution is "
                "trained)" + (f"; {busy}" if busy else "")
            )
        return eta

    @torch.no_grad()
    def probe_forward_cost(self, resolutions, repeats: int = 3) -> Dict[int, float]:
        """{resolution: seconds per image} of a G+D forward pass at each resolution with that stage's per-process
        minibatch, timed here (the best of `repeats` after one warm-up). The scale that the eta gives the
        resolutions not trained yet; it draws from its own generator, so the run's random numbers are untouched."""
        t = self.trainer
        gen = torch.Generator(device=t.device).manual_seed(0)
        out = {}
        for r in sorted(resolutions):
            n = max(t.schedule.at(t.schedule.kimg_to_reach(r) * 1000).minibatch // t.ctx.world, 1)
            n = min(t.train_step.batch_gpu or n, n)
            z = torch.randn(n, t.G.latent_size, generator=gen, device=t.device)
            labels = torch.zeros(n, dtype=torch.long, device=t.device) if t.labels is not None else None
            best = math.inf
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                with t.train_step._autocast():
                    t.D(t.G(z, r, 1.0, labels), 1.0)
                if t.device.type == "cuda":
                    torch.cuda.synchronize(t.device)
                if i:
                    best = min(best, time.perf_counter() - t0)
            out[r] = best / n
        return out


def cpu_contention() -> Optional[str]:
    """Why an estimate measured now is pessimistic, where the machine has more runnable threads than cores (the
    1-minute load average above the core count: other work shares the cores with this run), else None."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:  # no load average on this system
        return None
    if load <= cores:
        return None
    return (
        f"the CPU is contended (load average {load:.1f} on {cores} cores: other work shares them), so this "
        "estimate is longer than the run will take on a quiet machine"
    )
