"""Training checkpoints in the Megatron/DeepSpeed layout, weights-only loading at any
model-parallel size, and exact resume.

    <save>/latest_checkpointed_iteration.txt          tag, written last (atomically)
    <save>/<tag>/mp_rank_XX_model_states.pt            module + partition specs + config + client state
    <save>/<tag>/zero_pp_rank_*_optim_states.pt        DeepSpeed's optimizer shards (ZeRO runs)

A tag folder is written under a temporary name and renamed into place once every rank has
finished, so neither a crash nor a re-used tag ("best") ever leaves the tracker pointing at
a partial checkpoint.
"""
import contextlib
import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist

import mpu
from model.checkpoint import (TRACKER_FILENAME, CheckpointError, atomic_torch_save, check_all_shards_present,
                              list_shards, load_file, merge, model_states, read_tracker, shard_filename,
                              shard_states, sharding_record, write_tracker)

_WRAPPER_PREFIXES = ("module.", "model.")


def canonical_key(key: str) -> str:
    """A state-dict key without wrapper prefixes ("module.", "model."): the same tensor of a
    GLM has the same canonical key whether it sits in a task head, a student or an engine."""
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


@dataclass
class LoadReport:
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)      # in the model, not in the checkpoint
    unexpected: List[str] = field(default_factory=list)   # in the checkpoint, not in the model

    def summary(self) -> str:
        text = f"loaded {len(self.loaded)} tensors"
        if self.missing:
            text += f"; kept the initialisation of {len(self.missing)} ({', '.join(self.missing[:4])}...)"
        if self.unexpected:
            text += f"; ignored {len(self.unexpected)} from the checkpoint ({', '.join(self.unexpected[:4])}...)"
        return text


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def reported_disk_full(what: str, path: Path, save_dir: str):
    """Turn running out of disk space while writing `what` into one CheckpointError line that
    says which checkpoint is still good (writes are atomic: a failed one leaves nothing)."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        tracker = Path(save_dir) / TRACKER_FILENAME
        good = (f"the last good checkpoint (tag {tracker.read_text().strip()}) is intact" if tracker.is_file()
                else "no earlier checkpoint was lost")
        raise CheckpointError(f"out of disk space while writing {what} to {path} ({error.strerror}): {good}; "
                              f"free some space, then resume with --load={save_dir}") from None


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def read_model_states(checkpoint_dir: str, mp_rank: int, mp_world_size: int) -> Dict[str, Any]:
    """This rank's model states from a checkpoint of any model-parallel size (resharded in memory)."""
    tag = read_tracker(checkpoint_dir)
    shards = list_shards(Path(checkpoint_dir) / tag)
    if len(shards) == mp_world_size:
        states = load_file(shards[mp_rank])
        check_all_shards_present(states, shards)
        return states
    loaded = [load_file(path) for path in shards]
    check_all_shards_present(loaded[0], shards)
    return shard_states(merge(loaded), mp_rank, mp_world_size)


def load_model_weights(module: torch.nn.Module, checkpoint_dir: str, strict: bool = False,
                       what: str = "model", ignored_prefixes: Tuple[str, ...] = (),
                       may_be_missing: Tuple[str, ...] = ()) -> LoadReport:
    """Copy the weights of `checkpoint_dir` into `module`, matching keys by `canonical_key`.

    Shapes must agree (a mismatch is an error naming what differs: the vocabulary or the
    width). Without `strict`, tensors missing on either side are reported and left alone;
    with it, they are an error. Checkpoint keys under `ignored_prefixes` (a distilled
    student's auxiliary layers) are skipped, and tensors named in `may_be_missing` (checked
    elsewhere, e.g. the vocabulary-map buffers) do not fail `strict`.
    """
    states = read_model_states(checkpoint_dir, mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size())
    if "module" not in states:
        raise CheckpointError(f"{checkpoint_dir}: the checkpoint has no 'module' entry")
    saved = {canonical_key(k): v for k, v in states["module"].items() if not k.startswith(ignored_prefixes)}
    target = module.state_dict()
    report = LoadReport()
    updates = {}
    for key, value in target.items():
        source = saved.get(canonical_key(key))
        if source is None:
            report.missing.append(key)
            continue
        if source.shape != value.shape and _extends_positions(key, source, value):
            source = torch.cat([source.to(value.dtype), value.detach()[source.size(0):].cpu()])
        if source.shape != value.shape:
            raise CheckpointError(f"{what}: {key} has shape {tuple(value.shape)} but {checkpoint_dir} holds "
                                  f"{tuple(source.shape)}{_shape_hint(key, source.shape, value.shape)}")
        updates[key] = source.to(value.dtype)
        report.loaded.append(key)
    known = {canonical_key(k) for k in target}
    report.unexpected = [k for k in saved if k not in known]
    missing = [key for key in report.missing if key.rsplit(".", 1)[-1] not in may_be_missing]
    if strict and (missing or report.unexpected):
        raise CheckpointError(f"{what}: {checkpoint_dir} does not match the model built from the flags: "
                              + "; ".join(part for part in (
                                  f"missing from the checkpoint: {', '.join(missing[:6])}" if missing
                                  else "", f"not in the model: {', '.join(report.unexpected[:6])}"
                                  if report.unexpected else "") if part))
    module.load_state_dict(updates, strict=False)
    return report


def _shape_hint(key: str, saved: torch.Size, built: torch.Size) -> str:
    """What a shape mismatch means: which size differs between the checkpoint and the flags."""
    differs = [dim for dim in range(min(len(saved), len(built))) if saved[dim] != built[dim]]
    if len(saved) != len(built) or not differs:
        return ""
    if key.endswith("word_embeddings.weight"):
        return (" (a different vocabulary: rows are the padded vocabulary split over model-parallel ranks)"
                if differs == [0] else " (a different hidden size: compare --hidden-size with the checkpoint's)")
    if key.endswith("position_embeddings.weight") and differs == [0]:
        return " (fewer position embeddings in this model: raise --max-position-embeddings)"
    return " (a different architecture: compare --hidden-size and --num-attention-heads with the checkpoint's)"


def _extends_positions(key: str, source: torch.Tensor, target: torch.Tensor) -> bool:
    """A position table of a model with longer sequences keeps the saved rows (e.g. a
    teacher raised to the student's max positions)."""
    return (key.endswith("position_embeddings.weight") and source.dim() == 2 and source.size(1) == target.size(1)
            and source.size(0) < target.size(0))


def _staging_dir(save_dir: Path, tag: str) -> Path:
    return save_dir / f".{tag}.partial"


def _publish(save_dir: Path, tag: str) -> None:
    """Move the finished staging folder to <tag> and point the tracker at it (rank 0 only)."""
    final, staging, old = save_dir / tag, _staging_dir(save_dir, tag), save_dir / f".{tag}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staging.rename(final)
    write_tracker(save_dir, tag)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(engine, save_dir: str, tag: str, client_state: Dict[str, Any], is_writer: bool) -> Path:
    """Save model, optimizer and `client_state`; every rank calls this (ZeRO shards optimizer
    state over data-parallel ranks). `is_writer`: this rank writes its model-parallel shard
    of the model (data-parallel rank 0)."""
    save_dir = Path(save_dir)
    staging = _staging_dir(save_dir, tag)
    if dist.get_rank() == 0 if dist.is_initialized() else True:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _barrier()
    mp_world_size = mpu.get_model_parallel_world_size()
    try:
        with reported_disk_full(f"checkpoint {tag}", staging, str(save_dir)):
            if hasattr(engine, "engine"):   # DeepSpeed: it writes its own files under staging/
                engine.engine.save_checkpoint(str(save_dir), tag=staging.name, save_latest=False, client_state={
                    **client_state, **sharding_record(engine.module, mp_world_size)})
            elif is_writer:
                atomic_torch_save(model_states(engine.module, mp_world_size, **engine.state_dict(), **client_state),
                                  staging / shard_filename(mpu.get_model_parallel_rank()))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)   # a partial save takes no disk space it cannot use
        raise
    _barrier()
    if dist.get_rank() == 0 if dist.is_initialized() else True:
        _publish(save_dir, tag)
    _barrier()
    return save_dir / tag


def load_checkpoint(engine, load_dir: str, load_optimizer: bool = True) -> Dict[str, Any]:
    """Restore model (and optimizer) states saved by `save_checkpoint`; returns the client state."""
    tag = read_tracker(load_dir)
    shards = list_shards(Path(load_dir) / tag)
    check_all_shards_present(load_file(shards[0]), shards)
    if len(shards) != mpu.get_model_parallel_world_size():
        raise CheckpointError(f"{load_dir} was saved at model parallel size {len(shards)}, this run uses "
                              f"{mpu.get_model_parallel_world_size()}: resume needs the same size (reshard the "
                              f"weights with change_mp.py and start from them with --load-pretrained)")
    try:
        if hasattr(engine, "engine"):
            path, client_state = engine.engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=load_optimizer,
                                                              load_lr_scheduler_states=False)
            if path is None:
                raise CheckpointError(f"DeepSpeed could not load {Path(load_dir) / tag}")
            return client_state
        states = load_file(shards[mpu.get_model_parallel_rank()])
        engine.module.load_state_dict(states["module"])
        engine.load_state_dict(states, load_optimizer=load_optimizer)
    except (RuntimeError, KeyError, ValueError) as error:   # torch's state-dict mismatches: one clear line
        if isinstance(error, CheckpointError):
            raise
        detail = " ".join(str(error).split()) or type(error).__name__
        raise CheckpointError(f"--load={load_dir} (tag {tag}) does not fit the run built from these flags: "
                              f"{detail[:400]}; resume with the flags of the run that wrote it (its config.json)") from None
    return {k: v for k, v in states.items() if k not in ("module", "optimizer", "grad_scaler")}
