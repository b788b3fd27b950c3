"""Per-op speed, every available backend, at the shapes PGGAN runs (v2-1gpu minibatch, Table-2 widths).

The cases come from each declared op (fastpggan.ops OpSpec.bench_cases), so a new op is benchmarked without an edit
here. Each case is one op, one pass ('fwd' or 'fwd+bwd'), one dtype and one resolution; the backends of a case share
a group, so the report gives their ratio to 'ref'. `bytes` is the least a fused implementation must move through
memory (the op's declared traffic: each input read once, each output written once; small vectors ignored), e.g.

    bias_act      x (N,C,R,R):   fwd 2 E (x, y)            fwd+bwd 5 E (+ dy, y, dx)
    fade_in G     rgb (N,3,R,R): fwd 2.25 E (low is E/4)   fwd+bwd 4.5 E (+ dy, dhigh, dlow)
    fade_in D     feat (N,C,R/2,R/2), same size: fwd 3 E   fwd+bwd 6 E

(E = elements x bytes per element.) The ops do a few flops per element, so they are memory-bound: bytes / median /
measured copy bandwidth is the roofline fraction. On the CPU the Triton cases skip (they would run on the
interpreter); the extension's C++ kernels run there. The default run times the training pass, fwd+bwd; `--long`
adds the forward alone.
"""

import pytest
import torch

from conftest import LONG, PGGAN_SHAPES, devices, record, run_synced
from fastpggan import autotune, ops

IMPLS = list(ops.backends.IMPLS)
CPU_RESOLUTIONS = (4, 8, 32)


def _cases():
    cases = []
    for dev in devices():
        device = dev.values[0]
        for spec in ops.backends.declared():
            for label, res, variant, shape, extra in spec.bench_cases(PGGAN_SHAPES):
                if device == "cpu" and res not in CPU_RESOLUTIONS:
                    continue
                for dtype in ["float32"] if device == "cpu" else ["float32", "bfloat16"]:
                    case = autotune.Case(spec.name, variant, tuple(shape), dtype, "contiguous", device, dict(extra))
                    for mode in ("fwd", "fwd+bwd"):
                        marks = tuple(dev.marks) + ((LONG,) if mode == "fwd" else ())
                        cases.append(
                            pytest.param(
                                case,
                                label,
                                res,
                                mode,
                                marks=marks,
                                id=f"{device}-{label.replace(' ', '_')}-{res}-{dtype}-{mode}",
                            )
                        )
    return cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case,label,res,mode", _cases())
def test_op(benchmark, case, label, res, mode, impl):
    probe = autotune.make_probe(case, seed=0)
    try:
        with torch.no_grad():
            out = probe.call(impl)
    except ops.BackendUnavailable as e:
        pytest.skip(str(e))
    benchmark.group = f"{label} {mode} {case.device} {case.dtype} {res}x{res}"
    record(
        benchmark,
        case.device,
        op=label,
        mode=mode,
        res=res,
        dtype=case.dtype,
        impl=impl,
        bytes=autotune.traffic_bytes(case, backward=mode != "fwd"),
    )
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return probe.call(impl)

        run_synced(benchmark, forward, case.device)
        return
    gy = torch.randn_like(out)
    run_synced(
        benchmark, lambda: torch.autograd.grad(probe.call(impl), probe.inputs, gy, allow_unused=True), case.device
    )
