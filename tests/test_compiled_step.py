"""The whole WGAN-GP critic step (D's loss on reals, fakes and the penalty, its double backward, the parameter
gradients) compiled by torch.compile with fullgraph=True under dynamo's `trace_autograd_ops`, with each backend's
ops inside as opaque custom ops, from the first call (no eager call before it: the layers prepared the CPU when
they were built). Its loss and gradients equal the eager step's.

Tolerance: fp32, |compiled - eager| <= 1e-5 + 1e-4 |eager| elementwise (inductor reorders the sums of a whole
network's backward, as in tests/test_backends.py's whole-network test). Each case compiles for 30-80 s on one CPU
thread, so all are `slow`; Triton runs on its CPU interpreter.
"""
import os

import pytest
import torch

from fastpggan import ops
from fastpggan.losses import d_loss_wgan_gp
from fastpggan.networks import Discriminator
from fastpggan.ops import _dispatch, backends


def test_a_trace_on_an_unprepared_device_says_what_to_do(monkeypatch):
    monkeypatch.setattr(_dispatch, "_prepared", set())   # as if nothing had run on the CPU yet
    monkeypatch.setattr(_dispatch, "_checked", set())
    monkeypatch.setattr(_dispatch, "_prepare_in_use", lambda args=None: None)   # and torch.compile's hook did not
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(Exception, match=r"call fastpggan.ops.backends.prepare\('cpu'\)"):
        torch.compile(lambda x: ops.bias_act(x, None, impl="ext"), backend="eager", fullgraph=True)(x)
    assert torch.equal(ops.bias_act(x, None, impl="ref"), ops.bias_act_ref(x))   # 'ref' needs nothing prepared


def test_torch_compile_prepares_the_devices_in_use_before_it_traces(monkeypatch):
    import torch._dynamo  # imported: the next check registers the hook (fastpggan does not import it itself)
    _dispatch._hook_compiler()
    monkeypatch.setattr(_dispatch, "_prepared", set())
    monkeypatch.setattr(_dispatch, "_checked", set())
    x = torch.randn(2, 3, 4, 4)
    y = torch.compile(lambda x: ops.bias_act(x, None, gain=0.5), backend="eager", fullgraph=True)(x)
    assert ("cpu", os.environ.get("FASTPGGAN_CACHE")) in _dispatch._prepared
    assert torch.allclose(y, ops.bias_act_ref(x, None, 0.5), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["ref", "ext", "triton", "compiled", "auto"])
def test_the_whole_critic_step_compiles_with_fullgraph_and_gives_the_eager_gradients(impl):
    why = backends.impl_unavailable(impl, "cpu")
    if why is not None:
        pytest.skip(f"impl='{impl}' cannot run here: {why}")
    torch._dynamo.reset()
    torch.manual_seed(0)
    D = Discriminator(resolution=8, fmap_base=64, fmap_max=16, mbstd_group_size=4, impl=impl)
    reals, fakes, u = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.rand(4)
    params = list(D.parameters())

    def critic():
        loss = d_loss_wgan_gp(lambda x: D(x, 0.5), reals, fakes, impl=impl, u=u)
        loss.backward()   # consumed inside: a compiled function cannot return what requires_grad_() made
        return loss.detach()

    def run(fn):
        for p in params:
            p.grad = None
        return fn(), [p.grad.clone() for p in params]

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled_loss, compiled_grads = run(torch.compile(critic, fullgraph=True))
    eager_loss, eager_grads = run(critic)
    assert torch.allclose(compiled_loss, eager_loss, atol=1e-5, rtol=1e-4)
    for a, e in zip(compiled_grads, eager_grads):
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-4), (a - e).abs().max()
