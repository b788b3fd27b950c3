"""The op backends of a training run, chosen once at its start (README "Backends"): the op calls of every stage
of its step are recorded, and `auto` either takes a resumed run's recorded choices or tunes those cases
(fastpggan.autotune: validated against the reference, timed, cached) on rank 0 and shares them."""

import os
import time
from typing import Optional

import torch

from . import autotune, distributed
from .errors import env_flag
from .ops import backends, tune_cache
from .step import random_inputs


def training_cases(trainer) -> dict:
    """{resolution: [autotune.Case]}: the op calls of the step at every resolution of the schedule, stable and
    fading, with this process's rows per forward pass. Recorded from one small step per stage that updates
    nothing and draws from its own generator, so the run's state and random numbers are untouched."""
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    group = trainer.cfg.network["mbstd_group_size"]
    out, r = {}, 4
    while r <= trainer.cfg.resolution:
        per = max(trainer.schedule.at(trainer.schedule.kimg_to_reach(r) * 1000).minibatch // trainer.ctx.world, 1)
        rows = min(trainer.train_step.batch_gpu or per, per)
        n = min(group, rows) if group > 1 else 1
        inputs = random_inputs(
            n,
            trainer.cfg.network["num_channels"],
            r,
            trainer.G.latent_size,
            trainer.device,
            gen,
            mirror=trainer.cfg.mirror,
            labels=trainer.labels is not None,
        )
        records = []
        for alpha in (1.0, 0.5) if r > 4 else (1.0,):
            records += autotune.record(
                trainer.train_step.run, inputs, r, trainer.train_step.alpha_arg(alpha), update=False
            )
        out[r] = autotune.cases_from_records(records, batch=rows)
        r *= 2
    return out


def choose_backends(trainer, recorded: Optional[dict] = None) -> Optional[dict]:
    """Pick the op backends of this run and freeze them (ops.backends.use_choices), before any CUDA graph is
    captured: `recorded` (a resumed run's, so that resume stays exact), else rank 0 tunes the cases of the
    schedule (autotune.tune_cases: validated against the reference, timed, cached) and every rank takes its
    choices. Logs one line per op: the backend at each resolution. Nothing to choose, and None, with an
    explicit --impl or a forced 'auto' (FASTPGGAN_IMPL, ops.backends.pin/set_default); FASTPGGAN_TUNE=0 uses
    the tune cache and the static order unmeasured. The trainer puts the choices into cfg.backends (config.json
    and every checkpoint)."""
    if trainer.cfg.impl != "auto" or backends.forced()[0] != "auto":
        return None
    cases, here = trainer.training_cases(), tune_cache.device_key(trainer.device)
    if recorded is None:
        result = None
        if trainer.ctx.main:
            flat = [c for cs in cases.values() for c in cs]
            measure_new = env_flag("FASTPGGAN_TUNE", default=True)
            cached = (tune_cache.read(trainer.device) or {}).get("choices", {})
            todo = {c.key for c in flat} - set(cached)
            if measure_new and todo and backends.impl_unavailable("compiled", trainer.device) is None:
                trainer.log(
                    f"tune: checking and timing each backend on {len(todo)} op cases, once for this device; "
                    "impl='compiled' compiles each (on a 2-core CPU about 2 min with a cold inductor cache, "
                    "20 s with a warm one; FASTPGGAN_NO_COMPILE=1 leaves it out)"
                )
            t0 = time.time()
            result = autotune.tune_cases(flat, log=trainer.log, measure_new=measure_new)
            if result["measured"]:
                trainer.log(
                    f"tune: measured {result['measured']} op cases in {time.time() - t0:.1f} s "
                    f"(cached in {os.path.dirname(tune_cache.cache_path(trainer.device))})"
                )
        result = distributed.broadcast_object(result, trainer.ctx)
        recorded = dict(device=here, choices=result["choices"])
    if recorded["choices"] and recorded.get("device") not in (None, here):
        trainer.log(
            f"note: this run's backends were chosen on {recorded['device']}; it goes on with them on "
            f"{here} (a new run tunes for this device)"
        )
    backends.use_choices(recorded["choices"])
    for op in sorted({c.op for cs in cases.values() for c in cs}):
        per_res = []
        for r, cs in cases.items():
            impls = sorted(
                {
                    backends.auto_backend(c.op, c.variant, c.shape, c.dtype, c.layout, trainer.device)
                    for c in cs
                    if c.op == op
                }
            )
            if impls:
                per_res.append(f"{r}:{'+'.join(impls)}")
        trainer.log(f"backend {op}: {' '.join(per_res)}")
    return recorded
