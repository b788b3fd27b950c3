"""A checkpoint's generator for deployment: `python -m fastpggan.export --checkpoint PATH --onnx OUT.onnx`.

The ONNX file is made by torch.onnx.export (the torch.export-based exporter, one self-contained file) from
`FixedGenerator`: inputs `latents` (N, latent_size) and, for a conditional G, `labels` (N, label_size) one-hot or
soft (official G_paper's labels_in); output `images` (N, C, R, R) in about [-1, 1]; N is dynamic. The export pins
the reference ops (fastpggan.ops.backends.pin('ref')), so the graph holds only standard ONNX operators.
Before the file is kept, onnxruntime runs it at batch 1 and 5 against PyTorch, where onnxruntime is installed.
The export runs on the CPU.
`--torchscript OUT.pt` writes a torch.jit.trace of the same module too.
"""

import argparse
import contextlib
import io
import logging
import os
import warnings
from typing import Callable, Optional

import torch

from . import checkpoint as ckpt
from . import ops, writes
from .errors import ArgumentParser, UserError, cli_entry, number

TOLERANCE = 1e-4  # ONNX Runtime vs PyTorch, relative to the largest output magnitude (fp32)


class FixedGenerator(torch.nn.Module):
    """G at one resolution and fade-in, as a plain function of its inputs: what export writes.

    Args:
        G: a fastpggan Generator.
        res: output resolution, a power of two up to G.resolution.
        alpha: fade-in of the newest block, in [0, 1].
    """

    def __init__(self, G: torch.nn.Module, res: int, alpha: float = 1.0):
        super().__init__()
        self.G, self.res, self.alpha = G, int(res), float(alpha)

    def forward(self, latents: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.G(latents, self.res, self.alpha, labels)


@contextlib.contextmanager
def _tracing():
    """The reference ops pinned, so the graph holds only standard operators on every torch we claim ('auto' finds
    an export by itself only from torch 2.7, torch.compiler.is_exporting), and the exporters' progress lines and
    warnings about themselves silenced (their errors still raise)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with ops.backends.pin("ref"), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def example_inputs(G: torch.nn.Module, n: int, seed: int = 0) -> tuple:
    """(latents,) or (latents, one-hot labels) of batch n."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.latent_size, generator=gen)
    if not G.label_size:
        return (z,)
    return z, torch.nn.functional.one_hot(torch.randint(G.label_size, (n,), generator=gen), G.label_size).float()


def export_onnx(module: FixedGenerator, path: str, opset: Optional[int] = None) -> None:
    """Write `module` to `path` as ONNX with named inputs and a dynamic batch axis (not atomically; see
    write_onnx)."""
    try:
        import onnx  # torch.onnx.export needs onnx and onnxscript
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): pip install 'fastpggan[export]'"
        ) from None
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and opset > newest:
        raise UserError(
            f"--opset {opset} is newer than the installed onnx knows (up to {newest}); choose 18 to "
            f"{newest}, or upgrade onnx"
        )
    names = ["latents", "labels"][: 2 if module.G.label_size else 1]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with _tracing():
        torch.onnx.export(
            module,
            example_inputs(module.G, 2),
            path,
            input_names=names,
            output_names=["images"],
            dynamic_shapes=tuple({0: batch} for _ in names),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    wrote = {o.domain: o.version for o in onnx.load(path, load_external_data=False).opset_import}.get("")
    if opset is not None and wrote != opset:  # the exporter falls back to its own opset where converting fails
        raise UserError(
            f"the exporter could not write opset {opset} (it wrote {wrote}); nothing was written; "
            "choose another --opset, or leave it out"
        )


def write_onnx(module: FixedGenerator, path: str, opset: Optional[int] = None) -> Optional[float]:
    """export_onnx to `path` atomically, kept only if onnxruntime equals PyTorch within TOLERANCE; returns that
    error (None where onnxruntime is not installed)."""
    err = None

    def write(tmp):
        nonlocal err
        export_onnx(module, tmp, opset)
        err = check_onnx(module, tmp)
        if err is not None and err > TOLERANCE:
            raise RuntimeError(
                f"onnxruntime's images differ from PyTorch's by {err:.1e} (relative; bound "
                f"{TOLERANCE:g}); nothing was written"
            )

    writes.atomic(path, write)
    return err


def check_onnx(module: FixedGenerator, path: str, batches=(1, 5)) -> Optional[float]:
    """The largest error of onnxruntime against PyTorch over `batches`, relative to the largest output magnitude,
    or None where onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for n in batches:
        inputs = example_inputs(module.G, n, seed=n)
        with torch.no_grad():
            want = module(*inputs)
        got = torch.from_numpy(session.run(["images"], {k: v.numpy() for k, v in zip(names, inputs)})[0])
        if got.shape != want.shape:
            raise RuntimeError(
                f"onnxruntime gave images of shape {tuple(got.shape)} for batch {n}, PyTorch {tuple(want.shape)}"
            )
        worst = max(worst, ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item())
    return worst


def export_torchscript(module: FixedGenerator, path: str) -> None:
    """Write a torch.jit.trace of `module` to `path`, atomically."""
    with _tracing():
        traced = torch.jit.trace(module, example_inputs(module.G, 2), check_trace=False)
    writes.atomic(path, traced.save)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fastpggan.export",
        description="Export a checkpoint's generator to ONNX (and TorchScript) with a dynamic batch.",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint of fastpggan.train or fastpggan.convert")
    p.add_argument("--onnx", default=None, metavar="OUT.onnx", help="ONNX file to write")
    p.add_argument("--torchscript", default=None, metavar="OUT.pt", help="TorchScript file to write (jit.trace)")
    p.add_argument("--which", default="G_ema", choices=["G_ema", "G"], help="generator weights to export")
    p.add_argument("--res", type=int, default=None, help="output resolution (default: the checkpoint's)")
    p.add_argument("--alpha", type=number(min=0, max=1), default=None, help="fade-in of the newest block (default: 1)")
    p.add_argument("--opset", type=number(int, min=18), default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    return p


def run(args: argparse.Namespace, log: Callable = print) -> list:
    outputs = [p for p in (args.onnx, args.torchscript) if p]
    if not outputs:
        raise UserError("nothing to write: pass --onnx OUT.onnx and/or --torchscript OUT.pt")
    if args.opset is not None and not args.onnx:
        raise UserError("--opset sets the ONNX file's opset; add --onnx OUT.onnx, or leave out --opset")
    if args.onnx and args.torchscript and os.path.abspath(args.onnx) == os.path.abspath(args.torchscript):
        raise UserError(f"--onnx and --torchscript name the same file '{args.onnx}'; give each its own")
    for out in outputs:
        writes.check_output(out, "--onnx" if out == args.onnx else "--torchscript", args.force, (args.checkpoint,))
    G, state = ckpt.load_generator(args.checkpoint, which=args.which, device="cpu")
    res = args.res if args.res is not None else int(state["progress"]["resolution"])
    if res < 4 or res & (res - 1) or res > G.resolution:
        raise UserError(f"--res must be a power of two between 4 and {G.resolution}, got {res}")
    alpha = 1.0 if args.alpha is None else float(args.alpha)
    module = FixedGenerator(G, res, alpha).eval()
    what = f"{args.which} at {res}x{res}, alpha {alpha:g}"
    if args.onnx:
        err = write_onnx(module, args.onnx, args.opset)
        inputs = "latents, labels" if G.label_size else "latents"
        log(
            f"wrote {args.onnx}: {what}; inputs {inputs}, output images; "
            + (
                "onnxruntime not installed, not checked"
                if err is None
                else f"onnxruntime equals PyTorch at batch 1 and 5 within {err:.1e}"
            )
        )
    if args.torchscript:
        export_torchscript(module, args.torchscript)
        log(f"wrote {args.torchscript}: {what} (torch.jit.trace)")
    return outputs


@cli_entry
def main(argv: Optional[list] = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
