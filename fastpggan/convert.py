"""Official PGGAN pickles to fastpggan checkpoints: `python -m fastpggan.convert SRC.pkl DST.pt`.

Reads an official `network-snapshot-*.pkl` or released `karras2018iclr-*.pkl` without TensorFlow and without
running any code from it (fastpggan.official), and writes a checkpoint that fastpggan.generate, evaluate and export
and checkpoint.load_generator / load_discriminator accept. The state passes checkpoint.load's checks before
anything is written, and the file is written atomically.
"""

import argparse
from typing import Callable, Optional

from . import checkpoint as ckpt
from .errors import ArgumentParser, cli_entry
from .official import convert
from .writes import check_output


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.convert",
        description="Convert an official PGGAN network pickle (G, D, Gs) into a fastpggan checkpoint "
        "(G, D, G_ema). No TensorFlow is needed, and nothing in the pickle is run.",
    )
    p.add_argument("src", metavar="SRC.pkl", help="official network pickle")
    p.add_argument("dst", metavar="DST.pt", help="fastpggan checkpoint to write")
    p.add_argument("--force", action="store_true", help="overwrite DST.pt if it exists")
    return p


def run(args: argparse.Namespace, log: Callable = print) -> str:
    check_output(args.dst, "DST", args.force, (args.src,))
    state = convert(args.src)  # checked as checkpoint.load checks, before anything is written
    ckpt.write(state, args.dst)
    net, prog = state["config"]["network"], state["progress"]
    label = f"{net['label_size']} classes" if net["label_size"] else "unconditional"
    log(
        f"{args.src}: official G_paper/D_paper, {net['resolution']}x{net['resolution']}, {net['num_channels']} "
        f"channel(s), {label}, latent {net['latent_size']}, fmap_base {net['fmap_base']}, fmap_max "
        f"{net['fmap_max']}, fused_scale {net['fused_scale']}, mbstd group {net['mbstd_group_size']}; lod "
        f"{prog['lod']:g} = {prog['resolution']}x{prog['resolution']} at alpha {prog['alpha']:g}"
    )
    log(f"wrote {args.dst} (G, D, G_ema = official Gs)")
    return args.dst


@cli_entry
def main(argv: Optional[list] = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
