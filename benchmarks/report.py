"""Turn a pytest-benchmark JSON into a markdown table: median per case, ratio to the group's ref, GB/s or img/s.

usage: python benchmarks/report.py RESULTS.json [--peak-gbs GB/s] > RESULTS.md
"""
import argparse
import json
from collections import defaultdict


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--peak-gbs", type=float, default=None, help="measured device bandwidth, for the fraction column")
    args = p.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    m = data.get("machine_info", {})
    c = data.get("commit_info", {})
    print(f"# Benchmarks: {m.get('node', '?')} ({m.get('cpu', {}).get('brand_raw', '?')})\n")
    print(f"commit {c.get('id', '?')[:12]}{' (dirty)' if c.get('dirty') else ''}, {data.get('datetime', '?')}\n")
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"]].append(b)
    print("| group | case | device | median ms | vs ref | throughput |")
    print("|---|---|---|---:|---:|---:|")
    for g in sorted(groups):
        rows = groups[g]
        ref = next((r["stats"]["median"] for r in rows if r["extra_info"].get("impl", "ref") == "ref"), None)
        for r in rows:
            med, info = r["stats"]["median"], r["extra_info"]
            ratio = f"{ref / med:.2f}x" if ref else "-"
            if "bytes" in info:
                gbs = info["bytes"] / med / 1e9
                tp = f"{gbs:.1f} GB/s" + (f" ({gbs / args.peak_gbs:.0%} of peak)" if args.peak_gbs else "")
            elif "images" in info:
                tp = f"{info['images'] / med:.1f} img/s"
            else:
                tp = "-"
            print(f"| {g} | {r['name'].split('[')[-1].rstrip(']')} | {info.get('device', '?')} | {med * 1e3:.3f} | "
                  f"{ratio} | {tp} |")


if __name__ == "__main__":
    main()
