"""Equalized-LR layers against explicit formulas, and the fused-scale layers against their unfused pairs."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastpggan.layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm


def _randomize(layer):
    with torch.no_grad():
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("act,pn", [("lrelu", False), ("linear", False), ("lrelu", True)])
def test_conv_formula(k, act, pn):
    layer = _randomize(EqualizedConv2d(5, 7, k, act=act, pixel_norm=pn)).double()
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    scale = math.sqrt(2) / math.sqrt(5 * k * k)
    y = F.conv2d(x, layer.weight * scale, layer.bias, padding=k // 2)
    if act == "lrelu":
        y = torch.where(y >= 0, y, 0.2 * y)
    if pn:
        y = y / torch.sqrt((y * y).mean(1, keepdim=True) + 1e-8)
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


def test_fused_up_equals_upsample_then_conv():
    layer = _randomize(EqualizedConv2d(6, 5, 3, up=True, act="linear")).double()
    plain = EqualizedConv2d(6, 5, 3, act="linear").double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(
        layer(x), plain(F.interpolate(x, scale_factor=2, mode="nearest")), rtol=1e-12, atol=1e-12
    )


def test_fused_down_equals_conv_then_avgpool():
    layer = _randomize(EqualizedConv2d(6, 5, 3, down=True, act="linear")).double()
    plain = EqualizedConv2d(6, 5, 3, act="linear").double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.avg_pool2d(plain(x), 2), rtol=1e-12, atol=1e-12)


def test_fused_with_activation_matches_pair_channels_last():
    up = _randomize(EqualizedConv2d(4, 3, 3, up=True, pixel_norm=True)).double()
    plain = EqualizedConv2d(4, 3, 3, pixel_norm=True).double()
    plain.load_state_dict(up.state_dict())
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last)
    torch.testing.assert_close(up(x), plain(F.interpolate(x, scale_factor=2, mode="nearest")), rtol=1e-10, atol=1e-10)


def test_linear_formula():
    layer = _randomize(EqualizedLinear(10, 4, gain=0.5)).double()
    x = torch.randn(6, 10, dtype=torch.float64)
    y = x @ (layer.weight * 0.5 / math.sqrt(10)).T + layer.bias
    torch.testing.assert_close(layer(x), torch.where(y >= 0, y, 0.2 * y))


def test_linear_flattens_feature_maps():
    layer = EqualizedLinear(3 * 4 * 4, 2, act="linear")
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
