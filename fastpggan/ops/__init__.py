"""Functional hot ops of PGGAN, each with `impl='auto'|'ref'|'triton'|'ext'` (see _dispatch).

Every op supports autograd; bias_act without pixel norm, fade_in, minibatch_stddev and gradient_penalty are
differentiable twice, for the WGAN-GP double backward through D. Each op's `*_ref` is the oracle that every
fast backend is tested against.

One module per op: the public function first, then its `_ref` oracle, then one `register_backends` call
(_backends) that registers the ref backend, the Triton and extension variants of its kernel ops, their fake
tensors and their autograd. _dispatch picks a backend per call; _ext loads or builds the C++/CUDA extension.

The public modules beside the ops: `backends` (which backends can run, forcing one, what 'auto' chose), `tune_cache`
(the measured choices' file) and `opspec` (what an op declares: OpSpec, its variant type, probe and cases).
"""
from . import backends, opspec, tune_cache
from ._dispatch import AUTO_ORDER, IMPLS, BackendUnavailable, impl_unavailable
from ._util import TOLERANCE, tolerance_ratio, upcast
from .bias_act import bias_act, bias_act_ref
from .fade_in import fade_in, fade_in_ref, upsample2x_nearest
from .gradient_penalty import gp_interpolate, gp_interpolate_ref, gradient_penalty, gradient_penalty_ref
from .minibatch_stddev import minibatch_stddev, minibatch_stddev_ref

__all__ = ["bias_act", "fade_in", "minibatch_stddev", "gradient_penalty", "gp_interpolate", "upsample2x_nearest",
           "bias_act_ref", "fade_in_ref", "minibatch_stddev_ref", "gradient_penalty_ref", "gp_interpolate_ref",
           "BackendUnavailable", "IMPLS", "AUTO_ORDER", "impl_unavailable", "backends", "opspec", "tune_cache",
           "TOLERANCE", "tolerance_ratio", "upcast"]
