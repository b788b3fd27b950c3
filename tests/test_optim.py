"""optim.TFAdam: TensorFlow's Adam (eps before the bias correction), held to torch.optim.Adam with eps_t and to
TF's ApplyAdam formula in float64; GradScaler skips, the shared step count, state dicts."""

import copy

import pytest
import torch

from fastpggan.optim import TFAdam, reset_optimizer_


def _params(seed=0, shapes=((7, 5), (3,), (2, 3, 3, 3))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(p.shape, generator=g) * 10 ** torch.empty(p.shape).uniform_(-9, 1, generator=g) for p in params
    ]  # magnitudes 1e-9 .. 10, so that eps matters for some elements


def _tf_adam_f64(params, grad_seq, lr, b1, b2, eps):
    """TF's ApplyAdam (training_ops.cc) in float64: lr_t = lr sqrt(1-b2^t)/(1-b1^t); p -= lr_t m / (sqrt(v) + eps)."""
    p = [x.detach().double().clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    for t, grads in enumerate(grad_seq, start=1):
        lr_t = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        for i, g in enumerate(grads):
            g = g.double()
            m[i] += (g - m[i]) * (1 - b1)
            v[i] += (g * g - v[i]) * (1 - b2)
            p[i] -= lr_t * m[i] / (v[i].sqrt() + eps)
    return p


@pytest.mark.parametrize("betas", [(0.0, 0.99), (0.9, 0.999)])
@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_equals_torch_adam_with_eps_t_and_tf_formula(betas, lr_kind):
    lr, eps, steps = 1e-3, 1e-8, 6
    ours = _params()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = TFAdam(ours, lr=torch.tensor(lr) if lr_kind == "tensor" else lr, betas=betas, eps=eps)
    ref = torch.optim.Adam(theirs, lr=lr, betas=betas, eps=eps, foreach=False)
    grad_seq = [_grads(ours, 100 + k) for k in range(steps)]
    for t, grads in enumerate(grad_seq, start=1):
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ref.param_groups[0]["eps"] = eps / (1 - betas[1] ** t) ** 0.5  # TF's eps in PyTorch's form
        opt.step()
        ref.step()
        assert float(opt.t) == t
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    for p, q in zip(ours, _tf_adam_f64(_params(), grad_seq, lr, *betas, eps)):
        torch.testing.assert_close(p.double(), q, rtol=1e-6, atol=1e-7)


def test_the_placement_of_eps_matters_at_this_tolerance():
    """The test above can fail: plain torch.optim.Adam (eps after the bias correction) does not pass it."""
    ours = _params()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = TFAdam(ours, betas=(0.0, 0.99)), torch.optim.Adam(theirs, betas=(0.0, 0.99), eps=1e-8)
    for p, q, g in zip(ours, theirs, _grads(ours, 7)):
        p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    ref.step()
    assert max((p - q).abs().max().item() for p, q in zip(ours, theirs)) > 1e-5


def test_one_step_count_per_optimizer_as_in_tf():
    """A parameter that first gets a gradient at step 3 is updated with t = 3 (TF's shared beta powers; its
    moments were zero before, as TF's zero gradients leave them)."""
    a, b = _params(shapes=((4,), (5,)))
    opt = TFAdam([a, b], lr=0.1, betas=(0.0, 0.99))
    b0 = b.detach().clone()
    for k in range(3):
        a.grad = torch.randn(4)
        b.grad = torch.randn(5) if k == 2 else None
        opt.step()
    expected = _tf_adam_f64([b0], [[torch.zeros(5)], [torch.zeros(5)], [b.grad]], 0.1, 0.0, 0.99, 1e-8)[0]
    torch.testing.assert_close(b.double(), expected, rtol=1e-6, atol=1e-7)


def test_grad_scaler_unscales_and_skips_overflowed_steps_on_the_device():
    params = _params()
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt, ref = TFAdam(params, lr=0.01), TFAdam(twin, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # creates the scale tensor, as scaling the loss does
    # a skipped first step (t stays 0: no 0/0), a normal scaled step, a skipped step, a normal one
    for k, overflow in enumerate([True, False, True, False]):
        grads = _grads(params, 50 + k)
        for p, q, g in zip(params, twin, grads):
            p.grad = g * scaler.get_scale()
            q.grad = g.clone()
        if overflow:
            params[1].grad[0] = float("inf")
        before = copy.deepcopy((opt.state_dict(), [p.detach().clone() for p in params]))
        scaler.step(opt)
        scaler.update()
        if overflow:
            assert all(torch.equal(p, b) for p, b in zip(params, before[1]))
            assert float(opt.t) == before[0]["state"]["shared"]["step"]
        else:
            ref.step()
        assert all(torch.isfinite(p).all() for p in params)
        for p, q in zip(params, twin):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert float(opt.t) == float(ref.t) == 2


def test_state_dict_round_trip_continues_exactly():
    a = _params()
    opt = TFAdam(a, lr=0.01)
    for k in range(3):
        for p, g in zip(a, _grads(a, k)):
            p.grad = g
        opt.step()
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = TFAdam(b, lr=0.5)
    t_tensor = opt_b.t
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt_b.t is t_tensor and float(opt_b.t) == 3 and opt_b.param_groups[0]["lr"] == 0.01
    for p, q, g in zip(a, b, _grads(a, 9)):
        p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_loads_a_torch_adam_state_dict():
    """Checkpoints written before TFAdam hold torch.optim.Adam's state: a step per parameter, fused-Adam keys."""
    a = _params()
    old = torch.optim.Adam(a, lr=0.01, betas=(0.0, 0.99), fused=True)
    for k in range(4):
        for p, g in zip(a, _grads(a, k)):
            p.grad = g
        old.step()
    opt = TFAdam(a, lr=0.5)
    opt.load_state_dict(old.state_dict())
    assert float(opt.t) == 4 and opt.param_groups[0]["lr"] == 0.01
    assert sorted(opt.param_groups[0]) == ["betas", "eps", "lr", "params"]
    assert all(sorted(opt.state[p]) == ["exp_avg", "exp_avg_sq"] for p in a)
    torch.testing.assert_close(opt.state[a[0]]["exp_avg_sq"], old.state[a[0]]["exp_avg_sq"], rtol=0, atol=0)
    for p, g in zip(a, _grads(a, 9)):
        p.grad = g
    opt.step()
    assert float(opt.t) == 5


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta"):
        TFAdam(_params(), betas=(0.0, 1.0))


def test_parameters_of_several_dtypes_step_together():
    """The fused kernel takes one dtype at a time: fp64 and fp32 parameters are bucketed, one step count."""
    a = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4))
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = TFAdam([a, b], lr=0.01)
    seq = []
    for k in range(3):
        a.grad, b.grad = torch.randn(6, dtype=torch.float64), torch.randn(4)
        seq.append([a.grad.clone(), b.grad.clone()])
        opt.step()
    pa, pb = _tf_adam_f64([a0, b0], seq, 0.01, 0.0, 0.99, 1e-8)
    torch.testing.assert_close(a, pa, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.double(), pb, rtol=1e-6, atol=1e-7)
    assert float(opt.t) == 3


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA graphs need a CUDA GPU; the CPU tests above cover the same update eagerly",
)
def test_cuda_graph_replays_equal_eager_steps_with_a_scaler_skip():
    dev = torch.device("cuda")
    eager = [p.detach().to(dev).requires_grad_(True) for p in _params()]
    graphed = [p.detach().clone().requires_grad_(True) for p in eager]
    opt_e = TFAdam(eager, lr=torch.tensor(0.01, device=dev))
    opt_g = TFAdam(graphed, lr=torch.tensor(0.01, device=dev))
    found_inf = torch.zeros((), device=dev)
    static = [torch.zeros_like(p) for p in graphed]
    for p, g in zip(graphed, static):
        p.grad = g
    opt_g.found_inf, opt_g.grad_scale = found_inf, torch.ones((), device=dev)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt_g.step()  # lazy state, then back to the start
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad():
        for p, q in zip(graphed, eager):
            p.copy_(q)
    reset_optimizer_(opt_g)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_g.step()
    for k, skip in enumerate([False, False, True, False]):
        grads = [g.to(dev) for g in _grads(eager, 200 + k)]
        for g, s in zip(grads, static):
            s.copy_(g)
        found_inf.fill_(float(skip))
        graph.replay()
        if not skip:
            for p, g in zip(eager, grads):
                p.grad = g.clone()
            opt_e.step()
        for p, q in zip(graphed, eager):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert float(opt_g.t) == float(opt_e.t) == 3
