"""Training checkpoints: written atomically (temp file + rename), readable with torch.load(weights_only=True).

A checkpoint is a dict of plain types and tensors:
    format, version, config (the run's resolved settings), progress (nimg, prev_lod, tick, ...),
    G, D, G_ema (state dicts), opt_G, opt_D (optimizer state dicts), scaler (GradScaler state or None),
    rng (torch CPU and CUDA generator states), sampler (data order position).

`load(path)` checks all of it before anything is built: the config's network and progress are in range, the
weights have the shapes that network has (compared on the meta device, so nothing is allocated), and G, D and
G_ema are finite. `save` refuses non-finite weights too. `load_generator(path)` and `load_discriminator(path)`
rebuild the networks for inference.

A checkpoint converted from an official pickle (fastpggan.convert) has the networks, the config's `network` and
`resolution`, its `progress` and a `source`, but no optimizer, RNG or sampler state: it is for inference and
export, and cannot be resumed.
"""

import glob
import os
import re
from typing import List, Optional, Sequence, Tuple

import torch

from . import state_schema as schema
from . import writes
from .errors import UserError
from .networks import Discriminator, Generator

FORMAT, VERSION = "fastpggan-checkpoint", 1
_NAME = re.compile(r"checkpoint_(\d+(?:\.\d+)?)\.pt$")


def kimg_tag(nimg: int) -> str:
    """Exact, sortable kimg label for file names: 20032 images -> '000020.032'."""
    return f"{nimg // 1000:06d}.{nimg % 1000:03d}"


NETWORKS = ("G", "D", "G_ema")


class NonFiniteWeights(UserError):
    """`save` was asked to write NaN or inf weights; `.part` names them (see `nonfinite`)."""

    def __init__(self, message: str, part: str):
        super().__init__(message)
        self.part = part


def nonfinite(state: dict) -> Optional[str]:
    """'G_ema (3 tensors, first: b.torgb.weight)' for the first of G, D, G_ema holding NaN or inf, else None."""
    for part in NETWORKS:
        bad = [
            k
            for k, v in state.get(part, {}).items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            return f"{part} ({len(bad)} tensor{'s' * (len(bad) > 1)}, first: {bad[0]})"
    return None


def save(state: dict, run_dir: str, nimg: int, keep: int = 3, protect: Sequence[str] = ()) -> str:
    """Write `checkpoint_<kimg>.pt` atomically into run_dir and delete all but the newest `keep`, never the one
    just written nor those in `protect` (the checkpoint the run resumed from).

    Non-finite weights are refused, and a full disk is one UserError naming the last intact checkpoint; either
    way nothing partial is left."""
    path = os.path.join(run_dir, f"checkpoint_{kimg_tag(nimg)}.pt")
    bad = nonfinite(state)
    if bad:
        raise NonFiniteWeights(
            f"not writing {path}: {bad} holds NaN or inf; the last checkpoint with finite weights is {latest(run_dir)}",
            bad,
        )
    write(
        state,
        path,
        disk_full_hint=f"the last intact checkpoint is {latest(run_dir)}; free space, then "
        "continue with --resume latest",
    )
    if keep and keep > 0:
        spared = {os.path.realpath(p) for p in (path, *protect) if p and os.path.exists(p)}
        for old in list_checkpoints(run_dir)[:-keep]:
            if os.path.realpath(old) not in spared:
                os.remove(old)
    return path


def write(state: dict, path: str, disk_full_hint: str = "free space and try again") -> None:
    """torch.save `state` (stamped with this format and version) to `path` atomically: a temp file, fsync, then a
    rename, so `path` is the old file or the whole new one. A full disk is one UserError ending in the hint."""
    writes.atomic(path, lambda tmp: torch.save(dict(state, format=FORMAT, version=VERSION), tmp), hint=disk_full_hint)


def list_checkpoints(run_dir: str) -> List[str]:
    """Checkpoint paths in run_dir, oldest first."""
    found = [p for p in glob.glob(os.path.join(run_dir, "checkpoint_*.pt")) if _NAME.search(p)]
    return sorted(found, key=kimg_of)


def kimg_of(path: str) -> Optional[float]:
    """The kimg in a checkpoint's file name (checkpoint_<kimg>.pt), or None for another name."""
    m = _NAME.search(path)
    return float(m.group(1)) if m else None


def latest(run_dir: str) -> Optional[str]:
    """The newest checkpoint in run_dir, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load(path: str, map_location="cpu") -> dict:
    """Load and validate a checkpoint; a missing, corrupt or foreign file raises UserError."""
    if os.path.isdir(path):
        raise UserError(f"checkpoint '{path}' is a folder; name a checkpoint_<kimg>.pt file in it")
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
        raise UserError(
            f"checkpoint '{path}' has format version {state.get('version')}; this fastpggan reads {VERSION}"
        )
    check(state, path)
    return state


def check(state: dict, path: str) -> None:
    """The checks of `load` (see the module docstring): every field against state_schema's Checkpoint (and, unless it
    was converted from an official pickle, TrainingState), then across fields; raises UserError naming what is
    wrong."""

    where = f"checkpoint '{path}' is damaged"

    def bad(what):
        return UserError(f"{where}: {what}")

    schema.check(state, schema.Checkpoint, where)
    cfg, prog = state["config"], state["progress"]
    if "source" not in cfg:
        schema.check(state, schema.TrainingState, where)
    net = cfg["network"]
    if net["resolution"] & (net["resolution"] - 1) or net["num_channels"] == 2:
        raise bad(f"network resolution {net['resolution']} / channels {net['num_channels']} are impossible")
    res = prog["resolution"]
    if res > net["resolution"] or res & (res - 1):
        raise bad(f"progress.resolution {res} is not a power of 2 up to the network's {net['resolution']}")
    with torch.device("meta"):  # shapes only: nothing is allocated, however large the config says it is
        G, D = build_networks(cfg)
    for part, model in (("G", G), ("D", D), ("G_ema", G)):
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state[part].items()}
        if want != got:
            k = next(k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k))
            raise bad(
                f"{part} does not match its recorded network ({k}: {got.get(k)} where the network has {want.get(k)})"
            )
    bad_part = nonfinite(state)
    if bad_part:
        raise UserError(f"checkpoint '{path}' has NaN or inf weights in {bad_part}; use an earlier checkpoint")


def build_networks(config: dict, impl: str = "auto") -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(G, D) with the architecture recorded in a checkpoint's config (fused_scale: True where not recorded, as
    every checkpoint before it was)."""
    net = config["network"]
    fused = net.get("fused_scale", True)
    G = Generator(
        resolution=net["resolution"],
        latent_size=net["latent_size"],
        num_channels=net["num_channels"],
        fmap_base=net["fmap_base"],
        fmap_max=net["fmap_max"],
        label_size=net["label_size"],
        fused_scale=fused,
        impl=impl,
    )
    D = Discriminator(
        resolution=net["resolution"],
        num_channels=net["num_channels"],
        fmap_base=net["fmap_base"],
        fmap_max=net["fmap_max"],
        mbstd_group_size=net["mbstd_group_size"],
        label_size=net["label_size"],
        fused_scale=fused,
        impl=impl,
    )
    return G, D


def load_generator(path: str, which: str = "G_ema", device="cpu", impl: str = "auto") -> Tuple[torch.nn.Module, dict]:
    """The generator (EMA by default) of a checkpoint, in eval mode, with the checkpoint's state dict.

    Args:
        path: a checkpoint of fastpggan.train or fastpggan.convert.
        which: 'G_ema' (official Gs) or 'G'.
        device: where to put the network.
        impl: the ops backend of the network.

    Returns (G, state) where state["progress"] tells the resolution and alpha it was trained to.
    """
    if which not in ("G_ema", "G"):
        raise ValueError(f"which must be 'G_ema' or 'G', got {which!r}")
    state = load(path)
    G, _ = build_networks(state["config"], impl=impl)
    return _loaded(G, state, which, path, device), state


def load_discriminator(path: str, device="cpu", impl: str = "auto") -> Tuple[torch.nn.Module, dict]:
    """The discriminator of a checkpoint, in eval mode: (D, state), D(images, alpha) -> (N, 1 + label_size) scores
    then label logits. Args as for load_generator."""
    state = load(path)
    _, D = build_networks(state["config"], impl=impl)
    return _loaded(D, state, "D", path, device), state


def _loaded(net, state, part, path, device):
    try:
        net.load_state_dict(state[part])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"checkpoint '{path}' does not match its recorded network ({str(e).splitlines()[0]})") from None
    return net.to(device).eval().requires_grad_(False)
