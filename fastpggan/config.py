"""A run's configuration, resolved once: `resolve_config(dataset, **settings)` -> a frozen `RunConfig`.

Every auto setting is decided here and nowhere else: the device, the preset (or the auto settings sized to the
device), the autocast dtype, CUDA graphs, and whether the op backend asked for can run. The trainer, `tune` and
`selftest` take the result and decide nothing; the start-up print, config.json, log.jsonl and every checkpoint
carry it (`RunConfig.to_dict`). A resumed run keeps what its checkpoint recorded (`resume_config`) except the
settings of RESUMABLE, and resolves those of RUN_TIME anew for this process.

The settings it is made of (presets, auto settings, per-resolution flags, the autocast and CUDA-graph choices)
are fastpggan.settings'.
"""

import dataclasses
import inspect
from typing import Annotated, Any, Callable, Dict, Optional, Tuple, Union

import torch

from .data import check_resolution, recorded_spec
from .errors import UserError
from .networks import conv_outputs_per_image
from .ops import IMPLS, impl_unavailable
from .runtime import device_memory, pick_device
from .schedule import Schedule
from .settings import (  # noqa: F401  (PRESET_NAMES, DataShapes, pick_*: this module's API, as before)
    AMP_DTYPES,
    AMP_MODES,
    PRESET_NAMES,
    DataLike,
    DataShapes,
    apply_res_flag,
    auto_settings,
    pick_amp,
    pick_cuda_graphs,
    preset_settings,
)
from .state_schema import Count, Fraction, Kimg, NetworkArgs, NonNegative, Positive, Resolution, Seed, check, one_of
from .state_schema import Schedule as ScheduleArgs
from .step import STEP_VERSION


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run trains with, every auto setting decided (see the module docstring). Build it with
    `resolve_config`; `to_dict()` is what config.json, log.jsonl and checkpoints hold, `from_dict` reads it back.

    The fields up to `init` are what the run trains (kept on resume); those from `device` on say how this process
    runs it (resolved anew on resume, recorded under "resolved"). `network` holds Generator/Discriminator
    arguments, `schedule` those of schedule.Schedule; `backends` the op backends chosen at the start
    (trainer.choose_backends), `init` where --init started the run.
    """

    data: Optional[str]
    resolution: Resolution
    network: Dict[str, Any]  # state_schema.NetworkArgs
    schedule: Dict[str, Any]  # state_schema.Schedule
    total_kimg: Kimg
    snap_ticks: Count
    ema: Fraction
    dataset_hash: Optional[str] = None
    data_fingerprint: Optional[Dict[str, Any]] = None  # data.ImageDataset.content_fingerprint
    preset: Annotated[str, one_of(*PRESET_NAMES)] = "auto"
    seed: Seed = 0
    amp: Annotated[str, one_of(*AMP_MODES)] = "auto"
    amp_min_res: Optional[Resolution] = None
    mirror: bool = False
    cond: bool = False
    keep: Count = 3
    reset_opt: bool = True
    lambda_gp: NonNegative = 10.0
    drift: NonNegative = 1e-3
    gp_native_res: bool = False
    step_version: Positive = STEP_VERSION
    impl: Annotated[str, one_of("auto", *IMPLS)] = "auto"
    strict: bool = False
    max_images: Optional[Positive] = None
    grid: Optional[Positive] = None
    backends: Optional[Dict[str, Any]] = None
    init: Optional[Dict[str, Any]] = None
    # how this process runs it
    device: str = "cpu"
    world: Positive = 1
    amp_dtype: Annotated[str, one_of(*AMP_DTYPES)] = "fp32"
    cuda_graphs: bool = False
    compile_step: bool = False
    channels_last: bool = False
    batch_gpu: Optional[Positive] = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """The dtype of the step's autocast, None for fp32."""
        return AMP_DTYPES[self.amp_dtype]

    def to_dict(self) -> dict:
        """The plain dict of config.json, log.jsonl and checkpoints: the recorded fields at the top (as every
        checkpoint before RunConfig had them), this process's under "resolved"."""
        d = dataclasses.asdict(self)
        resolved = {f: d.pop(f) for f in RESOLVED}
        for key in ("backends", "init"):
            if d[key] is None:
                del d[key]
        return dict(d, resolved=resolved)

    @classmethod
    def from_dict(cls, d: dict, where: str = "the config") -> "RunConfig":
        """The RunConfig of a to_dict() or its JSON (or of a checkpoint written before RunConfig: missing optional
        fields take the values those versions ran with; step_version 1). Unknown or missing required fields are a
        UserError."""
        d = dict(d)
        d.update(d.pop("resolved", None) or {})
        if isinstance(d.get("schedule"), dict):  # config.json's keys are strings
            d["schedule"] = {
                k: {int(r): x for r, x in v.items()} if isinstance(v, dict) else v for k, v in d["schedule"].items()
            }
        d.setdefault("step_version", 1)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"{where} has fields this fastpggan does not know: {', '.join(unknown)}")
        where = f"{where} is damaged"
        check(d.get("network"), NetworkArgs, where, "network")
        check(d.get("schedule"), ScheduleArgs, where, "schedule")
        cfg = check(d, cls, where)
        net = cfg.network
        if cfg.resolution != net["resolution"] or cfg.schedule.get("max_resolution", cfg.resolution) != cfg.resolution:
            raise UserError(
                f"{where}: its resolution {cfg.resolution}, network.resolution {net['resolution']} and "
                f"schedule.max_resolution {cfg.schedule.get('max_resolution')} differ"
            )
        return cfg


RESOLVED = ("device", "world", "amp_dtype", "cuda_graphs", "compile_step", "channels_last", "batch_gpu")
# on resume: the settings that change the recorded run from here on, and those that apply to this process only
RESUMABLE = ("kimg", "lr", "minibatch", "snap_ticks", "keep", "grid")
RUN_TIME = ("device", "world", "channels_last", "cuda_graphs", "compile_step", "batch_gpu")


def _runtime(
    device: Union[str, torch.device],
    world: int,
    amp: str,
    cuda_graphs: str,
    compile_step: bool,
    channels_last: bool,
    batch_gpu: Optional[int],
    impl: str,
) -> Tuple[dict, list]:
    """The RESOLVED fields for this process, and the notices they come with."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    amp_dtype, amp_notice = pick_amp(amp, dev)
    graphs, graphs_notice = pick_cuda_graphs(cuda_graphs, dev, world, compile_step)
    if batch_gpu is not None and batch_gpu < 1:
        raise UserError(f"--batch-gpu must be at least 1, got {batch_gpu}")
    missing = impl_unavailable(impl, dev)
    if missing:
        raise UserError(f"--impl {impl} cannot run on {dev} here ({missing}); use --impl auto or ref")
    fields = dict(
        device=str(dev),
        world=int(world),
        amp_dtype=amp_dtype,
        cuda_graphs=graphs,
        compile_step=bool(compile_step),
        channels_last=bool(channels_last),
        batch_gpu=batch_gpu,
    )
    return fields, [n for n in (amp_notice, graphs_notice) if n]


def resolve_config(
    dataset: DataLike,
    *,
    data: Optional[str] = None,
    device: Union[str, torch.device] = "auto",
    world: int = 1,
    preset: str = "auto",
    seed: int = 0,
    amp: str = "auto",
    amp_min_res: Optional[int] = None,
    channels_last: bool = False,
    cuda_graphs: str = "auto",
    compile_step: bool = False,
    batch_gpu: Optional[int] = None,
    kimg: Optional[float] = None,
    lod_training_kimg: Optional[float] = None,
    lod_transition_kimg: Optional[float] = None,
    minibatch: Union[None, str, int, dict] = None,
    lr: Union[None, str, float, dict] = None,
    tick_kimg: Optional[float] = None,
    snap_ticks: Optional[int] = None,
    keep: int = 3,
    reset_opt: bool = True,
    fmap_base: Optional[int] = None,
    fmap_max: Optional[int] = None,
    latent_size: Optional[int] = None,
    mbstd_group_size: Optional[int] = None,
    fused_scale: bool = True,
    lambda_gp: float = 10.0,
    drift: float = 1e-3,
    ema: Optional[float] = None,
    gp_native_res: bool = False,
    impl: str = "auto",
    mirror: bool = False,
    cond: bool = False,
    strict: bool = False,
    max_images: Optional[int] = None,
    grid: Optional[int] = None,
    log: Optional[Callable[[str], Any]] = None,
) -> RunConfig:
    """The run's whole configuration, every auto setting decided and checked (README, "Training" for each).

    Args:
        dataset: what the run trains on: a data.ImageDataset, or anything with `resolution`, `num_channels`,
            `num_classes`, `labels` (None without), `name` and `meta["source_hash"]`.
        data: the data as given (recorded, absolute where it is a path, and opened again on resume).
        device: 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N' or a torch.device.
        world: processes of the run (each takes 1/world of every global minibatch).
        preset: 'auto' (sized to device and data) or an official one (schedule.PRESETS).
        amp: 'auto' (bf16 on GPUs that have it, fp32 on the CPU), 'on', 'bf16', 'fp16' or 'off'.
        amp_min_res: low precision only at resolutions >= this (None: every layer).
        cuda_graphs: 'auto' (single-process CUDA runs), 'on' or 'off'; off with compile_step.
        kimg, lod_training_kimg, lod_transition_kimg, tick_kimg: schedule lengths in thousands of images (None:
            the preset's).
        minibatch, lr: per resolution, '4:128,8:64,32' or {4: 128, 'base': 32}, or a bare base value.
        The others are train.py's flags of the same names (`python -m fastpggan.train --help`).
        log: where the notices of the auto settings go (None: nowhere).
    """
    dev = device if isinstance(device, torch.device) else pick_device(device)
    check_resolution(amp_min_res, what="--amp-min-res")
    if cond and dataset.labels is None:
        raise UserError(
            f"--cond needs class labels, and dataset '{dataset.name}' has none "
            "(labels come from .npz 'labels', class subfolders, or the built-in sets)"
        )
    if preset not in PRESET_NAMES:
        raise UserError(f"preset must be one of {', '.join(PRESET_NAMES)}, got {preset!r}")
    s = auto_settings(dev, dataset.resolution) if preset == "auto" else preset_settings(preset)
    given = dict(
        fmap_base=fmap_base,
        fmap_max=fmap_max,
        latent_size=latent_size,
        ema=ema,
        snap_ticks=snap_ticks,
        lod_training_kimg=lod_training_kimg,
        lod_transition_kimg=lod_transition_kimg,
        tick_kimg=tick_kimg,
        mbstd_group_size=mbstd_group_size,
        total_kimg=kimg,
    )
    s.update({k: v for k, v in given.items() if v is not None})
    for key, value in (("minibatch", minibatch), ("lr", lr)):
        if value is not None:
            apply_res_flag(s, key, value)
    schedule = dict(
        max_resolution=dataset.resolution,
        lod_training_kimg=s["lod_training_kimg"],
        lod_transition_kimg=s["lod_transition_kimg"],
        minibatch_base=int(s["minibatch_base"]),
        minibatch={int(k): int(v) for k, v in s["minibatch"].items()},
        lr_base=float(s["lr_base"]),
        lr={int(k): float(v) for k, v in s["lr"].items()},
    )
    if s["tick_kimg"]:
        schedule["tick_kimg"] = {2**k: s["tick_kimg"] for k in range(2, 15)}
    network = dict(
        resolution=dataset.resolution,
        latent_size=s["latent_size"],
        num_channels=dataset.num_channels,
        fmap_base=s["fmap_base"],
        fmap_max=s["fmap_max"],
        mbstd_group_size=s["mbstd_group_size"],
        label_size=dataset.num_classes if cond else 0,
        fused_scale=bool(fused_scale),
    )
    fields, notices = _runtime(dev, world, amp, cuda_graphs, compile_step, channels_last, batch_gpu, impl)
    cfg = RunConfig(
        data=recorded_spec(data),
        resolution=dataset.resolution,
        dataset_hash=dataset.meta["source_hash"],
        data_fingerprint=getattr(dataset, "content_fingerprint", None),
        preset=preset,
        seed=seed,
        amp=amp,
        amp_min_res=amp_min_res,
        mirror=mirror,
        cond=cond,
        total_kimg=float(s["total_kimg"]),
        snap_ticks=int(s["snap_ticks"]),
        keep=keep,
        reset_opt=reset_opt,
        lambda_gp=lambda_gp,
        drift=drift,
        ema=float(s["ema"]),
        gp_native_res=gp_native_res,
        step_version=STEP_VERSION,
        impl=impl,
        strict=strict,
        max_images=max_images,
        grid=grid,
        network=network,
        schedule=schedule,
        **fields,
    )
    validate_config(cfg, memory=device_memory(dev))
    for line in notices:
        (log or (lambda *a: None))(line)
    return cfg


DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(resolve_config).parameters.items()
    if p.kind is p.KEYWORD_ONLY and k != "log"
}


def resume_config(
    recorded: dict,
    *,
    device: Union[str, torch.device] = "auto",
    world: int = 1,
    log: Optional[Callable[[str], Any]] = None,
    where: str = "the checkpoint's config",
    **changes: Any,
) -> RunConfig:
    """The configuration a resumed run goes on with: `recorded` (a checkpoint's "config") with `changes` of
    RESUMABLE applied (resolve_config's meanings), and this process's settings of RUN_TIME (resolve_config's
    defaults where not given) resolved anew. Other settings cannot change on resume: a ValueError."""
    other = sorted(set(changes) - set(RESUMABLE) - set(RUN_TIME))
    if other:
        raise ValueError(f"a resumed run keeps its recorded {', '.join(other)}")
    cfg = RunConfig.from_dict(recorded, where=where)
    upd: Dict[str, Any] = {}
    if changes.get("kimg") is not None:
        upd["total_kimg"] = float(changes["kimg"])
    for key in ("lr", "minibatch"):
        if changes.get(key) is not None:
            upd["schedule"] = dict(upd.get("schedule", cfg.schedule))
            apply_res_flag(upd["schedule"], key, changes[key])
    for key in ("snap_ticks", "keep", "grid"):
        if changes.get(key) is not None:
            upd[key] = changes[key]
    run = {k: changes.get(k, DEFAULTS[k]) for k in RUN_TIME if k not in ("device", "world")}
    fields, notices = _runtime(device, world, cfg.amp, impl=cfg.impl, **run)
    dev = torch.device(fields["device"])
    cfg = dataclasses.replace(cfg, **upd, **fields)
    validate_config(cfg, memory=device_memory(dev))
    for line in notices:
        (log or (lambda *a: None))(line)
    return cfg


def validate_config(cfg: RunConfig, memory: Optional[int] = None) -> Schedule:
    """Check every resolution's global minibatch against the world size, --batch-gpu and the mbstd group, and, given
    the device's `memory` in bytes, against a lower bound of what one forward pass of that many images needs: the
    activations the convolutions of G and of D (on reals and fakes) write, at 2 bytes each. A batch over that bound
    cannot run, so it is refused before any work rather than found out by the out-of-memory killer."""
    sched = Schedule(**cfg.schedule)
    group, world, batch_gpu = cfg.network["mbstd_group_size"], cfg.world, cfg.batch_gpu
    if not sched.lod_training_kimg + sched.lod_transition_kimg > 0:
        raise UserError("--lod-training-kimg plus --lod-transition-kimg must be more than 0, or the run never grows")
    r = 4
    while r <= cfg.resolution:
        ph = sched.at(sched.kimg_to_reach(r) * 1000)
        if ph.minibatch < 1:
            raise UserError(f"the minibatch at {r}x{r} is {ph.minibatch}; it must be at least 1 (--minibatch)")
        if ph.minibatch % world:
            raise UserError(
                f"the global minibatch {ph.minibatch} at {r}x{r} is not divisible by the {world} "
                "processes; change --minibatch or the process count"
            )
        per = ph.minibatch // world
        chunk = min(batch_gpu or per, per)
        if per % chunk:
            raise UserError(f"the per-process batch {per} at {r}x{r} is not a multiple of --batch-gpu {chunk}")
        g = min(group, chunk) if group > 1 else 1
        if chunk % g:
            raise UserError(
                f"the batch {chunk} that each forward pass sees at {r}x{r} is not divisible by the "
                f"minibatch-stddev group size {g}; change --minibatch, --batch-gpu or --mbstd-group"
            )
        net = cfg.network
        need = chunk * (
            3 * conv_outputs_per_image(net["fmap_base"], net["fmap_max"], r) * 2
            + 4 * (net["latent_size"] + 2 * net["num_channels"] * r * r)
        )
        if memory is not None and need > memory:
            raise UserError(
                f"{chunk} images per forward pass at {r}x{r} need at least {need / 2**30:.1f} GiB for "
                f"the activations alone, and the device has {memory / 2**30:.1f} GiB; lower "
                "--minibatch, or set --batch-gpu to split each minibatch into smaller passes"
            )
        r *= 2
    return sched
