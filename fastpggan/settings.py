"""The settings a run's configuration (fastpggan.config) is made of: the official presets, the auto settings sized
to the device, the per-resolution --minibatch and --lr values, and the choices of autocast dtype and CUDA graphs.

The presets are official config.py's (see schedule.PRESETS); `--preset auto` is README "The bare command".
"""

import dataclasses
import math
from typing import Any, Dict, Optional, Protocol, Tuple, Union

import torch

from .errors import UserError
from .schedule import PRESETS

PRESET_NAMES = ["auto"] + list(PRESETS)


def apply_res_flag(settings: dict, key: str, value: Union[str, float, dict]) -> None:
    """Merge --lr or --minibatch `value` ('4:128,8:64', a bare number, or {resolution or 'base': value}) into
    settings[key] (per resolution) and settings[key + '_base']."""
    if isinstance(value, dict):
        value = ",".join(f"{k}:{v}" if k != "base" else str(v) for k, v in value.items())
    d = _res_dict(str(value), f"--{key}", whole=key == "minibatch")
    if "base" in d:
        settings[f"{key}_base"] = d.pop("base")
    settings[key] = {**{int(k): v for k, v in settings[key].items()}, **d}


def _res_dict(text: str, flag: str, whole: bool) -> Dict[Union[int, str], Union[int, float]]:
    """'4:128,8:64' -> {4: 128, 8: 64}; a bare number -> {'base': value}. Keys are powers of two >= 4, values
    finite and positive (whole numbers for `whole`); anything else is a UserError naming `flag`."""
    out: Dict[Union[int, str], Union[int, float]] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            key_text, value_text = part.split(":", 1) if ":" in part else ("base", part)
            k: Union[int, str] = key_text if key_text == "base" else int(key_text)
            v = float(value_text)
        except ValueError:
            raise UserError(f"{flag} must look like '4:128,8:64' or a number, got {text!r}") from None
        if isinstance(k, int) and (k < 4 or k & (k - 1)):
            raise UserError(f"{flag}: {k} is not a resolution (a power of two >= 4), in {text!r}")
        if not math.isfinite(v) or v <= 0 or (whole and v != int(v)):
            raise UserError(
                f"{flag} values must be {'whole numbers >= 1' if whole else 'finite and > 0'}, got {part!r}"
            )
        out[k] = int(v) if whole else v
    return out


def preset_settings(name: str, **overrides: Any) -> Dict[str, Any]:
    """Settings of an official preset: Table-2 networks, its schedule, G EMA 0.999 and a checkpoint every 10 ticks."""
    pre: Dict[str, Any] = PRESETS[name]
    s = dict(
        fmap_base=8192,
        fmap_max=512,
        latent_size=512,
        minibatch_base=pre["minibatch_base"],
        minibatch=dict(pre["minibatch"]),
        lr_base=pre["lr_base"],
        lr=dict(pre["lr"]),
        lod_training_kimg=pre["lod_training_kimg"],
        lod_transition_kimg=pre["lod_transition_kimg"],
        total_kimg=pre["total_kimg"],
        tick_kimg=None,
        snap_ticks=10,
        ema=0.999,
        mbstd_group_size=pre.get("mbstd_group_size", 4),
    )
    s.update(overrides)
    return s


def auto_settings(device: torch.device, resolution: int) -> dict:
    """A configuration sized to the device and the data: see README 'The bare command'."""
    steps = max(int(math.log2(resolution)) - 2, 0)
    if device.type == "cuda":
        phase = 600 if resolution >= 128 else 300
        return preset_settings(
            "v2-1gpu", lod_training_kimg=phase, lod_transition_kimg=phase, total_kimg=(2 * steps + 1) * phase
        )
    # 2-core CPU: narrow nets (64 maps at most, 32 at 32x32), minibatch 32, bf16 autocast with --amp; measured
    # about 2000/700/340/180 img/s at 4/8/16/32 px on this project's 2-core CPU, so 20-kimg phases reach 32x32
    # and finish in about 7 minutes (README, Results).
    # The official per-step EMA of 0.999 averages over ~700 steps, most of such a short run (G_ema would still
    # be half its random init after 20 kimg), so the EMA half-life is set to 2 kimg here.
    phase, minibatch = (20 if resolution <= 32 else 10), 32
    return preset_settings(
        "v2-1gpu",
        fmap_base=512,
        fmap_max=64,
        latent_size=128,
        minibatch_base=minibatch,
        minibatch={},
        lr_base=0.001,
        lr={},
        lod_training_kimg=phase,
        lod_transition_kimg=phase,
        total_kimg=(2 * steps + 1) * phase,
        tick_kimg=phase / 2,
        snap_ticks=2,
        ema=round(0.5 ** (minibatch / 2000), 6),
    )


class DataLike(Protocol):
    """What config.resolve_config reads of a dataset: data.ImageDataset and DataShapes have it."""

    resolution: int
    num_channels: int
    num_classes: int
    name: str
    meta: Dict[str, Any]

    @property
    def labels(self) -> Optional[Any]: ...


@dataclasses.dataclass(frozen=True)
class DataShapes:
    """What resolve_config (and a Trainer that only tunes or benchmarks) needs of a dataset: its shapes. A stand-in
    for data.ImageDataset where there are no images."""

    resolution: int
    num_channels: int
    num_classes: int = 0
    name: str = "shapes"
    labels: None = None
    meta: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"source_hash": None})

    def __len__(self) -> int:
        return 1


AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = ("auto", "on", "bf16", "fp16", "off")  # --amp


def pick_amp(mode: str, device: torch.device) -> Tuple[str, Optional[str]]:
    """--amp mode -> (the autocast dtype's name in AMP_DTYPES, 'fp32' for none; notice or None)."""
    if mode not in AMP_MODES:
        raise UserError(f"amp must be auto, on, bf16, fp16 or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return "fp32", None
    if mode == "fp16":
        return "fp16", None
    if device.type != "cuda" or torch.cuda.is_bf16_supported():
        return "bf16", None
    if mode == "bf16":
        raise UserError("this GPU does not support bf16; use --amp fp16 or --amp off")
    if mode == "on":
        return "fp16", "amp: this GPU has no bf16; using fp16 with a GradScaler"
    return "fp32", "amp: this GPU has no bf16; running fp32 (--amp fp16 for mixed precision)"


def pick_cuda_graphs(
    mode: str, device: torch.device, world: int, compile_step: bool = False
) -> Tuple[bool, Optional[str]]:
    """--cuda-graphs auto|on|off -> (use graphs?, notice or None). --compile-step turns them off."""
    if mode not in ("auto", "on", "off"):
        raise UserError(f"cuda_graphs must be auto, on or off, got {mode!r}")
    if compile_step and mode == "on":
        raise UserError(
            "--compile-step on and --cuda-graphs on do not combine (the compiled passes are not captured); choose one"
        )
    if mode == "off" or compile_step:
        return False, None
    if device.type != "cuda":
        if mode == "on":
            raise UserError(
                f"--cuda-graphs on needs a CUDA device, and this run is on {device}; use --cuda-graphs auto or off"
            )
        return False, None
    if world > 1:
        # The step's gradient all-reduce would have to be captured too (NCCL); not validated yet, so run eagerly.
        return False, "cuda graphs: off in multi-process runs in this version (the step runs eagerly)"
    return True, None
