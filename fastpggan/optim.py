"""Adam as TensorFlow 1 computes it: the official optimizer (official config.py G_opt/D_opt, tfutil.Optimizer on
tf.train.AdamOptimizer, whose update is TF's ApplyAdam kernel):

    t <- t + 1;   m <- m + (g - m)(1 - beta1);   v <- v + (g^2 - v)(1 - beta2)
    p <- p - lr_t m / (sqrt(v) + eps),          lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)

TF adds eps to sqrt(v) before the bias correction. In torch.optim.Adam's form this is eps_t = eps / sqrt(1 - beta2^t):
1e-7 at t=1, 1.26e-8 at t=100 for eps 1e-8 and beta2 0.99. Like TF's beta powers, t is one counter per optimizer,
advanced at every step for every variable (official tfutil.Optimizer gives variables without a gradient zeros).

The update is PyTorch's fused Adam kernel (one pass over each tensor, on the CPU and on CUDA) given lr_t as a
device tensor and a step count at which its own bias corrections are exactly 1. So the step has no host sync,
can be captured in a CUDA graph, and reads a GradScaler's found_inf on the device: an overflowed step leaves
parameters, moments and t unchanged.
"""

from typing import Iterable, Tuple, Union

import torch

# At this step count torch's fused kernel has beta^t == 0 in fp32 and fp64, so its bias corrections are 1.
_NO_BIAS_CORRECTION = 1e30


class TFAdam(torch.optim.Optimizer):
    """tf.train.AdamOptimizer (official PGGAN's optimizer) for PyTorch; a drop-in for torch.optim.Adam.

    Args:
        params: the parameters (or param groups) to optimize.
        lr: learning rate, a float or a 0-d tensor (a device tensor keeps a CUDA-graph capture valid when set).
        betas: (beta1, beta2); official PGGAN: (0, 0.99).
        eps: TF's epsilon, added to sqrt(v) before the bias correction.

    State: per parameter `exp_avg` and `exp_avg_sq`; `state["shared"]["step"]`, the optimizer's t (a 0-d fp32
    tensor on the parameters' device). `load_state_dict` also reads torch.optim.Adam's state (t = the largest
    per-parameter step).
    """

    _step_supports_amp_scaling = True  # GradScaler hands over grad_scale / found_inf instead of syncing

    def __init__(
        self,
        params: Iterable,
        lr: Union[float, torch.Tensor] = 1e-3,
        betas: Tuple[float, float] = (0.0, 0.99),
        eps: float = 1e-8,
    ):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0 or not eps >= 0.0:
            raise ValueError(f"TFAdam: need 0 <= beta < 1 and eps >= 0, got betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        device = self.param_groups[0]["params"][0].device
        self.state["shared"] = {"step": torch.zeros((), dtype=torch.float32, device=device)}
        self._no_bias_correction = {}

    @property
    def t(self) -> torch.Tensor:
        """The step count since construction or the last reset (0-d fp32 tensor on the device)."""
        return self.state["shared"]["step"]

    def _constant_steps(self, device, n):
        c = self._no_bias_correction.get(device)
        if c is None:
            c = self._no_bias_correction[device] = torch.full((), _NO_BIAS_CORRECTION, device=device)
        return [c] * n

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        t = self.t
        if found_inf is None:
            t.add_(1)
        else:
            t.add_(1 - found_inf.to(t))
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            buckets = {}  # the fused kernel takes tensors of one device and dtype
            for p in group["params"]:
                if p.grad is not None:
                    buckets.setdefault((p.device, p.dtype), []).append(p)
            for (device, dtype), params in buckets.items():
                for p in params:
                    st = self.state[p]
                    if not st:
                        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                t_here = t.to(device, torch.float64 if dtype == torch.float64 else torch.float32, non_blocking=True)
                # TF's lr_t; the clamp makes t = 0 (a skipped first step) give 0 rather than 0/0
                lr_t = (1 - torch.pow(beta2, t_here)).sqrt() / (1 - torch.pow(beta1, t_here)).clamp_min(1e-30)
                lr_t = lr_t * group["lr"]
                torch._fused_adam_(
                    params,
                    [p.grad for p in params],
                    [self.state[p]["exp_avg"] for p in params],
                    [self.state[p]["exp_avg_sq"] for p in params],
                    [],
                    self._constant_steps(device, len(params)),
                    lr=lr_t,
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=0.0,
                    eps=group["eps"],
                    amsgrad=False,
                    maximize=False,
                    grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
                    found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True),
                )
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a TFAdam or a torch.optim.Adam state dict; t keeps its tensor (a captured graph points at it)."""
        t = self.t
        super().load_state_dict(state_dict)
        shared = self.state.pop("shared", None)
        if shared is not None:
            saved = shared["step"]
        else:  # torch.optim.Adam: a step per parameter
            saved = max((float(st["step"]) for st in self.state.values() if "step" in st), default=0.0)
        for st in self.state.values():
            st.pop("step", None)
        t.fill_(float(saved))
        self.state["shared"] = {"step": t}
        for group in self.param_groups:
            for key in list(group):
                if key not in ("params", "lr", "betas", "eps", "param_names"):
                    del group[key]


def make_optimizer(
    params: Iterable[torch.nn.Parameter], device: torch.device, lr: float = 1e-3, capturable: bool = False
) -> TFAdam:
    """Official Adam (config.py G_opt/D_opt: beta1 0, beta2 0.99, TF's eps 1e-8). capturable=True (CUDA graphs)
    keeps the lr in a device tensor, so that a captured step reads the value set_lr writes."""
    return TFAdam(params, lr=torch.tensor(lr, device=device) if capturable else lr, betas=(0.0, 0.99), eps=1e-8)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr in place (a device tensor lr keeps its identity, so a captured graph sees it)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """opt.state_dict() with a tensor lr written as a float, so checkpoints load on any device."""
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    return sd


def load_optimizer_state(opt: torch.optim.Optimizer, sd: dict) -> None:
    """opt.load_state_dict(sd), keeping each group's lr a tensor on the optimizer's device where it was one."""
    kinds = [group["lr"] for group in opt.param_groups]
    opt.load_state_dict(sd)
    for group, old in zip(opt.param_groups, kinds):
        if isinstance(old, torch.Tensor):
            old.fill_(float(group["lr"]))
            group["lr"] = old


def zero_state_(state):
    """One parameter's Adam state back to its initial value (step 0, zero moments), in place."""
    for v in state.values():
        if isinstance(v, torch.Tensor):
            v.zero_()


def reset_optimizer_(opt: torch.optim.Optimizer) -> None:
    """Adam state back to its initial value in place: the official reset_opt_for_new_lod.

    Zeroing instead of clearing keeps the state tensors a captured graph points at."""
    for st in opt.state.values():
        zero_state_(st)
