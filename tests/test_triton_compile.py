"""Every Triton kernel compiles to sm_90 (Hopper) machine code, for every constexpr variant the launchers use and
the pixel-norm tile of every v2-1gpu stage, under the rules the CUDA kernels are held to (test_cuda_static.py),
read from the compiled cubin (fastpggan._static.cubin_facts): nothing in local memory (no stack frame, no local
bytes, no LDL/STL in the SASS), no 64-bit integer division routine, a theoretical occupancy of at least 50 % at the
launch's warps and shared memory, and 16 bytes per load and store in the elementwise epilogue.

The interpreter tests check the kernels' arithmetic but not that the compiler accepts them: some constructs
run in the interpreter and fail to compile. Triton compiles ahead of time without a GPU (it ships ptxas), so
this runs on the CPU, in a subprocess because the interpreter setting is fixed when a kernel is defined.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # about 90 s of ahead-of-time compiles

SCRIPT = r"""
import itertools, os, sys, tempfile
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastpggan import _static
from fastpggan.kernels import bias_act, fade_in, gradient_penalty, minibatch_stddev

FLOATS = {"gain", "slope", "eps", "alpha", "target"}
ACC_POINTERS = {"r_ptr", "s_ptr", "part_ptr", "gp_ptr", "alpha_ptr", "b_ptr", "dgp_ptr", "u_ptr"}
BOOLS = {"HAS_BIAS", "MASK_FROM_REF", "UP", "CHANNELS_LAST", "ALPHA_PTR", "INT64", "CHUNKED"}
BLOCKS = {"BLOCK": 1024, "BLOCK_HW": 16}
TILES = [{"BLOCK_P": 8, "BLOCK_C": 512}, {"BLOCK_P": 256, "BLOCK_C": 16}, {"BLOCK_P": 8, "BLOCK_C": 1024}]
KERNELS = [bias_act._bias_act_kernel, bias_act._pixel_norm_fwd_kernel, bias_act._pixel_norm_bwd_kernel,
           fade_in._fade_in_fwd_kernel, fade_in._fade_in_bwd_kernel, minibatch_stddev._stats_kernel,
           minibatch_stddev._finish_kernel, minibatch_stddev._concat_kernel, minibatch_stddev._bwd_kernel,
           gradient_penalty._sumsq_kernel, gradient_penalty._finish_kernel, gradient_penalty._bwd_kernel,
           gradient_penalty._interpolate_kernel, fade_in._fade_in_bwd_rows_kernel]
# The pixel-norm tile the launcher picks for each v2-1gpu stage (resolution: minibatch, feature maps), per dtype
# and layout (the tile and warps depend on C, the layout and the element size).
STAGES = {4: (128, 512), 8: (128, 512), 16: (128, 512), 32: (64, 512), 64: (32, 256), 128: (16, 128), 256: (8, 64),
          512: (4, 32), 1024: (4, 16)}
WIDE = [(4, 2048, 8)]   # beyond fmap_max 512: the chunked tile
stage_tiles = {}
for dtype in (torch.float32, torch.bfloat16):
    for res, n, c in [(r, n, c) for r, (n, c) in STAGES.items()] + [(r, n, c) for n, c, r in WIDE]:
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.empty((n, c, res, res), dtype=dtype, device="meta").contiguous(memory_format=fmt)
            *_, block_p, block_c, warps, chunked = bias_act._tile(x)
            key = "fp32" if dtype == torch.float32 else "bf16"
            stage_tiles.setdefault(key, set()).add((block_p, block_c, warps, chunked))
OCCUPANCY_FLOOR = 0.5
# Kernels that break a rule today, each with its reason; the list may only shrink (an entry that no longer breaks
# fails the test until it is taken off).
# (kernel, rule) -> why it may break the rule; the list may only shrink (an entry no longer broken fails the test)
FP64_ONLY = "in fp64 only, which is gradcheck's dtype and never a training one"
EXCEPTIONS = {("minibatch_stddev._stats_kernel fp64", "occupancy"): FP64_ONLY,
              ("minibatch_stddev._bwd_kernel fp64", "occupancy"): FP64_ONLY,
              ("fade_in._fade_in_bwd_kernel fp64", "occupancy"): FP64_ONLY,
              ("fade_in._fade_in_bwd_rows_kernel fp64", "occupancy"): FP64_ONLY}
seen_exceptions = set()
target = GPUTarget("cuda", 90, 32)
count, failures, vector_io, row_tiles = 0, [], {}, set()
tmp = tempfile.mkdtemp()


def check_compiled(k, what, key):
    path = os.path.join(tmp, "k.cubin")
    with open(path, "wb") as f:
        f.write(k.asm["cubin"])
    (facts,) = _static.cubin_facts(path).values()
    shared = max(facts["shared"], getattr(k.metadata, "shared", 0))
    occ = _static.occupancy(facts["registers"], shared, k.metadata.num_warps * 32)
    broken = []
    if facts["local"] or facts["stack"] or facts["ldl"] or facts["stl"]:
        broken.append(("local memory", f"{facts['local']} bytes local, {facts['stack']} stack, "
                                       f"{facts['ldl']} LDL, {facts['stl']} STL"))
    if facts["int64_division"]:
        broken.append(("div64", f"calls {facts['int64_division']}"))
    if occ < OCCUPANCY_FLOOR:
        broken.append(("occupancy", f"{occ:.0%} ({facts['registers']} registers, {shared} bytes shared, "
                                    f"{k.metadata.num_warps} warps)"))
    for rule, detail in broken:
        seen_exceptions.add((key, rule))
        if (key, rule) not in EXCEPTIONS:
            failures.append(f"{what}: {rule}: {detail}")


for fn in KERNELS:
    names = fn.arg_names
    constexpr_names = [p.name for p in fn.params if p.is_constexpr]
    bools = [n for n in constexpr_names if n in BOOLS]
    for dtype in ("fp32", "bf16", "fp16", "fp64"):
        tiles = [{}]
        if "BLOCK_W" in names:   # the upsampling backward's row tile at every stage's width
            tiles = [dict(BLOCK_R=r, BLOCK_W=w, num_warps=nw, stage=True, W16=res % 16 == 0)
                     for res in STAGES if res >= 8 for r, w, nw in [fade_in.rows_tile(res)]]
        if "BLOCK_C" in names:
            tiles = [dict(t, num_warps=bias_act.tile_warps(t["BLOCK_P"], t["BLOCK_C"])) for t in TILES]
            tiles += [dict(BLOCK_P=p, BLOCK_C=c, num_warps=w, CHUNKED=ch, stage=True)
                      for p, c, w, ch in sorted(stage_tiles.get(dtype, ()))]
        # every boolean variant in fp32; the other dtypes (fp64 is what gradcheck runs) with every flag on but
        # INT64 (the variant PGGAN's tensors run)
        launched_flags = tuple(b != "INT64" for b in bools)
        variants = itertools.product((False, True), repeat=len(bools)) if dtype == "fp32" else [launched_flags]
        for flags in variants:
            for tile in tiles:
                tile = dict(tile)
                warps = tile.pop("num_warps", getattr(sys.modules[fn.__module__], "NUM_WARPS", {}).get(fn.__name__, 4))
                stage = tile.pop("stage", False)
                w16 = tile.pop("W16", False)   # the JIT specialises W on divisibility by 16 at run time
                if stage and any(f != lf for b, f, lf in zip(bools, flags, launched_flags) if b != "CHUNKED"):
                    continue   # a stage's tile as launched (CHUNKED as the launcher sets it)
                constexprs = dict(zip(bools, flags))
                constexprs.update(ACC=tl.float64 if dtype == "fp64" else tl.float32, **tile)
                constexprs.update({k: v for k, v in BLOCKS.items() if k in names})
                if fn is minibatch_stddev._bwd_kernel:   # what their launchers use
                    constexprs["BLOCK"] = minibatch_stddev.BWD_BLOCK
                if fn is minibatch_stddev._finish_kernel:
                    constexprs["BLOCK"] = minibatch_stddev.FINISH_BLOCK
                sig = {}
                for n in names:
                    if n in constexpr_names:
                        sig[n] = "constexpr"
                    elif n.endswith("_ptr"):
                        sig[n] = "*fp32" if n in ACC_POINTERS and dtype != "fp64" else "*" + dtype
                    else:
                        sig[n] = "fp32" if n in FLOATS else "i32"
                constexprs = {k: v for k, v in constexprs.items() if k in names}
                # torch allocations are 16-byte aligned and PGGAN's sizes multiples of 16; the JIT specialises
                # on both at run time, so say so here too
                attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
                         if n.endswith("_ptr") or n == "numel" or (n == "W" and w16)}
                try:
                    k = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target,
                                       options={"num_warps": warps})
                    count += 1
                    ptx = k.asm["ptx"]
                    if fn is not fade_in._fade_in_bwd_rows_kernel or w16:
                        vector_io.setdefault((fn.__name__, dtype), ("ld.global.v4" in ptx, "st.global.v4" in ptx))
                    key = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
                    # the rules hold for what the launchers run at PGGAN's sizes: not the INT64 variants (tensors
                    # of 2^31 elements or more, whose 64-bit offsets must be divided), and the chunked pixel norm
                    # only at the chunk width it is launched with
                    launched = not constexprs.get("INT64") and ("BLOCK_C" not in constexprs or stage)
                    if fn is fade_in._fade_in_bwd_rows_kernel:
                        row_tiles.add(tuple(constexprs[b] for b in ("BLOCK_R", "BLOCK_W")))
                    if launched:
                        check_compiled(k, f"{key} {dtype} {constexprs} warps={warps}", f"{key} {dtype}")
                except Exception as e:
                    failures.append(f"{fn.__name__} {dtype} {constexprs}: {type(e).__name__}: {str(e)[:400]}")
print(f"compiled {count}")
for key, rule in sorted(seen_exceptions):
    print("VIOLATION", key, rule)
stale = set(EXCEPTIONS) - seen_exceptions
for key, rule in sorted(stale):
    failures.append(f"{key} {rule}: listed as an exception but no longer broken; take it off the list")
if len(row_tiles) < 5:
    failures.append(f"the upsampling backward's row kernel was compiled for {len(row_tiles)} tiles only")
# the plain elementwise epilogue and the row-pair fade backward must read and write 16 bytes per instruction
for name in ("_bias_act_kernel", "_fade_in_bwd_rows_kernel"):
    for dtype in ("fp32", "bf16"):
        if vector_io.get((name, dtype)) != (True, True):
            failures.append(f"{name} {dtype}: no 16-byte vector loads/stores in the PTX")
for f in failures:
    print("FAILED", f)
sys.exit(1 if failures else 0)
"""


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    pytest.importorskip("triton", reason="Triton is not installed")
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=1200)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    assert int(p.stdout.split("compiled ")[1].split()[0]) >= 40
