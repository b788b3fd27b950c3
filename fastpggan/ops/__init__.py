"""Functional hot ops of PGGAN, each with `impl='auto'|'ref'|'triton'|'ext'` (see _dispatch).

Every op supports autograd, twice on every backend (the WGAN-GP double backward through D; a G differentiated
twice). Under forward-mode AD, torch.func and vmap, 'auto' runs the oracle (_transforms.transform). Each op's
`*_ref` is the oracle that every fast backend is tested against.

One module per op: the public function first, then its `_ref` oracle, then one `register_backends` call
(_backends) that registers the ref backend, the Triton and extension variants of its kernel ops, their fake
tensors and their autograd. _dispatch picks a backend per call; _ext loads or builds the C++/CUDA extension.

The public modules beside the ops: `backends` (which backends can run, forcing one, what 'auto' chose), `tune_cache`
(the measured choices' file) and `opspec` (what an op declares: OpSpec, its variant type, probe and cases).
"""

import fastpggan as _package

if getattr(_package, "__file__", None) is None:  # fastpggan/__init__.py never ran, so this is the place that does
    raise ImportError(
        f"fastpggan was imported as a namespace package from {', '.join(_package.__path__)}: a folder named "
        "'fastpggan' without __init__.py (a checkout?) in the current directory or on sys.path hides the installed "
        "package; run from another folder, or from inside the checkout"
    )

from . import backends, opspec, tune_cache  # noqa: E402
from ._dispatch import AUTO_ORDER, IMPLS, BackendUnavailable, impl_unavailable  # noqa: E402
from ._util import TOLERANCE, tolerance_ratio, upcast  # noqa: E402
from .bias_act import bias_act, bias_act_ref  # noqa: E402
from .fade_in import fade_in, fade_in_ref, upsample2x_nearest  # noqa: E402
from .gradient_penalty import gp_interpolate, gp_interpolate_ref, gradient_penalty, gradient_penalty_ref  # noqa: E402
from .minibatch_stddev import minibatch_stddev, minibatch_stddev_ref  # noqa: E402

__all__ = [
    "bias_act",
    "fade_in",
    "minibatch_stddev",
    "gradient_penalty",
    "gp_interpolate",
    "upsample2x_nearest",
    "bias_act_ref",
    "fade_in_ref",
    "minibatch_stddev_ref",
    "gradient_penalty_ref",
    "gp_interpolate_ref",
    "BackendUnavailable",
    "IMPLS",
    "AUTO_ORDER",
    "impl_unavailable",
    "backends",
    "opspec",
    "tune_cache",
    "TOLERANCE",
    "tolerance_ratio",
    "upcast",
]
