"""Images from a trained checkpoint: `python -m fastpggan.generate --checkpoint PATH [--seeds 0-15] ...`.

Writes a grid (default), single images (--singles), and/or a latent interpolation (--interp FRAMES) as PNG
frames or an animated GIF (--gif). Uses G_ema, at the resolution and fade-in the checkpoint had reached.
"""

import argparse
import math
import os
from typing import Callable, Optional

import torch

from . import checkpoint as ckpt
from . import writes
from .errors import ArgumentParser, UserError, cli_entry, number
from .images import to_pil, to_uint8, write_grid
from .runtime import device_memory, pick_device


def parse_seeds(text):
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    seeds = []
    try:
        for part in text.split(","):
            part = part.strip()
            if part.startswith("-"):
                raise UserError(f"--seeds are whole numbers >= 0, got {text!r}")
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b - a >= 100000:
                    raise UserError(f"--seeds must select at most 100000 seeds, got {text!r}")
                seeds.extend(range(a, b + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"--seeds must look like '0-15' or '1,5,9', got {text!r}") from None
    if not seeds:
        raise UserError("--seeds selects no seed")
    if len(seeds) > 100000 or min(seeds) < 0 or max(seeds) >= 2**32:
        raise UserError(f"--seeds must select at most 100000 seeds in [0, 2^32), got {text!r}")
    return seeds


def latents_for(seeds, latent_size):
    """One N(0, I) latent per seed, the same on every machine."""
    return torch.stack([torch.randn(latent_size, generator=torch.Generator().manual_seed(s)) for s in seeds])


def slerp(a, b, t):
    """Spherical interpolation between latents a and b (rows), t in [0, 1]."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.generate", description="Generate images from a fastpggan checkpoint (through G_ema)."
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint_<kimg>.pt written by fastpggan.train, or fastpggan.convert's"
    )
    p.add_argument("--seeds", default="0-15", help="latent seeds, e.g. '0-15' or '3,7,42'")
    p.add_argument("--out", default="generated", help="output folder")
    p.add_argument("--singles", action="store_true", help="also write one PNG per seed")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    p.add_argument(
        "--interp",
        type=number(int, min=0, max=10000),
        default=0,
        metavar="FRAMES",
        help="interpolate between consecutive seeds with this many frames per pair (slerp in latent space)",
    )
    p.add_argument("--gif", action="store_true", help="write the interpolation as interp.gif instead of PNG frames")
    p.add_argument("--fps", type=number(int, min=1, max=1000), default=24, help="GIF frame rate")
    p.add_argument(
        "--class",
        dest="label",
        type=number(int, min=0),
        default=None,
        help="class index for a conditional model (default: seed mod classes)",
    )
    p.add_argument("--res", type=int, default=None, help="output resolution (default: where training had got to)")
    p.add_argument("--which", default="G_ema", choices=["G_ema", "G"], help="generator weights to use")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch", type=number(int, min=1), default=16, help="images per forward pass")
    p.add_argument("--force", action="store_true", help=f"make more than {MAX_IMAGES} images in one command")
    return p


MAX_IMAGES = 100000  # per command (seeds and interpolation frames); more only with --force


GRID_MAX_SIDE = 4096  # pixels: the upscaled grid's side stops growing here


def grid_cell(count: int, res: int, final: int) -> int:
    """Each image's side in grid.png: upscaled (nearest) to the network's final resolution, as the training grids
    (fakes_<kimg>.png) are, while the grid's side stays within GRID_MAX_SIDE; never below `res`."""
    cols = math.ceil(math.sqrt(count))
    cell = final
    while cell > res and cols * cell > GRID_MAX_SIDE:
        cell //= 2
    return max(cell, res)


def check_amount(num_seeds: int, interp: int, grid_or_singles: bool, channels: int, res: int, force: bool) -> None:
    """Refuse, before any work, more images than MAX_IMAGES (unless `force`) or than the machine's memory holds
    (every image is held as float32 until it is written; a GIF's frames also as bytes)."""
    frames = (num_seeds - 1) * interp + 1 if interp else 0
    count = (num_seeds if grid_or_singles else 0) + frames
    if count > MAX_IMAGES and not force:
        raise UserError(
            f"--seeds and --interp make {count} images (seeds {num_seeds}, frames {frames}), more than "
            f"{MAX_IMAGES}; use fewer, or add --force"
        )
    need, have = count * channels * res * res * 5, device_memory(torch.device("cpu"))
    if have is not None and need > have:
        raise UserError(
            f"{count} images at {res}x{res} need {need / 2**30:.1f} GiB of memory and this machine has "
            f"{have / 2**30:.1f} GiB; use fewer --seeds or --interp frames, or a lower --res"
        )


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that would do nothing in this combination, before any work."""
    if args.gif and not args.interp:
        raise UserError("--gif writes the --interp frames as a GIF; add --interp FRAMES, or leave out --gif")
    if args.no_grid and not args.singles and not args.interp:
        raise UserError("--no-grid without --singles or --interp leaves nothing to write")


def run(args: argparse.Namespace, log: Callable = print) -> list:
    check_flags(args)
    seeds = parse_seeds(args.seeds)
    if args.interp and len(seeds) < 2:
        raise UserError("--interp needs at least two seeds")
    writes.check_folder(args.out, "--out")
    device = pick_device(args.device)
    G, state = ckpt.load_generator(args.checkpoint, which=args.which, device=device)
    prog = state["progress"]
    res, alpha = (args.res, 1.0) if args.res is not None else (int(prog["resolution"]), float(prog["alpha"]))
    if res < 4 or res & (res - 1) or res > G.resolution:
        raise UserError(f"--res must be a power of two between 4 and {G.resolution}, got {res}")
    if args.label is not None and not G.label_size:
        raise UserError(f"--class picks a label of a conditional model; {args.checkpoint} is unconditional")
    check_amount(len(seeds), args.interp, not args.no_grid or args.singles, G.num_channels, res, args.force)
    os.makedirs(args.out, exist_ok=True)

    def synth(z, seed_list):
        labels = None
        if G.label_size:
            labels = torch.tensor([args.label if args.label is not None else s % G.label_size for s in seed_list])
            if labels.max() >= G.label_size or labels.min() < 0:
                raise UserError(f"--class must be in [0, {G.label_size})")
            labels = labels.to(device)
        with torch.no_grad():
            return torch.cat(
                [
                    G(
                        z[i : i + args.batch].to(device),
                        res,
                        alpha,
                        None if labels is None else labels[i : i + args.batch],
                    )
                    for i in range(0, len(z), args.batch)
                ]
            ).cpu()

    z = latents_for(seeds, G.latent_size)
    imgs = synth(z, seeds)
    written = []
    if not args.no_grid:
        written.append(os.path.join(args.out, "grid.png"))
        write_grid(imgs, written[-1], upscale_to=grid_cell(len(seeds), res, G.resolution))
    if args.singles:
        for s, img in zip(seeds, imgs):
            written.append(os.path.join(args.out, f"seed{s:04d}.png"))
            write_grid(img[None], written[-1])
    if args.interp:
        zs, ss = [], []
        for a, b, sa in zip(z[:-1], z[1:], seeds[:-1]):
            for f in range(args.interp):
                zs.append(slerp(a, b, torch.tensor(f / args.interp)))
                ss.append(sa)
        zs.append(z[-1])
        ss.append(seeds[-1])
        frames = synth(torch.stack(zs), ss)
        if args.gif:
            pil = [to_pil(to_uint8(f)) for f in frames]
            written.append(os.path.join(args.out, "interp.gif"))
            writes.atomic(
                written[-1],
                lambda tmp: pil[0].save(
                    tmp,
                    format="GIF",
                    save_all=True,
                    append_images=pil[1:],
                    duration=max(1, round(1000 / args.fps)),
                    loop=0,
                ),
            )
        else:
            fdir = os.path.join(args.out, "interp")
            for i, f in enumerate(frames):
                write_grid(f[None], os.path.join(fdir, f"{i:05d}.png"))
            written.append(fdir + os.sep)
    log(f"{len(seeds)} seeds at {res}x{res} (alpha {alpha:g}) -> " + ", ".join(written))
    return written


@cli_entry
def main(argv: Optional[list] = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
