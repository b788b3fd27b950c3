"""Triton kernels for fastpggan's hot ops, installed as ``fastpggan.kernels``.

Kernels only: no nn.Module and no autograd here; ``fastpggan.ops`` wraps them. Empty until the Triton backend lands.
"""
