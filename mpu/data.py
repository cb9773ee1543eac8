"""Broadcast a batch from model-parallel rank 0 to the rest of its group (Megatron-LM v1)."""
from typing import Dict, List, Mapping, Optional

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group, get_model_parallel_rank, get_model_parallel_src_rank

_MAX_DIMS = 8


def collective_device(group: Optional[dist.ProcessGroup]) -> torch.device:
    """The device collectives of `group` run on: CUDA for nccl, the CPU for gloo."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast_sizes(keys: List[str], data: Optional[Mapping[str, torch.Tensor]], src: int,
                     group, device) -> Dict[str, torch.Size]:
    sizes = torch.zeros(len(keys), _MAX_DIMS, dtype=torch.long)
    if data is not None:
        for row, key in enumerate(keys):
            shape = data[key].shape
            if len(shape) > _MAX_DIMS:
                raise ValueError(f"broadcast_data: {key!r} has {len(shape)} dims, at most {_MAX_DIMS} are supported")
            sizes[row, :len(shape)] = torch.tensor(shape, dtype=torch.long)
    sizes = sizes.to(device)
    dist.broadcast(sizes, src, group=group)
    result = {}
    for row, key in enumerate(keys):
        dims = [int(d) for d in sizes[row].tolist()]
        result[key] = torch.Size(dims[:dims.index(0)] if 0 in dims else dims)
    return result


def broadcast_data(keys: List[str], data: Optional[Mapping[str, torch.Tensor]],
                   datatype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Send `data[key]` for `keys` from model-parallel rank 0 to its group.

    Only model-parallel rank 0 needs `data` (others may pass None); every tensor must have
    dtype `datatype`. Returns {key: tensor} on every rank, on the group's collective device.
    Zero-sized dimensions are not supported (a shape ends at its first 0).
    """
    group = get_model_parallel_group()
    if group is None:  # a model-parallel group of one: nothing to send
        return {key: data[key] for key in keys}
    device = collective_device(group)
    src = get_model_parallel_src_rank()
    is_source = get_model_parallel_rank() == 0
    if is_source:
        for key in keys:
            if data[key].dtype != datatype:
                raise TypeError(f"broadcast_data: {key!r} has dtype {data[key].dtype}, expected {datatype}")
    sizes = _broadcast_sizes(keys, data if is_source else None, src, group, device)
    numels = {key: sizes[key].numel() for key in keys}
    if is_source:
        flat = torch.cat([data[key].contiguous().view(-1) for key in keys]).to(device)
    else:
        flat = torch.empty(sum(numels.values()), dtype=datatype, device=device)
    dist.broadcast(flat, src, group=group)
    result, offset = {}, 0
    for key in keys:
        result[key] = flat.narrow(0, offset, numels[key]).view(sizes[key])
        offset += numels[key]
    return result
