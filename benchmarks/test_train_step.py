"""One full WGAN-GP training step (D step + G step + G EMA, alpha 0.5) of the Table-2 networks, as img/s.

The step is fastpggan.step's, the one the trainer runs, at the v2-1gpu minibatch of each resolution. Each call
draws its latents and GP factors on the device, as the trainer does; the reals are uint8 already on the device
(the trainer's host gather and pinned copy overlap the previous step and are not timed).

Variants, all in the same run so that every ratio has a cause:
  ref-fp32          (1) the plain-PyTorch ops, fp32, eager
  ref-bf16-cl       (2) the best plain PyTorch gives: bf16 autocast + channels_last, eager
  fast-<k>          (3) kernels k (triton or ext) + bf16 + channels_last + CUDA graphs
  and (3) with one part switched: -nographs, -fp32, -nocl, -fp16 (GradScaler), ref-bf16-cl-graphs (no kernels),
  -top4 / -fp16-top4 (low precision only in the 4 highest resolutions, fp16 clamped at +-256), -unfused
                    (fused_scale=False networks, --fused-scale 0: G upsamples then convolves, D pools after)
  fast-auto / auto-*  impl='auto' with this step's op cases tuned first (fastpggan.autotune: each backend
                    validated against ref, timed, the fastest per case), as the trainer does at start-up
  *-compiled*       the step's two passes compiled whole (compiled_step.CompiledStep, `train --compile-step on`;
                    no CUDA graphs): with impl='ref' (ref-bf16-cl-compiled, ref-compiled-*) it is the best a
                    plain-PyTorch user gets from torch.compile, the baseline `vs (3)` of benchmarks/report.py
                    ; with our kernels inside as opaque ops (fast-ext-compiled, ext-compiled-*). The compile
                    happens in the warm-up and is not timed; its seconds are in extra_info['compile_s'].

Per case extra_info holds: images per step, the step's FLOPs (torch.utils.flop_counter on one eager step: the
convolutions and matmuls of forward, backward and the GP double backward), peak memory, and the measured bf16
matmul peak, from which benchmarks/report.py derives img/s, TFLOP/s, MFU and the 12000-kimg schedule projection.

CPU: minibatch 16 at 8x8 and 16x16 (ref vs ext, fp32 and bf16); benchmarks/test_peer.py times the peer
pro-gan-pth on the same shapes in the same run, where it is installed. The default run times CPU_DEFAULT at 8x8
and CUDA_DEFAULT; `--long` every variant at every resolution.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from conftest import LONG, PGGAN_SHAPES, devices, matmul_peak_tflops, record, run_synced
from fastpggan import autotune, optim
from fastpggan import step as step_mod
from fastpggan.compiled_step import CompiledStep
from fastpggan.cuda_graph import CudaGraphStep
from fastpggan.networks import Discriminator, Generator
from fastpggan.ops import backends

# name: (impl, amp dtype, channels_last, cuda graphs); "-top4": low precision only in the 4 highest resolutions
# (--amp-min-res res/8, the stylegan2-ada practice), fp32 below
CUDA_VARIANTS = {
    "ref-fp32": ("ref", None, False, False),
    "ref-bf16-cl": ("ref", torch.bfloat16, True, False),
    "ref-bf16-cl-graphs": ("ref", torch.bfloat16, True, True),
    "fast-triton": ("triton", torch.bfloat16, True, True),
    "fast-ext": ("ext", torch.bfloat16, True, True),
    "fast-ext-nographs": ("ext", torch.bfloat16, True, False),
    "fast-ext-fp32": ("ext", None, True, True),
    "fast-ext-nocl": ("ext", torch.bfloat16, False, True),
    "fast-ext-fp16": ("ext", torch.float16, True, True),
    "fast-ext-top4": ("ext", torch.bfloat16, True, True),
    "fast-ext-fp16-top4": ("ext", torch.float16, True, True),
    "fast-auto": ("auto", torch.bfloat16, True, True),
    "fast-ext-unfused": ("ext", torch.bfloat16, True, True),
    "ref-bf16-cl-compiled": ("ref", torch.bfloat16, True, False),
    "fast-ext-compiled": ("ext", torch.bfloat16, True, False),
}
CPU_VARIANTS = {
    "ref-fp32": ("ref", None, False, False),
    "ext-fp32": ("ext", None, False, False),
    "ext-fp32-unfused": ("ext", None, False, False),
    "ext-bf16": ("ext", torch.bfloat16, False, False),
    "auto-fp32": ("auto", None, False, False),
    "auto-bf16": ("auto", torch.bfloat16, False, False),
    "ref-compiled-fp32": ("ref", None, False, False),
    "ext-compiled-fp32": ("ext", None, False, False),
    "ref-compiled-bf16": ("ref", torch.bfloat16, False, False),
    "ext-compiled-bf16": ("ext", torch.bfloat16, False, False),
}


# The default run's variants (the others need --long): the baselines, our kernels as the trainer runs them, and
# each compiled whole
CUDA_DEFAULT = (
    "ref-fp32",
    "ref-bf16-cl",
    "fast-triton",
    "fast-ext",
    "fast-auto",
    "ref-bf16-cl-compiled",
    "fast-ext-compiled",
)
CPU_DEFAULT = ("ref-fp32", "ext-fp32", "ext-bf16", "ref-compiled-fp32", "ref-compiled-bf16", "ext-compiled-bf16")
CPU_RESOLUTIONS = (8, 16)  # minibatch 16; the default run times 8x8 only
CPU_BATCH = 16


def step_cases():
    """(device, res, batch) params of the step benchmarks (this suite and the peer's); `long` beyond the default."""
    out = []
    for dev in devices():
        if dev.values[0] == "cpu":
            out += [
                pytest.param("cpu", r, CPU_BATCH, id=f"cpu-{r}", marks=() if r == 8 else LONG) for r in CPU_RESOLUTIONS
            ]
        else:
            out += [pytest.param("cuda", r, n, id=f"cuda-{r}", marks=dev.marks) for r, (n, _) in PGGAN_SHAPES.items()]
    return out


def _cases():
    out = []
    for case in step_cases():
        device, res, batch = case.values
        variants, default = (CPU_VARIANTS, CPU_DEFAULT) if device == "cpu" else (CUDA_VARIANTS, CUDA_DEFAULT)
        out += [
            pytest.param(
                device, res, batch, v, id=f"{case.id}-{v}", marks=tuple(case.marks) + (() if v in default else (LONG,))
            )
            for v in variants
        ]
    return out


def build(
    device, res, batch, impl, amp, channels_last, graphs, seed=0, amp_min_res=None, fused_scale=True, compiled=False
):
    """Table-2 G, D, G_ema and their optimizers at `res`, wrapped in the trainer's step; -> (runner, draw_inputs)."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    G = Generator(resolution=res, fused_scale=fused_scale, impl=impl).to(dev)
    D = Discriminator(resolution=res, fused_scale=fused_scale, impl=impl).to(dev)
    G.amp_min_res = D.amp_min_res = amp_min_res
    if channels_last:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    G_ema = Generator(resolution=res, fused_scale=fused_scale, impl=impl).to(dev).requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    opt_G = optim.make_optimizer(G.parameters(), dev, capturable=graphs)
    opt_D = optim.make_optimizer(D.parameters(), dev, capturable=graphs)
    cls = CompiledStep if compiled else step_mod.TrainStep
    train_step = cls(G, D, G_ema, opt_G, opt_D, impl=impl, amp_dtype=amp, channels_last=channels_last)
    runner = CudaGraphStep(train_step, log=print) if graphs else train_step
    reals = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=dev)

    def draw_inputs():
        return step_mod.StepInputs(
            reals=reals,
            z_d=torch.randn(batch, G.latent_size, device=dev),
            u=torch.rand(batch, device=dev),
            z_g=torch.randn(batch, G.latent_size, device=dev),
        )

    return runner, draw_inputs


class _FlopCount(TorchDispatchMode):
    """Sums torch.utils.flop_counter's per-op formulas (convolutions, matmuls, forward and every backward).

    FlopCounterMode itself cannot be used here: its module tracker breaks autograd.grad on the GP's leaf input."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


_flops = {}


def step_flops(device, res, batch, fused_scale=True):
    """FLOPs of one eager fp32 step (D step with the GP double backward, G step); unfused up/down convs run a 3x3
    kernel at the higher resolution, 9/4 the FLOPs of the fused stride-2 4x4 one."""
    key = (device, res, batch, fused_scale)
    if key not in _flops:
        runner, draw = build(device, res, batch, "ref", None, False, False, seed=1, fused_scale=fused_scale)
        inputs = draw()
        with _FlopCount() as counter:
            runner.step(inputs, res, 0.5 if res > 4 else 1.0)
        _flops[key] = counter.total
    return _flops[key]


@pytest.mark.parametrize("device,res,batch,variant", _cases())
def test_train_step(benchmark, device, res, batch, variant):
    impl, amp, channels_last, graphs = (CUDA_VARIANTS if device == "cuda" else CPU_VARIANTS)[variant]
    alpha = 0.5 if res > 4 else 1.0
    fused_scale = not variant.endswith("-unfused")
    flops = step_flops(device, res, batch, fused_scale)
    amp_min_res = max(res // 8, 4) if variant.endswith("-top4") else None
    compiled = "compiled" in variant
    runner, draw = build(
        device,
        res,
        batch,
        impl,
        amp,
        channels_last,
        graphs,
        amp_min_res=amp_min_res,
        fused_scale=fused_scale,
        compiled=compiled,
    )
    if impl == "auto":
        eager = getattr(runner, "step_eager", runner)
        records = autotune.record(eager.run, draw(), res, eager.alpha_arg(alpha), update=False)
        backends.use_choices(autotune.tune_cases(autotune.cases_from_records(records))["choices"])
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    for _ in range(3):  # warm-up: cuDNN autotuning, Triton compilation, graph capture, allocator
        runner.step(draw(), res, alpha)
    if graphs and runner.failed:
        pytest.fail("CUDA-graph capture failed (see the warning above)")
    if compiled and runner.failure:
        pytest.fail(f"compiling the step failed: {runner.failure}")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    benchmark.group = f"train step {device} {res}"
    record(
        benchmark,
        device,
        impl=variant,
        res=res,
        batch=batch,
        images=batch,
        alpha=alpha,
        flops=flops,
        kernels=impl,
        amp=str(amp).replace("torch.", ""),
        amp_min_res=amp_min_res,
        channels_last=channels_last,
        cuda_graphs=graphs,
        fused_scale=fused_scale,
        compiled_step=compiled,
        compile_s=round(sum(runner.compile_seconds.values()), 1) if compiled else None,
    )
    run_synced(benchmark, lambda: runner.step(draw(), res, alpha), device)
    if device == "cuda":
        benchmark.extra_info["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        benchmark.extra_info["matmul_peak_tflops"] = matmul_peak_tflops()
    backends.use_choices(None)
