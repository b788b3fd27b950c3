"""Run as a script by tests/test_autodiff_paths.py, in a fresh process: compile each op (and layer) alone with
torch.compile(fullgraph=True) on its very first call, with a fresh tune cache and nothing of ours run before, for
each backend named on the command line; print one line per case: 'OK name impl' or 'FAIL name impl why'.

Between cases the process forgets what it prepared (a new tune-cache folder, the prepared sets cleared), so each
case's first call is a first call again; each compiles a new function, so dynamo keeps no earlier graph."""

import os
import sys
import tempfile

import torch

from fastpggan import ops  # noqa: E402  (no layer: a layer prepares the CPU when it is built)
from fastpggan.ops import _dispatch  # noqa: E402


def cases(with_layers):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, b = r(2, 5, 4, 4), r(5)
    out = [
        ("bias_act_pn", lambda impl: lambda x, b: ops.bias_act(x, b, pixel_norm=True, impl=impl), (x, b)),
        ("fade_in", lambda impl: lambda lo, hi: ops.fade_in(lo, hi, 0.3, impl=impl), (r(2, 5, 2, 2), x)),
        ("minibatch_stddev", lambda impl: lambda x: ops.minibatch_stddev(x, 2, impl=impl), (r(4, 5, 4, 4),)),
        ("gradient_penalty", lambda impl: lambda gr: ops.gradient_penalty(gr, impl=impl), (x,)),
    ]
    if with_layers:
        from fastpggan.layers import EqualizedConv2d, EqualizedLinear

        out += [
            ("conv", lambda impl: EqualizedConv2d(5, 3, 3, impl=impl), (x,)),
            ("linear", lambda impl: EqualizedLinear(80, 6, impl=impl), (x.reshape(2, 80),)),
        ]
    return out


def main():
    impls, with_layers = [a for a in sys.argv[1:] if a != "--layers"], "--layers" in sys.argv
    from torch._dynamo.utils import counters

    for impl in impls:
        for name, make, args in cases(with_layers):
            os.environ["FASTPGGAN_CACHE"] = tempfile.mkdtemp()
            _dispatch._prepared.clear()
            _dispatch._checked.clear()
            counters.clear()
            fn = make(impl)
            try:
                got = torch.compile(fn, fullgraph=True)(*args)
                want = fn(*args) if name in ("conv", "linear") else make("ref")(*args)
                breaks = sum(counters["graph_break"].values())
                ok = breaks == 0 and torch.allclose(got, want, rtol=1e-5, atol=1e-6)
                print(("OK" if ok else "FAIL"), name, impl, "" if ok else f"breaks={breaks}", flush=True)
            except Exception as e:  # the line the test shows
                print("FAIL", name, impl, type(e).__name__, str(e).splitlines()[0][:300], flush=True)


if __name__ == "__main__":
    main()
