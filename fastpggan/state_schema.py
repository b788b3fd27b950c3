"""The schemas of what fastpggan loads back: a checkpoint's networks, progress, data order, optimizers, GradScaler and
random state (the run's config has its own, in config.RunConfig's annotations). `check(obj, Schema, where)` validates
types, ranges and presence with msgspec and raises one UserError naming the file and the field; cross-field checks
(shapes against the network, a position inside the data) stay with the code that knows both sides.

msgspec, not pydantic: it validates plain dicts against TypedDicts and dataclasses in place (the checkpoint stays the
dict torch.load gave, tensors are checked as instances and never copied), its error names the field's path, and it
is one small wheel with no dependencies (pydantic brings pydantic-core and typing-inspection).
"""

import re
from typing import Annotated, Any, Dict, List, Optional, Tuple, TypedDict, Union

import msgspec
import torch
from msgspec import Meta

from .errors import UserError

Tensor = torch.Tensor  # checked as an instance: msgspec passes it through untouched
Count = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Finite = Annotated[float, Meta(ge=-1e300, le=1e300)]  # NaN fails both bounds
NonNegative = Annotated[float, Meta(ge=0, le=1e300)]
Kimg = Annotated[float, Meta(ge=0, le=1e7)]
Resolution = Annotated[int, Meta(ge=4, le=1 << 14)]  # a power of 2: checked where it is used
Seed = Annotated[int, Meta(ge=0, lt=1 << 32)]


class Network(TypedDict):
    """Generator/Discriminator arguments (config.network of every checkpoint)."""

    resolution: Resolution
    latent_size: Annotated[int, Meta(ge=1, le=1 << 16)]
    num_channels: Annotated[int, Meta(ge=1, le=3)]
    fmap_base: Annotated[int, Meta(ge=1, le=1 << 20)]
    fmap_max: Annotated[int, Meta(ge=1, le=1 << 16)]
    mbstd_group_size: Annotated[int, Meta(ge=0, le=1 << 16)]
    label_size: Annotated[int, Meta(ge=0, le=1 << 16)]


class NetworkArgs(Network, total=False):
    fused_scale: bool  # absent in checkpoints written before it: True


class Schedule(TypedDict, total=False):
    """schedule.Schedule's arguments (config.schedule)."""

    max_resolution: Resolution
    lod_training_kimg: Kimg
    lod_transition_kimg: Kimg
    minibatch_base: Positive
    minibatch: Dict[Resolution, Count]
    lr_base: NonNegative
    lr: Dict[Resolution, NonNegative]
    tick_kimg: Dict[Resolution, Kimg]


class Progress(TypedDict):
    """Where a checkpoint's networks stand (every checkpoint, converted ones too)."""

    nimg: Count
    resolution: Resolution
    alpha: Fraction


class TrainingProgress(Progress):
    prev_lod: Optional[Finite]  # None before the first step
    tick: Count
    tick_start_nimg: Count


class Sampler(TypedDict):
    seed: Seed
    epoch: Count
    pos: Count


class AdamGroup(TypedDict):
    lr: NonNegative
    betas: Tuple[Fraction, Fraction]
    eps: Annotated[float, Meta(gt=0, le=1)]
    params: List[Count]


class Optimizer(TypedDict):
    state: Dict[Union[int, str], Dict[str, Tensor]]
    param_groups: List[AdamGroup]


class GradScalerState(TypedDict):
    scale: Annotated[float, Meta(gt=0, le=1e300)]
    growth_factor: Annotated[float, Meta(gt=0, le=1e300)]
    backoff_factor: Annotated[float, Meta(gt=0, le=1e300)]
    growth_interval: Positive
    _growth_tracker: Count


class Scalers(TypedDict):
    D: GradScalerState
    G: GradScalerState


class Rng(TypedDict, total=False):
    torch: Tensor
    cuda: Tensor


class RecordedConfig(TypedDict):
    network: NetworkArgs


class Checkpoint(TypedDict):
    """What every checkpoint holds (fastpggan.convert's too): enough to rebuild and run the networks."""

    config: RecordedConfig
    progress: Progress
    G: Dict[str, Tensor]
    D: Dict[str, Tensor]
    G_ema: Dict[str, Tensor]


class TrainingState(TypedDict):
    """What a checkpoint of fastpggan.train holds besides: what resuming it puts back."""

    progress: TrainingProgress
    opt_G: Optimizer
    opt_D: Optimizer
    scaler: Optional[Scalers]
    rng: Rng
    sampler: Sampler


_PATH = re.compile(r"\s*- at (`key` in )?`\$\.?(.*)`$")
_ONE_OF = re.compile(r"Expected `str` matching regex '\^\((.*)\)\$'")


def describe(e: msgspec.ValidationError, field: str = "") -> str:
    """msgspec's message as 'field.path: what is wrong' ('Expected `int`, got `str` - at `$.a.b`' ->
    'a.b: expected int, got str'), its path under `field`."""
    text = str(e)
    m = _PATH.search(text)
    path, what = (m.group(2), text[: m.start()]) if m else ("", text)
    missing = re.match(r"Object missing required field `(.*)`", what)
    if missing:
        path, what = ".".join(p for p in (path, missing.group(1)) if p), "missing"
    one_of = _ONE_OF.match(what)
    if one_of:
        what = "expected one of " + ", ".join(one_of.group(1).replace("\\", "").split("|"))
    path = field + ("." if field and path and not path.startswith("[") else "") + path
    if m and m.group(1):
        path += " (a key)"
    what = what.replace("`", "")
    what = what[:1].lower() + what[1:]
    return f"{path}: {what}" if path else what


def check(obj: Any, schema: Any, where: str, field: str = "") -> Any:
    """`obj` converted to `schema` (a TypedDict stays a dict, a dataclass is built), or one UserError:
    "{where}: field.path: what is wrong" (the path under `field`, where `obj` is that field of the file)."""
    try:
        return msgspec.convert(obj, schema)
    except msgspec.ValidationError as e:
        what, value = describe(e, field), _value_at(obj, e)
        raise UserError(f"{where}: {what}" + (f" (it is {value})" if value else "")) from None


def problem(obj: Any, schema: Any, field: str = "") -> Optional[str]:
    """What check(obj, schema) would refuse, as 'field.path: what is wrong (it is value)', or None."""
    try:
        check(obj, schema, "", field)
    except UserError as e:
        return str(e)[2:]
    return None


def _value_at(obj: Any, e: msgspec.ValidationError) -> Optional[str]:
    """A short repr of the value at the error's path where it can be followed (not into a dict's values), else
    None."""
    m = _PATH.search(str(e))
    path = m.group(2) if m else ""
    if (m and m.group(1)) or "[...]" in path or "missing required" in str(e):
        return None
    try:
        for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
            obj = obj[int(index)] if index else obj[name]
    except (KeyError, IndexError, TypeError):
        return None
    text = repr(obj)
    return None if torch.is_tensor(obj) else text if len(text) <= 60 else text[:57] + "..."


def one_of(*names: str) -> Meta:
    """The Meta of a string that must be one of `names` (Annotated[str, one_of(...)])."""
    return Meta(pattern="^(" + "|".join(map(re.escape, names)) + ")$")
