"""Partition metadata of sharded tensors, and the pure split/merge it drives.

A sharded parameter carries `partition_dim` and `partition_stride` (set here, in one
place, by the mpu layers). A tensor without them is replicated on every model-parallel
rank. `change_mp.py` and the tests reshard checkpoints with `split_tensor` /
`merge_tensors`, which are exact inverses: slicing and concatenation only.

Strided layout (fused QKV, stride 3): the full tensor is cut along `dim` into
`world_size * stride` equal chunks; rank r holds chunks r, r + world_size, r + 2*world_size,
... concatenated, i.e. [Q_r; K_r; V_r].
"""
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional

import torch


@dataclass(frozen=True)
class PartitionSpec:
    dim: int
    stride: int = 1

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)


def set_partition_metadata(param: torch.Tensor, dim: int, stride: int = 1) -> None:
    """Mark `param` as sharded along `dim` (with `stride` interleaved blocks per shard)."""
    param.tensor_model_parallel = True
    param.model_parallel = True  # the Megatron-LM v1 attribute name
    param.partition_dim = dim
    param.partition_stride = stride


def get_partition_spec(tensor: torch.Tensor) -> Optional[PartitionSpec]:
    """The tensor's partition spec, or None when it is replicated."""
    if not getattr(tensor, "tensor_model_parallel", False):
        return None
    return PartitionSpec(tensor.partition_dim, tensor.partition_stride)


def partition_specs(module: torch.nn.Module) -> Dict[str, Dict[str, int]]:
    """{state-dict key: {"dim", "stride"}} for every sharded tensor of `module`.

    Keys follow `module.state_dict()`, including any renaming a wrapper's `state_dict` does,
    because the specs are read off the very objects `state_dict(keep_vars=True)` returns.
    """
    specs = {}
    for key, value in module.state_dict(keep_vars=True).items():
        spec = get_partition_spec(value)
        if spec is not None:
            specs[key] = spec.to_dict()
    return specs


def _chunk_size(full_size: int, world_size: int, stride: int, what: str) -> int:
    if full_size % (world_size * stride) != 0:
        raise ValueError(
            f"{what}: size {full_size} does not divide into {world_size} partitions"
            + (f" of stride {stride}" if stride > 1 else ""))
    return full_size // (world_size * stride)


def shard_of(full: torch.Tensor, spec: Optional[PartitionSpec], rank: int, world_size: int,
             what: str = "tensor") -> torch.Tensor:
    """Shard `rank` of `world_size` of a full tensor (a copy, so it saves only its own data)."""
    if spec is None:
        return full.clone()
    chunk = _chunk_size(full.size(spec.dim), world_size, spec.stride, what)
    chunks = torch.split(full, chunk, dim=spec.dim)  # world_size * stride chunks
    return torch.cat(chunks[rank::world_size], dim=spec.dim).clone()


def split_tensor(full: torch.Tensor, spec: Optional[PartitionSpec], world_size: int,
                 what: str = "tensor") -> List[torch.Tensor]:
    """Cut a full tensor into `world_size` shards."""
    return [shard_of(full, spec, rank, world_size, what) for rank in range(world_size)]


def merge_tensors(shards: List[torch.Tensor], spec: Optional[PartitionSpec],
                  what: str = "tensor") -> torch.Tensor:
    """Inverse of `split_tensor`. A replicated tensor is taken from shard 0.

    Replicated copies normally agree bit for bit; GPU kernels may let them drift apart in
    the last bits, so a difference is a warning (with its size), not an error.
    """
    if spec is None:
        for rank, shard in enumerate(shards[1:], start=1):
            if shard.shape != shards[0].shape:
                raise ValueError(f"{what}: replicated tensor has shape {tuple(shard.shape)} in shard {rank} "
                                 f"but {tuple(shards[0].shape)} in shard 0")
            if not torch.equal(shard, shards[0]):
                diff = (shard.double() - shards[0].double()).abs().max().item()
                warnings.warn(f"{what}: replicated tensor differs between shard 0 and shard {rank} "
                              f"(max abs difference {diff:.3g}); keeping shard 0")
        return shards[0].clone()
    world_size = len(shards)
    per_rank_chunks = [torch.chunk(shard, spec.stride, dim=spec.dim) for shard in shards]
    for rank, shard in enumerate(shards):
        if shard.size(spec.dim) % spec.stride != 0:
            raise ValueError(f"{what}: shard {rank} size {shard.size(spec.dim)} is not a multiple of stride {spec.stride}")
    ordered = [per_rank_chunks[rank][j] for j in range(spec.stride) for rank in range(world_size)]
    return torch.cat(ordered, dim=spec.dim)


def shard_state_dict(full_state: Mapping[str, torch.Tensor], specs: Mapping[str, Mapping[str, int]],
                     rank: int, world_size: int) -> Dict[str, torch.Tensor]:
    """The state dict of model-parallel `rank` cut out of an unsharded state dict."""
    shard = {}
    for key, tensor in full_state.items():
        spec = PartitionSpec(**specs[key]) if key in specs else None
        shard[key] = shard_of(tensor, spec, rank, world_size, what=key)
    return shard
