"""Turn a pytest-benchmark JSON into a markdown report: per group, each backend's median, its speed-up over
'ref' in the same run, and its throughput (GB/s and the fraction of the measured copy bandwidth, or img/s).

usage: python benchmarks/report.py RESULTS.json [--command "pytest ..."] [--peak-gbs GB/s] > RESULTS.md
"""
import argparse
import json
from collections import defaultdict

DEFAULT_COMMAND = "pytest benchmarks/ --benchmark-only --benchmark-json RESULTS.json"


def _header(data, command):
    m, c = data.get("machine_info", {}), data.get("commit_info", {})
    info = next((b.get("extra_info", {}) for b in data.get("benchmarks", [])), {})
    devices = sorted({b.get("extra_info", {}).get("device", "?") for b in data.get("benchmarks", [])})
    lines = [f"# Benchmarks: {', '.join(devices)}", "",
             f"- host: {m.get('node', '?')} ({m.get('cpu', {}).get('brand_raw', '?')})",
             f"- torch {info.get('torch', '?')}, triton {info.get('triton', '?')}, CUDA {info.get('cuda', '-')}",
             f"- commit {c.get('id', '?')[:12]}{' (dirty)' if c.get('dirty') else ''}, {data.get('datetime', '?')}",
             f"- command: `{command}`"]
    bws = {b["extra_info"]["bandwidth_gbs"] for b in data.get("benchmarks", []) if "bandwidth_gbs" in b.get("extra_info", {})}
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
    out = [_header(data, command),
           "Median per case; `vs ref` = ref median / this median in the same run (higher is faster); "
           "GB/s counts the minimum bytes the op must move (see each suite's docstring), with the fraction of "
           "the measured copy bandwidth in brackets.\n",
           "| group | impl | median ms | vs ref | throughput |", "|---|---|---:|---:|---:|"]
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"]].append(b)
    for g in sorted(groups):
        rows = groups[g]
        ref = next((r["stats"]["median"] for r in rows if r["extra_info"].get("impl", "ref") == "ref"), None)
        for r in sorted(rows, key=lambda r: r["stats"]["median"]):
            med, info = r["stats"]["median"], r["extra_info"]
            ratio = f"{ref / med:.2f}x" if ref else "-"
            impl = info.get("impl", r["name"].split("[")[-1].rstrip("]"))
            out.append(f"| {g} | {impl} | {med * 1e3:.3f} | {ratio} | {_throughput(info, med, peak_gbs)} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--command", default=DEFAULT_COMMAND, help="the command that produced the JSON, for the header")
    p.add_argument("--peak-gbs", type=float, default=None,
                   help="bandwidth for the fraction where the JSON has no measured one (CPU runs)")
    args = p.parse_args(argv)
    with open(args.json) as f:
        print(render(json.load(f), args.command, args.peak_gbs), end="")


if __name__ == "__main__":
    main()
