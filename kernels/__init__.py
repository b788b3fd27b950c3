"""Triton kernels for fastpggan's hot ops, installed as ``fastpggan.kernels``.

Kernels only: no nn.Module, no autograd, and no import of the rest of fastpggan. Each op module holds one launcher
per kernel op, named as the op (``bias_act``, ``bias_act_grad``, ...); ``fastpggan.ops`` registers them as the
custom ops ``fastpggan::<name>_triton`` and adds fake tensors and autograd. ``_tensors`` holds the layout and
accumulator-dtype rules in plain torch, ``_common`` the launch helpers (which import Triton).
"""
