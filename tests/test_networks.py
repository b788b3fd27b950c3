"""Generator and Discriminator: Table-2 sizes, shapes, and fade-in continuity."""

import pytest
import torch
import torch.nn.functional as F

from fastpggan import ops
from fastpggan.networks import Discriminator, Generator

SMALL = dict(fmap_base=128, fmap_max=16)


@pytest.fixture(params=[True, False], ids=["fused", "unfused"])
def fused(request):
    """Official fused_scale: every network test runs on both forms."""
    return request.param


def _count(net, skip_prefix, keep_index):
    """Parameters, counting only the final toRGB/fromRGB (index keep_index)."""
    return sum(
        p.numel()
        for n, p in net.named_parameters()
        if not (n.startswith(skip_prefix) and not n.startswith(f"{skip_prefix}{keep_index}."))
    )


def test_table2_parameter_counts():
    G, D = Generator(), Discriminator()
    g = _count(G, "to_rgb.", 8)
    d = _count(D, "from_rgb.", 8)
    assert abs(g - 23.1e6) / 23.1e6 < 0.01, g
    assert abs(d - 23.1e6) / 23.1e6 < 0.01, d
    # Table 2 widths: 512 up to 32x32, then halving to 16 at 1024x1024.
    widths = [G.to_rgb[i].in_channels for i in range(9)]
    assert widths == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert [D.from_rgb[i].out_channels for i in range(9)] == widths
    assert D.blocks[0][0].group_size == 4 and D.blocks[0][1].in_channels == 513


@pytest.mark.parametrize("res", [4, 8, 16, 32, 64, 128, 256, 512, 1024])
def test_shapes_at_every_resolution(res, fused):
    torch.manual_seed(0)
    n = 2 if res < 256 else 1
    G = Generator(resolution=1024, latent_size=8, num_channels=3, fused_scale=fused, **SMALL)
    D = Discriminator(resolution=1024, num_channels=3, fused_scale=fused, **SMALL)
    with torch.no_grad():
        img = G(torch.randn(n, 8), res=res, alpha=0.5)
        assert img.shape == (n, 3, res, res)
        assert D(img, alpha=0.5).shape == (n, 1)


def test_full_width_shapes_at_1024():
    with torch.no_grad():
        img = Generator()(torch.randn(1, 512))
        assert img.shape == (1, 3, 1024, 1024) and torch.isfinite(img).all()
        assert Discriminator()(img).shape == (1, 1)


@pytest.mark.parametrize("r", [4, 8, 16])
def test_generator_alpha0_is_smaller_net_upsampled(r, fused):
    G = Generator(resolution=32, latent_size=16, num_channels=3, fused_scale=fused, **SMALL)
    z = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(G(z, res=2 * r, alpha=0.0), ops.upsample2x_nearest(G(z, res=r)))


def test_generator_alpha1_is_grown_net(fused):
    G = Generator(resolution=16, latent_size=16, num_channels=1, fused_scale=fused, **SMALL)
    z = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(G(z, res=16, alpha=torch.tensor(1.0)), G(z, res=16))
        assert torch.equal(G(z, res=16, alpha=1.0), G(z))


@pytest.mark.parametrize("r", [4, 8, 16])
def test_discriminator_alpha0_is_smaller_net_on_pooled(r, fused):
    D = Discriminator(resolution=32, num_channels=3, fused_scale=fused, **SMALL)
    x = torch.randn(4, 3, 2 * r, 2 * r)
    with torch.no_grad():
        assert torch.equal(D(x, alpha=0.0), D(F.avg_pool2d(x, 2)))
        assert torch.equal(D(x, alpha=torch.tensor(1.0)), D(x))


def test_alpha_interpolates_linearly(fused):
    G = Generator(resolution=8, latent_size=16, num_channels=3, fused_scale=fused, **SMALL)
    z = torch.randn(2, 16)
    with torch.no_grad():
        a, b, mid = G(z, 8, 0.0), G(z, 8, 1.0), G(z, 8, 0.25)
    torch.testing.assert_close(mid, 0.75 * a + 0.25 * b)


def test_latents_are_pixel_normalized(fused):
    G = Generator(resolution=8, latent_size=16, num_channels=3, fused_scale=fused, **SMALL)
    z = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(G(z), G(z * 7.5))


def test_labels(fused):
    G = Generator(resolution=8, latent_size=16, num_channels=3, label_size=5, fused_scale=fused, **SMALL)
    D = Discriminator(resolution=8, num_channels=3, label_size=5, fused_scale=fused, **SMALL)
    z = torch.randn(4, 16)
    labels = torch.tensor([0, 1, 4, 2])
    with torch.no_grad():
        img = G(z, labels=labels)
        torch.testing.assert_close(img, G(z, labels=F.one_hot(labels, 5).float()))
        assert not torch.equal(img, G(z, labels=torch.tensor([3, 3, 3, 3])))
        assert D(img).shape == (4, 6)
    with pytest.raises(ValueError, match="labels"):
        G(z)


def test_bad_resolution_and_backend(ext_broken):
    with pytest.raises(ValueError, match="power of two"):
        Generator(resolution=48)
    G = Generator(resolution=16, latent_size=8, **SMALL)
    with pytest.raises(ValueError, match="power of two"):
        G(torch.randn(1, 8), res=32)
    with pytest.raises(ops.BackendUnavailable, match="impl='ext' is not available: simulated build failure"):
        Generator(resolution=8, latent_size=8, impl="ext", **SMALL)(torch.randn(1, 8))


def _dtypes_by_module(net, run):
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, out.dtype))
        for name, m in net.named_children()
        for m in ([m] if not isinstance(m, torch.nn.ModuleList) else [])
    ]
    hooks += [
        m.register_forward_hook(lambda mod, args, out, name=f"{lname}.{i}": seen.__setitem__(name, out.dtype))
        for lname in ("blocks", "to_rgb", "from_rgb")
        if hasattr(net, lname)
        for i, m in enumerate(getattr(net, lname))
    ]
    try:
        out = run()
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_amp_min_res_keeps_low_resolutions_fp32(fused):
    """Under bf16 autocast with amp_min_res 16, the 4x4 and 8x8 layers of G and D run in fp32, 16x16 in bf16."""
    torch.manual_seed(0)
    G = Generator(
        resolution=16, latent_size=16, num_channels=3, fmap_base=64, fmap_max=16, fused_scale=fused, impl="ref"
    )
    D = Discriminator(
        resolution=16, num_channels=3, fmap_base=64, fmap_max=16, mbstd_group_size=2, fused_scale=fused, impl="ref"
    )
    G.amp_min_res = D.amp_min_res = 16
    z = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_types, img = _dtypes_by_module(G, lambda: G(z, 16, 0.5))
        d_types, score = _dtypes_by_module(D, lambda: D(img.float(), 0.5))
    assert g_types["blocks.0"] == g_types["blocks.1"] == g_types["to_rgb.1"] == torch.float32
    assert g_types["blocks.2"] == g_types["to_rgb.2"] == torch.bfloat16
    assert d_types["from_rgb.2"] == d_types["blocks.2"] == torch.bfloat16
    assert d_types["from_rgb.1"] == d_types["blocks.1"] == d_types["blocks.0"] == torch.float32
    G.amp_min_res = D.amp_min_res = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_all, _ = _dtypes_by_module(G, lambda: G(z, 16, 0.5))
    assert g_all["blocks.1"] == torch.bfloat16  # without it every layer is low precision
    with torch.no_grad():
        ref_img = G(z, 16, 0.5)
    torch.testing.assert_close(img.float(), ref_img, rtol=0.05, atol=0.05)  # bf16 tolerance


def test_amp_min_res_clamps_fp16_outputs():
    torch.manual_seed(0)
    G = Generator(resolution=8, latent_size=16, num_channels=3, fmap_base=64, fmap_max=16, impl="ref")
    with torch.no_grad():
        G.to_rgb[1].weight.mul_(2e3)  # outputs in the thousands: fp16 holds them, the clamp cuts them
    z = torch.randn(2, 16)
    with torch.autocast("cpu", dtype=torch.float16):
        unclamped = G(z, 8)
        G.amp_min_res = 4  # every layer low precision, as without it, but clamped
        clamped = G(z, 8)
    assert unclamped.abs().max() > 1000
    assert clamped.abs().max() == 256
    torch.testing.assert_close(clamped, unclamped.clamp(-256, 256))


def test_fused_scale_keeps_parameters_and_names():
    """Both forms hold the same parameters under the same names (so the Table-2 counts hold for both)."""
    for net in (Generator, Discriminator):
        a, b = net(resolution=64, **SMALL), net(resolution=64, fused_scale=False, **SMALL)
        assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    G, D = Generator(fused_scale=False), Discriminator(fused_scale=False)
    assert _count(G, "to_rgb.", 8) == _count(Generator(), "to_rgb.", 8)
    assert _count(D, "from_rgb.", 8) == _count(Discriminator(), "from_rgb.", 8)


def test_unfused_generator_is_the_fused_one_and_unfused_discriminator_is_not():
    """G: upsample + conv == the summed-kernel transposed conv (fp32 rounding); D: pooling after the LReLU is another
    function (official fused_scale=False), equal to the block written out by hand."""
    torch.manual_seed(0)
    kw = dict(resolution=32, num_channels=3, impl="ref", **SMALL)
    Gf, Gu = Generator(latent_size=16, **kw), Generator(latent_size=16, fused_scale=False, **kw)
    Df, Du = Discriminator(**kw), Discriminator(fused_scale=False, **kw)
    for p in [*Gf.parameters(), *Df.parameters()]:
        torch.nn.init.normal_(p)
    Gu.load_state_dict(Gf.state_dict())
    Du.load_state_dict(Df.state_dict())
    z, x = torch.randn(4, 16), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(Gu(z, 32, 0.5), Gf(z, 32, 0.5), rtol=1e-5, atol=1e-5)
        assert (Du(x, 0.5) - Df(x, 0.5)).abs().max() > 1e-2
        conv = Du.blocks[3][1]  # 32x32's second conv, unfused: conv3x3, bias, LReLU, then the 2x2 box filter
        h = torch.randn(4, conv.in_channels, 32, 32)
        want = F.avg_pool2d(
            F.leaky_relu(F.conv2d(h, conv.weight * conv.scale, padding=1) + conv.bias[:, None, None], 0.2), 2
        )
        torch.testing.assert_close(conv(h), want, rtol=1e-5, atol=1e-5)
