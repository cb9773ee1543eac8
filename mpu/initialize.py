"""Model- and data-parallel process groups (Megatron-LM v1 API).

Ranks are laid out model-parallel-major: with world size W and model-parallel size M,
model-parallel group g holds ranks [g*M, (g+1)*M) and data-parallel group i holds ranks
{i, i+M, i+2M, ...}.

Before `initialize_model_parallel` (or without torch.distributed at all) the process is
treated as model-parallel size 1: every model-parallel getter answers for a group of one,
and the data-parallel group is the whole world. That keeps single-process code and unit
tests free of setup, while a multi-process run must call `initialize_model_parallel`.
"""
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist


@dataclass
class _ParallelGroups:
    model_parallel_group: dist.ProcessGroup
    data_parallel_group: dist.ProcessGroup
    model_parallel_size: int


# The only module-level state: set by initialize_model_parallel, cleared by destroy.
_groups: Optional[_ParallelGroups] = None


def initialize_model_parallel(model_parallel_size: int) -> None:
    """Create the model- and data-parallel groups. Every rank must call this."""
    global _groups
    if not dist.is_initialized():
        raise RuntimeError("initialize_model_parallel needs torch.distributed to be initialized first")
    if _groups is not None:
        raise RuntimeError("model parallel groups are already initialized; call destroy_model_parallel first")
    world_size = dist.get_world_size()
    if model_parallel_size < 1 or world_size % model_parallel_size != 0:
        raise ValueError(
            f"model_parallel_size={model_parallel_size} must be >= 1 and divide the world size {world_size}")
    rank = dist.get_rank()
    model_group = data_group = None
    # Every rank creates every group, in the same order (a torch.distributed requirement).
    for start in range(0, world_size, model_parallel_size):
        ranks = list(range(start, start + model_parallel_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            model_group = group
    for offset in range(model_parallel_size):
        ranks = list(range(offset, world_size, model_parallel_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            data_group = group
    _groups = _ParallelGroups(model_group, data_group, model_parallel_size)


def model_parallel_is_initialized() -> bool:
    return _groups is not None


def destroy_model_parallel() -> None:
    """Forget the groups (the process groups themselves die with torch.distributed)."""
    global _groups
    _groups = None


def get_model_parallel_group() -> Optional[dist.ProcessGroup]:
    """The model-parallel group of this rank (None before initialization: a group of one)."""
    return _groups.model_parallel_group if _groups is not None else None


def get_data_parallel_group() -> Optional[dist.ProcessGroup]:
    """The data-parallel group of this rank (None before initialization: the whole world)."""
    return _groups.data_parallel_group if _groups is not None else None


def get_model_parallel_world_size() -> int:
    return _groups.model_parallel_size if _groups is not None else 1


def get_model_parallel_rank() -> int:
    if _groups is None:
        return 0
    return dist.get_rank(group=_groups.model_parallel_group)


def get_model_parallel_src_rank() -> int:
    """Global rank of model-parallel rank 0 in this rank's model-parallel group."""
    if _groups is None:
        return dist.get_rank() if dist.is_initialized() else 0
    return (dist.get_rank() // _groups.model_parallel_size) * _groups.model_parallel_size


def get_data_parallel_world_size() -> int:
    if _groups is None:
        return dist.get_world_size() if dist.is_initialized() else 1
    return dist.get_world_size(group=_groups.data_parallel_group)


def get_data_parallel_rank() -> int:
    if _groups is None:
        return dist.get_rank() if dist.is_initialized() else 0
    return dist.get_rank(group=_groups.data_parallel_group)


# Names used by newer DeepSpeed/Megatron code for the same groups.
get_tensor_model_parallel_group = get_model_parallel_group
get_tensor_model_parallel_rank = get_model_parallel_rank
get_tensor_model_parallel_world_size = get_model_parallel_world_size
