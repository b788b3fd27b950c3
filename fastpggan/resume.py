"""What `train --resume` and `train --init` do with a checkpoint: find it, refuse to rewind a history, the
configuration a resumed run continues with (the flags it applies and those it ignores, each said in one line), and
the checks of the data and of the flags against the checkpoint's network."""

import argparse
import dataclasses
import math
import os
from typing import Callable, Optional, Tuple

import torch

from . import checkpoint as ckpt
from .config import RESUMABLE, RUN_TIME, RunConfig, resume_config, validate_config
from .data import is_gone, recorded_spec
from .errors import UserError
from .runtime import device_memory
from .schedule import Schedule
from .step import STEP_VERSION

# flags that are not settings of the run's configuration: where it is written, what is measured, what is shown
CLI_ONLY = (
    "out",
    "name",
    "resume",
    "init",
    "resolution",
    "cache_dir",
    "no_progress",
    "metrics",
    "metric_kimg",
    "metric_num",
    "inception",
)


def refuse_rewinding(path: str, state: dict) -> None:
    """Resuming a checkpoint whose run folder holds newer ones would rewind log.jsonl past them and let --keep
    prune them (checkpoint names sort by kimg across both histories): refused, and the user says which history to
    keep. A branch is a copy of the checkpoint in a folder of its own, resumed there."""
    run_dir = os.path.dirname(os.path.abspath(path))
    here = state["progress"]["nimg"] / 1000
    newer = [p for p in ckpt.list_checkpoints(run_dir) if ckpt.kimg_of(p) > here + 1e-9]
    if newer:
        raise UserError(
            f"'{path}' is at kimg {here:g}, and its run folder holds {len(newer)} newer checkpoint(s), up "
            f"to {os.path.basename(newer[-1])}; resuming it would overwrite that history. Resume the "
            f"newest (--resume latest --out {os.path.dirname(run_dir) or '.'} --name "
            f"{os.path.basename(run_dir)}), delete the newer checkpoints to rewind this run, or copy "
            "the checkpoint into a new folder and resume the copy to branch from it"
        )


def find_resume(args: argparse.Namespace, say: Callable) -> Tuple[str, dict]:
    """(path, loaded state) of the checkpoint --resume names: a path, or the newest of the run (--name) or of the
    newest run under --out that can be read. Unreadable or damaged checkpoints newer than it are skipped, named
    in one line."""
    if args.resume != "latest":
        return args.resume, ckpt.load(args.resume)
    dirs = (
        [os.path.join(args.out, args.name)]
        if args.name
        else [os.path.join(args.out, d) for d in os.listdir(args.out)]
        if os.path.isdir(args.out)
        else []
    )
    found = [c for c in (ckpt.latest(d) for d in dirs if os.path.isdir(d)) if c]
    if not found:
        raise UserError(
            f"--resume latest: no checkpoint found under '{args.out}'"
            + (f" for run '{args.name}'" if args.name else "")
        )
    run_dir = os.path.dirname(max(found, key=os.path.getmtime))
    skipped = []
    for path in reversed(ckpt.list_checkpoints(run_dir)):
        try:
            state = ckpt.load(path)
        except UserError as e:
            why = str(e).replace(f"checkpoint '{path}' ", "")
            skipped.append(f"{os.path.basename(path)} ({why[:100] + '...' if len(why) > 100 else why})")
            continue
        if skipped:
            say(
                f"resume: skipped {len(skipped)} unreadable checkpoint(s) of '{run_dir}': {'; '.join(skipped)}; "
                f"resuming the newest good one, {os.path.basename(path)}"
            )
        return path, state
    raise UserError(
        f"--resume latest: none of the {len(skipped)} checkpoint(s) in '{run_dir}' can be read: "
        + "; ".join(skipped[:3])
    )


def data_to_open(cfg: RunConfig, args: argparse.Namespace, defaults: dict, path: str) -> Optional[str]:
    """The data a resumed run opens: --data where given (the run's data moved; check_relocated compares it with
    the recorded fingerprint once opened), else the recorded data, which must still be where it was."""
    if args.data != defaults["data"]:
        return args.data
    recorded = cfg.data
    if is_gone(recorded):
        where = "" if os.path.isabs(recorded) else f" from '{os.getcwd()}'"
        raise UserError(
            f"the data '{recorded}' that the run in '{path}' trained on is not found{where}; pass --data with "
            "where it is now (it must match the run's fingerprint)"
        )
    return recorded


def check_relocated(dataset, cfg: RunConfig, given: Optional[str], path: str, say: Callable) -> RunConfig:
    """The config with the data at `given` recorded (absolute) when --data moved it: refused unless its content
    fingerprint is the recorded one (a checkpoint written before fingerprints: its shapes only, said in a line).
    With the recorded data, a change since the run started is one warning, as before."""
    now = dataset.content_fingerprint
    if given is None or given == cfg.data:
        if dataset.meta["source_hash"] != cfg.dataset_hash and now != cfg.data_fingerprint:
            say(f"warning: the data '{cfg.data}' changed since this run started; resuming with the new data")
        return cfg
    was = cfg.data_fingerprint
    if was is None:
        say(
            f"resume: using --data '{given}' for the run's '{cfg.data}'; '{path}' predates data fingerprints, "
            "so only the data's shape is checked"
        )
    elif now != was:
        diff = ", ".join(
            f"{k} {now.get(k)} (the run's: {was.get(k)})"
            for k in sorted(set(now) | set(was))
            if now.get(k) != was.get(k)
        )
        raise UserError(
            f"--data '{given}' is not the data the run in '{path}' trained on ({diff}); pass that data, or start a "
            "new run (--init takes the networks)"
        )
    else:
        say(f"resume: the run's data '{cfg.data}' is now '{given}' (the same images by fingerprint)")
    return dataclasses.replace(
        cfg, data=recorded_spec(given), dataset_hash=dataset.meta["source_hash"], data_fingerprint=now
    )


def _flag(dest: str, value) -> str:
    """'--flag value' of a parsed argument."""
    name = "mbstd-group" if dest == "mbstd_group_size" else dest.replace("_", "-")
    return f"--{name}" if value is True else f"--{name} {value}"


def resumed_config(
    state: dict,
    path: str,
    args: argparse.Namespace,
    defaults: dict,
    kw: dict,
    device: torch.device,
    world: int,
    say: Callable,
) -> RunConfig:
    """The config a resumed run continues with: the recorded one, with the flags that may change applied. `defaults`
    are the parser's (vars of an empty command line), `kw` train.config_kwargs(args)."""
    recorded = dict(state["config"])
    if "source" in recorded:
        raise UserError(
            f"'{path}' was converted from an official pickle and has no training state (optimizer, "
            "random state, data order) to resume; use it with fastpggan.generate, evaluate or export"
        )
    version = recorded.get("step_version", 1)
    if not isinstance(version, int) or version > STEP_VERSION:
        raise UserError(
            f"checkpoint '{path}' was written by a newer fastpggan (training step version "
            f"{version}, this one has {STEP_VERSION}); upgrade fastpggan to resume it"
        )
    if version < STEP_VERSION:
        say(
            f"note: {path} was written by fastpggan 0.1, whose training step was not the official one "
            "(penalty target, Adam's epsilon, G_ema order); it continues with the official step, so it "
            "will not retrace what 0.1 would have trained"
        )
        recorded["step_version"] = STEP_VERSION
    given = defaults
    changes, applied, ignored = {}, [], []
    for dest, value in vars(args).items():
        if value == given[dest] or dest == "data" or (dest in CLI_ONLY and dest not in ("resolution", "init")):
            continue
        key = "reset_opt" if dest == "no_reset_opt" else dest
        if key in RUN_TIME:
            changes[key] = kw[key]
        elif key in RESUMABLE:
            changes[key] = kw[key]
            applied.append(_flag(dest, value))
        else:
            ignored.append(_flag(dest, value))
    if applied:
        say(f"resume: applying {', '.join(applied)}")
    if ignored:
        say(
            f"resume: ignoring {', '.join(ignored)}: a resumed run keeps the data, network, schedule "
            "and seed recorded in its checkpoint (start a new run to change them)"
        )
    changes.pop("device", None)
    cfg = resume_config(recorded, device=device, world=world, log=say, where=f"checkpoint '{path}'", **changes)
    nimg = state["progress"]["nimg"]
    if cfg.total_kimg * 1000 <= nimg:  # not an error: a job that always says --resume latest may rerun
        say(
            f"resume: the run in '{path}' is already at {nimg / 1000:g} kimg of {cfg.total_kimg:g}; "
            "nothing to train (pass a larger --kimg to continue it)"
        )
    return cfg


def check_dataset_matches(dataset, cfg: RunConfig, path):
    net = cfg.network
    if (dataset.resolution, dataset.num_channels) != (net["resolution"], net["num_channels"]):
        raise UserError(
            f"the data '{cfg.data}' is now {dataset.resolution}x{dataset.resolution} with "
            f"{dataset.num_channels} channel(s), but the run in '{path}' trained on "
            f"{net['resolution']}x{net['resolution']} with {net['num_channels']}; resume with the "
            "data it started with"
        )
    if net["label_size"] and dataset.num_classes != net["label_size"]:
        raise UserError(
            f"the data '{cfg.data}' now has {dataset.num_classes} classes, but the run in '{path}' "
            f"was conditioned on {net['label_size']}; resume with the data it started with"
        )


def init_config(args: argparse.Namespace, defaults: dict, state: dict, cfg: RunConfig, dataset):
    """--init: (the config, which takes the checkpoint's network; the checkpoint's state; the nimg to start at).
    Network flags that contradict it, and data of another shape or class count, are refused in one line."""
    net = dict(state["config"]["network"], fused_scale=state["config"]["network"].get("fused_scale", True))
    given = defaults
    for key in ("fmap_base", "fmap_max", "latent_size", "fused_scale"):
        value = getattr(args, key)
        if value != given[key] and (bool(value) if key == "fused_scale" else value) != net[key]:
            raise UserError(
                f"--{key.replace('_', '-')} {value} contradicts the network of --init '{args.init}' "
                f"({key} {net[key]}); a run started with --init keeps that network"
            )
    if args.mbstd_group_size is not None:
        if (args.mbstd_group_size > 1) != (net["mbstd_group_size"] > 1):
            raise UserError(
                f"--mbstd-group {args.mbstd_group_size} would add or remove the minibatch-stddev input "
                f"of the network of --init '{args.init}' (group {net['mbstd_group_size']})"
            )
        net["mbstd_group_size"] = args.mbstd_group_size
    r, c = net["resolution"], net["num_channels"]
    if (dataset.resolution, dataset.num_channels) != (r, c):
        raise UserError(
            f"the network of --init '{args.init}' is {r}x{r} with {c} channel(s), the data "
            f"'{args.data}' {dataset.resolution}x{dataset.resolution} with {dataset.num_channels}; "
            f"use data of that shape (--resolution {r} scales it)"
        )
    if net["label_size"] != cfg.network["label_size"]:
        raise UserError(
            f"the network of --init '{args.init}' is conditioned on {net['label_size']} classes; pass "
            f"--cond with data of {net['label_size']} classes"
            if net["label_size"]
            else f"the network of --init '{args.init}' is unconditional; leave out --cond"
        )
    prog = state["progress"]
    lod = math.log2(r / prog["resolution"]) + 1.0 - float(prog["alpha"])
    kimg = Schedule(**cfg.schedule).kimg_at_lod(lod)
    if cfg.total_kimg <= kimg:
        raise UserError(
            f"the run ends at {cfg.total_kimg:g} kimg, before its schedule reaches lod {lod:g} of the "
            f"network of --init (at {kimg:g} kimg); pass a larger --kimg"
        )
    cfg = dataclasses.replace(cfg, network=net, init=dict(checkpoint=os.path.abspath(args.init), lod=lod, kimg=kimg))
    validate_config(cfg, memory=device_memory(cfg.torch_device))  # the network's mbstd group may differ
    return cfg, state, int(round(kimg * 1000))
