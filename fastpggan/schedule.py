"""The progressive schedule of official train.py (TrainingSchedule), driven by images shown (kimg).

Starting at 4x4, each resolution trains for `lod_training_kimg` and then the next one fades in over
`lod_transition_kimg`. With L = log2(max resolution) - 2 and phase p = floor(kimg / (train + transition)):

    lod = L - p - max(kimg - p*(train+transition) - train, 0) / transition,   clipped at 0
    resolution = 2^(log2(max) - floor(lod)),   alpha (weight of the newest block) = 1 - (lod - floor(lod))

Presets are the official config.py ones; minibatch and lr dicts map resolution -> value, with a base value.
"""

import dataclasses
import math
from typing import Optional

TICK_KIMG = {4: 160, 8: 140, 16: 120, 32: 100, 64: 80, 128: 60, 256: 40, 512: 20, 1024: 10}

PRESETS = {
    # Paper / v1: minibatch 16 and 800+800 kimg phases (mbstd group 16 in the official v1 preset).
    "v1": dict(
        mbstd_group_size=16,
        minibatch_base=16,
        minibatch={256: 14, 512: 6, 1024: 3},
        lr_base=0.001,
        lr={},
        lod_training_kimg=800,
        lod_transition_kimg=800,
        total_kimg=19000,
    ),
    "v2-1gpu": dict(
        minibatch_base=4,
        minibatch={4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4},
        lr_base=0.001,
        lr={1024: 0.0015},
        lod_training_kimg=600,
        lod_transition_kimg=600,
        total_kimg=12000,
    ),
    "v2-2gpus": dict(
        minibatch_base=8,
        minibatch={4: 256, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8},
        lr_base=0.001,
        lr={512: 0.0015, 1024: 0.002},
        lod_training_kimg=600,
        lod_transition_kimg=600,
        total_kimg=12000,
    ),
    "v2-4gpus": dict(
        minibatch_base=16,
        minibatch={4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16},
        lr_base=0.001,
        lr={256: 0.0015, 512: 0.002, 1024: 0.003},
        lod_training_kimg=600,
        lod_transition_kimg=600,
        total_kimg=12000,
    ),
    "v2-8gpus": dict(
        minibatch_base=32,
        minibatch={4: 512, 8: 256, 16: 128, 32: 64, 64: 32},
        lr_base=0.001,
        lr={128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
        lod_training_kimg=600,
        lod_transition_kimg=600,
        total_kimg=12000,
    ),
}


@dataclasses.dataclass(frozen=True)
class Phase:
    kimg: float
    lod: float
    resolution: int
    alpha: float
    minibatch: int
    lr: float
    tick_kimg: float


@dataclasses.dataclass
class Schedule:
    max_resolution: int
    lod_training_kimg: float = 600
    lod_transition_kimg: float = 600
    minibatch_base: int = 4
    minibatch: dict = dataclasses.field(default_factory=dict)
    lr_base: float = 0.001
    lr: dict = dataclasses.field(default_factory=dict)
    tick_kimg: dict = dataclasses.field(default_factory=lambda: dict(TICK_KIMG))
    tick_kimg_base: float = 160
    initial_resolution: int = 4

    def at(self, nimg):
        kimg = nimg / 1000.0
        log2max = int(math.log2(self.max_resolution))
        dur = self.lod_training_kimg + self.lod_transition_kimg
        phase = int(math.floor(kimg / dur)) if dur > 0 else 0
        lod = log2max - int(math.floor(math.log2(self.initial_resolution))) - phase
        if self.lod_transition_kimg > 0:
            lod -= max(kimg - phase * dur - self.lod_training_kimg, 0.0) / self.lod_transition_kimg
        lod = max(lod, 0.0)
        res = 2 ** (log2max - int(math.floor(lod)))
        return Phase(
            kimg=kimg,
            lod=lod,
            resolution=res,
            alpha=1.0 - (lod - math.floor(lod)),
            minibatch=int(self.minibatch.get(res, self.minibatch_base)),
            lr=float(self.lr.get(res, self.lr_base)),
            tick_kimg=float(self.tick_kimg.get(res, self.tick_kimg_base)),
        )

    @staticmethod
    def lod_crossed_integer(prev_lod, lod):
        """Official reset_opt_for_new_lod condition: floor or ceil of lod changed (start and end of a transition)."""
        return math.floor(lod) != math.floor(prev_lod) or math.ceil(lod) != math.ceil(prev_lod)

    def kimg_to_reach(self, resolution):
        """kimg at which `resolution` is fully faded in (its stable phase begins)."""
        steps = int(math.log2(resolution)) - int(math.log2(self.initial_resolution))
        return steps * (self.lod_training_kimg + self.lod_transition_kimg)

    def kimg_at_lod(self, lod: float) -> float:
        """The first kimg at which `at` gives `lod` (clipped to the schedule's range): where a run that starts from
        networks trained to that lod picks up (train --init)."""
        top = int(math.log2(self.max_resolution)) - int(math.floor(math.log2(self.initial_resolution)))
        d = min(max(top - lod, 0.0), float(top))
        p = int(math.floor(d))
        frac = d - p
        return p * (self.lod_training_kimg + self.lod_transition_kimg) + (
            self.lod_training_kimg + frac * self.lod_transition_kimg if frac > 0 else 0.0
        )

    def images_per_resolution(self, nimg: int, total_nimg: int) -> dict:
        """{resolution: images} that training from `nimg` to `total_nimg` spends at each resolution (a fade-in
        counts at the resolution fading in, where its steps run)."""
        dur = (self.lod_training_kimg + self.lod_transition_kimg) * 1000
        cuts = {nimg, total_nimg}
        if dur > 0:
            # after `top` phases the run stays at full resolution: no cut beyond, however long the run (a 1-image
            # phase and 10^7 kimg would otherwise loop 10^10 times)
            top = int(math.log2(self.max_resolution)) - int(math.floor(math.log2(self.initial_resolution)))
            for p in range(int(nimg // dur), min(int(total_nimg // dur), top) + 1):
                cuts.update((p * dur, p * dur + self.lod_training_kimg * 1000))
        cuts = sorted(c for c in cuts if nimg <= c <= total_nimg)
        out = {}
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a:
                res = self.at((a + b) / 2).resolution
                out[res] = out.get(res, 0) + (b - a)
        return out


def remaining_seconds(images: dict, sec_per_img: dict, cost: dict) -> Optional[float]:
    """Seconds to train `images` ({resolution: images}, images_per_resolution), or None before any measurement.

    `cost[res]` is a relative cost of one image at each resolution (the trainer times a G+D forward pass). A
    resolution with a measured seconds-per-image uses it. Otherwise, with two measured resolutions, the line
    a + b * cost through the two nearest (a per-step overhead the cost does not see, plus work); with one, that
    one scaled by cost[res] / cost[measured].
    """
    if not sec_per_img:
        return None
    total = 0.0
    for res, n in images.items():
        if res in sec_per_img:
            total += n * sec_per_img[res]
            continue
        near = sorted(sec_per_img, key=lambda m: (abs(math.log2(m) - math.log2(res)), -m))
        m1 = near[0]
        guess = sec_per_img[m1] * cost[res] / cost[m1]
        if len(near) > 1:
            m2 = near[1]
            slope = (sec_per_img[m2] - sec_per_img[m1]) / (cost[m2] - cost[m1])
            if slope > 0:
                guess = max(sec_per_img[m1] + slope * (cost[res] - cost[m1]), 0.0)
        total += n * guess
    return total
