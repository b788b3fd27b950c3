"""One declaration per op registers all of its backends (the pytorch/extension-cpp ops.py style: fake tensors and
autograd registered by op name).

A fast backend runs an op as a few kernel ops (a forward, its backward, ...), each declared once by its schema and
its fake function. The three fast backends differ only in where those kernels come from:
- 'triton': Python custom ops `fastpggan::<name>_triton` whose bodies are `fastpggan.kernels.<module>.<name>`
  (Triton itself is imported by the first call, not here);
- 'ext': the extension's `fastpggan_ext::<name>` (csrc/ops_cpu.cpp defines the same schemas), registered once the
  library has loaded;
- 'compiled': Python custom ops `fastpggan::<name>_compiled` whose bodies are the op module's plain-PyTorch kernel
  ops through torch.compile (ops/_compiled.py). Each kernel op is compiled on its own and differentiated by the
  shared formulas, so no compiled function is ever differentiated (the penalty's double backward included).
All get the same fake tensors and the same autograd formulas, and the public function reaches each through the
same `call`.
"""

import functools
import importlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from . import _compiled, _dispatch, _ext
from ._util import triton_unavailable
from .opspec import OpSpec


@dataclass(frozen=True)
class KernelOp:
    """One kernel op: its schema, as csrc/ops_cpu.cpp defines it, and its fake (meta) function."""

    schema: str
    fake: Callable


# autograd(ops) -> {kernel op name: (setup_context, backward)}, given one backend's ops as a namespace
Autograd = Callable[[SimpleNamespace], Dict[str, Tuple[Callable, Callable]]]


def register_backends(
    spec: OpSpec,
    *,
    kernels: str,
    kernel_ops: Dict[str, KernelOp],
    autograd: Autograd,
    call: Callable,
    torch_kernels: Mapping[str, Callable[..., Any]],
    triton_limit: Optional[Callable] = None,
) -> None:
    """Declare an op (`spec`: its oracle, variants, probe, cases, traffic and static order) and register its four
    backends with the dispatcher, and the fast backends' kernel ops with torch.

    Args:
        spec: the op's declaration; `spec.ref` is impl='ref'.
        kernels: the module of fastpggan.kernels with one function per kernel op, named as the op.
        kernel_ops: {name: KernelOp} of every kernel op the fast backends run.
        autograd: given one backend's ops (a namespace of callables by name), the (setup_context, backward) pair
            of each differentiable kernel op.
        call: call(ops, *args) runs the op on one backend's ops, with the arguments the public function passes.
        torch_kernels: {name: function} the kernel ops in plain PyTorch (at least those in `kernel_ops`), as the
            kernels compute them: the compiled backend's bodies.
        triton_limit: an extra check x -> None or a reason, for a limit of the Triton kernels only.
    """
    _dispatch.declare(spec)
    op = spec.name

    module = functools.cache(lambda: importlib.import_module(f"fastpggan.kernels.{kernels}"))
    triton_ops = _python_ops("triton", {name: _kernel_body(module, name) for name in kernel_ops}, kernel_ops, autograd)
    _dispatch.register(op, "triton", functools.partial(call, triton_ops), _with_limit(triton_unavailable, triton_limit))

    bodies = {name: _compiled.kernel_body(name, torch_kernels[name]) for name in kernel_ops}
    compiled_ops = _python_ops("compiled", bodies, kernel_ops, autograd)
    _dispatch.register(op, "compiled", functools.partial(call, compiled_ops), _compiled.unavailable(list(kernel_ops)))

    ext_ops = SimpleNamespace()  # filled in once the extension has loaded

    @_ext.on_load
    def _register_ext():
        names = {name: f"{_ext.NAMESPACE}::{name}" for name in kernel_ops}
        vars(ext_ops).update(vars(_register_fake_and_autograd(names, kernel_ops, autograd)))

    _dispatch.register(op, "ext", functools.partial(call, ext_ops), _ext.ext_unavailable)


def _python_ops(suffix, bodies, kernel_ops, autograd):
    """Custom ops `fastpggan::<name>_<suffix>` with the given Python bodies, their fakes and autograd; returns them."""
    names = {name: f"fastpggan::{name}_{suffix}" for name in kernel_ops}
    for name, spec in kernel_ops.items():
        torch.library.custom_op(names[name], bodies[name], mutates_args=(), schema=spec.schema)
    return _register_fake_and_autograd(names, kernel_ops, autograd)


def _kernel_body(module, name):
    def body(*args):
        return getattr(module(), name)(*args)

    body.__name__ = name
    return body


def _register_fake_and_autograd(qualnames, kernel_ops, autograd):
    """Fake tensors and autograd for one backend's kernel ops, by name; returns the ops as a namespace."""
    ops = SimpleNamespace()
    for name, qualname in qualnames.items():
        namespace, short = qualname.split("::")
        setattr(ops, name, getattr(getattr(torch.ops, namespace), short).default)
        torch.library.register_fake(qualname, kernel_ops[name].fake)
    for name, (setup, backward) in autograd(ops).items():
        torch.library.register_autograd(qualnames[name], backward, setup_context=setup)
    return ops


def _with_limit(unavailable, limit):
    if limit is None:
        return unavailable
    return lambda x: unavailable(x) or limit(x)
