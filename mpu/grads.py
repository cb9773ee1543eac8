"""Gradient-norm clipping that counts every model-parallel shard once (Megatron-LM v1)."""
from typing import Iterable, Union

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group, get_model_parallel_rank
from .mappings import all_reduce_no_grad


def clip_grad_norm(parameters: Union[torch.Tensor, Iterable[torch.Tensor]], max_norm: float,
                   norm_type: float = 2) -> float:
    """Clip gradients in place so their global norm is at most `max_norm`; return the norm.

    Sharded parameters contribute from every rank; replicated ones only from model-parallel
    rank 0, so the norm equals the one of the unsharded model.
    """
    if torch.is_tensor(parameters):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    counted = [p for p in params if getattr(p, "tensor_model_parallel", False) or get_model_parallel_rank() == 0]
    group = get_model_parallel_group()
    device = params[0].grad.device
    if norm_type == float("inf"):
        local = max((p.grad.detach().abs().max().float() for p in counted), default=torch.tensor(0.0))
        total = all_reduce_no_grad(torch.as_tensor(local, device=device).reshape(1), group, dist.ReduceOp.MAX)
        total_norm = total.item()
    else:
        local = sum((p.grad.detach().float().norm(norm_type) ** norm_type for p in counted),
                    torch.zeros((), device=device))
        total = all_reduce_no_grad(local.reshape(1), group)
        total_norm = total.item() ** (1.0 / norm_type)
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1:
        for p in params:
            p.grad.detach().mul_(clip_coef)
    return total_norm
