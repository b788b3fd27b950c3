"""The 'compiled' backend's own behaviour: compiled code is what runs, and a failed compile or the recompile limit
is caught, reported once and never passed off as compiled. Its values and gradients against the oracles are held by
tests/test_backends.py (impl='compiled' in the full suite); the quick suite keeps the one float64 case here.

Tolerances: float64 gradcheck/gradgradcheck defaults (eps 1e-6, atol 1e-5, rtol 1e-3); values within float64's
1e-12 of bias_act_ref (the same operations in the same order).
"""

import warnings

import pytest
import torch

from fastpggan import ops
from fastpggan.ops import _compiled, backends

WHY_NOT = backends.impl_unavailable("compiled", "cpu")
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"impl='compiled' cannot run here: {WHY_NOT}")


@pytest.fixture
def fresh(monkeypatch):
    """No compiled function, count or recorded failure from earlier tests, and none left for later ones."""
    _compiled.reset()
    yield
    _compiled.reset()


def test_bias_act_runs_compiled_code_and_matches_ref_to_second_order(fresh):
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    f = lambda x, b: ops.bias_act(x, b, gain=0.3, impl="compiled")  # noqa: E731
    assert (f(x, b) - ops.bias_act_ref(x, b, 0.3)).abs().max().item() <= 1e-12
    assert torch.autograd.gradcheck(f, (x, b)) and torch.autograd.gradgradcheck(f, (x, b))
    for shape in [(3, 7, 5, 5), (4, 5, 9, 2), (2, 2, 2, 2), (6, 3, 3, 7)]:  # other sizes, none of them 1
        x = torch.randn(shape, dtype=torch.float64)
        b = torch.randn(shape[1], dtype=torch.float64)
        assert (f(x, b) - ops.bias_act_ref(x, b, 0.3)).abs().max().item() <= 1e-12
    stats = _compiled.stats()
    # automatic dynamic shapes: a static graph for the first size, one dynamic graph for the 4 others (or only the
    # dynamic one, where dynamo's local profile remembers that an earlier function of the same name went dynamic)
    assert 1 <= stats["bias_act"].graphs <= 2 and stats["bias_act_grad"].graphs >= 1, stats
    assert all(s.fallbacks == 0 and s.calls > 0 and s.failure is None for s in stats.values()), stats
    assert stats["bias_act"].compile_s > 0
    assert backends.compile_stats() == stats  # the public reading
    total = backends.compile_stats(total=True)
    assert (total.graphs, total.calls) == (sum(s.graphs for s in stats.values()), sum(s.calls for s in stats.values()))


def test_a_failed_compile_warns_once_runs_eagerly_and_auto_then_moves_on(fresh, monkeypatch):
    monkeypatch.setattr(_compiled, "MODE", "no-such-mode")  # inductor refuses the mode: the compile fails
    x = torch.randn(2, 3, 4, 4)
    with pytest.warns(UserWarning, match="torch.compile failed on bias_act") as rec:
        y = ops.bias_act(x, None, gain=0.5, impl="compiled")
    assert len([w for w in rec if "torch.compile failed" in str(w.message)]) == 1
    assert torch.allclose(y, ops.bias_act_ref(x, None, 0.5), atol=1e-6)
    s = _compiled.stats()["bias_act"]
    assert (s.calls, s.fallbacks) == (0, 1) and "no-such-mode" in s.failure
    assert "torch.compile failed on bias_act" in backends.available("bias_act")["bias_act"]["compiled"]
    with pytest.raises(ops.BackendUnavailable, match="torch.compile failed"):
        ops.bias_act(x, None, gain=0.5, impl="compiled")
    with backends.pin("compiled"), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = [ops.bias_act(x, None, gain=0.5) for _ in range(3)][-1]
    assert len([w for w in rec if "impl='compiled' unavailable" in str(w.message)]) == 1
    assert torch.equal(y, ops.bias_act_ref(x, None, 0.5))


@pytest.mark.slow
def test_the_recompile_limit_is_caught_and_reported_not_run_eagerly_as_compiled(fresh, monkeypatch):
    # Without the case classes' dynamic sizes, every new size of one class is a recompile: the ninth hits dynamo's
    # limit (8), which with fullgraph=True raises instead of running the frame eagerly.
    monkeypatch.setattr(_compiled, "MARK_DYNAMIC", False)
    monkeypatch.setattr(_compiled, "DYNAMIC", False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for h in range(2, 11):  # 9 sizes
            x = torch.randn(2, 3, h, h)
            assert torch.allclose(
                ops.bias_act(x, None, gain=0.5, impl="compiled"), ops.bias_act_ref(x, None, 0.5), atol=1e-6
            )
    s = _compiled.stats()["bias_act"]
    assert (s.graphs, s.calls, s.fallbacks) == (8, 8, 1), s
    assert "RecompileLimit" in s.failure
    assert len([w for w in rec if "torch.compile failed on bias_act" in str(w.message)]) == 1
    with pytest.raises(ops.BackendUnavailable, match="RecompileLimit"):
        ops.bias_act(x, None, gain=0.5, impl="compiled")
