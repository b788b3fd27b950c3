import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(x):
    """x in fp32 if it is fp16/bf16, else unchanged (fp64 stays fp64, for gradcheck)."""
    return x.float() if x.dtype in LOW_PRECISION else x
