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
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from mpu import partition_specs

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
