"""Turn a pytest-benchmark JSON into a markdown report: per group, each backend's median, its speed-up over
'ref' and over 'compiled' (the same kernel ops in plain PyTorch through torch.compile: what inductor gives for
free) in the same run, and its throughput (GB/s and the fraction of the measured copy bandwidth, or img/s).

Training-step results (benchmarks/test_train_step.py) get their own table: img/s of each variant, its ratio to
(1) ref-fp32, (2) ref-bf16-cl and (3) the best a plain-PyTorch user gets from the compiler (the ref step compiled
whole: ref-bf16-cl-compiled on CUDA, ref-compiled-fp32 on the CPU) in the same run, peak memory, TFLOP/s and MFU
(counted FLOPs per step over the median, as a fraction of the measured bf16 matmul peak), and a projection of the
official schedule's wall time:

    hours = sum over resolutions r of  kimg(r) * 1000 / img_per_s(r) / 3600

with kimg(r) the images the v2-1gpu preset (12000 kimg to 1024x1024) shows at resolution r, transitions included.

Last, one table of ratios (`ratio_table`, which benchmarks/conftest.py also prints at the end of every benchmark
run): each of our variants against ref, against the compiler and against the peer pro-gan-pth, where present.

usage: python benchmarks/report.py RESULTS.json [--command "pytest ..."] [--peak-gbs GB/s] > RESULTS.md
"""

import argparse
import json
from collections import defaultdict

from _child import write_text

TRAIN_STEP = "train step "
BASELINES = ("ref-fp32", "ref-bf16-cl", ("ref-bf16-cl-compiled", "ref-compiled-fp32"))  # (3): the first present

DEFAULT_COMMAND = "pytest benchmarks/ --benchmark-only --benchmark-json RESULTS.json"


def _header(data, command):
    m, c = data.get("machine_info", {}), data.get("commit_info", {})
    info = next((b.get("extra_info", {}) for b in data.get("benchmarks", [])), {})
    devices = sorted({b.get("extra_info", {}).get("device", "?") for b in data.get("benchmarks", [])})
    lines = [
        f"# Benchmarks: {', '.join(devices)}",
        "",
        f"- host: {m.get('node', '?')} ({m.get('cpu', {}).get('brand_raw', '?')})",
        f"- torch {info.get('torch', '?')}, triton {info.get('triton', '?')}, CUDA {info.get('cuda', '-')}",
        f"- commit {c.get('id', '?')[:12]}{' (dirty)' if c.get('dirty') else ''}, {data.get('datetime', '?')}",
        f"- command: `{command}`",
    ]
    bws = {
        b["extra_info"]["bandwidth_gbs"]
        for b in data.get("benchmarks", [])
        if "bandwidth_gbs" in b.get("extra_info", {})
    }
    if bws:
        lines.append(f"- measured copy bandwidth (1 GiB device-to-device, read + write): {max(bws):.0f} GB/s")
    return "\n".join(lines) + "\n"


def _throughput(info, median, peak):
    if "bytes" in info:
        gbs = info["bytes"] / median / 1e9
        peak = info.get("bandwidth_gbs", peak)
        return f"{gbs:.1f} GB/s" + (f" ({gbs / peak:.0%})" if peak else "")
    if "images" in info:
        return f"{info['images'] / median:.1f} img/s"
    return "-"


def render(data, command=DEFAULT_COMMAND, peak_gbs=None):
    out = [
        _header(data, command),
        "Median per case; `vs ref` = ref median / this median in the same run (higher is faster), `vs "
        "compiled` likewise against impl='compiled' (torch.compile of the op's plain-PyTorch kernels); "
        "GB/s counts the minimum bytes the op must move (see each suite's docstring), with the fraction of "
        "the measured copy bandwidth in brackets.\n",
        "| group | impl | median ms | vs ref | vs compiled | throughput |",
        "|---|---|---:|---:|---:|---:|",
    ]
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        if not (b.get("group") or "").startswith(TRAIN_STEP):
            groups[b.get("group") or b["name"]].append(b)
    for g in sorted(groups):
        rows = groups[g]
        ref = next((r["stats"]["median"] for r in rows if r["extra_info"].get("impl", "ref") == "ref"), None)
        comp = next((r["stats"]["median"] for r in rows if r["extra_info"].get("impl") == "compiled"), None)
        for r in sorted(rows, key=lambda r: r["stats"]["median"]):
            med, info = r["stats"]["median"], r["extra_info"]
            ratios = [f"{base / med:.2f}x" if base else "-" for base in (ref, comp)]
            impl = info.get("impl", r["name"].split("[")[-1].rstrip("]"))
            out.append(
                f"| {g} | {impl} | {med * 1e3:.3f} | {ratios[0]} | {ratios[1]} | {_throughput(info, med, peak_gbs)} |"
            )
    if not groups:
        out = out[:1]
    return "\n".join(out) + "\n" + render_train_steps(data) + ratio_table(data["benchmarks"])


def kimg_per_resolution(preset="v2-1gpu", max_resolution=1024):
    """{resolution: kimg shown there} over the preset's whole schedule, fade-in into a resolution counted at it."""
    from fastpggan.schedule import PRESETS, Schedule

    p = PRESETS[preset]
    sched = Schedule(
        max_resolution=max_resolution,
        lod_training_kimg=p["lod_training_kimg"],
        lod_transition_kimg=p["lod_transition_kimg"],
        minibatch_base=p["minibatch_base"],
        minibatch=p["minibatch"],
    )
    out = defaultdict(float)
    for k in range(int(p["total_kimg"])):  # the resolution at the middle of each kimg
        out[sched.at(k * 1000 + 500).resolution] += 1.0
    return dict(out)


def _train_rows(data):
    """{device: {res: {variant: (img/s, median, extra_info)}}}"""
    rows = defaultdict(lambda: defaultdict(dict))
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if (b.get("group") or "").startswith(TRAIN_STEP) and "images" in info:
            med = b["stats"]["median"]
            rows[info.get("device", "?")][int(info["res"])][info["impl"]] = (info["images"] / med, med, info)
    return rows


def project_hours(per_res, kimg):
    """Projected hours of the schedule from {res: img/s}; None if a resolution the schedule visits is missing."""
    if any(r not in per_res for r in kimg):
        return None
    return sum(k * 1000 / per_res[r] for r, k in kimg.items()) / 3600


def render_train_steps(data, preset="v2-1gpu"):
    rows = _train_rows(data)
    if not rows:
        return ""
    out = []
    for device, by_res in rows.items():
        out += [
            "",
            f"## Training step on {device}",
            "",
            "One D step (WGAN-GP) + G step + EMA, alpha 0.5, at the suite's minibatch (v2-1gpu on CUDA). "
            "`vs (1)`/`vs (2)`/`vs (3)`: "
            "speed over ref-fp32, ref-bf16-cl and the ref step compiled whole (ref-bf16-cl-compiled, or "
            "ref-compiled-fp32 on the CPU) in the same run. MFU: counted FLOPs per step / median / the "
            "measured bf16 matmul peak.",
            "",
            "| res | variant | img/s | vs (1) | vs (2) | vs (3) | peak MB | TFLOP/s | MFU |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for res in sorted(by_res):
            variants = by_res[res]
            base = [
                next((variants[n][0] for n in ((b,) if isinstance(b, str) else b) if n in variants), None)
                for b in BASELINES
            ]
            for name, (ips, med, info) in sorted(variants.items(), key=lambda kv: -kv[1][0]):
                ratios = [f"{ips / b:.2f}x" if b else "-" for b in base]
                tflops = info["flops"] / med / 1e12 if info.get("flops") else None
                peak = info.get("matmul_peak_tflops")
                out.append(
                    f"| {res} | {name} | {ips:.1f} | {ratios[0]} | {ratios[1]} | {ratios[2]} | "
                    f"{info.get('peak_mem_mb', '-')} | {f'{tflops:.3g}' if tflops else '-'} | "
                    f"{f'{tflops / peak:.1%}' if tflops and peak else '-'} |"
                )
        peaks = {v[2].get("matmul_peak_tflops") for r in by_res.values() for v in r.values()} - {None}
        if peaks:
            out.append(f"\nmeasured bf16 matmul peak (8192^3, median of 20): {max(peaks):.0f} TFLOP/s")
        kimg = kimg_per_resolution(preset)
        names = sorted({n for r in by_res.values() for n in r})
        projected = {n: project_hours({r: v[n][0] for r, v in by_res.items() if n in v}, kimg) for n in names}
        projected = {n: h for n, h in projected.items() if h is not None}
        if projected:
            out += [
                "",
                f"### Projected wall time of the {preset} schedule ({sum(kimg.values()):.0f} kimg to "
                f"{max(kimg)}x{max(kimg)})",
                "",
                "kimg per resolution: "
                + ", ".join(f"{r}: {k:g}" for r, k in sorted(kimg.items()))
                + ". Every step is timed at alpha 0.5, so stable phases (no fade branch) are slightly "
                "overestimated.",
                "",
                "| variant | hours | days |",
                "|---|---:|---:|",
            ]
            for n, h in sorted(projected.items(), key=lambda kv: kv[1]):
                out.append(f"| {n} | {h:.2f} | {h / 24:.2f} |")
    return "\n".join(out) + "\n"


def _speed(b):
    """Work per second of a benchmark row: img/s where it counts images, else calls per second."""
    med = b["stats"]["median"]
    return b["extra_info"].get("images", 1) / med if med else None


def _kind(b):
    """(kernels, compiled, precision) of a row: an op case by its impl and dtype, a step variant by the kernels,
    compiled_step and amp of its extra_info; the peer is kernels 'peer'."""
    info = b["extra_info"]
    if "kernels" in info:
        return info["kernels"], bool(info.get("compiled_step")), info.get("amp") or "None"
    impl = info.get("impl", "ref")
    return ("ref", True, info.get("dtype")) if impl == "compiled" else (impl, False, info.get("dtype"))


def _baseline(rows, kernels, compiled, precision):
    """The fastest row of `rows` with these kernels and compilation, the same precision preferred; None if absent."""
    found = [r for r in rows if _kind(r)[:2] == (kernels, compiled)]
    same = [r for r in found if _kind(r)[2] == precision]
    return max(same or found, key=_speed, default=None)


def ratio_table(benchmarks):
    """Markdown: each of our variants (every row whose kernels are not ref or the peer) against the same group's
    ref (eager), compiled (impl='compiled' for an op; the ref step compiled whole for a step) and the peer, as
    speed ratios (higher is faster). A step's baselines are of its own precision where the run has one, named in
    brackets otherwise."""
    groups = defaultdict(list)
    for b in benchmarks:
        if b.get("stats") and b["stats"].get("median") and b.get("extra_info"):
            groups[b.get("group") or b["name"]].append(b)
    out = []
    for g in sorted(groups):
        rows = groups[g]
        for r in sorted(rows, key=lambda r: -_speed(r)):
            kernels, compiled, precision = _kind(r)
            if kernels in ("ref", "peer"):
                continue
            cells = []
            for base in (
                _baseline(rows, "ref", False, precision),
                _baseline(rows, "ref", True, precision),
                _baseline(rows, "peer", False, precision),
            ):
                if base is None:
                    cells.append("-")
                    continue
                note = "" if _kind(base)[2] == precision else f" ({base['extra_info'].get('impl', '?')})"
                cells.append(f"{_speed(r) / _speed(base):.2f}x{note}")
            if cells == ["-"] * 3:  # nothing of the same group to compare with (a tuning time, say)
                continue
            name = r["extra_info"].get("impl", r["name"])
            out.append(f"| {g} | {name} | {r['stats']['median'] * 1e3:.3f} | " + " | ".join(cells) + " |")
    if not out:
        return ""
    return (
        "\n".join(
            [
                "",
                "## Ratios: ours against ref, the compiler and the peer",
                "",
                "Speed over the same group's ref (eager), compiled (an op: impl='compiled'; a step: the ref "
                "step compiled whole) and the peer pro-gan-pth, in the same run; higher is faster. A "
                "baseline of another precision is named in brackets.",
                "",
                "| group | ours | median ms | vs ref | vs compiled | vs peer |",
                "|---|---|---:|---:|---:|---:|",
            ]
            + out
        )
        + "\n"
    )


def load(path):
    """A pytest-benchmark JSON, or the JSON lines of `--results-jsonl` (a header line, then one line per case, as
    each was measured) in the same shape."""
    with open(path) as f:
        if not path.endswith(".jsonl"):
            return json.load(f)
        data = {"benchmarks": []}
        for line in f:
            if line.strip():
                obj = json.loads(line)
                if "header" in obj:
                    data.update(obj["header"])
                else:
                    data["benchmarks"].append(obj)
        return data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="--benchmark-json output, or a --results-jsonl file (.jsonl)")
    p.add_argument("--command", default=DEFAULT_COMMAND, help="the command that produced the JSON, for the header")
    p.add_argument("-o", "--output", help="write the markdown here (whole or not at all), not to stdout")
    p.add_argument(
        "--peak-gbs",
        type=float,
        default=None,
        help="bandwidth for the fraction where the JSON has no measured one (CPU runs)",
    )
    args = p.parse_args(argv)
    write_text(args.output, render(load(args.json), args.command, args.peak_gbs))


if __name__ == "__main__":
    main()
