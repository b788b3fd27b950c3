"""The progressive schedule against the official TrainingSchedule arithmetic."""
import pytest

from fastpggan.schedule import PRESETS, TICK_KIMG, Schedule


def v2(res=1024):
    p = {k: v for k, v in PRESETS["v2-1gpu"].items() if k != "total_kimg"}
    return Schedule(max_resolution=res, **p)


@pytest.mark.parametrize("kimg,res,alpha", [
    (0, 4, 1.0), (599.9, 4, 1.0), (600, 4, 1.0), (750, 8, 0.25), (900, 8, 0.5), (1200, 8, 1.0), (1799, 8, 1.0),
    (1950, 16, 0.25), (9600, 1024, 1.0), (9000, 512, 1.0), (9300, 1024, 0.5), (12000, 1024, 1.0), (50000, 1024, 1.0)])
def test_resolution_and_alpha(kimg, res, alpha):
    ph = v2().at(kimg * 1000)
    assert ph.resolution == res
    assert ph.alpha == pytest.approx(alpha)


def test_lod_formula_and_clip():
    s = v2()
    assert s.at(0).lod == 8
    assert s.at(900_000).lod == pytest.approx(7.5)
    assert s.at(10**9).lod == 0


def test_v2_1gpu_minibatch_lr_tick():
    s = v2()
    got = {r: s.at(s.kimg_to_reach(r) * 1000) for r in [4, 8, 16, 32, 64, 128, 256, 512, 1024]}
    assert {r: p.minibatch for r, p in got.items()} == {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8,
                                                        512: 4, 1024: 4}
    assert got[1024].lr == 0.0015 and got[512].lr == 0.001
    assert all(p.tick_kimg == TICK_KIMG[r] for r, p in got.items())


def test_small_dataset_stops_growing():
    s = v2(res=32)
    assert s.at(10**8).resolution == 32


def test_optimizer_reset_points():
    """Official reset_opt_for_new_lod: at the start and at the end of each transition, nowhere else."""
    s = v2()
    resets, prev = [], s.at(0).lod
    for nimg in range(0, 3_000_000, 2000):
        lod = s.at(nimg).lod
        if Schedule.lod_crossed_integer(prev, lod):
            resets.append(nimg / 1000)
        prev = lod
    assert resets == [602.0, 1200.0, 1802.0, 2400.0]


def test_presets_exist():
    assert {"v1", "v2-1gpu", "v2-2gpus", "v2-4gpus", "v2-8gpus"} <= set(PRESETS)
    assert PRESETS["v1"]["lod_training_kimg"] == 800 and PRESETS["v1"]["minibatch_base"] == 16
