"""A run's configuration: the official presets, the auto settings sized to the device, and building and checking
the config dict that `config.json` and every checkpoint record.

The presets are official config.py's (see schedule.PRESETS); `--preset auto` is README "The bare command".
"""
import argparse
import math
from typing import Optional, Tuple

import torch

from .errors import UserError
from .networks import conv_outputs_per_image
from .schedule import PRESETS, Schedule
from .step import STEP_VERSION

PRESET_NAMES = ["auto"] + list(PRESETS)


def _apply_res_flag(settings: dict, key: str, text: str) -> None:
    """Merge --lr or --minibatch `text` into settings[key] (per resolution) and settings[key + '_base']."""
    d = _res_dict(text, f"--{key}", whole=key == "minibatch")
    if "base" in d:
        settings[f"{key}_base"] = d.pop("base")
    settings[key] = {**{int(k): v for k, v in settings[key].items()}, **d}


def _res_dict(text: str, flag: str, whole: bool) -> dict:
    """'4:128,8:64' -> {4: 128, 8: 64}; a bare number -> {'base': value}. Keys are powers of two >= 4, values
    finite and positive (whole numbers for `whole`); anything else is a UserError naming `flag`."""
    out = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            k, v = part.split(":", 1) if ":" in part else ("base", part)
            k = k if k == "base" else int(k)
            v = float(v)
        except ValueError:
            raise UserError(f"{flag} must look like '4:128,8:64' or a number, got {text!r}") from None
        if k != "base" and (k < 4 or k & (k - 1)):
            raise UserError(f"{flag}: {k} is not a resolution (a power of two >= 4), in {text!r}")
        if not math.isfinite(v) or v <= 0 or (whole and v != int(v)):
            raise UserError(f"{flag} values must be {'whole numbers >= 1' if whole else 'finite and > 0'}, "
                            f"got {part!r}")
        out[k] = int(v) if whole else v
    return out


RESUMABLE = ("kimg", "lr", "minibatch", "snap_ticks", "keep", "grid")
RUN_TIME = ("device", "cache_dir", "no_progress", "metrics", "metric_kimg", "metric_num", "inception", "batch_gpu",
            "channels_last", "cuda_graphs", "compile_step", "out", "name", "resume")


def apply_resume_flags(cfg: dict, args: argparse.Namespace, defaults: dict) -> Tuple[list, list]:
    """A resumed run keeps its recorded config, except the flags of RESUMABLE given on the command line, which
    change it from here on; the flags of RUN_TIME apply to this process only. Returns (applied, ignored): the
    '--flag value' texts of the given flags, those that changed the config and those that cannot."""
    given = {k: v for k, v in vars(args).items() if k in defaults and v != defaults[k]}
    applied, ignored = [], []
    for key, value in given.items():
        text = f"--{key.replace('_', '-')} {value}" if value is not True else f"--{key.replace('_', '-')}"
        if key in RUN_TIME:
            continue
        if key not in RESUMABLE:
            ignored.append(text)
            continue
        applied.append(text)
        if key == "kimg":
            cfg["total_kimg"] = float(value)
        elif key in ("lr", "minibatch"):
            cfg["schedule"] = dict(cfg["schedule"])
            _apply_res_flag(cfg["schedule"], key, value)
        else:
            cfg[key] = value
    return applied, ignored


def pick_amp(mode: str, device: torch.device) -> Tuple[Optional[torch.dtype], Optional[str]]:
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


def preset_settings(name: str, **overrides) -> dict:
    """Settings of an official preset: Table-2 networks, its schedule, G EMA 0.999 and a checkpoint every 10 ticks."""
    pre = PRESETS[name]
    s = dict(fmap_base=8192, fmap_max=512, latent_size=512, minibatch_base=pre["minibatch_base"],
             minibatch=dict(pre["minibatch"]), lr_base=pre["lr_base"], lr=dict(pre["lr"]),
             lod_training_kimg=pre["lod_training_kimg"], lod_transition_kimg=pre["lod_transition_kimg"],
             total_kimg=pre["total_kimg"], tick_kimg=None, snap_ticks=10, ema=0.999,
             mbstd_group_size=pre.get("mbstd_group_size", 4))
    s.update(overrides)
    return s


def auto_settings(device: torch.device, resolution: int) -> dict:
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


def make_config(args: argparse.Namespace, dataset, device: torch.device) -> dict:
    """The run's config dict (recorded in config.json and every checkpoint) from the command line, the dataset and
    the device: the preset or auto settings, then each flag given."""
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
    for key in ("minibatch", "lr"):
        if getattr(args, key) is not None:
            _apply_res_flag(s, key, getattr(args, key))
    s["minibatch_base"] = int(s["minibatch_base"])
    s["minibatch"] = {int(k): int(v) for k, v in s["minibatch"].items()}
    tick = {r: s["tick_kimg"] for r in (2 ** k for k in range(2, 15))} if s["tick_kimg"] else None
    schedule = dict(max_resolution=dataset.resolution, lod_training_kimg=s["lod_training_kimg"],
                    lod_transition_kimg=s["lod_transition_kimg"], minibatch_base=s["minibatch_base"],
                    minibatch=s["minibatch"], lr_base=float(s["lr_base"]),
                    lr={int(k): float(v) for k, v in s["lr"].items()})
    if tick:
        schedule["tick_kimg"] = tick
    network = dict(resolution=dataset.resolution, latent_size=s["latent_size"], num_channels=dataset.num_channels,
                   fmap_base=s["fmap_base"], fmap_max=s["fmap_max"], mbstd_group_size=s["mbstd_group_size"],
                   label_size=dataset.num_classes if args.cond else 0, fused_scale=bool(args.fused_scale))
    return dict(data=args.data, resolution=dataset.resolution, dataset_hash=dataset.meta["source_hash"],
                preset=args.preset, seed=args.seed, amp=args.amp, amp_min_res=args.amp_min_res,
                mirror=args.mirror, cond=args.cond,
                total_kimg=float(s["total_kimg"]), snap_ticks=int(s["snap_ticks"]), keep=args.keep,
                reset_opt=not args.no_reset_opt, lambda_gp=args.lambda_gp, drift=args.drift, ema=float(s["ema"]),
                gp_native_res=args.gp_native_res, step_version=STEP_VERSION,
                impl=args.impl, strict=args.strict, max_images=args.max_images, grid=args.grid, network=network,
                schedule=schedule)


def validate_config(cfg: dict, world: int = 1, batch_gpu: Optional[int] = None,
                    memory: Optional[int] = None) -> Schedule:
    """Check every resolution's global minibatch against the world size, --batch-gpu and the mbstd group, and, given
    the device's `memory` in bytes, against a lower bound of what one forward pass of that many images needs: the
    activations the convolutions of G and of D (on reals and fakes) write, at 2 bytes each. A batch over that bound
    cannot run, so it is refused before any work rather than found out by the out-of-memory killer."""
    sched = Schedule(**cfg["schedule"])
    group = cfg["network"]["mbstd_group_size"]
    if batch_gpu is not None and batch_gpu < 1:
        raise UserError(f"--batch-gpu must be at least 1, got {batch_gpu}")
    if not sched.lod_training_kimg + sched.lod_transition_kimg > 0:
        raise UserError("--lod-training-kimg plus --lod-transition-kimg must be more than 0, or the run never grows")
    r = 4
    while r <= cfg["resolution"]:
        ph = sched.at(sched.kimg_to_reach(r) * 1000)
        if ph.minibatch < 1:
            raise UserError(f"the minibatch at {r}x{r} is {ph.minibatch}; it must be at least 1 (--minibatch)")
        if ph.minibatch % world:
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
        net = cfg["network"]
        need = chunk * (3 * conv_outputs_per_image(net["fmap_base"], net["fmap_max"], r) * 2 +
                        4 * (net["latent_size"] + 2 * net["num_channels"] * r * r))
        if memory is not None and need > memory:
            raise UserError(f"{chunk} images per forward pass at {r}x{r} need at least {need / 2 ** 30:.1f} GiB for "
                            f"the activations alone, and the device has {memory / 2 ** 30:.1f} GiB; lower "
                            "--minibatch, or set --batch-gpu to split each minibatch into smaller passes")
        r *= 2
    return sched
