"""What an op declares about itself, once (`OpSpec`), beside its backends: its case variants as a typed value, the
probe that makes fresh inputs of a case and calls the op (autotune's check and clock, the self-test, the benchmarks),
the cases the self-test checks and the benchmarks time, the bytes it must move, and its static backend order.

A *case* is (op, variant, shape, dtype, layout, device, extra): the variant is what selects the kernel besides the
tensor (pixel norm, a bias, the upsampling fade, the stddev group), `extra` what a probe needs to rebuild the call's
other inputs (gain, slope, the dtype of a second tensor). Each op module defines its variant type, a frozen dataclass
whose `str` is the readable part of the tune-cache key (`bias_act(lrelu,bias,pn) ...`) and whose `parse` reads it.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch

IMPLS = ("ref", "triton", "ext", "compiled")  # the backends an op may have (fastpggan.ops.backends)


class Variant:
    """Base of the variant types: `str(v)` is its key text, `type(v).parse(text)` gives it back."""

    @classmethod
    def parse(cls, text: str) -> "Variant":
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class NoVariant(Variant):
    """The variant of an op with a single kernel form: the empty key text."""

    def __str__(self) -> str:
        return ""

    @classmethod
    def parse(cls, text: str) -> "NoVariant":
        if text:
            raise ValueError(f"this op has no variants, got {text!r}")
        return cls()


@dataclasses.dataclass
class Probe:
    """One call of an op on fresh inputs: what autotune checks against ref and times, and the benchmarks time."""

    inputs: List[torch.Tensor]  # leaf tensors whose gradients are compared
    counts: List[int]  # terms each input's gradient sums over (tolerance_ratio's count)
    call: Callable[[str], torch.Tensor]  # call(impl) -> output
    second_order: bool  # the op promises a differentiable backward
    # dy -> per input, the error beyond TOLERANCE that the fast backward's declared rounding may add (None: none);
    # e.g. a backward that reads an output saved in fp16/bf16 where ref's autograd keeps fp32
    grad_slack: Optional[Callable[[torch.Tensor], List[Optional[torch.Tensor]]]] = None


class Inputs:
    """Random leaf tensors for one probe: the case's dtype (or `dtype`, the float64 check's), layout and device,
    from one seeded generator."""

    def __init__(self, dtype: str, layout: str, device: str, seed: int, override: Optional[str] = None):
        self.dtype, self.layout, self.device, self.override = dtype, layout, device, override
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def dtype_of(self, preferred: Optional[str] = None) -> str:
        """The dtype of an input: the override (float64 check) if any, else `preferred`, else the case's."""
        return self.override or preferred or self.dtype

    def tensor(
        self, shape: Sequence[int], dtype: Optional[str] = None, positive: bool = False, layout: Optional[str] = None
    ) -> torch.Tensor:
        """randn (or uniform in [0.5, 1.5) if `positive`) of `shape`, in the case's layout, requiring grad."""
        t = (
            torch.rand(shape, generator=self.gen, device=self.device) + 0.5
            if positive
            else torch.randn(shape, generator=self.gen, device=self.device)
        )
        t = t.to(getattr(torch, self.dtype_of(dtype)))
        if (layout or self.layout) == "channels_last" and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(True)


# The static order measured on the CPU: the extension first there; on CUDA, ref until a fast kernel has passed its
# check against ref on the GPU (fastpggan.autotune). Against impl='compiled' (benchmarks/results/
# cpu-2core-20261207-ops-vs-compiled.md) no ext kernel loses at every CPU shape, so compiled stays out of the
# static order (it also costs a compile at a first call); autotune measures it.
EXT_ON_CPU = {"cpu": ("ext", "ref"), "cuda": ("ref",)}
CPU_OPS_RESULT = "benchmarks/results/cpu-2core-20261122-ops.md"  # forward + backward at 4-32^2, fp32, vs ref

# check_cases(dtype, layout, big) -> [(variant, shape, extra)]: the self-test's cases at odd shapes (`big` on a GPU)
CheckCases = Callable[[str, str, bool], Sequence[Tuple[Variant, tuple, dict]]]
# bench_cases(shapes {res: (minibatch, feature maps)}) -> [(label, res, variant, shape, extra)]
BenchCases = Callable[[Mapping[int, Tuple[int, int]]], Sequence[Tuple[str, int, Variant, tuple, dict]]]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """Everything about one op that is not a backend.

    Args:
        name: the op's name in the dispatcher and in case keys.
        ref: the plain-PyTorch oracle, impl='ref'.
        variant: the op's variant type (NoVariant for an op with one kernel form).
        probe: probe(variant, shape, extra, inputs: Inputs) -> Probe, the call on fresh inputs of a case.
        check_cases: the self-test's cases per dtype and layout.
        bench_cases: the per-op benchmark's cases at PGGAN's shapes.
        traffic: traffic(variant) -> (forward, forward + backward): the least bytes each moves, in units of one
            tensor of the case's shape and dtype (the numerator of GB/s and of the roofline fraction).
        auto_order: {device type: fastest-first backends} for the cases nothing tuned; a device type not listed
            runs 'ref'. Changed only with a committed measurement, which `auto_order_source` names.
        auto_order_source: where the order was measured.
    """

    name: str
    ref: Callable
    variant: Type[Variant]
    probe: Callable[..., Probe]
    check_cases: CheckCases
    bench_cases: BenchCases
    traffic: Callable[[Any], Tuple[float, float]]
    auto_order: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=lambda: {"cpu": ("ref",)})
    auto_order_source: str = ""

    def parse_variant(self, text: str) -> Variant:
        return self.variant.parse(text)


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def odd_shapes(big: bool) -> List[tuple]:
    """The self-test's NCHW shapes: C not a power of two, N = 1, 4x4 up, and both forms of the CUDA kernels (the
    16-byte vector form at C = 16 and 4x4, 8x8 planes; the scalar one at C = 3 and 17, 9x9 planes); `big` adds a
    PGGAN-sized one for a GPU."""
    return [(1, 3, 4, 4), (5, 17, 9, 9), (2, 16, 8, 8)] + ([(16, 512, 32, 32)] if big else [])


_specs: Dict[str, OpSpec] = {}


def add(spec: OpSpec) -> None:
    if spec.name in _specs and _specs[spec.name] != spec:
        raise ValueError(f"op {spec.name!r} is declared twice")
    _specs[spec.name] = spec


def remove(op: str) -> None:
    _specs.pop(op, None)


def spec(op: str) -> OpSpec:
    try:
        return _specs[op]
    except KeyError:
        raise ValueError(f"fastpggan: no op named {op!r} is declared") from None


def all_specs() -> List[OpSpec]:
    """The declared ops, in declaration order."""
    return list(_specs.values())
