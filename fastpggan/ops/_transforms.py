"""What a call runs under that changes which backend may run it: an export, or an autodiff transform the fast
backends' custom ops cannot carry (_dispatch.resolve reads both)."""

from typing import Optional


def exporting() -> bool:
    """Whether torch.export, torch.onnx.export or torch.jit.trace is tracing the model now. torch before 2.7 has no
    torch.compiler.is_exporting: there torch.export and the dynamo ONNX exporter go unseen (pin 'ref' to export)."""
    import torch

    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.7
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or (is_exporting and is_exporting()))


def transform(tensors) -> Optional[str]:
    """The autodiff transform the call runs under that the fast backends' custom ops cannot carry, or None:
    forward-mode AD (torch.func.jvp/jacfwd, or a dual tensor of torch.autograd.forward_ad among `tensors`: the ops
    have no forward derivative, and torch would give zero tangents without a word), torch.func's grad/vjp/jacrev
    (the custom ops' autograd is not a torch.func one), or vmap (no batching rules: torch loops over the batch).
    Not while torch.compile traces: dynamo handles the transforms it traces itself."""
    import torch
    import torch.autograd.forward_ad as fwAD

    if torch.compiler.is_compiling():
        return None
    functorch = torch._C._functorch
    if functorch.get_dynamic_layer_stack_depth():
        keys = {i.key() for i in functorch.get_interpreter_stack()}
        kind = functorch.TransformType
        if kind.Jvp in keys:
            return "forward-mode AD (torch.func.jvp/jacfwd)"
        if kind.Grad in keys:
            return "torch.func.grad/vjp/jacrev"
        if kind.Vmap in keys:
            return "vmap"
    if getattr(fwAD, "_current_level", 0) >= 0 and any(  # a tangent exists only inside a dual_level()
        isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None for t in tensors
    ):
        return "forward-mode AD (torch.autograd.forward_ad)"
    return None
