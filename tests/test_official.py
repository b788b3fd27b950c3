"""fastpggan held to the official PGGAN code's own outputs (tests/fixtures/official, see its README):
the networks at every lod, and fastpggan's TrainStep on three official training iterations at each lod.

Tolerances: fp32 G and D weights within 1e-4 of the largest magnitude in each network (a per-tensor bound
would fail on D's output bias, whose gradient is a nearly cancelling sum), losses within 1e-5 relative. G_ema
within 3e-7: it moves by (1 - 0.999) x G's step per iteration, about 1e-6 of its size here, so only a bound below
that tells whether it averaged G before or after G's step (fastpggan reaches 6e-8; after the step gives 1e-6). fp16
(autocast + GradScaler, the scale set to 2^8 so that no step is skipped) weights within 2e-3 and losses within
3e-3: with beta1 = 0 an Adam step moves a weight by about lr (1e-3) in the sign of its gradient, and fp16 flips
the sign of the smallest gradients, so single weights land about 2 lr from the fp32 ones.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import official
from fastpggan import optim
from fastpggan import step as step_mod


def _lod_phase(lod, resolution):
    """Official lod -> (resolution, alpha) (official TrainingSchedule)."""
    f = int(np.floor(lod))
    return resolution >> f, 1.0 - (lod - f)


def _rel_err(ours, theirs):
    m = max(v.abs().max().item() for v in theirs.values())
    return max((ours[k] - v).abs().max().item() for k, v in theirs.items()) / m


FIXTURES = {
    "pggan_rgb32_fused": dict(res=32, channels=3, labels=0, fused=True, lods=8),
    "pggan_gray16_nonfused_cond3": dict(res=16, channels=1, labels=3, fused=False, lods=6),
}


@pytest.mark.parametrize("impl", ["ref", "auto"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_networks_equal_the_official_ones_at_every_lod(name, impl):
    """Converted G, Gs (fp32 images) and D (scores and label logits) equal the official networks' outputs at every
    lod the fixture holds, within 1e-4 of the largest magnitude (fastpggan reaches 1.5e-6 unfused, 1.3e-5 fused)."""
    want_cfg = FIXTURES[name]
    G, D, Gs = official.networks(official.fixture(f"{name}.pkl"), impl=impl)
    assert (G.resolution, G.num_channels, G.label_size, D.fused_scale) == (
        want_cfg["res"],
        want_cfg["channels"],
        want_cfg["labels"],
        want_cfg["fused"],
    )
    z = np.load(official.fixture(f"{name}.npz"))
    latents, images = torch.from_numpy(z["latents"]), torch.from_numpy(z["images"])
    labels = torch.from_numpy(z["labels"]) if want_cfg["labels"] else None
    assert len(z["lods"]) == want_cfg["lods"]
    worst = 0.0
    for lod in z["lods"]:
        res, alpha = _lod_phase(lod, want_cfg["res"])
        with torch.no_grad():
            outs = dict(
                G=G(latents, res, alpha, labels),
                Gs=Gs(latents, res, alpha, labels),
                D=D(F.avg_pool2d(images, want_cfg["res"] // res) if res < want_cfg["res"] else images, alpha),
            )
        for net, y in outs.items():
            want = torch.from_numpy(z[f"{net}_{lod:g}"])
            assert y.shape == want.shape, f"{net} at lod {lod:g}"
            err = ((y - want).abs().max() / want.abs().max()).item()
            worst = max(worst, err)
            assert err < 1e-4, f"{net} at lod {lod:g}: {err:.2e}"
    # Gs is G plus noise in these fixtures: a converter that swapped them would be far off
    assert (Gs(latents, labels=labels) - G(latents, labels=labels)).abs().max() > 1e-3
    print(f"{name} ({impl}): largest error {worst:.1e}")


def _official_state(z, prefix, which, net):
    vars_ = {k[len(prefix) + len(which) + 2 :]: z[k] for k in z.files if k.startswith(f"{prefix}/{which}/")}
    return official.state(vars_, net, which)


def _run_official_iterations(impl, amp_dtype=None, **step_kw):
    """fastpggan's TrainStep on the fixture's inputs: -> {(lod, it): dict(loss_D, loss_G, G, D, Gs errors)}."""
    z = np.load(official.fixture("pggan_step_rgb16.npz"))
    cfg = official.load_json(z)
    assert cfg["resolution"] == 16 and cfg["iters"] == 3 and cfg["lods"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    G0, D0, Gs0 = official.networks(official.fixture("pggan_step_rgb16_init.pkl"), impl=impl)
    out = {}
    for lod in cfg["lods"]:
        res, alpha = _lod_phase(lod, 16)
        G, D, Gs = copy.deepcopy(G0), copy.deepcopy(D0), copy.deepcopy(Gs0).requires_grad_(False)
        cpu = torch.device("cpu")
        ts = step_mod.TrainStep(
            G,
            D,
            Gs,
            optim.make_optimizer(G.parameters(), cpu, cfg["lr"]),
            optim.make_optimizer(D.parameters(), cpu, cfg["lr"]),
            impl=impl,
            amp_dtype=amp_dtype,
            **step_kw,
        )
        if amp_dtype == torch.float16:
            sc = dict(scale=256.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, _growth_tracker=0)
            ts.load_scaler_state(dict(D=sc, G=sc))
        for it in range(cfg["iters"]):
            p = f"lod{lod:g}/it{it}"

            def t(name):
                return torch.from_numpy(z[f"{p}/in/{name}"])

            inputs = step_mod.StepInputs(reals=t("reals"), z_d=t("z_d"), u=t("u"), z_g=t("z_g"), flip=t("flip"))
            assert inputs.reals.shape[-1] == res
            loss_D, loss_G = ts.step(inputs, res, alpha).tolist()
            out[(lod, it)] = dict(
                loss_D=abs(loss_D - float(z[f"{p}/loss_D"])) / abs(float(z[f"{p}/loss_D"])),
                loss_G=abs(loss_G - float(z[f"{p}/loss_G"])) / abs(float(z[f"{p}/loss_G"])),
                G=_rel_err(G.state_dict(), _official_state(z, p, "G", G)),
                D=_rel_err(D.state_dict(), _official_state(z, p, "D", D)),
                Gs=_rel_err(Gs.state_dict(), _official_state(z, p, "Gs", Gs)),
            )
    return out


def _worst(errs):
    return {k: max(e[k] for e in errs.values()) for k in ("loss_D", "loss_G", "G", "D", "Gs")}


@pytest.mark.parametrize("impl", ["ref", "auto"])
def test_train_step_equals_official_iterations_at_every_lod(impl):
    errs = _run_official_iterations(impl)
    assert len(errs) == 15
    for (lod, it), e in errs.items():
        assert e["loss_D"] < 1e-5 and e["loss_G"] < 1e-5, f"lod {lod:g} iteration {it}: {e}"
        assert e["G"] < 1e-4 and e["D"] < 1e-4 and e["Gs"] < 3e-7, f"lod {lod:g} iteration {it}: {e}"
    print(f"largest errors ({impl}, fp32):", {k: f"{v:.1e}" for k, v in _worst(errs).items()})


def test_train_step_fp16_with_grad_scaler_follows_official_iterations():
    errs = _run_official_iterations("auto", torch.float16)
    for (lod, it), e in errs.items():
        assert e["loss_D"] < 3e-3 and e["loss_G"] < 3e-3, f"lod {lod:g} iteration {it}: {e}"
        assert e["G"] < 2e-3 and e["D"] < 2e-3 and e["Gs"] < 2e-3, f"lod {lod:g} iteration {it}: {e}"
    print("largest errors (auto, fp16):", {k: f"{v:.1e}" for k, v in _worst(errs).items()})


def test_gp_native_res_leaves_full_resolution_official_and_departs_below_it():
    """--gp-native-res (target 1 at every resolution) is the official step at lod 0 and 0.5 (full resolution),
    and not below: there the official penalty's target is 2^floor(lod)."""
    errs = _run_official_iterations("ref", gp_native_res=True)
    for (lod, it), e in errs.items():
        if lod < 1:
            assert e["D"] < 1e-4, f"lod {lod:g} iteration {it}: {e}"
        elif it == 0:
            assert e["D"] > 1e-4, f"lod {lod:g}: the native-resolution penalty should fail the official bound"
