"""The training step captured as CUDA graphs (`CudaGraphStep`): one graph per (resolution, minibatch, fading),
captured once and replayed, with the same numbers as the eager step.TrainStep it wraps. On the CPU `_Rerun` stands
in for a graph (replay runs the recorded function again), so that the buffer handling is tested without a GPU."""

from typing import Callable, Optional

import torch

from .optim import zero_state_
from .step import StepInputs, TrainStep


class _Rerun:
    """Stand-in for a captured graph where there is no CUDA: replay() runs the recorded function again.

    Tests use it to check CudaGraphStep's buffer handling on the CPU."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def _cuda_capture(fn, stream):
    """One CUDA graph of fn(), captured on `stream`: the side stream the warm-up ran on, so that capture sees the
    stream state (and the allocator's per-stream pools) the warm-up left (torch.cuda.graph's own stream works on
    CUDA and has failed on ROCm)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph


class CudaGraphStep:
    """The step captured as one CUDA graph per (resolution, minibatch, fading) and replayed.

    Capture (once per key): warm-up steps on a side stream (cuDNN autotuning, Triton compilation, the extension's
    lazy build, the GradScaler's and Adam's lazy state), then the training state is put back exactly as it was,
    then one capture of D step + EMA + G step with TFAdam (lr and t on the device), on that same side stream. The
    inputs are copied into static buffers before each replay; alpha and lr are device tensors updated in place. If
    capture fails, one warning is logged and every later step runs eagerly.
    """

    WARMUP_STEPS = 2

    def __init__(self, step: TrainStep, log: Callable = print, capture: Optional[Callable] = None):
        self.step_eager = step
        self.log = log
        self.capture = capture or (lambda fn: _cuda_capture(fn, self.side_stream()))
        self._side = None
        self.key = self.graph = None
        self.static = {}
        self.out = torch.zeros(2, device=step.device)
        self.failed = False

    def side_stream(self):
        """The stream the warm-up and the capture run on (one per CudaGraphStep, made on first use)."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.step_eager.device)
        return self._side

    # the networks', optimizers' and scalers' values, to undo the warm-up steps
    def _state_tensors(self):
        s = self.step_eager
        ts = [t for m in (s.G, s.D, s.G_ema) for t in list(m.parameters()) + list(m.buffers())]
        for opt in (s.opt_G, s.opt_D):
            for st in opt.state.values():
                ts += [v for v in st.values() if isinstance(v, torch.Tensor)]
        return ts

    def _snapshot(self):
        s = self.step_eager
        had_state = {id(p) for opt in (s.opt_G, s.opt_D) for p in opt.state}
        return ([(t, t.detach().clone()) for t in self._state_tensors()], had_state, s.scaler_state())

    def _restore(self, snap):
        s = self.step_eager
        saved, had_state, scalers = snap
        with torch.no_grad():
            for t, v in saved:
                t.copy_(v)
            for opt in (s.opt_G, s.opt_D):  # state the warm-up created: back to Adam's initial zeros
                for p, st in opt.state.items():
                    if id(p) not in had_state:
                        zero_state_(st)
        s.load_scaler_state(scalers)

    def _fill(self, inputs, alpha):
        for name, t in inputs.tensors().items():
            self.static[name].copy_(t, non_blocking=True)
        self.step_eager.alpha_arg(alpha)

    def _build(self, key, inputs, alpha):
        s = self.step_eager
        self.graph = None
        self.static = {name: torch.empty_like(t) for name, t in inputs.tensors().items()}
        static_inputs = StepInputs(**self.static)
        alpha_arg = s.alpha_arg(alpha)  # 1.0, or alpha_t, which _fill rewrites before every run

        def body():
            self.out.copy_(s.run(static_inputs, key[0], alpha_arg))

        if s.scaler_D.is_enabled():  # lazy-create the scale tensors outside the capture
            s.scaler_D.scale(torch.ones((), device=s.device))
            s.scaler_G.scale(torch.ones((), device=s.device))
        snap = self._snapshot()
        self._fill(inputs, alpha)
        try:
            if s.device.type == "cuda":
                side = self.side_stream()
                side.wait_stream(torch.cuda.current_stream(s.device))
                with torch.cuda.stream(side):
                    for _ in range(self.WARMUP_STEPS):
                        body()
                torch.cuda.current_stream(s.device).wait_stream(side)
            else:
                for _ in range(self.WARMUP_STEPS):
                    body()
            self._restore(snap)
            s.opt_G.zero_grad(set_to_none=True)
            s.opt_D.zero_grad(set_to_none=True)
            self.graph = self.capture(body)
            self.key = key
        except Exception as e:  # any capture failure falls back to the eager step
            self.failed, self.graph, self.static = True, None, {}
            if s.device.type == "cuda":
                torch.cuda.synchronize(s.device)
            self._restore(snap)
            self.log(
                f"warning: CUDA-graph capture failed at {key[0]}x{key[0]} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}); training continues eagerly "
                "(--cuda-graphs off hides this warning)"
            )

    def step(self, inputs: StepInputs, res: int, alpha: float) -> torch.Tensor:
        if self.failed:
            return self.step_eager.step(inputs, res, alpha)
        key = (res, inputs.reals.shape[0], alpha < 1.0)
        if key != self.key:
            self._build(key, inputs, alpha)
            if self.failed:
                return self.step_eager.step(inputs, res, alpha)
        self._fill(inputs, alpha)
        self.graph.replay()
        return self.out.clone()
