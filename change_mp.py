"""Reshard a checkpoint to another model-parallel (MP) size.

    python change_mp.py CHECKPOINT_DIR TARGET_MP [--force]

Reads the tracker (latest_checkpointed_iteration.txt) and the shards
(<tag>/mp_rank_XX_model_states.pt) and writes CHECKPOINT_DIR_MP<TARGET_MP> with the same
layout. Every tensor is merged and split by the partition specs the checkpoint records
(set by the mpu layers: dim and stride, e.g. fused QKV with stride 3); a tensor without a
spec is replicated. So parameters added by distillation methods need no list here.
Optimizer states are tied to the old partitioning and are not carried over (`optimizer`
and DeepSpeed's per-rank shape records are set to None); everything else is kept.

Nothing is written on error, and an existing output folder is only replaced with --force.
Also importable: `change_mp(path, target_mp)`; `merge(shards)` and `split(full, n)` are
the pure functions underneath, with split(merge(x), len(x)) == x exactly.
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from model.checkpoint import (CheckpointError, PathLike, atomic_torch_save, check_all_shards_present, list_shards,
                              load_file, read_tracker, shard_filename, write_tracker)
from model.config import GLMConfig
from mpu import PartitionSpec, merge_tensors, shard_of

States = Dict[str, Any]
# Per-rank keys whose contents depend on the old partitioning.
RANK_SPECIFIC_KEYS = ("optimizer", "param_shapes", "frozen_param_shapes", "frozen_param_fragments", "shared_params")


def _spec(specs: Dict[str, Dict[str, int]], key: str) -> Optional[PartitionSpec]:
    return PartitionSpec(**specs[key]) if key in specs else None


def _carried_keys(states: States, mp_world_size: int) -> States:
    carried = {key: (None if key in RANK_SPECIFIC_KEYS else value) for key, value in states.items()
               if key != "module"}
    carried["mp_world_size"] = mp_world_size
    return carried


def merge(shards: List[States]) -> States:
    """Model states of MP ranks 0..n-1 -> the states of one unsharded model (MP=1)."""
    for rank, states in enumerate(shards):
        for key in ("module", "partition_specs"):
            if key not in states:
                raise CheckpointError(f"shard {rank} has no {key!r} entry: it was not written by this project, "
                                      f"so its sharding is unknown")
    specs = shards[0]["partition_specs"]
    module_keys = list(shards[0]["module"])
    for rank, states in enumerate(shards[1:], start=1):
        if states["partition_specs"] != specs or list(states["module"]) != module_keys:
            raise CheckpointError(f"shard {rank} does not describe the same model as shard 0")
    module = {}
    for key in module_keys:
        values = [states["module"][key] for states in shards]
        module[key] = merge_tensors(values, _spec(specs, key), what=key) if torch.is_tensor(values[0]) else values[0]
    return {"module": module, **_carried_keys(shards[0], 1)}


def shard_states(full: States, rank: int, world_size: int) -> States:
    """The model states of MP rank `rank` of `world_size`, cut out of unsharded states."""
    specs = full["partition_specs"]
    module = {key: shard_of(value, _spec(specs, key), rank, world_size, what=key) if torch.is_tensor(value) else value
              for key, value in full["module"].items()}
    return {"module": module, **_carried_keys(full, world_size)}


def split(full: States, world_size: int) -> List[States]:
    """Unsharded model states -> the states of MP ranks 0..world_size-1."""
    check_divisible(full, world_size)
    return [shard_states(full, rank, world_size) for rank in range(world_size)]


def check_divisible(full: States, world_size: int) -> None:
    """Raise (naming the culprit) unless every sharded tensor and the heads divide by world_size."""
    if world_size < 1:
        raise ValueError(f"target model parallel size must be >= 1, got {world_size}")
    if full.get("model_config"):
        GLMConfig.from_dict(full["model_config"]).check_model_parallel_size(world_size)
    for key, spec in full["partition_specs"].items():
        size = full["module"][key].size(spec["dim"])
        if size % (world_size * spec["stride"]) != 0:
            raise ValueError(f"{key}: dimension {spec['dim']} of size {size} does not divide into {world_size} "
                             f"partitions" + (f" of stride {spec['stride']}" if spec["stride"] > 1 else ""))


def output_dir(checkpoint_dir: PathLike, target_mp: int) -> Path:
    path = Path(checkpoint_dir).resolve()
    return path.with_name(f"{path.name}_MP{target_mp}")


def change_mp(checkpoint_dir: PathLike, target_mp: int, overwrite: bool = False) -> Optional[Path]:
    """Write CHECKPOINT_DIR_MP<target_mp>; return its path, or None when the size is unchanged."""
    tag = read_tracker(checkpoint_dir)
    shard_paths = list_shards(Path(checkpoint_dir) / tag)
    shards = [load_file(path) for path in shard_paths]  # memory-mapped: cheap until tensors are read
    check_all_shards_present(shards[0], shard_paths)
    if len(shards) == target_mp:
        print(f"{checkpoint_dir} already has model parallel size {target_mp}; nothing to do")
        return None
    destination = output_dir(checkpoint_dir, target_mp)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists; remove it or pass --force to replace it")
    full = merge(shards)
    check_divisible(full, target_mp)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for rank in range(target_mp):
            atomic_torch_save(shard_states(full, rank, target_mp), staging / tag / shard_filename(rank))
        write_tracker(staging, tag)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"wrote {destination} ({len(shards)} -> {target_mp} model-parallel shards, tag {tag})")
    return destination


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir", help="folder with latest_checkpointed_iteration.txt and <tag>/mp_rank_XX_*")
    parser.add_argument("target_mp", type=int, help="the model parallel size to reshard to")
    parser.add_argument("--force", action="store_true", help="replace an existing CHECKPOINT_DIR_MP<target>")
    args = parser.parse_args(argv)
    try:
        change_mp(args.checkpoint_dir, args.target_mp, overwrite=args.force)
    except (CheckpointError, ValueError, FileExistsError) as error:
        print(f"change_mp.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
