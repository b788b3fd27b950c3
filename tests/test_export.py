"""fastpggan.export: ONNX (run by onnxruntime) and TorchScript files equal PyTorch at batch 1 and 5 from one file,
and 'auto' runs only standard operators while anything exports our modules."""

import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import official
from conftest import slow
from fastpggan import checkpoint as ckpt
from fastpggan import convert, export, ops
from fastpggan.networks import Generator
from fastpggan.ops import _dispatch
from test_bad_inputs import cli, leftovers, one_line_error

TOLERANCE = 1e-4  # relative to the largest output magnitude, fp32 (the bound; we reach about 1e-6)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{fixture name: checkpoint path}: an unconditional fused 32x32 RGB and a conditional unfused 16x16 gray G."""
    d = tmp_path_factory.mktemp("converted")
    out = {}
    for name in ("pggan_rgb32_fused", "pggan_gray16_nonfused_cond3"):
        out[name] = str(d / f"{name}.pt")
        convert.main([official.fixture(f"{name}.pkl"), out[name]])
    return out


def _inputs(label_size, n, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 16, generator=g)
    if not label_size:
        return (z,)
    return z, torch.nn.functional.one_hot(torch.randint(label_size, (n,), generator=g), label_size).float()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name,labels", [("pggan_rgb32_fused", 0), slow("pggan_gray16_nonfused_cond3", 3)])
def test_onnx_and_torchscript_equal_pytorch_at_batch_1_and_5(converted, tmp_path, name, labels):
    onnx_path, ts_path = tmp_path / "g.onnx", tmp_path / "g.pt"
    export.main(["--checkpoint", converted[name], "--onnx", str(onnx_path), "--torchscript", str(ts_path)])
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, "non-standard operators in the graph"
    assert [i.name for i in model.graph.input] == ["latents", "labels"][: 1 + bool(labels)]
    assert [o.name for o in model.graph.output] == ["images"]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_path))
    G, _ = ckpt.load_generator(converted[name], impl="ref")
    for n in (1, 5):
        inputs = _inputs(labels, n, seed=10 + n)
        with torch.no_grad():
            want = G(*inputs[:1], labels=inputs[1] if labels else None)
            traced = scripted(*inputs)
        got = session.run(["images"], {k: v.numpy() for k, v in zip(("latents", "labels"), inputs)})[0]
        assert got.shape == tuple(want.shape) == (n, G.num_channels, G.resolution, G.resolution)
        assert _rel(torch.from_numpy(got), want) <= TOLERANCE
        assert _rel(traced, want) <= TOLERANCE
    assert not leftovers(tmp_path)


def test_res_alpha_and_which(converted, tmp_path):
    path = tmp_path / "g8.onnx"
    ck = converted["pggan_rgb32_fused"]
    export.main(["--checkpoint", ck, "--onnx", str(path), "--res", "8", "--alpha", "0.25", "--which", "G"])
    G, _ = ckpt.load_generator(ck, which="G", impl="ref")
    z = _inputs(0, 3, seed=1)[0]
    got = onnxruntime.InferenceSession(str(path)).run(["images"], {"latents": z.numpy()})[0]
    with torch.no_grad():
        want = G(z, 8, 0.25)
    assert got.shape == (3, 3, 8, 8) and _rel(torch.from_numpy(got), want) <= TOLERANCE


@pytest.mark.skipif(
    not hasattr(torch.compiler, "is_exporting"),
    reason=f"torch {torch.__version__} has no torch.compiler.is_exporting (2.7): 'auto' cannot see torch.export",
)
@pytest.mark.parametrize("env", ["auto", slow("ext")])
def test_auto_runs_standard_ops_under_torch_export_and_onnx_export(tmp_path, monkeypatch, env):
    """Called directly on our modules, with FASTPGGAN_IMPL unset or even 'ext': torch.export's graph holds no
    fastpggan op, and torch.onnx.export succeeds. Outside an export, 'auto' on this CPU does pick the extension."""
    monkeypatch.setenv("FASTPGGAN_IMPL", env)
    G = Generator(resolution=8, latent_size=16, num_channels=3, fmap_base=64, fmap_max=16).eval()
    z = torch.randn(2, 16)
    x = torch.randn(2, 16, 4, 4)
    if ops.impl_unavailable("ext", torch.device("cpu")) is None:
        assert _dispatch.resolve("bias_act", "auto", x) is _dispatch._registry["bias_act"]["ext"][0]
    program = torch.export.export(G, (z,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets and not any("fastpggan" in t for t in targets), sorted(targets)
    onnx_path = str(tmp_path / "direct.onnx")
    torch.onnx.export(G, (z,), onnx_path, dynamo=True, external_data=False)
    got = onnxruntime.InferenceSession(onnx_path).run(
        None, {onnxruntime.InferenceSession(onnx_path).get_inputs()[0].name: z.numpy()}
    )[0]
    with torch.no_grad():
        assert _rel(torch.from_numpy(got), G(z)) <= TOLERANCE


def test_export_of_a_missing_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    r = cli("export", "--checkpoint", "missing.pt", "--onnx", "out.onnx", cwd=tmp_path)
    one_line_error(r, "missing.pt", "does not exist")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_export_errors_are_one_line_and_write_nothing(converted, tmp_path):
    one_line_error(cli("export", "--checkpoint", converted["pggan_rgb32_fused"], cwd=tmp_path), "--onnx")
    one_line_error(
        cli(
            "export", "--checkpoint", converted["pggan_rgb32_fused"], "--onnx", "out.onnx", "--res", "64", cwd=tmp_path
        ),
        "--res must be a power of two between 4 and 32",
    )
    (tmp_path / "keep.onnx").write_bytes(b"keep")
    one_line_error(
        cli("export", "--checkpoint", converted["pggan_rgb32_fused"], "--onnx", "keep.onnx/out.onnx", cwd=tmp_path),
        "keep.onnx",
        "is a file, not a folder",
    )
    one_line_error(
        cli("export", "--checkpoint", converted["pggan_rgb32_fused"], "--onnx", "keep.onnx", cwd=tmp_path), "--force"
    )
    assert (tmp_path / "keep.onnx").read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["keep.onnx"]


@pytest.mark.slow
def test_onnx_check_catches_a_wrong_file(converted, tmp_path):
    """check_onnx is what keeps a wrong export from being kept: a file of another network fails it."""
    G, _ = ckpt.load_generator(converted["pggan_rgb32_fused"], impl="ref")
    module = export.FixedGenerator(G, 32)
    path = str(tmp_path / "g.onnx")
    export.export_onnx(module, path)
    assert export.check_onnx(module, path) <= TOLERANCE
    with torch.no_grad():
        G.to_rgb[3].bias.add_(0.5)
    assert export.check_onnx(module, path) > 1e-2
    assert np.isfinite(export.check_onnx(module, path))


def test_an_opset_the_exporter_did_not_write_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    """torch.onnx.export falls back to its own opset where converting to the asked one fails (it once wrote opset
    18 for --opset 99 and said nothing); export_onnx checks the file's opset."""

    def falls_back(module, args, path, **kw):
        node = onnx.helper.make_node("Identity", ["latents"], ["images"])
        graph = onnx.helper.make_graph(
            [node],
            "g",
            [onnx.helper.make_tensor_value_info("latents", 1, [1])],
            [onnx.helper.make_tensor_value_info("images", 1, [1])],
        )
        onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)

    monkeypatch.setattr(torch.onnx, "export", falls_back)
    module = export.FixedGenerator(Generator(resolution=8, latent_size=8, fmap_base=16, fmap_max=8), 8)
    out = tmp_path / "g.onnx"
    with pytest.raises(export.UserError, match="could not write opset 20 .it wrote 18.; nothing was written"):
        export.write_onnx(module, str(out), opset=20)
    assert os.listdir(tmp_path) == []
    with pytest.raises(export.UserError, match="--opset 99 is newer than the installed onnx knows"):
        export.export_onnx(module, str(out), opset=99)
