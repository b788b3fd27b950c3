"""The static report of a build of the CUDA kernels: what each kernel compiled to, and the byte floor of each op.

For every kernel of csrc/ops_cuda.cu compiled for ARCH: registers, spill bytes, stack frame, shared memory,
theoretical occupancy at its 256-thread blocks, 128-bit global loads/stores, local loads/stores (LDL/STL), and the
64-bit integer division routines it calls (fastpggan._static). For every architecture a GPU-less build targets
(--archs, default _build.DEFAULT_ARCHS), a summary line of the same facts over all kernels. For every op, the
least bytes it must move at the largest PGGAN shape it runs on (v2-1gpu minibatch, Table-2 widths, bf16
activations as under the default autocast, fp32 per-pixel/per-sample statistics) and the ideal time at PEAK_TBS:
the roofline floor a GPU measurement will be held to.

usage: python benchmarks/static_report.py [--arch sm_90] [--archs sm_75,...] [--peak-tbs 3.35]
           > benchmarks/results/static-sm90-DATE.md
"""

import argparse
import datetime
import subprocess
import sys
import tempfile

from _child import write_text
from fastpggan import _static

BF16, FP32 = 2, 4


def op_floors():
    """(op, where, bytes): reads + writes of each op at its largest PGGAN shape."""
    n, c, r = 4, 16, 1024  # the 1024^2 stage: minibatch 4, 16 feature maps
    act = n * c * r * r  # one activation tensor there
    d_fade = 4 * 32 * 512 * 512  # D's fade at 1024^2: two (4, 32, 512, 512) maps
    rgb = n * 3 * r * r  # images at 1024^2
    mb = 128 * 512 * 4 * 4  # minibatch stddev at 4x4, minibatch 128, 512 maps
    return [
        ("bias_act (LReLU epilogue)", "D 1024^2: (4, 16, 1024, 1024)", 2 * act * BF16),
        ("bias_act backward", "same", 3 * act * BF16),
        ("bias_act + pixel norm", "G 1024^2: (4, 16, 1024, 1024)", 2 * act * BF16 + n * r * r * FP32),
        ("bias_act + pixel norm backward", "same", 3 * act * BF16 + n * r * r * FP32),
        ("fade_in, same size", "D 1024^2: (4, 32, 512, 512)", 3 * d_fade * BF16),
        ("fade_in, same size, backward", "same", 3 * d_fade * BF16),
        ("fade_in, upsampling", "G output 1024^2: (4, 3, 512^2) -> (4, 3, 1024^2)", (2 * rgb + rgb // 4) * BF16),
        ("fade_in, upsampling, backward", "same", (2 * rgb + rgb // 4) * BF16),
        ("minibatch_stddev", "D 4x4: (128, 512, 4, 4) -> (128, 513, 4, 4)", (mb + 128 * 513 * 16) * BF16),
        ("minibatch_stddev backward", "same", (128 * 513 * 16 + 2 * mb) * BF16),
        ("gradient_penalty (norms)", "D input 1024^2: (4, 3, 1024, 1024)", rgb * BF16),
        ("gradient_penalty backward", "same", 2 * rgb * BF16),
        ("gp_interpolate", "same", 3 * rgb * BF16),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sm_90")
    p.add_argument(
        "--archs",
        default=",".join(_static.build_archs()),
        help="comma-separated architectures for the summary (default: those of a GPU-less build)",
    )
    p.add_argument("--peak-tbs", type=float, default=3.35, help="HBM bandwidth for the ideal times (H100 SXM)")
    p.add_argument("-o", "--output", help="write the markdown here (whole or not at all), not to stdout")
    args = p.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    tables = {}
    with tempfile.TemporaryDirectory() as d:
        for arch in dict.fromkeys([args.arch, *archs]):
            tables[arch] = _static.kernels(*_static.compile_cubin(arch, d))
    table = tables[args.arch]
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    import torch

    out = [
        f"# Static report: the CUDA kernels of fastpggan._C compiled for {args.arch}",
        "",
        f"- commit {commit or '?'}, {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, nvcc from {_static._build.find_cuda_home()}",
        f"- command: `python benchmarks/static_report.py --arch {args.arch} --archs {','.join(archs)} "
        f"--peak-tbs {args.peak_tbs:g}`",
        "- read from the compiled code (ptxas -v, nvdisasm); nothing ran on a GPU",
        "",
        "## Ops: the byte floor at the largest PGGAN shape",
        "",
        f"| op | shape | least bytes | ideal time at {args.peak_tbs:g} TB/s |",
        "|---|---|---:|---:|",
    ]
    for name, where, nbytes in op_floors():
        out.append(f"| {name} | {where} | {nbytes / 1e6:.1f} MB | {nbytes / (args.peak_tbs * 1e12) * 1e6:.1f} µs |")
    out += [
        "",
        "## Every architecture of a GPU-less build",
        "",
        "Over all kernels: how many have a stack frame, the spill bytes and local loads/stores (LDL/STL) in "
        "their SASS, how many call a 64-bit division routine, and the most registers any kernel uses.",
        "",
        "| arch | kernels | with a stack frame | spill bytes | LDL | STL | calling div64 | most registers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch in archs:
        ks = list(tables[arch].values())
        out.append(
            f"| {arch} | {len(ks)} | {sum(k.stack_bytes > 0 for k in ks)} | "
            f"{sum(k.spill_bytes for k in ks)} | {sum(k.local_loads for k in ks)} | "
            f"{sum(k.local_stores for k in ks)} | {sum(bool(k.int64_division) for k in ks)} | "
            f"{max(k.registers for k in ks)} |"
        )
    out += [
        "",
        f"## Kernels at {args.arch}",
        "",
        "Occupancy: theoretical, at 256 threads per block, from registers and shared memory (sm_90 limits). "
        "Stack: the frame in bytes; LDL/STL: local-memory loads and stores in the SASS. "
        "`div64`: the 64-bit integer division/remainder routines the kernel calls.",
        "",
        "| kernel | registers | spill bytes | stack bytes | shared bytes | occupancy | 128-bit loads | "
        "128-bit stores | LDL | STL | div64 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in sorted(table):
        k = table[name]
        short = name.split(">(", 1)[0] + ">"
        out.append(
            f"| `{short}` | {k.registers} | {k.spill_bytes} | {k.stack_bytes} | {k.shared_bytes} | "
            f"{k.occupancy:.0%} | {k.ld128} | {k.st128} | {k.local_loads} | {k.local_stores} | "
            f"{', '.join(d.split('_', 3)[-1] for d in k.int64_division) or '-'} |"
        )
    write_text(args.output, "\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
