"""img/s of a real training run, read from its log.jsonl (one record per tick: kimg, res, img_per_s, ...).

The first tick at a resolution pays that stage's start (tuning, CUDA-graph capture, compiles), so the figure is the
median of the later ticks there, with the first shown beside it.

usage: python benchmarks/train_summary.py RUN/log.jsonl [--res 256] [--copy OUT.jsonl] [-o OUT.md]
"""

import argparse
import json
import shutil
import statistics

from _child import write_text


def summarize(records, res):
    """Markdown for the ticks at `res` of `records` (log.jsonl lines)."""
    ticks = [r for r in records if r.get("res") == res and "img_per_s" in r]
    out = [f"# Training run: img/s at {res}x{res}", ""]
    if not ticks:
        seen = sorted({r.get("res") for r in records if "res" in r})
        return "\n".join(out + [f"No tick at {res}x{res} in the log (resolutions reached: {seen or 'none'})."]) + "\n"
    later = [t["img_per_s"] for t in ticks[1:]] or [ticks[0]["img_per_s"]]
    out += [
        f"median img/s over {len(later)} tick(s) after the first: **{statistics.median(later):.1f}** "
        f"(first tick {ticks[0]['img_per_s']:.1f}, with the stage's start)",
        "",
        "| tick | kimg | minibatch | img/s | sec/kimg | peak MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {t['tick']} | {t['kimg']} | {t.get('minibatch', '-')} | {t['img_per_s']} | "
        f"{t.get('sec_per_kimg', '-')} | {t.get('peak_mem_mb', '-')} |"
        for t in ticks
    ]
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", help="a run's log.jsonl")
    p.add_argument("--res", type=int, default=256, help="the resolution whose ticks to summarize")
    p.add_argument("--copy", help="also copy the log here")
    p.add_argument("-o", "--output", help="write the markdown here (whole or not at all), not to stdout")
    args = p.parse_args(argv)
    with open(args.log) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if args.copy:
        shutil.copyfile(args.log, args.copy)
    write_text(args.output, summarize(records, args.res))


if __name__ == "__main__":
    main()
