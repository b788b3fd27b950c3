"""The training step with its two passes compiled whole (`--compile-step on`).

Each pass of `step.TrainStep` (D: the WGAN-GP loss on reals and fakes with the penalty's double backward into
D's .grad; G: -D(G(z)) backward into G's .grad) goes through `torch.compile(fullgraph=True)` under dynamo's
`trace_autograd_ops`, so that inductor sees a whole pass, forward and backward, with the ops of any backend
inside as opaque custom ops (their fakes and autograd formulas registered; the devices prepared beforehand, see
fastpggan.ops.backends.prepare). The all-reduce, the optimizer steps and the EMA stay eager: a few foreach calls.

One compiled function per *key* (pass, resolution, minibatch, fading, labels, loss scaling), each with its own
code object (runtime.own_code), so that a run through every stage never meets dynamo's per-code recompile limit,
and dynamic=False: within a key every size is fixed. A key compiles once, at its first step; the time it took is
logged. If compiling fails, one warning is logged and every later step runs eagerly; the step that failed runs
eagerly too (dynamo traces and inductor compiles before anything runs, so nothing was half done).
"""

import time
import types
from typing import Callable, Dict, Optional, Union

import torch

from .errors import UserError
from .ops import backends
from .runtime import compile_failure, dynamo_errors, own_code
from .step import TrainStep


def unsupported() -> Optional[str]:
    """Why this torch cannot compile a whole pass, or None."""
    import torch._dynamo

    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        return (
            f"torch {torch.__version__} has no torch._dynamo.config.trace_autograd_ops, which compiling a "
            "backward inside a graph needs"
        )
    return None


class CompiledStep(TrainStep):
    """TrainStep with each pass compiled whole; same arguments, plus `log` for the compile notices.

    Attributes:
        compile_seconds: {key: seconds its first call took, compiling and running}.
        graphs: graphs inductor compiled (one per key; more would be recompiles).
        failure: why compiling failed (every step since runs eagerly), or None.
    """

    def __init__(self, *args, log: Callable = print, **kwargs):
        why = unsupported()
        if why:
            raise UserError(f"--compile-step on: {why}; upgrade torch or use --compile-step off")
        super().__init__(*args, **kwargs)
        self.log = log
        self._compiled: Dict[tuple, Callable] = {}
        self.compile_seconds: Dict[tuple, float] = {}
        self.failure: Optional[str] = None
        self.graphs = 0
        self._recording = False

    def _function(self, key: tuple, method: Callable) -> Callable:
        fn = self._compiled.get(key)
        if fn is None:
            name = f"{method.__name__}_{len(self._compiled)}"
            fn = self._compiled[key] = torch.compile(
                types.MethodType(own_code(method, name), self), fullgraph=True, dynamic=False, backend=self._inductor
            )
        return fn

    def run(self, inputs, res, alpha, update: bool = True) -> torch.Tensor:
        """TrainStep.run; with update=False (autotune recording the op calls) the passes run eagerly, so that the
        recording sees each op call and nothing compiles for it."""
        if update:
            return super().run(inputs, res, alpha)
        self._recording = True
        try:
            return super().run(inputs, res, alpha, update=False)
        finally:
            self._recording = False

    def _inductor(self, gm: torch.fx.GraphModule, example_inputs) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        return compile_fx(gm, example_inputs)

    def _run(self, key: tuple, method: Callable, *args) -> torch.Tensor:
        if self.failure is None and not self._recording:
            # Choosing a backend inside the trace needs the device prepared, and a rewritten tune cache (start-up
            # tuning) unprepares it; a set lookup when nothing changed.
            backends.prepare(self.device)
            first = key not in self._compiled
            start = time.perf_counter()
            try:
                with torch._dynamo.config.patch(trace_autograd_ops=True):
                    out = self._function(key, method)(*args)
            except dynamo_errors() as e:
                self.failure = compile_failure(e)
                self.log(
                    f"warning: --compile-step: compiling the {key[0]} pass failed ({self.failure}); training "
                    "continues eagerly (--compile-step off hides this warning)"
                )
            else:
                if first:
                    self.compile_seconds[key] = seconds = time.perf_counter() - start
                    self.log(
                        f"compile-step: the {key[0]} pass at {key[1]}x{key[1]}, minibatch {key[2]}"
                        f"{', fading' if key[3] else ''}, compiled in {seconds:.1f} s"
                    )
                return out
        return method(self, *args)

    def d_pass(
        self,
        reals: torch.Tensor,
        z: torch.Tensor,
        u: torch.Tensor,
        labels: Optional[torch.Tensor],
        res: int,
        alpha: Union[float, torch.Tensor],
        loss_scale: Optional[torch.Tensor],
    ) -> torch.Tensor:
        key = ("D", res, reals.shape[0], isinstance(alpha, torch.Tensor), labels is not None, loss_scale is not None)
        # G's gradients of the last G step (already applied) would be one more guard, met from the second step on:
        # a recompile for nothing, as G runs under no_grad here.
        self.opt_G.zero_grad(set_to_none=True)
        return self._run(key, TrainStep.d_pass, reals, z, u, labels, res, alpha, loss_scale)

    def g_pass(
        self,
        z: torch.Tensor,
        labels: Optional[torch.Tensor],
        res: int,
        alpha: Union[float, torch.Tensor],
        loss_scale: Optional[torch.Tensor],
    ) -> torch.Tensor:
        key = ("G", res, z.shape[0], isinstance(alpha, torch.Tensor), labels is not None, loss_scale is not None)
        self.opt_D.zero_grad(set_to_none=True)  # likewise D's, applied already; D is frozen here
        return self._run(key, TrainStep.g_pass, z, labels, res, alpha, loss_scale)
