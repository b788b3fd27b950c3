"""Equalized-LR layers against explicit formulas, and the fused-scale layers against their unfused pairs."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastpggan import ops
from fastpggan.layers import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear, MinibatchStdDev, PixelNorm


def _randomize(layer):
    with torch.no_grad():
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("act,pn", [("lrelu", False), ("linear", False), ("lrelu", True)])
def test_conv_formula(k, act, pn):
    layer = _randomize(EqualizedConv2d(5, 7, k, padding=k // 2, act=act, pixel_norm=pn)).double()
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    scale = math.sqrt(2) / math.sqrt(5 * k * k)
    y = F.conv2d(x, layer.weight * scale, layer.bias, padding=k // 2)
    if act == "lrelu":
        y = torch.where(y >= 0, y, 0.2 * y)
    if pn:
        y = y / torch.sqrt((y * y).mean(1, keepdim=True) + 1e-8)
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


def test_fused_up_equals_upsample_then_conv():
    layer = _randomize(EqualizedConv2d(6, 5, 3, padding=1, up=True)).double()
    plain = EqualizedConv2d(6, 5, 3, padding=1).double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(
        layer(x), plain(F.interpolate(x, scale_factor=2, mode="nearest")), rtol=1e-12, atol=1e-12
    )


def test_fused_down_equals_conv_then_avgpool():
    layer = _randomize(EqualizedConv2d(6, 5, 3, padding="same", down=True)).double()
    plain = EqualizedConv2d(6, 5, 3, padding=1).double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.avg_pool2d(plain(x), 2), rtol=1e-12, atol=1e-12)


def test_fused_with_activation_matches_pair_channels_last():
    up = _randomize(EqualizedConv2d(4, 3, 3, padding=1, up=True, act="lrelu", pixel_norm=True)).double()
    plain = EqualizedConv2d(4, 3, 3, padding=1, act="lrelu", pixel_norm=True).double()
    plain.load_state_dict(up.state_dict())
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last)
    torch.testing.assert_close(up(x), plain(F.interpolate(x, scale_factor=2, mode="nearest")), rtol=1e-10, atol=1e-10)


def test_linear_formula():
    layer = _randomize(EqualizedLinear(10, 4, gain=0.5, act="lrelu")).double()
    x = torch.randn(6, 10, dtype=torch.float64)
    y = x @ (layer.weight * 0.5 / math.sqrt(10)).T + layer.bias
    torch.testing.assert_close(layer(x), torch.where(y >= 0, y, 0.2 * y))


def test_linear_flattens_feature_maps():
    layer = EqualizedLinear(3 * 4 * 4, 2, flatten=True)
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(layer(x), layer(x.reshape(5, -1)))


def test_init_is_unit_normal_and_zero_bias():
    layer = EqualizedConv2d(64, 64, 3)
    assert abs(layer.weight.std().item() - 1) < 0.05 and abs(layer.weight.mean().item()) < 0.05
    assert torch.count_nonzero(layer.bias) == 0


def test_pixelnorm_and_mbstd_modules():
    x = torch.randn(4, 6, 3, 3)
    torch.testing.assert_close(PixelNorm()(x), x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-8))
    assert MinibatchStdDev(2)(x).shape == (4, 7, 3, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="act"):
        EqualizedConv2d(1, 1, 3, act="relu")
    with pytest.raises(ValueError, match="exclusive"):
        EqualizedConv2d(1, 1, 3, up=True, down=True)


# -- nn.Conv2d / nn.Linear manners ---------------------------------------------------------------------------------

# (kernel, stride, padding, dilation, groups): tuples, even kernels, 'same' and 'valid', strides, dilation, groups
CONV_ARGS = [
    (3, 1, 0, 1, 1),
    (3, 1, "same", 1, 1),
    (4, 1, "same", 1, 1),  # even: torch pads one more on the right and bottom
    ((2, 5), 1, "same", 1, 1),
    ((3, 1), (2, 1), (1, 0), 1, 1),
    (4, 2, 1, 1, 1),
    (3, 1, "valid", 2, 1),
    (1, 1, 0, 1, 3),
    ((3, 3), 2, (2, 1), (1, 2), 3),
]


def _moves_both_ways(plain, cls, x, channels_last):
    """cls.from_module(plain) computes plain(x), and so do its input and weight gradients (the weight's up to the
    equalized-LR scale), float64 to 1e-12; to_plain() gives plain back; the same state_dict keys. Returns both."""
    ours = cls.from_module(plain)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = plain(x1), ours(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad * ours.scale, rtol=1e-12, atol=1e-12)
    back = ours.to_plain()
    torch.testing.assert_close(back.weight, plain.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back(x), y1, rtol=1e-12, atol=1e-12)
    assert (ours.bias is None) == (plain.bias is None) and set(ours.state_dict()) == set(plain.state_dict())
    return ours, x, y1


@pytest.mark.parametrize("args", CONV_ARGS, ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_from_module_equals_the_nn_conv2d_it_came_from(args, bias, channels_last):
    """Positional nn.Conv2d arguments; our layer from_module(conv) computes conv(x), and so do its input and weight
    gradients (the weight's up to the equalized-LR scale); to_plain() gives conv back."""
    k, stride, padding, dilation, groups = args
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 9, k, stride, padding, dilation, groups, bias).double()
    _moves_both_ways(conv, EqualizedConv2d, torch.randn(2, 6, 11, 10, dtype=torch.float64), channels_last)


def test_the_default_is_a_plain_linear_conv_with_torch_padding():
    conv = EqualizedConv2d(3, 4, 3)
    assert conv.act == "linear" and conv.padding == (0, 0)
    x = torch.randn(2, 3, 8, 8)
    y = conv(x)
    assert y.shape == (2, 4, 6, 6) and (y < 0).any()  # no activation
    torch.testing.assert_close(y, F.conv2d(x, conv.weight * conv.scale, conv.bias))
    assert EqualizedConv2d(3, 4, 4, padding="same")(x).shape == (2, 4, 8, 8)  # an even kernel keeps the size


def test_bad_conv_arguments_are_clear_errors():
    for kwargs, message in [
        (dict(padding="full"), "padding must be"),
        (dict(padding="same", stride=2), "needs stride 1"),
        (dict(padding_mode="reflect"), "only 'zeros'"),
        (dict(groups=2), "groups 2 must divide"),
        (dict(up=True), "3x3 kernel, stride 1, padding 1"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size must be"),
    ]:
        args = dict(kernel_size=3)
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            EqualizedConv2d(3, 5, **args)


@pytest.mark.parametrize("lead", [(), (5,), (2, 7)], ids=["N", "N,T", "N,T,S"])
def test_linear_works_on_any_leading_dimensions_and_moves_weights(lead):
    torch.manual_seed(0)
    plain = torch.nn.Linear(6, 4).double()
    ours = EqualizedLinear.from_module(plain)
    x = torch.randn(3, *lead, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.to_plain().weight, plain.weight, rtol=1e-12, atol=1e-12)
    pn = EqualizedLinear(6, 4, act="lrelu", pixel_norm=True).double()
    y = pn(x)
    assert y.shape == (3, *lead, 4)
    torch.testing.assert_close(y.square().mean(-1), torch.ones(y.shape[:-1], dtype=torch.float64), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="to_plain"):
        pn.to_plain()


def test_the_dtype_rule_casts_weights_to_the_input():
    """nn.Conv2d refuses a bf16 input on fp32 weights; our layers cast the weight to the input's dtype (as autocast
    would) and return the input's dtype."""
    conv = EqualizedConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError):
        conv.to_plain()(x)
    y = conv(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), conv.to_plain()(x.float()), rtol=2e-2, atol=2e-2)


CONV_T_ARGS = [  # kernel_size, stride, padding, output_padding, dilation, groups
    (4, 1, 0, 0, 1, 1),  # PGGAN's first block on a 1x1 latent
    (4, 2, 1, 0, 1, 1),
    ((3, 2), (2, 1), (1, 0), (1, 0), 1, 1),
    (3, 2, 1, 1, 1, 3),
    (3, 1, 2, 0, 2, 1),
    (5, 3, 2, 2, 1, 1),
]


@pytest.mark.parametrize("args", CONV_T_ARGS, ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_from_module_equals_the_nn_conv_transpose2d_it_came_from(args, bias, channels_last):
    """As for EqualizedConv2d: positional nn.ConvTranspose2d arguments, equal outputs and gradients (float64,
    to 1e-12), to_plain() round-trips, the same state_dict keys, forward's output_size as torch's."""
    k, stride, padding, output_padding, dilation, groups = args
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(6, 9, k, stride, padding, output_padding, groups, bias, dilation).double()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    ours, x, y1 = _moves_both_ways(conv, EqualizedConvTranspose2d, x, channels_last)
    op = (output_padding, output_padding) if isinstance(output_padding, int) else output_padding
    for size in (y1.shape[-2:], (y1.shape[-2] - op[0], y1.shape[-1] - op[1])):  # the sizes forward can reach
        torch.testing.assert_close(ours(x, output_size=size), conv(x, output_size=size), rtol=1e-12, atol=1e-12)


def test_from_latent_is_the_official_dense_4x4_block():
    """EqualizedConvTranspose2d(latent, c, 4) on a 1x1 input is the official G's first dense layer (gain sqrt(2)/4
    on fan_in = latent), weights reshaped: the same scale and the same output."""
    torch.manual_seed(0)
    latent, c = 12, 5
    dense = EqualizedLinear(latent, c * 16, bias=False, gain=math.sqrt(2) / 4).double()
    up = EqualizedConvTranspose2d(latent, c, 4, bias=False).double()
    assert up.scale == pytest.approx(dense.scale, rel=1e-15)
    with torch.no_grad():  # dense output index o * 16 + h * 4 + w; the transposed weight is (latent, c, 4, 4)
        up.weight.copy_(dense.weight.reshape(c, 4, 4, latent).permute(3, 0, 1, 2))
    z = torch.randn(3, latent, dtype=torch.float64)
    torch.testing.assert_close(up(z[:, :, None, None]), dense(z).reshape(3, c, 4, 4), rtol=1e-12, atol=1e-12)


def test_bad_transposed_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="output_padding"):
        EqualizedConvTranspose2d(3, 4, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="only 'zeros'"):
        EqualizedConvTranspose2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="out of reach"):
        EqualizedConvTranspose2d(3, 4, 3, stride=2)(torch.randn(1, 3, 4, 4), output_size=(12, 12))
    with pytest.raises(ValueError, match="to_plain"):
        EqualizedConvTranspose2d(3, 4, 4, act="lrelu").to_plain()


FOLDABLE = {  # layers that fuse nothing, with an input whose output is no smaller than the weight
    "conv": (lambda: EqualizedConv2d(5, 3, 3, padding=1), (2, 5, 6, 6)),
    "conv_down": (lambda: EqualizedConv2d(5, 3, 3, padding=1, down=True), (2, 5, 12, 12)),
    "conv_up_unfused": (lambda: EqualizedConv2d(5, 3, 3, padding=1, up=True, fused_scale=False), (2, 5, 3, 3)),
    "conv_transpose": (lambda: EqualizedConvTranspose2d(5, 3, 4, 2, 1), (2, 5, 5, 5)),
    "linear": (lambda: EqualizedLinear(5, 3), (2, 4, 5)),
}


@pytest.mark.parametrize("name", FOLDABLE)
def test_a_layer_that_fuses_nothing_folds_its_scale_and_bias_into_torchs_op(name, monkeypatch):
    """No bias_act pass (the scale in the weight or GEMM's alpha, the bias in the op; the values are
    test_conv_formula's), correct to second order (float64 gradcheck and gradgradcheck); with an activation the
    epilogue runs, and so it does where the output is smaller than the weight (scaling it is the cheaper pass)."""
    torch.manual_seed(0)
    make, shape = FOLDABLE[name]
    layer = make().double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    calls = []
    monkeypatch.setattr(ops, "bias_act", lambda *a, impl, **k: calls.append(1) or ops.bias_act_ref(*a, **k))
    layer(x)
    assert not calls
    layer.negative_slope = 0.2  # an activation to fuse: the epilogue runs
    layer(x)
    assert calls
    layer.negative_slope, calls[:] = 1.0, []
    if name != "linear":  # linear: alpha costs nothing at any size
        layer(x[:1, :, :2, :2])
        assert calls
    assert torch.autograd.gradcheck(layer, (x,)) and torch.autograd.gradgradcheck(layer, (x,))


@pytest.mark.parametrize("name", ["conv", "linear"])
def test_a_folded_layer_runs_under_every_autodiff_path_with_any_impl(name):
    """Folded, a layer runs torch's ops alone, so a fast impl needs no refusal: forward-mode, torch.func and
    torch.compile give the eager values and gradients."""
    torch.manual_seed(0)
    make, shape = FOLDABLE[name]
    layer = make().double()
    layer.impl = "ext"
    x, t = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    y = layer(x)
    eps = 1e-6
    fd = (layer(x + eps * t) - layer(x - eps * t)) / (2 * eps)
    torch.testing.assert_close(torch.func.jvp(layer, (x,), (t,))[1], fd, rtol=1e-6, atol=1e-6)
    g = torch.func.grad(lambda v: layer(v).square().sum())(x)
    xr = x.clone().requires_grad_(True)
    layer(xr).square().sum().backward()
    torch.testing.assert_close(g, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), y, rtol=1e-12, atol=1e-12)
