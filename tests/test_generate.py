"""The generate CLI on a tiny checkpoint from the trainer."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_train_args
from fastpggan import checkpoint as ckpt
from fastpggan import generate, train
from fastpggan.errors import UserError


@pytest.fixture
def tiny_ckpt(tiny_npz, tmp_path):
    train.run(train.build_parser().parse_args(tiny_train_args(tiny_npz, tmp_path / "t", "--cond")), log=lambda *a: None)
    return ckpt.latest(str(tmp_path / "t" / "run"))


def _gen(*argv):
    return generate.run(generate.build_parser().parse_args(list(argv)), log=lambda *a: None)


def test_grid_singles_and_gif(tiny_ckpt, tmp_path):
    out = tmp_path / "g"
    _gen("--checkpoint", tiny_ckpt, "--seeds", "0-3,9", "--out", str(out), "--singles", "--interp", "3", "--gif")
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 16, 2 * 16) and grid.mode == "RGB"
    assert sorted(os.listdir(out)) == [
        "grid.png",
        "interp.gif",
        "seed0000.png",
        "seed0001.png",
        "seed0002.png",
        "seed0003.png",
        "seed0009.png",
    ]
    gif = Image.open(out / "interp.gif")
    assert gif.n_frames == 4 * 3 + 1


def test_same_seed_same_image_and_matches_g_ema(tiny_ckpt, tmp_path):
    _gen("--checkpoint", tiny_ckpt, "--seeds", "5", "--out", str(tmp_path / "a"), "--singles", "--no-grid")
    _gen("--checkpoint", tiny_ckpt, "--seeds", "4-5", "--out", str(tmp_path / "b"), "--singles", "--no-grid")
    a = np.asarray(Image.open(tmp_path / "a" / "seed0005.png"))
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / "seed0005.png")))
    G, state = ckpt.load_generator(tiny_ckpt)
    with torch.no_grad():
        img = G(generate.latents_for([5], G.latent_size), 16, 1.0, torch.tensor([5 % G.label_size]))
    want = ((img[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(a, want)


def test_interp_frames_folder(tiny_ckpt, tmp_path):
    _gen(
        "--checkpoint", tiny_ckpt, "--seeds", "0-1", "--out", str(tmp_path), "--interp", "4", "--no-grid", "--res", "8"
    )
    frames = sorted(os.listdir(tmp_path / "interp"))
    assert len(frames) == 5 and Image.open(tmp_path / "interp" / frames[0]).size == (8, 8)


def test_slerp_endpoints():
    a, b = torch.randn(8), torch.randn(8)
    torch.testing.assert_close(generate.slerp(a, b, torch.tensor(0.0)), a)
    torch.testing.assert_close(generate.slerp(a, b, torch.tensor(1.0)), b)


def test_errors(tiny_ckpt, tmp_path):
    with pytest.raises(UserError, match="--seeds"):
        _gen("--checkpoint", tiny_ckpt, "--seeds", "a-b")
    with pytest.raises(UserError, match="--res"):
        _gen("--checkpoint", tiny_ckpt, "--res", "64", "--out", str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        _gen("--checkpoint", str(tmp_path / "none.pt"))


def test_the_grid_is_upscaled_to_the_final_resolution_as_the_training_grids(tiny_ckpt, tmp_path):
    _gen("--checkpoint", tiny_ckpt, "--seeds", "0-3", "--out", str(tmp_path / "g"), "--res", "8", "--singles")
    grid = np.asarray(Image.open(tmp_path / "g" / "grid.png"))
    single = np.asarray(Image.open(tmp_path / "g" / "seed0000.png"))
    assert grid.shape == (2 * 16, 2 * 16, 3) and single.shape == (8, 8, 3)  # singles stay at --res
    assert np.array_equal(grid[:16, :16], single.repeat(2, axis=0).repeat(2, axis=1))  # nearest, as fakes_*.png
    assert generate.grid_cell(16, 4, 1024) == 1024  # 4 x 1024 = the largest side kept
    assert generate.grid_cell(100000, 4, 1024) == 8  # 317 columns: the grid stays within GRID_MAX_SIDE
    assert generate.grid_cell(4, 8, 8) == 8
