"""Two toy ops, each declared with one OpSpec and nothing else: a `ref` body and a second, pure-Python backend (no
kernels module, no C++ schema). `toy_scale`'s second backend is right; `toy_wrong`'s is off by 5 % (beyond even
bf16's tolerance), so the self-test and the tuner must refuse it. Used by tests/test_op_declaration.py; autotune's
child process imports this file by its path to learn the ops, as it would a user's module. Importing it declares
them; `undeclare()` removes them, so that the other tests of a pytest worker never see them.
"""

import dataclasses

import torch

from fastpggan.ops import backends, opspec

NAMES = ("toy_scale", "toy_wrong")


@dataclasses.dataclass(frozen=True)
class Shift(opspec.Variant):
    on: bool

    def __str__(self):
        return "shift" if self.on else "plain"

    @classmethod
    def parse(cls, text):
        if text not in ("shift", "plain"):
            raise ValueError(f"toy variant must be 'shift' or 'plain', got {text!r}")
        return cls(text == "shift")


def toy_ref(x, shift):
    return x * 2 + (1.0 if shift else 0.0)


def toy_fast(x, shift):
    return torch.add(x, x) + (1.0 if shift else 0.0)


def toy_off(x, shift):
    return toy_fast(x, shift) * 1.05


def toy(x, shift=False, impl="auto", op="toy_scale"):
    return backends.resolve(op, impl, x, Shift(shift))(x, shift)


def _spec_of(name):
    def probe(v, shape, extra, inputs):
        x = inputs.tensor(shape)
        return opspec.Probe([x], [1], lambda impl: toy(x, v.on, impl, op=name), True)

    return opspec.OpSpec(
        name,
        toy_ref,
        Shift,
        probe,
        check_cases=lambda dtype, layout, big: [(Shift(True), (2, 3, 5, 5), {})],
        bench_cases=lambda shapes: [(name, res, Shift(False), (n, c, res, res), {}) for res, (n, c) in shapes.items()],
        traffic=lambda v: (2, 4),
        auto_order={"cpu": ("ext", "ref")},
        auto_order_source="none: a toy",
    )


def declare():
    declared = {s.name for s in opspec.all_specs()}
    for name, fast in zip(NAMES, (toy_fast, toy_off)):
        if name not in declared:
            backends.declare(_spec_of(name), backends={"ext": fast})


def undeclare():
    for name in NAMES:
        backends.undeclare(name)


declare()
