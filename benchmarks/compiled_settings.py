"""How the 'compiled' backend calls torch.compile, chosen by measurement: graphs, compile seconds, fallbacks and
speed of each setting on a small PGGAN's training passes, each setting in a fresh process, with a cold inductor
cache and then a warm one.

    python benchmarks/compiled_settings.py [--threads 1] [--out benchmarks/results/NAME.md]

Settings (fastpggan/ops/_compiled.py's DYNAMIC, MARK_DYNAMIC and MODE):
    static     dynamic=False: one graph per size
    automatic  dynamic=None: a static graph first, then one recompile per dimension that changes (the choice)
    dynamic    dynamic=True: every size and scalar symbolic from the first compile
    marked     dynamic=None, every tensor dimension marked dynamic at the first call
    marked-max-autotune  marked, mode='max-autotune-no-cudagraphs'

The workload: G forward, D's WGAN-GP loss and both networks' gradients at 4x4, 8x8 and 16x16 (fading in), with
impl='auto' forced to 'compiled' (a failed setting falls back to 'ref', and says so; fmap_base 128, fmap_max 32,
minibatch 8), then the op alone: bias_act forward + backward on [32, 128, 32, 32] fp32. 'pass 2' times the same
passes again (nothing left to compile).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import _child

SETTINGS = {
    "static": (False, False, None),
    "automatic": (None, False, None),
    "dynamic": (True, False, None),
    "marked": (None, True, None),
    "marked-max-autotune": (None, True, "max-autotune-no-cudagraphs"),
}


def child(setting: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from fastpggan import ops
    from fastpggan.losses import d_loss_wgan_gp, g_loss_wgan
    from fastpggan.networks import Discriminator, Generator
    from fastpggan.ops import _compiled, backends

    backends.set_default("compiled")
    _compiled.DYNAMIC, _compiled.MARK_DYNAMIC, _compiled.MODE = SETTINGS[setting]

    torch.manual_seed(0)
    G = Generator(resolution=16, fmap_base=128, fmap_max=32, latent_size=32, impl="auto")
    D = Discriminator(resolution=16, fmap_base=128, fmap_max=32, mbstd_group_size=4, impl="auto")

    def passes():
        t0 = time.perf_counter()
        for res in (4, 8, 16):
            z, reals = torch.randn(8, 32), torch.randn(8, 3, res, res)
            fakes = G(z, res, 0.5)
            d_loss = d_loss_wgan_gp(lambda x: D(x, 0.5), reals, fakes.detach(), impl="auto")
            torch.autograd.grad(d_loss, list(D.parameters()), allow_unused=True)
            torch.autograd.grad(g_loss_wgan(lambda x: D(x, 0.5), fakes), list(G.parameters()), allow_unused=True)
        return time.perf_counter() - t0

    out = dict(setting=setting, pass1_s=passes(), pass2_s=statistics.median(passes() for _ in range(3)))
    x = torch.randn(32, 128, 32, 32, requires_grad=True)
    b = torch.randn(128, requires_grad=True)
    dy = torch.randn_like(x)

    def op():
        t0 = time.perf_counter()
        torch.autograd.grad(ops.bias_act(x, b, gain=0.05, impl="auto"), (x, b), dy)
        return time.perf_counter() - t0

    op()
    out["op_ms"] = 1e3 * statistics.median(op() for _ in range(15))
    total = _compiled.totals()
    out.update(graphs=total.graphs, compile_s=total.compile_s, fallbacks=total.fallbacks, failure=total.failure)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS))
    p.add_argument("--out", default=None, help="write the table (markdown) and its JSON beside it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child.result(child(args.child, args.threads))
        return
    rows = []
    for setting in args.settings:
        with tempfile.TemporaryDirectory() as cache:
            for cache_state in ("cold", "warm"):
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                t0 = time.perf_counter()
                measured = _child.run(
                    [sys.executable, __file__, "--child", setting, "--threads", str(args.threads)],
                    f"{setting} ({cache_state})",
                    env,
                )
                row = dict(measured, cache=cache_state, process_s=time.perf_counter() - t0)
                rows.append(row)
                print(json.dumps(row), flush=True)
    import torch

    from fastpggan.ops import tune_cache

    commit = _child.commit()
    head = (
        f"# compiled backend settings ({tune_cache.device_info('cpu')['name']}, {args.threads} thread(s), "
        f"torch {torch.__version__}, {platform.python_version()}, commit {commit})\n\n"
        f"`python benchmarks/compiled_settings.py --threads {args.threads}`\n\n"
        "| setting | inductor cache | graphs | compile s | fallbacks | pass 1 s | pass 2 s | bias_act fwd+bwd ms "
        "| failure |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n"
    )
    table = head + "".join(
        f"| {r['setting']} | {r['cache']} | {r['graphs']} | {r['compile_s']:.1f} | {r['fallbacks']} | "
        f"{r['pass1_s']:.1f} | {r['pass2_s']:.3f} | {r['op_ms']:.1f} | {r['failure'] or ''} |\n"
        for r in rows
    )
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
