"""Test helper: the official PGGAN pickles of ../shared/fixtures/official as fastpggan networks.

Reads the pickle without TensorFlow and without running its code: the class ('tfutil', 'Network') becomes a plain
holder of its state dict, and only numpy's array reconstruction is allowed besides. Covers fused_scale=True
networks (the official default), which is what fastpggan builds.
"""
import json
import os
import pickle
import re

import numpy as np
import torch

from fastpggan.networks import Discriminator, Generator

OFFICIAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "official")


def fixture(name):
    """Path of a file in ../shared/fixtures/official; fails (never skips) where the folder is missing."""
    path = os.path.normpath(os.path.join(OFFICIAL, name))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: these tests need the official fixtures in ../shared/fixtures/"
                                "official (a checkout of this repository next to the project's shared folder)")
    return path


class _Network:
    def __setstate__(self, state):
        self.state = state


_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
            ("numpy.core.multiarray", "scalar")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("tfutil", "Network"):
            return _Network
        if (module, name) in _ALLOWED:
            return getattr(np, name) if module == "numpy" else getattr(np._core.multiarray, name)
        raise pickle.UnpicklingError(f"official pickle: refusing {module}.{name}")


def read_pickle(path):
    """{'G' | 'D' | 'Gs': {'kwargs': static_kwargs, 'vars': {name: ndarray}}} of an official snapshot."""
    with open(path, "rb") as f:
        nets = _Unpickler(f).load()
    return {n.state["name"]: dict(kwargs=n.state["static_kwargs"], vars=dict(n.state["variables"])) for n in nets}


def _conv(w):   # TF conv2d filter (kh, kw, in, out) -> torch (out, in, kh, kw)
    return w.transpose(3, 2, 0, 1)


def _conv_up(w):
    # official upscale2d_conv2d: (kh, kw, out, in) used by conv2d_transpose, which equals nearest 2x upsampling
    # followed by a correlation with the spatially flipped kernel (what EqualizedConv2d(up=True) stores)
    return w.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]


def _dense(w):  # (in, out) -> (out, in)
    return w.T


_G_LAYERS = re.compile(r"(?:(\d+)x\d+/(Dense|Conv|Conv0_up|Conv1)|ToRGB_lod(\d+))/(weight|bias)")
_D_LAYERS = re.compile(r"(?:(\d+)x\d+/(Conv|Conv0|Conv1_down|Dense0|Dense1)|FromRGB_lod(\d+))/(weight|bias)")


def _state(vars_, pattern, place):
    """{fastpggan name: tensor} from {official name: array}; place(log2 res, layer, rgb lod) -> (fastpggan module,
    weight conversion)."""
    sd = {}
    for name, w in vars_.items():
        if name == "lod":
            continue
        res, layer, rgb_lod, what = pattern.fullmatch(name).groups()
        module, to_torch = place(int(res).bit_length() - 1 if res else None, layer, int(rgb_lod or 0))
        key = f"{module}.{what}" if module != "dense" else "dense.weight" if what == "weight" else "dense_bias"
        sd[key] = torch.from_numpy(np.ascontiguousarray(to_torch(w) if what == "weight" else w))
    return sd


def generator_state(vars_, log2r):
    """G's state dict from official G_paper variables (G's 4x4 dense has a bias per feature map, `dense_bias`)."""
    def place(k, layer, rgb_lod):
        if layer is None:
            return f"to_rgb.{log2r - rgb_lod - 2}", _conv
        return {"Dense": ("dense", _dense), "Conv": ("blocks.0", _conv), "Conv0_up": (f"blocks.{k - 2}.0", _conv_up),
                "Conv1": (f"blocks.{k - 2}.1", _conv)}[layer]
    return _state(vars_, _G_LAYERS, place)


def discriminator_state(vars_, log2r, mbstd=True):
    """D's state dict from official D_paper variables."""
    off = 1 if mbstd else 0   # blocks.0 starts with the minibatch-stddev layer

    def place(k, layer, rgb_lod):
        if layer is None:
            return f"from_rgb.{log2r - rgb_lod - 2}", _conv
        return {"Conv": (f"blocks.0.{off}", _conv), "Dense0": (f"blocks.0.{off + 1}", _dense),
                "Dense1": (f"blocks.0.{off + 2}", _dense), "Conv0": (f"blocks.{k - 2}.0", _conv),
                "Conv1_down": (f"blocks.{k - 2}.1", _conv)}[layer]
    return _state(vars_, _D_LAYERS, place)


def networks(path, impl="ref"):
    """(G, D, Gs) fastpggan networks with the weights of an official fused_scale=True pickle."""
    nets = read_pickle(path)
    kw = nets["G"]["kwargs"]
    if not kw.get("fused_scale", True):
        raise ValueError("tests/official.py builds fused_scale=True networks only")
    res, fmap_base, fmap_max = kw["resolution"], kw.get("fmap_base", 8192), kw.get("fmap_max", 512)
    latent = kw.get("latent_size") or min(fmap_base, fmap_max)
    common = dict(resolution=res, num_channels=kw.get("num_channels", 1), fmap_base=fmap_base, fmap_max=fmap_max,
                  label_size=kw.get("label_size", 0), impl=impl)
    log2r = int(np.log2(res))
    out = []
    for name in ("G", "D", "Gs"):
        if name == "D":
            net = Discriminator(**common)
            net.load_state_dict(discriminator_state(nets[name]["vars"], log2r))
        else:
            net = Generator(latent_size=latent, **common)
            net.load_state_dict(generator_state(nets[name]["vars"], log2r))
        out.append(net)
    return tuple(out)


def load_json(npz, key="config_json"):
    return json.loads(str(npz[key]))
