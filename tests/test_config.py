"""The run's configuration is resolved once (config.resolve_config) and every record of the run carries it."""

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch

from conftest import tiny_train_args, train_quietly
from fastpggan import checkpoint as ckpt
from fastpggan import config, train
from fastpggan.errors import UserError
from fastpggan.step import STEP_VERSION


def _tiny(data, out, *extra):
    return tiny_train_args(data, out, "--snap-ticks", "1", "--kimg", "0.032", *extra)


def test_every_auto_setting_is_decided_and_the_config_is_frozen():
    cfg = config.resolve_config(
        config.DataShapes(16, 3), device="auto", amp="on", cuda_graphs="auto", minibatch={4: 16, "base": 8}, lr=0.002
    )
    want = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert cfg.device == str(want) and cfg.amp_dtype == "bf16" and cfg.autocast_dtype is torch.bfloat16
    assert cfg.cuda_graphs is (want.type == "cuda") and cfg.world == 1 and cfg.step_version == STEP_VERSION
    assert cfg.schedule["minibatch"] == {4: 16} and cfg.schedule["minibatch_base"] == 8
    assert cfg.schedule["lr_base"] == 0.002 and cfg.schedule["lr"] == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    off = config.resolve_config(config.DataShapes(16, 3), device="cpu", amp="off", compile_step=True)
    assert off.amp_dtype == "fp32" and off.autocast_dtype is None and off.cuda_graphs is False and off.compile_step


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(amp="fp8"), "amp must be"),
        (dict(cuda_graphs="maybe"), "cuda_graphs"),
        (dict(preset="v3"), "preset must be"),
        (dict(amp_min_res=6), "power of two"),
        (dict(device="tpu"), "--device must be"),
        (dict(batch_gpu=0), "at least 1"),
    ],
)
def test_a_bad_setting_is_one_user_error(kw, error):
    with pytest.raises(UserError, match=error):
        config.resolve_config(config.DataShapes(8, 1), **kw)


def test_the_command_line_defaults_are_the_function_defaults():
    """The parser only turns flags into resolve_config's keyword arguments: with no flags, the same values."""
    kw = train.config_kwargs(train.build_parser().parse_args([]))
    assert set(kw) | {"world"} == set(config.DEFAULTS), set(kw) ^ set(config.DEFAULTS)  # world: torchrun's
    differ = {k: (v, config.DEFAULTS[k]) for k, v in kw.items() if v != config.DEFAULTS[k]}
    assert differ == {"data": ("fashion-mnist", None)}  # the CLI's built-in dataset; a library user passes one
    assert list(inspect.signature(config.resolve_config).parameters)[0] == "dataset"


def test_to_dict_round_trips_and_old_checkpoint_configs_read():
    cfg = config.resolve_config(config.DataShapes(8, 1), device="cpu", seed=7, grid=4)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)).keys() == d.keys()
    assert config.RunConfig.from_dict(d) == cfg
    assert d["resolved"] == dict(
        device="cpu",
        world=1,
        amp_dtype="fp32",
        cuda_graphs=False,
        compile_step=False,
        channels_last=False,
        batch_gpu=None,
    )
    old = {k: v for k, v in d.items() if k not in ("resolved", "step_version", "gp_native_res", "max_images")}
    read = config.RunConfig.from_dict(old)
    assert read.step_version == 1 and read.gp_native_res is False and read.max_images is None
    with pytest.raises(UserError, match="is damaged: data: missing"):
        config.RunConfig.from_dict({k: v for k, v in d.items() if k != "data"})
    with pytest.raises(UserError, match="does not know: colour"):
        config.RunConfig.from_dict(dict(d, colour="red"))


def test_the_resolved_config_is_printed_recorded_and_resumed_equal(tiny_npz, tmp_path):
    lines = []
    t = train_quietly(
        _tiny(tiny_npz, tmp_path, "--seed", "3", "--mirror", "--amp", "bf16", "--batch-gpu", "4"), log=lines.append
    )
    cfg, run = t.cfg, tmp_path / "run"
    assert cfg.amp_dtype == "bf16" and cfg.batch_gpu == 4 and cfg.seed == 3 and cfg.mirror
    assert cfg.backends is not None  # chosen at the start, before the first step
    start = "\n".join(lines)
    assert "step: bf16 autocast" in start and "4 rows per pass" in start and "on cpu" in start
    as_json = json.loads(json.dumps(cfg.to_dict()))
    assert json.loads((run / "config.json").read_text()) == as_json
    assert config.RunConfig.from_dict(as_json) == cfg
    logged = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert logged[0]["config"] == as_json and logged[0]["kimg"] == 0
    state = ckpt.load(ckpt.latest(str(run)))
    assert state["config"] == cfg.to_dict() and config.RunConfig.from_dict(state["config"]) == cfg
    resumed = train_quietly(
        [
            "--resume",
            ckpt.latest(str(run)),
            "--kimg",
            "0.048",
            "--amp",
            "bf16",
            "--batch-gpu",
            "4",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert resumed.cfg == dataclasses.replace(cfg, total_kimg=0.048)
    logged = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["config"]["total_kimg"] for r in logged if "config" in r] == [0.032, 0.048]
    # this process's settings are its own: resumed without --batch-gpu, the recorded run is the same
    again = train_quietly(["--resume", ckpt.latest(str(run)), "--no-progress", "--device", "cpu"])
    assert again.cfg.batch_gpu is None and dataclasses.replace(again.cfg, batch_gpu=4) == resumed.cfg


def test_presets_configure_the_run(tmp_path):
    from fastpggan.data import build_dataset

    pytest.importorskip("sklearn", reason="scikit-learn is in the [demo] extra")
    ds = build_dataset("digits", progress=False)
    cfg = config.resolve_config(ds, device="cpu", preset="v1")
    assert cfg.network["mbstd_group_size"] == 16 and cfg.network["fmap_base"] == 8192
    assert cfg.schedule["lod_training_kimg"] == 800 and cfg.ema == 0.999
    cfg = config.resolve_config(ds, device="cpu", preset="v2-1gpu", minibatch="4:64,8", lr={8: 0.002})
    assert cfg.schedule["minibatch"][4] == 64 and cfg.schedule["minibatch_base"] == 8
    assert cfg.schedule["lr"] == {1024: 0.0015, 8: 0.002} and cfg.network["mbstd_group_size"] == 4
    with pytest.raises(UserError, match="not divisible"):
        config.resolve_config(ds, device="cpu", minibatch=6)


def test_a_minibatch_that_cannot_fit_the_device_is_refused_before_any_work():
    """The bound is a lower bound (activations at 2 bytes): the official 1024x1024 configuration (v1: minibatch 16 at
    128, 4 at 1024) passes on a 16 GiB GPU; 10^8 images per pass at 4x4 do not fit 23 GiB."""
    gib = 2**30
    official = config.resolve_config(config.DataShapes(1024, 3), device="cpu", preset="v1")
    config.validate_config(official, memory=16 * gib)
    with pytest.raises(UserError, match=r"pass at \d+x\d+ need at least .* the device has 0.2 GiB; lower --minib"):
        config.validate_config(official, memory=gib // 5)
    with pytest.raises(UserError, match=r"100000000 images per forward pass at 4x4 need at least \d+\.\d GiB"):
        config.resolve_config(config.DataShapes(8, 3), device="cpu", minibatch="100000000")  # this machine's RAM
    huge = config.resolve_config(config.DataShapes(8, 3), device="cpu", minibatch="100000000", batch_gpu=1000)
    config.validate_config(huge, memory=23 * gib)  # split into passes of 1000 it fits
    huge = dataclasses.replace(huge, batch_gpu=None)
    with pytest.raises(UserError, match=r"100000000 images per forward pass at 4x4 need at least \d+\.\d GiB"):
        config.validate_config(huge, memory=23 * gib)
    config.validate_config(huge)  # memory unknown: not checked


def test_amp_default_is_fp32_on_cpu(tiny_npz, tmp_path):
    assert train_quietly(tiny_train_args(tiny_npz, tmp_path)).amp_dtype is None


def test_cond_needs_labels(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(UserError, match="--cond needs class labels"):
        train_quietly(tiny_train_args(str(tmp_path / "x.npy"), tmp_path, "--cond"))
