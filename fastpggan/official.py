"""Official PGGAN network pickles (tkarras/progressive_growing_of_gans) as fastpggan networks, without TensorFlow.

An official snapshot (`network-snapshot-*.pkl`, the released `karras2018iclr-*.pkl`) is a pickled tuple (G, D, Gs)
of `tfutil.Network`, whose state is a dict: version 2, name, static_kwargs (the arguments of G_paper / D_paper
beyond their defaults), build_module_src (networks.py's source), build_func_name and variables, a list of
(name, float32 array) that ends with the scalar `lod`. Official unpickling executes build_module_src. Here nothing
runs: `read_pickle` allows exactly two things, the class ('tfutil', 'Network'), which becomes a plain holder of
that dict, and numpy's array reconstruction. Any other global a pickle names is refused before any object is
built.

The structure comes from static_kwargs with G_paper / D_paper's defaults (official networks.py L144-163, L238-251),
checked against the variables' shapes. The weights are mapped to fastpggan's layout:
- conv2d weight (kh, kw, in, out) -> (out, in, kh, kw); dense (in, out) -> (out, in);
- upscale2d_conv2d's (kh, kw, out, in), used by conv2d_transpose, -> (out, in, kh, kw) flipped in space (official
  L86-96: the transposed conv of the flipped kernel is nearest upsampling then the correlation fastpggan runs);
- G's 4x4 Dense bias (one per feature map, applied after the reshape) -> `dense_bias`.
"""

import hashlib
import math
import os
import re
from typing import Dict, Tuple

import numpy as np
import torch

from . import checkpoint as ckpt
from .errors import UserError
from .formats import safe_pickle


class OfficialPickleError(UserError):
    """An official pickle that cannot be read or cannot be reproduced; the message names the file and why."""


class _Network:
    """What ('tfutil', 'Network') becomes: its pickled state, kept and never run."""

    def __setstate__(self, state):
        self.state = state


# Official pickles hold numpy arrays, dtypes and scalars, and the class ('tfutil', 'Network').
_ALLOWED = {("tfutil", "Network"): _Network, **safe_pickle.NUMPY_ARRAYS}


# G_paper / D_paper defaults (official networks.py), and the settings fastpggan builds: anything else is refused.
_G_DEFAULTS = dict(
    num_channels=1,
    resolution=32,
    label_size=0,
    fmap_base=8192,
    fmap_decay=1.0,
    fmap_max=512,
    latent_size=None,
    normalize_latents=True,
    use_wscale=True,
    use_pixelnorm=True,
    pixelnorm_epsilon=1e-8,
    use_leakyrelu=True,
    dtype="float32",
    fused_scale=True,
)
_D_DEFAULTS = dict(
    num_channels=1,
    resolution=32,
    label_size=0,
    fmap_base=8192,
    fmap_decay=1.0,
    fmap_max=512,
    use_wscale=True,
    mbstd_group_size=4,
    dtype="float32",
    fused_scale=True,
)
_REQUIRED = dict(
    fmap_decay=1.0,
    normalize_latents=True,
    use_wscale=True,
    use_pixelnorm=True,
    pixelnorm_epsilon=1e-8,
    use_leakyrelu=True,
    dtype="float32",
)
# Theano-era settings that legacy.py asserts away; G_paper would ignore them, so a pickle carrying them was not made
# by the official TF code and is not what fastpggan computes.
_FOREIGN = dict(use_batchnorm=False, tanh_at_end=None, use_layernorm=False, mbdisc_kernels=None)


def read_pickle(path: str) -> Tuple[dict, dict, dict]:
    """The states of an official snapshot's (G, D, Gs), read without running any code from the file.

    Raises OfficialPickleError, in one line, for a missing, truncated or foreign file."""
    if not os.path.isfile(path):
        raise OfficialPickleError(
            f"'{path}' {'is a folder, not a pickle' if os.path.isdir(path) else 'does not exist'}"
        )
    try:
        with open(path, "rb") as f:
            nets = safe_pickle.load(f, _ALLOWED)
    except safe_pickle.Refused as e:
        if str(e) == "network.Network":
            raise OfficialPickleError(
                f"'{path}' is a Theano-era network; import it with the official legacy.py and save it again first"
            ) from None
        raise OfficialPickleError(
            f"'{path}' is not an official PGGAN network pickle: it needs {e}, and only tfutil.Network and numpy "
            "arrays may be loaded from one (nothing it names was run; StyleGAN and stylegan2-ada pickles are other "
            "networks)"
        ) from None
    except safe_pickle.LOAD_ERRORS as e:
        what = "truncated" if isinstance(e, EOFError) else f"corrupt ({type(e).__name__}: {str(e)[:120]})"
        raise OfficialPickleError(f"'{path}' is {what}: not a readable official PGGAN pickle") from None
    if not (isinstance(nets, tuple) and len(nets) == 3 and all(isinstance(n, _Network) for n in nets)):
        raise OfficialPickleError(
            f"'{path}' is not an official PGGAN snapshot: it does not hold the tuple (G, D, Gs) "
            "of tfutil.Network that official train.py writes"
        )
    states = []
    for n, role, func in zip(nets, ("G", "D", "Gs"), ("G_paper", "D_paper", "G_paper")):
        st = getattr(n, "state", None)
        if (
            not isinstance(st, dict)
            or st.get("version") != 2
            or not isinstance(st.get("variables"), list)
            or not isinstance(st.get("static_kwargs"), dict)
        ):
            raise OfficialPickleError(f"'{path}': its {role} is not a tfutil.Network state of version 2")
        if st.get("build_func_name") != func:
            raise OfficialPickleError(
                f"'{path}': its {role} was built by {st.get('build_func_name')!r}; fastpggan "
                f"reproduces official {func} only"
            )
        try:
            variables = {str(k): np.asarray(v) for k, v in st["variables"]}
        except (TypeError, ValueError):
            raise OfficialPickleError(f"'{path}': the variables of its {role} are not (name, array) pairs") from None
        states.append(dict(kwargs=dict(st["static_kwargs"]), vars=variables))
    return tuple(states)


def _settings(kwargs, defaults, role, path):
    for key, ok in _FOREIGN.items():
        if kwargs.get(key, ok) != ok:
            raise OfficialPickleError(
                f"'{path}': {role} has {key}={kwargs[key]!r}, which official G_paper/D_paper "
                "and fastpggan do not implement"
            )
    s = {k: kwargs.get(k, v) for k, v in defaults.items()}
    for key, want in _REQUIRED.items():
        if key in s and s[key] != want:
            raise OfficialPickleError(
                f"'{path}': {role} has {key}={s[key]!r}; fastpggan reproduces official "
                f"networks with {key}={want!r} only"
            )
    return s


def network_config(states: Tuple[dict, dict, dict], path: str = "official pickle") -> dict:
    """fastpggan's network config (checkpoint config['network']) for official (G, D, Gs) states.

    D's fused_scale is recorded: for D it changes the function. G computes the same function either way, and its
    weights are read in the layout its own fused_scale gave them."""
    g = _settings(states[0]["kwargs"], _G_DEFAULTS, "G", path)
    d = _settings(states[1]["kwargs"], _D_DEFAULTS, "D", path)
    if states[2]["kwargs"] != states[0]["kwargs"]:
        raise OfficialPickleError(f"'{path}': Gs was built with other settings than G")
    for key in ("num_channels", "resolution", "label_size", "fmap_base", "fmap_max"):
        if g[key] != d[key]:
            raise OfficialPickleError(
                f"'{path}': G has {key}={g[key]!r} and D {key}={d[key]!r}; a snapshot's networks agree on it"
            )
    given = {
        k: g[k]
        for k in ("resolution", "num_channels", "fmap_base", "fmap_max", "label_size", "latent_size")
        if g[k] is not None
    }
    given["mbstd_group_size"] = d["mbstd_group_size"]
    ints = {}
    for key, value in given.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise OfficialPickleError(f"'{path}': {key}={value!r} is not an integer")
        ints[key] = int(value)
    ints.setdefault("latent_size", min(ints["fmap_base"], ints["fmap_max"]))  # official latent_size=None: nf(0)
    res = ints["resolution"]
    if res < 4 or res & (res - 1):
        raise OfficialPickleError(f"'{path}': resolution {res} is not a power of two >= 4")
    net = dict(ints, fused_scale=bool(d["fused_scale"]))
    if net["num_channels"] not in (1, 3):
        raise OfficialPickleError(f"'{path}': {net['num_channels']} image channels; fastpggan builds 1 or 3")
    return net


def _conv(w):
    return w.transpose(3, 2, 0, 1)


def _conv_up(w):
    return w.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]


def _dense(w):
    return w.T


_G_NAME = re.compile(r"(?:(\d+)x\d+/(Dense|Conv|Conv0_up|Conv0|Conv1)|ToRGB_lod(\d+))/(weight|bias)")
_D_NAME = re.compile(r"(?:(\d+)x\d+/(Conv|Conv0|Conv1_down|Conv1|Dense0|Dense1)|FromRGB_lod(\d+))/(weight|bias)")


def _place_g(log2r):
    def place(k, layer, rgb_lod):
        if layer is None:
            return f"to_rgb.{log2r - rgb_lod - 2}", _conv
        return {
            "Dense": ("dense", _dense),
            "Conv": ("blocks.0", _conv),
            "Conv0_up": (f"blocks.{k - 2}.0", _conv_up),
            "Conv0": (f"blocks.{k - 2}.0", _conv),
            "Conv1": (f"blocks.{k - 2}.1", _conv),
        }[layer]

    return place


def _place_d(log2r, mbstd):
    off = 1 if mbstd else 0  # blocks.0 starts with the minibatch-stddev layer

    def place(k, layer, rgb_lod):
        if layer is None:
            return f"from_rgb.{log2r - rgb_lod - 2}", _conv
        return {
            "Conv": (f"blocks.0.{off}", _conv),
            "Dense0": (f"blocks.0.{off + 1}", _dense),
            "Dense1": (f"blocks.0.{off + 2}", _dense),
            "Conv0": (f"blocks.{k - 2}.0", _conv),
            "Conv1_down": (f"blocks.{k - 2}.1", _conv),
            "Conv1": (f"blocks.{k - 2}.1", _conv),
        }[layer]

    return place


_AT_4X4 = ("Dense", "Conv", "Dense0", "Dense1")
_OFFICIAL_LAYOUT = {_conv: (2, 3, 1, 0), _conv_up: (2, 3, 0, 1), _dense: (1, 0)}  # fastpggan axes -> official


def state_dict(
    variables: Dict[str, np.ndarray],
    net: torch.nn.Module,
    role: str,
    path: str = "official pickle",
    fused_names: bool = True,
) -> Dict[str, torch.Tensor]:
    """fastpggan's state dict for `net` (a Generator or Discriminator) from official variables {name: array},
    checked name by name and shape by shape; `lod` is skipped. `fused_names`: the pickle's own fused_scale, which
    names G's first conv of each block Conv0_up (fused) or Conv0, and D's second Conv1_down or Conv1."""
    is_g = role != "D"
    log2r = net.resolution_log2
    pattern = _G_NAME if is_g else _D_NAME
    place = _place_g(log2r) if is_g else _place_d(log2r, mbstd=len(net.blocks[0]) == 4)
    other_form = ("Conv0" if fused_names else "Conv0_up") if is_g else ("Conv1" if fused_names else "Conv1_down")
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    out = {}
    for name, w in variables.items():
        if name == "lod":
            continue
        m = pattern.fullmatch(name)
        res, layer, rgb_lod, what = m.groups() if m else (None,) * 4
        k = int(res).bit_length() - 1 if res else None
        known = (
            m is not None
            and layer != other_form
            and (
                (rgb_lod is not None and int(rgb_lod) <= log2r - 2)
                or (2**k == int(res) and (k == 2) == (layer in _AT_4X4) and 2 <= k <= log2r)
            )
        )
        if not known:
            raise OfficialPickleError(
                f"'{path}': {role} has the variable '{name}', which a {2**log2r}x"
                f"{2**log2r} official {'G' if is_g else 'D'}_paper with its settings lacks"
            )
        module, to_torch = place(k, layer, int(rgb_lod or 0))
        key = f"{module}.{what}" if module != "dense" else "dense.weight" if what == "weight" else "dense_bias"
        try:
            w = np.asarray(w, dtype=np.float32)
        except (TypeError, ValueError):
            raise OfficialPickleError(f"'{path}': {role} variable '{name}' is not an array of numbers") from None
        t = torch.from_numpy(np.ascontiguousarray(to_torch(w) if what == "weight" else w))
        if tuple(t.shape) != want.get(key):
            shape = want.get(key)
            if shape is not None and what == "weight":
                shape = tuple(shape[i] for i in _OFFICIAL_LAYOUT[to_torch])
            raise OfficialPickleError(
                f"'{path}': {role} variable '{name}' has shape {tuple(w.shape)}, but the "
                f"network its settings describe needs {shape}"
            )
        out[key] = t
    missing = sorted(set(want) - set(out))
    if missing:
        raise OfficialPickleError(
            f"'{path}': {role} lacks {len(missing)} variable(s) its settings imply (first: fastpggan's {missing[0]})"
        )
    return out


def lod_phase(lod: float, resolution: int) -> Tuple[int, float]:
    """Official lod -> (resolution, alpha), as official TrainingSchedule: 2^(log2 R - floor(lod)), 1 - frac(lod)."""
    f = int(math.floor(lod))
    return resolution >> f, 1.0 - (lod - f)


def convert(path: str) -> dict:
    """A fastpggan checkpoint state (for checkpoint.write) from an official pickle: G, D, G_ema (= official Gs),
    config {'network', 'resolution', 'source'} and progress {'resolution', 'alpha', 'lod', 'nimg': 0}, checked as
    checkpoint.load checks a checkpoint.

    Args:
        path: the official pickle.
    """
    states = read_pickle(path)
    net = network_config(states, path)
    cfg = dict(
        network=net,
        resolution=net["resolution"],
        source=dict(kind="official PGGAN pickle", file=os.path.basename(path), sha256=_sha256(path)),
    )
    with torch.device("meta"):  # shapes only: nothing is allocated, whatever the pickle says the network is
        G, D = ckpt.build_networks(cfg)
    out = dict(config=cfg)
    for role, part, st in (("G", "G", states[0]), ("D", "D", states[1]), ("Gs", "G_ema", states[2])):
        fused = bool(st["kwargs"].get("fused_scale", True))
        out[part] = state_dict(st["vars"], D if role == "D" else G, role, path, fused_names=fused)
    try:  # G's lod: official train.py assigns it every iteration (Gs copies it in its moving-average update)
        lod = float(np.asarray(states[0]["vars"]["lod"]).reshape(()))
    except (KeyError, TypeError, ValueError):
        raise OfficialPickleError(f"'{path}': G has no scalar 'lod' variable") from None
    top = G.resolution_log2 - 2
    if not 0 <= lod <= top:
        raise OfficialPickleError(f"'{path}': lod {lod:g} is outside [0, {top}] for resolution {net['resolution']}")
    res, alpha = lod_phase(lod, net["resolution"])
    out["progress"] = dict(resolution=res, alpha=alpha, lod=lod, nimg=0)
    bad = ckpt.nonfinite(out)
    if bad:
        raise OfficialPickleError(f"'{path}': {bad} holds NaN or inf")
    ckpt.check(out, path)  # what checkpoint.load will check
    return out


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
