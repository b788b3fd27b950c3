"""A drop-in layer where nothing is fused, against the torch layer it replaces, in the same run (issue 42 step 2).

impl 'ref' is torch's nn.Conv2d / nn.Linear, 'compiled' the same layer through torch.compile; 'equalized' is
fastpggan.layers.EqualizedConv2d / EqualizedLinear built from it with from_module (linear, no pixel norm: the
equalized-LR scale folded into the weight and the bias into the conv; the linear layer's as GEMM's alpha and C),
'equalized-compiled' the same through torch.compile; 'equalized-epilogue' is what the layer ran before the fold:
the op without bias, then the scale and bias in an ops.bias_act pass over the output (impl 'auto'). The fold's only
extra work is one multiply over the weight (none for the linear layer), so 'equalized' should sit at 'ref'.

FLOPs: a 3x3 conv of N x C x R x R to C channels is 2 N C^2 9 R^2 forward and twice that backward (input and weight
gradients); `flops` is recorded per pass. The CPU runs the PGGAN 3x3 conv at 8, 16 and 32 (C=128, N=16: the
Table-2 widths are too slow for 2 cores), CUDA the v2-1gpu minibatch and Table-2 widths.
"""

import pytest
import torch
import torch.nn as nn

from conftest import LONG, PGGAN_SHAPES, devices, record, run_synced
from fastpggan import ops
from fastpggan.layers import EqualizedConv2d, EqualizedLinear

IMPLS = ("ref", "compiled", "equalized", "equalized-compiled", "equalized-epilogue")
CPU_SHAPE = (16, 128)  # (N, C) on the CPU


def _epilogue(layer):
    """The layer as it ran before the fold: torch's op without bias, then scale and bias in one bias_act pass."""
    if isinstance(layer, EqualizedConv2d):
        conv = lambda x: nn.functional.conv2d(x, layer.weight, None, layer.stride, layer.padding)  # noqa: E731
    else:
        conv = lambda x: nn.functional.linear(x, layer.weight)  # noqa: E731
    return lambda x: ops.bias_act(conv(x), layer.bias, gain=layer.scale, negative_slope=1.0, impl="auto")


def _candidate(plain, impl):
    if impl == "ref":
        return plain
    if impl == "compiled":
        return torch.compile(plain)
    ours = (EqualizedConv2d if isinstance(plain, nn.Conv2d) else EqualizedLinear).from_module(plain)
    if impl == "equalized":
        return ours
    return torch.compile(ours) if impl == "equalized-compiled" else _epilogue(ours)


def _cases(resolutions=None):
    """(device, res, mode) params; the forward alone, and 16x16 on the CPU, only in the long form."""
    cases = []
    for dev in devices():
        for res in resolutions or ((8, 16, 32) if dev.values[0] == "cpu" else sorted(PGGAN_SHAPES)):
            for mode in ("fwd", "fwd+bwd"):
                long = mode == "fwd" or (dev.values[0] == "cpu" and res == 16)
                marks = tuple(dev.marks) + ((LONG,) if long else ())
                cases.append(pytest.param(dev.values[0], res, mode, marks=marks, id=f"{dev.id}-{res}-{mode}"))
    return cases


def _time(benchmark, device, layer, x, mode):
    if mode == "fwd":
        with torch.no_grad():
            layer(x)
            return run_synced(benchmark, lambda: layer(x), device)
    x.requires_grad_(True)
    dy = torch.randn_like(layer(x))

    def fwd_bwd():
        layer(x).backward(dy)

    fwd_bwd()
    return run_synced(benchmark, fwd_bwd, device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device,res,mode", _cases())
def test_conv3x3_nothing_fused(benchmark, device, res, mode, impl):
    n, c = CPU_SHAPE if device == "cpu" else PGGAN_SHAPES[res]
    torch.manual_seed(0)
    plain = nn.Conv2d(c, c, 3, padding=1).to(device)
    x = torch.randn(n, c, res, res, device=device)
    benchmark.group = f"conv3x3 {mode} {device} N={n} C={c} {res}x{res}"
    flops = 2 * n * c * c * 9 * res * res * (3 if mode == "fwd+bwd" else 1)
    record(benchmark, device, impl=impl, flops=flops, dtype="float32")
    _time(benchmark, device, _candidate(plain, impl), x, mode)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device,res,mode", _cases(resolutions=(4,)))
def test_linear_nothing_fused(benchmark, device, res, mode, impl):
    """The D's last dense layer at 4x4: (N, C * 16) to C."""
    n, c = CPU_SHAPE if device == "cpu" else PGGAN_SHAPES[res]
    torch.manual_seed(0)
    plain = nn.Linear(c * 16, c).to(device)
    x = torch.randn(n, c * 16, device=device)
    benchmark.group = f"linear {mode} {device} N={n} {c * 16}->{c}"
    record(benchmark, device, impl=impl, flops=2 * n * c * 16 * c * (3 if mode == "fwd+bwd" else 1), dtype="float32")
    _time(benchmark, device, _candidate(plain, impl), x, mode)
