"""What fastpggan.layers share: argument checks in torch's conventions with our errors, the weight moves to and from
torch's layers, and where the equalized-LR scale and bias go (folded into torch's op, or the bias_act epilogue)."""

import math
from typing import Any, Dict, Generic, Optional, Sequence, Tuple, Type, TypeVar, Union

import torch

from . import ops

LRELU_SLOPE = 0.2
_SLOPES = {"lrelu": LRELU_SLOPE, "linear": 1.0}


def ready(impl: str) -> str:
    """`impl`, with what choosing a fast backend on the CPU needs done now (ops.backends.prepare), so that the
    first call may be inside a torch.compile trace (a CUDA device is prepared by its first eager call, or
    explicitly)."""
    if impl != "ref":
        ops.backends.prepare("cpu")
    return impl


def slope(act: str) -> float:
    """The LeakyReLU slope of `act` ('lrelu' or 'linear')."""
    if act not in _SLOPES:
        raise ValueError(f"act must be 'lrelu' or 'linear', got {act!r}")
    return _SLOPES[act]


def pair(v: Union[int, Sequence[int]], what: str) -> Tuple[int, int]:
    """An int or a pair of ints >= 0, as a pair (torch's `_pair`, with a clear error)."""
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(e, int) and e >= 0 for e in t):
        raise ValueError(f"{what} must be an int or a pair of ints >= 0, got {v!r}")
    return t[0], t[1]


def check_conv(in_channels: int, out_channels: int, groups: int, padding_mode: str) -> None:
    """The checks nn.Conv2d and nn.ConvTranspose2d share, as one-line errors."""
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode {padding_mode!r}: only 'zeros' is supported; pad the input with F.pad")
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"groups {groups} must divide in_channels {in_channels} and out_channels {out_channels}")


def move_weights(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    from_weight: torch.Tensor,
    from_bias: Optional[torch.Tensor],
    factor: float,
) -> None:
    """weight = from_weight * factor and bias = from_bias, in place and outside autograd."""
    with torch.no_grad():
        weight.copy_(from_weight * factor)
        if bias is not None and from_bias is not None:
            bias.copy_(from_bias)


# the constructor arguments of torch's layers, after which ours are named (`bias` is whether there is one)
CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
CONV_TRANSPOSE_ARGS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "output_padding",
    "groups",
    "dilation",
)
LINEAR_ARGS = ("in_features", "out_features")


def torch_args(layer: torch.nn.Module, names: Sequence[str]) -> Dict[str, Any]:
    """The keyword arguments that build a layer like `layer` (ours or torch's): `names`, bias, device, dtype."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    args = {name: getattr(layer, name) for name in names}
    return dict(args, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)


Plain = TypeVar("Plain", bound=torch.nn.Module)
Ours = TypeVar("Ours", bound="MovesWeights")


class MovesWeights(torch.nn.Module, Generic[Plain]):
    """`from_module` and `to_plain`, once for our layers: torch's layer `plain` (built from the argument `names`) and
    ours move weights both ways, ours storing the torch weight / scale, so that both compute the same."""

    plain: Type[torch.nn.Module]
    names: Tuple[str, ...]
    weight: torch.nn.Parameter
    bias: Optional[torch.nn.Parameter]
    scale: float
    negative_slope: float
    pixel_norm: bool
    impl: str

    @property
    def fuses_nothing(self) -> bool:
        """A linear activation and no pixel norm: torch's op alone computes this layer, up to the scale and bias."""
        return self.negative_slope == 1.0 and not self.pixel_norm

    def not_plain(self) -> str:
        """What keeps this layer from being torch's (something fused), or ''."""
        return "" if self.fuses_nothing else "an activation or pixel_norm"

    def weight_and_bias(
        self, x: torch.Tensor, gain: float, out_numel: int
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], bool]:
        """(weight, bias, folded) for the torch op of this layer on `x`, whose output has `out_numel` elements.
        Where the layer fuses nothing and the weight is no larger than the output, the run-time scale `gain` is
        folded into the weight and the bias goes into the op: the layer costs what torch's does plus one multiply
        over the weight. Otherwise scale and bias are left to the epilogue, one pass over the output."""
        if not self.fuses_nothing or self.weight.numel() > out_numel:
            return self.weight.to(x.dtype), None, False
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return (self.weight * gain).to(x.dtype), bias, True

    def epilogue(self, y: torch.Tensor, gain: float, folded: bool) -> torch.Tensor:
        """y, then (unless `folded` into the op) the scale, bias, activation and pixel norm in one bias_act pass."""
        if folded:
            return y
        return ops.bias_act(
            y, self.bias, gain=gain, negative_slope=self.negative_slope, pixel_norm=self.pixel_norm, impl=self.impl
        )

    @classmethod
    def from_module(cls: Type[Ours], module: Plain, *, gain: float = math.sqrt(2), **kwargs: Any) -> Ours:
        """This layer with `module`'s arguments and weights (stored weight = module.weight / scale): it computes
        module(x), then the activation and pixel norm of `kwargs`, if any.

        Args:
            module: the torch layer (nn.Conv2d, nn.ConvTranspose2d or nn.Linear as the class says).
            gain: the equalized-LR gain of this layer; the output does not depend on it.
            kwargs: this layer's keyword arguments (act, pixel_norm, impl, ...).
        """
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"from_module: padding_mode {module.padding_mode!r} is not supported, only 'zeros'")
        layer = cls(**torch_args(module, cls.names), gain=gain, **kwargs)
        move_weights(layer.weight, layer.bias, module.weight, module.bias, 1 / layer.scale)  # type: ignore[arg-type]
        return layer

    def to_plain(self) -> Plain:
        """The torch layer computing the same (its weight = weight * scale), where nothing else is fused."""
        why = self.not_plain()
        if why:
            raise ValueError(f"to_plain: a layer with {why} is no {self.plain.__name__}")
        plain = self.plain(**torch_args(self, self.names))
        move_weights(plain.weight, plain.bias, self.weight, self.bias, self.scale)  # type: ignore[arg-type]
        return plain  # type: ignore[return-value]
