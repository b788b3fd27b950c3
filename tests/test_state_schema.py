"""fastpggan.state_schema: every loaded state checked against its schema, a bad field named in one line (issue 43,
step 1). The command lines' refusals are rows of test_faults_loaded.py; these are the pieces, in process."""

import json
import warnings

import pytest
import torch

from fastpggan import checkpoint as ckpt
from fastpggan import state_schema as schema
from fastpggan.config import RunConfig, resolve_config
from fastpggan.errors import UserError
from fastpggan.ops import tune_cache
from fastpggan.settings import DataShapes
from tuning import tune_entry


@pytest.mark.parametrize(
    "obj,kind,message",
    [
        ({"seed": 0, "epoch": 1}, schema.Sampler, "f: pos: missing"),
        ({"seed": -1, "epoch": 0, "pos": 0}, schema.Sampler, "f: seed: expected int >= 0 (it is -1)"),
        ({"seed": 0, "epoch": "1", "pos": 0}, schema.Sampler, "f: epoch: expected int, got str (it is '1')"),
        ({"nimg": 0, "resolution": 4, "alpha": float("nan")}, schema.Progress, "f: alpha: expected float >= 0.0"),
        ({"minibatch": {3: 4}}, schema.Schedule, "f: minibatch (a key): expected int >= 4"),
        ({"minibatch": {4: "x"}}, schema.Schedule, "f: minibatch[...]: expected int, got str"),
        ([1], schema.Sampler, "f: expected object, got array"),
    ],
)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(obj, kind, message):
    with pytest.raises(UserError) as e:
        schema.check(obj, kind, "f")
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert schema.problem(obj, kind) == str(e.value)[3:]


def test_a_nested_field_is_named_under_its_parent():
    with pytest.raises(UserError, match=r"^f: schedule\.lr_base: expected float >= 0\.0 \(it is -1\.0\)$"):
        schema.check({"lr_base": -1.0}, schema.Schedule, "f", "schedule")
    assert schema.problem({"seed": 0, "epoch": 0, "pos": 0}, schema.Sampler) is None


def test_one_of_names_the_choices():
    kind = schema.Annotated[str, schema.one_of("auto", "v2-1gpu")]
    assert schema.check("v2-1gpu", kind, "f") == "v2-1gpu"
    with pytest.raises(UserError, match=r"^f: expected one of auto, v2-1gpu \(it is 'v2'\)$"):
        schema.check("v2", kind, "f")


def test_tensors_pass_through_uncopied():
    t = torch.zeros(3)
    rng = schema.check({"torch": t}, schema.Rng, "f")
    assert rng["torch"] is t
    with pytest.raises(UserError, match="f: torch: expected Tensor, got list"):
        schema.check({"torch": [1, 2]}, schema.Rng, "f")


def _config():
    data = DataShapes(resolution=8, num_channels=3)
    return resolve_config(data, device="cpu", fmap_base=32, fmap_max=8, latent_size=8)


def test_a_config_round_trips_and_a_damaged_one_is_refused_naming_the_field():
    cfg = _config()
    recorded = json.loads(json.dumps(cfg.to_dict()))  # as config.json holds it
    assert RunConfig.from_dict(recorded) == cfg
    for field, value, message in [
        ("preset", "v9", "preset: expected one of auto, v1"),
        ("keep", -1, "keep: expected int >= 0 (it is -1)"),
        ("ema", 2.0, "ema: expected float <= 1.0 (it is 2.0)"),
        ("mirror", "yes", "mirror: expected bool, got str"),
        ("resolution", 16, "its resolution 16, network.resolution 8"),
    ]:
        with pytest.raises(UserError, match=r"^c is damaged: " + message.replace("(", r"\(").replace(")", r"\)")):
            RunConfig.from_dict(dict(recorded, **{field: value}), where="c")
    with pytest.raises(UserError, match=r"^c is damaged: network\.num_channels: expected int <= 3 \(it is 4\)$"):
        RunConfig.from_dict(dict(recorded, network=dict(recorded["network"], num_channels=4)), where="c")


def test_a_converted_checkpoint_needs_no_training_state(tmp_path):
    from fastpggan.networks import Discriminator, Generator

    cfg = _config().to_dict()
    cfg["network"]["resolution"] = 4
    G = Generator(
        **{k: cfg["network"][k] for k in ("resolution", "latent_size", "num_channels", "fmap_base", "fmap_max")}
    )
    D = Discriminator(**{k: cfg["network"][k] for k in ("resolution", "num_channels", "fmap_base", "fmap_max")})
    state = dict(
        config=dict(network=cfg["network"], resolution=4, source="official.pkl"),
        progress=dict(nimg=0, resolution=4, alpha=1.0, lod=0.0),
        G=G.state_dict(),
        D=D.state_dict(),
        G_ema=G.state_dict(),
    )
    ckpt.check(state, "c.pt")  # no optimizer, random state or data order: for inference only
    del state["config"]["source"]
    with pytest.raises(UserError, match=r"^checkpoint 'c.pt' is damaged: progress.prev_lod: missing$"):
        ckpt.check(state, "c.pt")


def test_a_tune_cache_entry_without_seconds_is_ignored_with_one_warning(tmp_path):
    cpu = torch.device("cpu")
    path = tune_cache.write(cpu, {"k": tune_entry("ref")})
    assert tune_cache.read(cpu)["choices"]["k"]["impl"] == "ref"
    data = json.loads(open(path).read())
    del data["choices"]["k"]["seconds"]
    with open(path, "w") as f:
        json.dump(data, f)
    assert tune_cache.check_file(data, cpu) == "its choice 'k' is damaged: seconds: missing"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tune_cache.read_file(path, cpu) is None
    assert len(caught) == 1 and "ignoring the tune cache" in str(caught[0].message)
