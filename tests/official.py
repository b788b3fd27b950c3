"""Test helper: the official fixtures of tests/fixtures/official (see its README), and their networks through
fastpggan.official."""

import json
import os

from fastpggan import checkpoint as ckpt
from fastpggan import official

OFFICIAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "official")


def fixture(name):
    """Path of a file in tests/fixtures/official; fails (never skips) where it is missing."""
    path = os.path.normpath(os.path.join(OFFICIAL, name))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: the official fixtures are part of the repository "
            "(tests/fixtures/official); restore them from git"
        )
    return path


def networks(path, impl="ref"):
    """(G, D, Gs) fastpggan networks with the weights of an official pickle, through fastpggan.official.convert."""
    state = official.convert(path)
    G, D = ckpt.build_networks(state["config"], impl=impl)
    Gs, _ = ckpt.build_networks(state["config"], impl=impl)
    for net, part in ((G, "G"), (D, "D"), (Gs, "G_ema")):
        net.load_state_dict(state[part])
    return G, D, Gs


def state(vars_, net, role):
    """{fastpggan name: tensor} for `net` from official variables {name: array} (fused_scale=True names)."""
    return official.state_dict(vars_, net, role)


def load_json(npz, key="config_json"):
    return json.loads(str(npz[key]))
