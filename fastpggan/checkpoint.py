"""Training checkpoints: written atomically (temp file + rename), readable with torch.load(weights_only=True).

A checkpoint is a dict of plain types and tensors:
    format, version, config (the run's resolved settings), progress (nimg, prev_lod, tick, ...),
    G, D, G_ema (state dicts), opt_G, opt_D (optimizer state dicts), scaler (GradScaler state or None),
    rng (torch CPU and CUDA generator states), sampler (data order position).

`load(path)` validates it; `load_generator(path)` rebuilds the EMA generator for inference.
"""
import glob
import os
import re
from typing import List, Optional, Tuple

import torch

from .errors import UserError
from .networks import Discriminator, Generator

FORMAT, VERSION = "fastpggan-checkpoint", 1
_NAME = re.compile(r"checkpoint_(\d+(?:\.\d+)?)\.pt$")


def kimg_tag(nimg: int) -> str:
    """Exact, sortable kimg label for file names: 20032 images -> '000020.032'."""
    return f"{nimg // 1000:06d}.{nimg % 1000:03d}"


def save(state: dict, run_dir: str, nimg: int, keep: int = 3) -> str:
    """Write `checkpoint_<kimg>.pt` atomically into run_dir and delete all but the newest `keep`."""
    state = dict(state, format=FORMAT, version=VERSION)
    path = os.path.join(run_dir, f"checkpoint_{kimg_tag(nimg)}.pt")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if keep and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            os.remove(old)
    return path


def list_checkpoints(run_dir: str) -> List[str]:
    """Checkpoint paths in run_dir, oldest first."""
    found = [p for p in glob.glob(os.path.join(run_dir, "checkpoint_*.pt")) if _NAME.search(p)]
    return sorted(found, key=lambda p: float(_NAME.search(p).group(1)))


def latest(run_dir: str) -> Optional[str]:
    """The newest checkpoint in run_dir, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load(path: str, map_location="cpu") -> dict:
    """Load and validate a checkpoint; a missing, corrupt or foreign file raises UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint '{path}' is corrupt or not a fastpggan checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a fastpggan checkpoint")
    if state.get("version") != VERSION:
        raise UserError(f"checkpoint '{path}' has format version {state.get('version')}; "
                        f"this fastpggan reads {VERSION}")
    return state


def build_networks(config: dict, impl: str = "auto") -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(G, D) with the architecture recorded in a checkpoint's config."""
    net = config["network"]
    G = Generator(resolution=net["resolution"], latent_size=net["latent_size"], num_channels=net["num_channels"],
                  fmap_base=net["fmap_base"], fmap_max=net["fmap_max"], label_size=net["label_size"], impl=impl)
    D = Discriminator(resolution=net["resolution"], num_channels=net["num_channels"], fmap_base=net["fmap_base"],
                      fmap_max=net["fmap_max"], mbstd_group_size=net["mbstd_group_size"],
                      label_size=net["label_size"], impl=impl)
    return G, D


def load_generator(path: str, which: str = "G_ema", device="cpu", impl: str = "auto") -> Tuple[torch.nn.Module, dict]:
    """The generator (EMA by default) of a checkpoint, in eval mode, with the checkpoint's state dict.

    Returns (G, state) where state["progress"] tells the resolution and alpha it was trained to.
    """
    state = load(path)
    G, _ = build_networks(state["config"], impl=impl)
    try:
        G.load_state_dict(state[which])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"checkpoint '{path}' does not match its recorded network ({str(e).splitlines()[0]})") from None
    return G.to(device).eval().requires_grad_(False), state
