"""Autograd-aware transitions into and out of model-parallel regions.

Private collective helpers first, then one `autograd.Function` per transition, then the
public wrappers. Every public function takes an optional `group`; None means this rank's
model-parallel group (a group of one before `initialize_model_parallel`, where every
mapping is the identity). Pass `get_data_parallel_group()` to use the same mappings
across data-parallel ranks.
"""
from typing import Optional

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group

ProcessGroup = Optional[dist.ProcessGroup]


def resolve_group(group: ProcessGroup) -> ProcessGroup:
    return get_model_parallel_group() if group is None else group


def group_size(group: ProcessGroup) -> int:
    """World size of `group` (None: the model-parallel group)."""
    group = resolve_group(group)
    return 1 if group is None else dist.get_world_size(group=group)


def group_rank(group: ProcessGroup) -> int:
    group = resolve_group(group)
    return 0 if group is None else dist.get_rank(group=group)


# --------------------------------------------------------------------------- collectives
def _all_reduce(tensor: torch.Tensor, group: ProcessGroup, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Out-of-place all-reduce (the input may be saved by autograd elsewhere)."""
    if group_size(group) == 1:
        return tensor
    out = tensor.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=op, group=resolve_group(group))
    return out


def _split_last_dim(tensor: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    world_size = group_size(group)
    if world_size == 1:
        return tensor
    if tensor.size(-1) % world_size != 0:
        raise ValueError(f"last dimension {tensor.size(-1)} does not divide into {world_size} partitions")
    chunk = tensor.size(-1) // world_size
    return tensor.narrow(-1, group_rank(group) * chunk, chunk).contiguous()


def _gather_last_dim(tensor: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    world_size = group_size(group)
    if world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor, group=resolve_group(group))
    return torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------- autograd
class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, group):
        ctx.group = group
        return input_

    @staticmethod
    def backward(ctx, grad_output):
        return _all_reduce(grad_output, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, group):
        return _all_reduce(input_, group)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, group):
        ctx.group = group
        return _split_last_dim(input_, group)

    @staticmethod
    def backward(ctx, grad_output):
        return _gather_last_dim(grad_output, ctx.group), None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, group):
        ctx.group = group
        return _gather_last_dim(input_, group)

    @staticmethod
    def backward(ctx, grad_output):
        return _split_last_dim(grad_output, ctx.group), None


# --------------------------------------------------------------------------- public API
def copy_to_model_parallel_region(input_: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """forward: identity; backward: all-reduce (sum) of the gradient."""
    if group_size(group) == 1:
        return input_
    return _CopyToRegion.apply(input_, group)


def reduce_from_model_parallel_region(input_: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """forward: all-reduce (sum); backward: identity."""
    if group_size(group) == 1:
        return input_
    return _ReduceFromRegion.apply(input_, group)


def scatter_to_model_parallel_region(input_: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """forward: keep this rank's slice of the last dim; backward: all-gather along the last dim."""
    if group_size(group) == 1:
        return input_
    return _ScatterToRegion.apply(input_, group)


def gather_from_model_parallel_region(input_: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """forward: all-gather along the last dim; backward: keep this rank's slice of the gradient."""
    if group_size(group) == 1:
        return input_
    return _GatherFromRegion.apply(input_, group)


def all_reduce_no_grad(tensor: torch.Tensor, group: ProcessGroup = None,
                       op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce outside autograd (statistics such as a max used for numerical stability)."""
    return _all_reduce(tensor.detach(), group, op)
