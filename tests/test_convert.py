"""fastpggan.convert and fastpggan.official: official pickles to checkpoints, the commands that read them, and every
way a pickle can be wrong. The numbers of the converted networks at every lod are in test_official.py."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

import official
from conftest import slow
from fastpggan import checkpoint as ckpt
from fastpggan import convert, generate
from fastpggan import official as off
from test_bad_inputs import cli, leftovers, one_line_error, succeeded

FIXTURES = ["pggan_rgb32_fused", "pggan_gray16_nonfused_cond3"]


def _states(name):
    """The fixture's (G, D, Gs) as full tfutil.Network state dicts, to be changed and pickled again."""
    states = off.read_pickle(official.fixture(f"{name}.pkl"))
    return [
        dict(
            version=2,
            name=role,
            static_kwargs=dict(st["kwargs"]),
            build_module_src="# networks.py",
            build_func_name="D_paper" if role == "D" else "G_paper",
            variables=list(st["vars"].items()),
        )
        for role, st in zip(("G", "D", "Gs"), states)
    ]


def _write_pickle(path, states, module="tfutil", cls="Network"):
    """Pickle `states` as official train.py does: a tuple of `module.cls` objects whose state is the dict."""
    mod = types.ModuleType(module)

    class Network:
        def __getstate__(self):
            return self.state

    Network.__module__, Network.__qualname__ = module, cls
    setattr(mod, cls, Network)
    parts = module.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]  # a dotted module needs its parents imported
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update({n: types.ModuleType(n) for n in names[:-1]}, **{module: mod})
    try:
        nets = []
        for st in states:
            n = Network()
            n.state = st
            nets.append(n)
        with open(path, "wb") as f:
            pickle.dump(tuple(nets), f, protocol=4)
    finally:
        for n, m in saved.items():
            if m is None:
                del sys.modules[n]
            else:
                sys.modules[n] = m
    return str(path)


@pytest.mark.parametrize("name", FIXTURES)
def test_convert_cli_writes_a_checkpoint_every_reader_accepts(name, tmp_path, capsys):
    dst = tmp_path / "net.pt"
    convert.main([official.fixture(f"{name}.pkl"), str(dst)])
    out = capsys.readouterr().out
    assert "wrote" in out and f"fused_scale {'nonfused' not in name}" in out
    G, state = ckpt.load_generator(str(dst))
    G_raw, _ = ckpt.load_generator(str(dst), which="G")
    D, _ = ckpt.load_discriminator(str(dst))
    z = np.load(official.fixture(f"{name}.npz"))
    latents = torch.from_numpy(z["latents"])
    labels = torch.from_numpy(z["labels"]) if G.label_size else None
    with torch.no_grad():
        for net, want in ((G, z["Gs_0"]), (G_raw, z["G_0"])):
            got = net(latents, labels=labels)
            assert ((got - torch.from_numpy(want)).abs().max() / np.abs(want).max()).item() < 1e-4
        scores = D(torch.from_numpy(z["images"]))
        assert ((scores - torch.from_numpy(z["D_0"])).abs().max() / np.abs(z["D_0"]).max()).item() < 1e-4
    assert state["progress"] == dict(resolution=G.resolution, alpha=1.0, lod=0.0, nimg=0)
    assert state["config"]["source"]["file"] == f"{name}.pkl" and len(state["config"]["source"]["sha256"]) == 64
    assert not leftovers(tmp_path)
    written = generate.run(
        generate.build_parser().parse_args(
            ["--checkpoint", str(dst), "--out", str(tmp_path / "gen"), "--seeds", "0-3", "--device", "cpu"]
        ),
        log=print,
    )
    assert os.path.getsize(written[0]) > 0


@pytest.mark.parametrize("lod,res,alpha", [(1.5, 8, 0.5), (2.0, 4, 1.0), (0.25, 16, 0.75)])
def test_lod_of_the_pickle_sets_where_the_checkpoint_is(tmp_path, lod, res, alpha):
    states = _states("pggan_gray16_nonfused_cond3")
    for st in states:
        st["variables"] = [(k, np.float32(lod) if k == "lod" else v) for k, v in st["variables"]]
    state = off.convert(_write_pickle(tmp_path / "x.pkl", states))
    assert state["progress"] == dict(resolution=res, alpha=alpha, lod=lod, nimg=0)


def test_evaluate_reads_a_converted_checkpoint(tmp_path):
    dst = tmp_path / "net.pt"
    convert.main([official.fixture("pggan_gray16_nonfused_cond3.pkl"), str(dst)])
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (40, 16, 16), dtype=np.uint8))
    out = tmp_path / "m.json"
    r = cli(
        "evaluate",
        "--checkpoint",
        dst,
        "--data",
        data,
        "--metrics",
        "msssim",
        "--num",
        "8",
        "--out",
        out,
        "--device",
        "cpu",
        "--no-progress",
        "--cache-dir",
        tmp_path / "cache",
        cwd=tmp_path,
    )
    succeeded(r)
    assert out.exists()


def test_restricted_unpickler_refuses_a_payload_and_runs_nothing(tmp_path):
    """A pickle whose payload would create a file: refused when its global is named, before anything is built."""
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(target), "w"))

    bad = tmp_path / "evil.pkl"
    with open(bad, "wb") as f:
        pickle.dump((Payload(), 1, 2), f)
    with open(bad, "rb") as f:  # the payload works when unpickled plainly: the test can fail
        pickle.load(f)[0].close()
    assert target.exists()
    target.unlink()
    r = cli("convert", bad, tmp_path / "out.pt", cwd=tmp_path)
    one_line_error(r, "evil.pkl", "is not an official PGGAN network pickle", f"needs {open.__module__}.open")
    assert not target.exists() and not (tmp_path / "out.pt").exists()


def _refused(tmp_path, src, *fragments, dst="out.pt"):
    r = cli("convert", src, dst, cwd=tmp_path)
    line = one_line_error(r, *fragments)
    assert not (tmp_path / dst).exists() and not leftovers(tmp_path)
    return line


def _changed(tmp_path, edit):
    states = _states("pggan_gray16_nonfused_cond3")
    edit(states)
    return _write_pickle(tmp_path / "changed.pkl", states)


def _set_var(states, role_index, name, value):
    st = states[role_index]
    st["variables"] = [(k, value if k == name else v) for k, v in st["variables"]]


@pytest.mark.slow
def test_bad_pickles_are_one_line_errors(tmp_path):
    good = official.fixture("pggan_gray16_nonfused_cond3.pkl")
    _refused(tmp_path, tmp_path / "missing.pkl", "missing.pkl", "does not exist")
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(open(good, "rb").read()[:5000])
    _refused(tmp_path, cut, "cut.pkl", "truncated")
    stylegan = _write_pickle(
        tmp_path / "stylegan.pkl", _states("pggan_gray16_nonfused_cond3"), module="dnnlib.tflib.network", cls="Network"
    )
    _refused(tmp_path, stylegan, "dnnlib.tflib.network.Network", "not an official PGGAN network pickle")
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": np.zeros(3)}))
    _refused(tmp_path, other, "does not hold the tuple (G, D, Gs)")
    (tmp_path / "a-file").write_text("")
    _refused(tmp_path, good, "DST", "a-file", "is a file, not a folder", dst="a-file/out.pt")


@pytest.mark.parametrize(
    "edit,fragments",
    [
        (lambda s: s[0]["static_kwargs"].update(use_batchnorm=True), ["use_batchnorm=True"]),
        slow(lambda s: s[1].update(build_func_name="D_stylegan"), ["'D_stylegan'", "D_paper"]),
        slow(
            lambda s: [st["static_kwargs"].update(use_pixelnorm=False) for st in (s[0], s[2])], ["use_pixelnorm=False"]
        ),
        slow(
            lambda s: _set_var(s, 0, "8x8/Conv1/weight", np.zeros((3, 3, 16, 8), np.float32)),
            ["G variable '8x8/Conv1/weight' has shape (3, 3, 16, 8)", "needs (3, 3, 16, 16)"],
        ),
        slow(
            lambda s: s[1].update(variables=[(k, v) for k, v in s[1]["variables"] if k != "4x4/Dense1/bias"]),
            ["D lacks 1 variable"],
        ),
        slow(
            lambda s: s[1]["variables"].append(("32x32/Conv0/weight", np.zeros((3, 3, 16, 16), np.float32))),
            ["'32x32/Conv0/weight'"],
        ),
        slow(
            lambda s: [st["static_kwargs"].update(resolution=32) for st in (s[0], s[2])],
            ["G has resolution=32 and D resolution=16"],
        ),
        slow(lambda s: s[2]["static_kwargs"].update(latent_size=8), ["Gs was built with other settings than G"]),
        slow(
            lambda s: [st["static_kwargs"].update(resolution=1 << 24, fmap_max=1 << 24, fmap_base=1 << 30) for st in s],
            ["G variable '4x4/Dense/weight' has shape (19, 256)"],
        ),  # judged on shapes alone: nothing allocated
        slow(lambda s: _set_var(s, 1, "4x4/Conv/bias", np.full(16, np.nan, np.float32)), ["NaN or inf"]),
        slow(
            lambda s: _set_var(s, 1, "4x4/Conv/bias", np.array(["x"] * 16)),
            ["'4x4/Conv/bias' is not an array of numbers"],
        ),
    ],
    ids=[
        "batchnorm",
        "not-D_paper",
        "no-pixelnorm",
        "shape",
        "missing",
        "extra",
        "disagree",
        "Gs",
        "huge",
        "nan",
        "text",
    ],
)
def test_pickles_fastpggan_cannot_reproduce_are_refused(tmp_path, edit, fragments):
    _refused(tmp_path, _changed(tmp_path, edit), "changed.pkl", *fragments)


@pytest.mark.slow
def test_existing_destination_needs_force(tmp_path):
    src = official.fixture("pggan_rgb32_fused.pkl")
    (tmp_path / "out.pt").write_bytes(b"keep me")
    one_line_error(cli("convert", src, "out.pt", cwd=tmp_path), "exists", "--force")
    assert (tmp_path / "out.pt").read_bytes() == b"keep me"
    succeeded(cli("convert", src, "out.pt", "--force", cwd=tmp_path))
    assert ckpt.load(str(tmp_path / "out.pt"))["config"]["network"]["resolution"] == 32


@pytest.mark.slow
def test_a_converted_checkpoint_cannot_be_resumed(tmp_path):
    dst = tmp_path / "net.pt"
    convert.main([official.fixture("pggan_rgb32_fused.pkl"), str(dst)])
    r = cli("train", "--resume", dst, "--device", "cpu", "--no-progress", cwd=tmp_path)
    one_line_error(r, "converted from an official pickle", "no training state")


def _gray16_cond3(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "gray.npz"
    np.savez(path, images=rng.integers(0, 256, size=(48, 16, 16), dtype=np.uint8), labels=rng.integers(0, 3, 48))
    return str(path)


def _init_args(data, tmp_path, init, *extra):
    return [
        "--data",
        data,
        "--out",
        str(tmp_path),
        "--name",
        "run",
        "--init",
        str(init),
        "--minibatch",
        "8",
        "--lod-training-kimg",
        "0.016",
        "--lod-transition-kimg",
        "0.016",
        "--tick-kimg",
        "0.008",
        "--snap-ticks",
        "1",
        "--keep",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.parametrize("lod", [0.0, 1.5])
def test_training_goes_on_from_a_converted_network(tmp_path, lod):
    """train --init: the official networks' weights and settings (unfused, conditional), fresh optimizer state,
    starting where the run's schedule has the pickle's lod; the first steps move the weights from there."""
    from conftest import train_quietly

    states = _states("pggan_gray16_nonfused_cond3")
    for st in states:
        st["variables"] = [(k, np.float32(lod) if k == "lod" else v) for k, v in st["variables"]]
    init = tmp_path / "net.pt"
    convert.main([_write_pickle(tmp_path / "net.pkl", states), str(init)])
    start = ckpt.load(str(init))
    t = train_quietly(_init_args(_gray16_cond3(tmp_path), tmp_path, init, "--cond", "--kimg", "0.096"))
    want_kimg = {0.0: 0.064, 1.5: 0.024}[lod]  # (2 phases of 0.032) + half a transition for lod 1.5
    assert t.cfg.init["kimg"] == pytest.approx(want_kimg) and t.cfg.init["lod"] == lod
    assert t.D.fused_scale is False and t.G.label_size == 3 and t.cfg.network["latent_size"] == 16
    first = ckpt.list_checkpoints(str(tmp_path / "run"))[0]
    state = torch.load(first, weights_only=True)
    assert state["progress"]["nimg"] == round(want_kimg * 1000) + 8  # a tick is one minibatch of 8
    for part in ("G", "D", "G_ema"):
        moved = max((state[part][k] - v).abs().max().item() for k, v in start[part].items())
        assert 0 < moved < 0.1, (part, moved)  # a few Adam steps of lr 0.001 from the converted weights
    assert state["opt_G"]["state"] and "source" not in state["config"]


@pytest.mark.slow
def test_init_refuses_what_does_not_fit(tmp_path):
    init = tmp_path / "net.pt"
    convert.main([official.fixture("pggan_gray16_nonfused_cond3.pkl"), str(init)])
    data = _gray16_cond3(tmp_path)
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.zeros((8, 16, 16, 3), np.uint8))

    def refused(*args, fragment):
        r = cli("train", *_init_args(*args), cwd=tmp_path)
        one_line_error(r, fragment)
        assert not (tmp_path / "run").exists()

    refused(data, tmp_path, init, fragment="conditioned on 3 classes; pass --cond")
    refused(str(rgb), tmp_path, init, fragment="16x16 with 1 channel(s)")
    refused(data, tmp_path, init, "--cond", "--fmap-max", "32", fragment="--fmap-max 32 contradicts")
    refused(data, tmp_path, init, "--cond", "--kimg", "0.01", fragment="pass a larger --kimg")
    refused(data, tmp_path, tmp_path / "missing.pt", "--cond", fragment="does not exist")
