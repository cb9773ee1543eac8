"""Checkpoints on disk: the Megatron/DeepSpeed layout, safe reading, atomic writes, and
resharding to another model-parallel size.

    CHECKPOINT_DIR/latest_checkpointed_iteration.txt      the tag: "best", "release" or an iteration
    CHECKPOINT_DIR/<tag>/mp_rank_XX_model_states.pt        one file per model-parallel rank

A model-states file is a dict with at least `module` (the state dict of that rank),
`partition_specs` ({key: {"dim", "stride"}} for the sharded tensors: the checkpoint
describes its own sharding) and `mp_world_size`; `model_config` holds the GLMConfig.
Writes go to a temporary file that is renamed into place, so a crash never leaves a
partial file under a final name, and the tracker is written last.

Resharding (`change_mp.py` is its command line): every tensor is merged and split by the
partition specs the checkpoint records (set by the mpu layers: dim and stride, e.g. fused QKV
with stride 3); a tensor without a spec is replicated, so parameters added by distillation
methods need no list. Optimizer states are tied to the old partitioning and are not carried
over (`optimizer` and DeepSpeed's per-rank shape records become None); everything else is
kept. `merge(shards)` and `split(full, n)` are pure, with split(merge(x), len(x)) == x exactly.
"""
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from model.config import GLMConfig
from mpu import PartitionSpec, merge_tensors, partition_specs, shard_of

PathLike = Union[str, os.PathLike]
TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
_SHARD_PATTERN = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
# A tag names a folder inside the checkpoint folder: no separators, no "..", not absolute.
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")   # in torch's "Unsupported global: GLOBAL x.y ..." messages


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or inconsistent."""


def shard_filename(mp_rank: int) -> str:
    return f"mp_rank_{mp_rank:02d}_model_states.pt"


def atomic_write_bytes(path: PathLike, write) -> None:
    """Call `write(file)` on a temp file beside `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(obj, handle))


def write_tracker(checkpoint_dir: PathLike, tag: Union[str, int]) -> None:
    atomic_write_bytes(Path(checkpoint_dir) / TRACKER_FILENAME, lambda handle: handle.write(f"{tag}\n".encode()))


def read_tracker(checkpoint_dir: PathLike) -> str:
    """The tag in the tracker file; a clear error when there is none."""
    tracker = Path(checkpoint_dir) / TRACKER_FILENAME
    if not Path(checkpoint_dir).is_dir():
        raise CheckpointError(f"checkpoint directory {checkpoint_dir} does not exist")
    if not tracker.is_file():
        raise CheckpointError(f"{tracker} is missing: {checkpoint_dir} is not a complete checkpoint "
                              f"(the tracker is written last, after every shard)")
    tag = tracker.read_text(encoding="utf-8", errors="replace").strip()
    if not tag:
        raise CheckpointError(f"{tracker} is empty")
    if not _TAG_PATTERN.match(tag):
        raise CheckpointError(f"{tracker} names the tag {tag[:100]!r}, which is not a folder inside {checkpoint_dir} "
                              f"(a tag is a plain name such as 'best' or '1000': no '/', '..' or absolute path)")
    return tag


def list_shards(tag_dir: PathLike) -> List[Path]:
    """The model-states files of a tag folder in rank order; checks ranks 0..n-1 are all there."""
    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {tag_dir} does not exist")
    ranks = {}
    for path in tag_dir.iterdir():
        match = _SHARD_PATTERN.match(path.name)
        if match:
            ranks[int(match.group(1))] = path
    if not ranks:
        raise CheckpointError(f"no mp_rank_XX_model_states.pt files in {tag_dir}")
    missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
    if missing:
        raise CheckpointError(f"{tag_dir} is missing the shards of model-parallel ranks {missing}")
    return [ranks[rank] for rank in sorted(ranks)]


def verify_archive(path: PathLike) -> bool:
    """Check every record of a torch.save zip archive against the CRC-32 stored with it (bit rot,
    an interrupted copy); False for a file that is not a zip archive (the legacy format)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"cannot read {path} (corrupt or truncated?): {error}") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: its record {damaged} does not match the checksum written with "
                              f"it (bit rot or an incomplete copy); restore the file from a good copy")
    return True


def _offending_global(error: Exception) -> str:
    found = _UNSAFE_GLOBAL.search(str(error))
    return found.group(1) if found else str(error).strip().splitlines()[-1][:200]


def load_file(path: PathLike, safe_types: Sequence[type] = ()) -> Dict[str, Any]:
    """A checkpoint file read without running code: its checksums verified, then torch.load
    with `weights_only=True` (tensors, numbers, strings, containers; plus `safe_types`, plain
    data classes such as DeepSpeed's optimizer-state records), memory-mapped. A file whose
    unpickling needs anything else is refused, naming the file and the offending global."""
    is_zip = verify_archive(path)
    try:
        with torch.serialization.safe_globals(list(safe_types)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"refused to load {path}: it holds {_offending_global(error)}, which unpickling "
                              f"would have to import and run as code. Checkpoints are read with "
                              f"weights_only=True (tensors, numbers, strings and containers); re-save the "
                              f"file's tensors as a plain state dict if you trust it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} (corrupt or truncated?): {error}") from None


def sharding_record(module: torch.nn.Module, mp_world_size: int) -> Dict[str, Any]:
    """What a rank's file records of its sharding: the partition specs and the MP size."""
    return {"partition_specs": partition_specs(module), "mp_world_size": mp_world_size}


def model_states(module: torch.nn.Module, mp_world_size: int, model_config: Optional[Dict] = None,
                 **extra) -> Dict[str, Any]:
    """The dict saved for one model-parallel rank (every writer builds it here): the module's
    state dict, its sharding record, the model config, and `extra` (provenance, optimizer and
    client state)."""
    states = {"module": module.state_dict(), **sharding_record(module, mp_world_size)}
    if model_config is not None:
        states["model_config"] = dict(model_config)
    states.update(extra)
    return states


def save_model_shard(checkpoint_dir: PathLike, tag: Union[str, int], mp_rank: int, states: Dict[str, Any],
                     write_tracker_file: bool = True) -> Path:
    """Write one rank's states under <tag>/; the tracker is written when asked (by the last writer)."""
    path = Path(checkpoint_dir) / str(tag) / shard_filename(mp_rank)
    atomic_torch_save(states, path)
    if write_tracker_file:
        write_tracker(checkpoint_dir, tag)
    return path


def check_all_shards_present(states: Dict[str, Any], shards: List[Path]) -> None:
    """Raise naming the missing files when `states` (read from one of `shards`) records a
    model-parallel size larger than the number of shard files found."""
    recorded = states.get("mp_world_size", len(shards))
    if isinstance(recorded, int) and recorded != len(shards):
        tag_dir = shards[0].parent
        missing = [shard_filename(rank) for rank in range(len(shards), recorded)] if recorded > len(shards) else []
        raise CheckpointError(f"{tag_dir} was written at model parallel size {recorded} but holds {len(shards)} shard "
                              f"file(s)" + (f": missing {', '.join(missing)}" if missing else ""))


def load_model_shard(checkpoint_dir: PathLike, mp_rank: int, tag: Optional[str] = None) -> Dict[str, Any]:
    tag = tag or read_tracker(checkpoint_dir)
    shards = list_shards(Path(checkpoint_dir) / tag)
    if mp_rank >= len(shards):
        raise CheckpointError(f"{checkpoint_dir} has {len(shards)} model-parallel shards; rank {mp_rank} has none "
                              f"(reshard it with change_mp.py)")
    states = load_file(shards[mp_rank])
    check_all_shards_present(states, shards)
    return states


# --------------------------------------------------------------------------- resharding
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
