"""The on-disk checkpoint layout (Megatron/DeepSpeed) and atomic writes.

    CHECKPOINT_DIR/latest_checkpointed_iteration.txt      the tag: "best", "release" or an iteration
    CHECKPOINT_DIR/<tag>/mp_rank_XX_model_states.pt        one file per model-parallel rank

A model-states file is a dict with at least `module` (the state dict of that rank),
`partition_specs` ({key: {"dim", "stride"}} for the sharded tensors: the checkpoint
describes its own sharding) and `mp_world_size`; `model_config` holds the GLMConfig.
Writes go to a temporary file that is renamed into place, so a crash never leaves a
partial file under a final name, and the tracker is written last.
"""
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from mpu import partition_specs

PathLike = Union[str, os.PathLike]
TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
_SHARD_PATTERN = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


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
    tag = tracker.read_text().strip()
    if not tag:
        raise CheckpointError(f"{tracker} is empty")
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


def load_file(path: PathLike) -> Dict[str, Any]:
    """torch.load, memory-mapped, with `weights_only=True`; falls back to a full unpickle
    (with a warning) for files holding other Python objects (e.g. older DeepSpeed client state)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} (corrupt or truncated?): {error}") from error
    try:
        result = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {path} (corrupt or truncated?): {error}") from error
    warnings.warn(f"{path} holds objects beyond tensors and containers; it was loaded with weights_only=False")
    return result


def model_states(module: torch.nn.Module, mp_world_size: int, model_config: Optional[Dict] = None,
                 **extra) -> Dict[str, Any]:
    """The dict saved for one model-parallel rank."""
    states = {"module": module.state_dict(), "partition_specs": partition_specs(module),
              "mp_world_size": mp_world_size}
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


def load_model_shard(checkpoint_dir: PathLike, mp_rank: int, tag: Optional[str] = None) -> Dict[str, Any]:
    tag = tag or read_tracker(checkpoint_dir)
    shards = list_shards(Path(checkpoint_dir) / tag)
    if mp_rank >= len(shards):
        raise CheckpointError(f"{checkpoint_dir} has {len(shards)} model-parallel shards; rank {mp_rank} has none "
                              f"(reshard it with change_mp.py)")
    return load_file(shards[mp_rank])
