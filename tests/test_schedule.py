"""The progressive schedule against the official TrainingSchedule arithmetic."""

import time

import pytest

from fastpggan.schedule import PRESETS, TICK_KIMG, Schedule, remaining_seconds


def v2(res=1024):
    p = {k: v for k, v in PRESETS["v2-1gpu"].items() if k != "total_kimg"}
    return Schedule(max_resolution=res, **p)


@pytest.mark.parametrize(
    "kimg,res,alpha",
    [
        (0, 4, 1.0),
        (599.9, 4, 1.0),
        (600, 4, 1.0),
        (750, 8, 0.25),
        (900, 8, 0.5),
        (1200, 8, 1.0),
        (1799, 8, 1.0),
        (1950, 16, 0.25),
        (9600, 1024, 1.0),
        (9000, 512, 1.0),
        (9300, 1024, 0.5),
        (12000, 1024, 1.0),
        (50000, 1024, 1.0),
    ],
)
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
    assert {r: p.minibatch for r, p in got.items()} == {
        4: 128,
        8: 128,
        16: 128,
        32: 64,
        64: 32,
        128: 16,
        256: 8,
        512: 4,
        1024: 4,
    }
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


def test_images_per_resolution_counts_each_fade_in_at_the_resolution_fading_in():
    s = Schedule(max_resolution=32, lod_training_kimg=20, lod_transition_kimg=20)
    assert s.images_per_resolution(0, 140_000) == {4: 20_000, 8: 40_000, 16: 40_000, 32: 40_000}
    assert s.images_per_resolution(30_000, 140_000) == {8: 30_000, 16: 40_000, 32: 40_000}
    assert s.images_per_resolution(150_000, 200_000) == {32: 50_000}  # past the schedule: full resolution
    assert s.images_per_resolution(5_000, 5_000) == {}
    # every image is counted once, at the resolution Schedule.at gives it
    got = s.images_per_resolution(7_000, 133_000)
    assert sum(got.values()) == 126_000
    for res, n in got.items():
        assert n == sum(1000 for k in range(7, 133) if s.at(k * 1000 + 500).resolution == res)


def test_images_per_resolution_of_tiny_phases_and_a_long_run_is_immediate():
    """1-image phases and 10^7 kimg (the flags' bounds) once looped 10^10 times in the trainer's first ETA, a hang
    that Ctrl-C could not stop. The bound is a complexity guard (the old loop took 41 s for 10^7 images, minutes
    for these 10^8), not a speed claim."""
    s = Schedule(max_resolution=256, lod_training_kimg=0.001, lod_transition_kimg=0)
    t = time.perf_counter()
    got = s.images_per_resolution(0, 10**8)
    assert time.perf_counter() - t < 5.0
    assert got == {4: 1, 8: 1, 16: 1, 32: 1, 64: 1, 128: 1, 256: 10**8 - 6}


def test_remaining_seconds_uses_measured_rates_and_scales_the_rest():
    cost = {4: 1.0, 8: 5.0, 16: 21.0, 32: 37.0}  # relative costs per image (pixels x width^2 of the CPU nets)
    images = {4: 100, 8: 200, 16: 300, 32: 400}
    rates = {4: 1e-3, 8: 2e-3, 16: 3e-3, 32: 5e-3}
    assert remaining_seconds(images, {}, cost) is None
    assert remaining_seconds(images, rates, cost) == pytest.approx(0.1 + 0.4 + 0.9 + 2.0)
    # one measurement: the others scale by cost
    one = remaining_seconds(images, {4: 1e-3}, cost)
    assert one == pytest.approx(sum(n * 1e-3 * cost[r] / cost[4] for r, n in images.items()))
    # two: the line through them (fixed overhead + work), not a pure ratio
    a, b = 1e-3, 2e-3
    slope = (b - a) / (cost[8] - cost[4])
    two = remaining_seconds(images, {4: a, 8: b}, cost)
    assert two == pytest.approx(
        100 * a + 200 * b + sum(n * (a + slope * (cost[r] - cost[4])) for r, n in ((16, 300), (32, 400)))
    )
    assert two < one  # overhead makes the small stages look dearer per unit of work than the large ones are
