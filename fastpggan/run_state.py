"""A training run's state as a checkpoint holds it (fastpggan.checkpoint's format), taken from a Trainer and put
back into one: networks, optimizers, GradScaler, random state, data order and position."""

import torch

from .errors import UserError
from .optim import load_optimizer_state, optimizer_state


def trainer_state(trainer) -> dict:
    """The checkpoint of `trainer` (a Trainer) where it stands: config, networks, optimizers, GradScaler, random
    state, data order and position (checkpoint.py's format)."""
    rng = {"torch": torch.get_rng_state()}
    if trainer.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(trainer.device)
    return dict(
        config=trainer.cfg.to_dict(),
        G=trainer.G.state_dict(),
        D=trainer.D.state_dict(),
        G_ema=trainer.G_ema.state_dict(),
        opt_G=optimizer_state(trainer.opt_G),
        opt_D=optimizer_state(trainer.opt_D),
        scaler=trainer.train_step.scaler_state(),
        rng=rng,
        sampler=trainer.sampler.state_dict(),
        progress=dict(
            nimg=trainer.nimg,
            prev_lod=trainer.prev_lod,
            tick=trainer.tick,
            tick_start_nimg=trainer.tick_start_nimg,
            **trainer._phase_info(),
        ),
    )


def load_trainer_state(trainer, state: dict, path: str) -> None:
    """Put checkpoint `state` (read from `path`) into `trainer`, so that it continues exactly; a checkpoint that does
    not fit the run is one UserError."""
    trainer.resumed_from = path
    try:
        trainer.G.load_state_dict(state["G"])
        trainer.D.load_state_dict(state["D"])
        trainer.G_ema.load_state_dict(state["G_ema"])
        load_optimizer_state(trainer.opt_G, state["opt_G"])
        load_optimizer_state(trainer.opt_D, state["opt_D"])
        for name, opt in (("opt_G", trainer.opt_G), ("opt_D", trainer.opt_D)):
            _check_moments(opt, name, path)
        trainer.train_step.load_scaler_state(state.get("scaler"))
        trainer.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        if trainer.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], trainer.device)
        p = state["progress"]
        trainer.nimg, trainer.prev_lod, trainer.tick, trainer.tick_start_nimg = (
            int(p["nimg"]),
            p["prev_lod"],
            int(p["tick"]),
            int(p["tick_start_nimg"]),
        )
        trainer.resumed_nimg = trainer.nimg
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"checkpoint '{path}' is incompatible with this run ({str(e).splitlines()[0][:200]})") from None


def _check_moments(opt: torch.optim.Optimizer, name: str, path: str) -> None:
    """Each Adam moment has its parameter's shape (load_state_dict checks only the counts; a wrong shape would
    fail, or broadcast, at the first step)."""
    for i, p in enumerate(q for group in opt.param_groups for q in group["params"]):
        for key, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v) and v.dim() and v.shape != p.shape:
                raise UserError(
                    f"checkpoint '{path}' is damaged: {name}.state[{i}].{key} has shape {tuple(v.shape)}, its "
                    f"parameter {tuple(p.shape)}"
                )
