"""Training checkpoints in the Megatron/DeepSpeed layout, weights-only loading at any
model-parallel size, and exact resume.

    <save>/latest_checkpointed_iteration.txt          tag, written last (atomically)
    <save>/<tag>/mp_rank_XX_model_states.pt            module + partition specs + config + client state
    <save>/<tag>/zero_pp_rank_*_optim_states.pt        DeepSpeed's optimizer shards (ZeRO runs)

A tag folder is written under a temporary name and renamed into place once every rank has
finished, so neither a crash nor a re-used tag ("best") ever leaves the tracker pointing at
a partial checkpoint.
"""
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist

import mpu
from change_mp import merge
from model.checkpoint import (CheckpointError, list_shards, load_file, read_tracker, shard_filename, atomic_torch_save,
                              write_tracker)

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


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def read_model_states(checkpoint_dir: str, mp_rank: int, mp_world_size: int) -> Dict[str, Any]:
    """This rank's model states from a checkpoint of any model-parallel size (resharded in memory)."""
    tag = read_tracker(checkpoint_dir)
    shards = list_shards(Path(checkpoint_dir) / tag)
    if len(shards) == mp_world_size:
        return load_file(shards[mp_rank])
    from change_mp import shard_states   # reshard: merge every shard, keep this rank's slice
    return shard_states(merge([load_file(path) for path in shards]), mp_rank, mp_world_size)


def load_model_weights(module: torch.nn.Module, checkpoint_dir: str, strict: bool = False,
                       what: str = "model") -> LoadReport:
    """Copy the weights of `checkpoint_dir` into `module`, matching keys by `canonical_key`.

    Shapes must agree (a vocabulary of another size is an error naming both sizes). Without
    `strict`, tensors missing on either side are reported and left alone.
    """
    states = read_model_states(checkpoint_dir, mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size())
    if "module" not in states:
        raise CheckpointError(f"{checkpoint_dir}: the checkpoint has no 'module' entry")
    saved = {canonical_key(k): v for k, v in states["module"].items()}
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
            hint = " (a different vocabulary)" if "word_embeddings" in key else ""
            raise CheckpointError(f"{what}: {key} has shape {tuple(value.shape)} but {checkpoint_dir} holds "
                                  f"{tuple(source.shape)}{hint}")
        updates[key] = source.to(value.dtype)
        report.loaded.append(key)
    known = {canonical_key(k) for k in target}
    report.unexpected = [k for k in saved if k not in known]
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"{what}: {checkpoint_dir} does not match the model: {report.summary()}")
    module.load_state_dict(updates, strict=False)
    return report


def _extends_positions(key: str, source: torch.Tensor, target: torch.Tensor) -> bool:
    """A position table of a model with longer sequences keeps the saved rows (spec 2.7)."""
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
    client_state = {**client_state, "partition_specs": mpu.partition_specs(engine.module),
                    "mp_world_size": mpu.get_model_parallel_world_size()}
    if hasattr(engine, "engine"):   # DeepSpeed: it writes its own files under staging/
        engine.engine.save_checkpoint(str(save_dir), tag=staging.name, client_state=client_state, save_latest=False)
    elif is_writer:
        states = {"module": engine.module.state_dict(), **engine.state_dict(), **client_state}
        atomic_torch_save(states, staging / shard_filename(mpu.get_model_parallel_rank()))
    _barrier()
    if dist.get_rank() == 0 if dist.is_initialized() else True:
        _publish(save_dir, tag)
    _barrier()
    return save_dir / tag


def load_checkpoint(engine, load_dir: str, load_optimizer: bool = True) -> Dict[str, Any]:
    """Restore model (and optimizer) states saved by `save_checkpoint`; returns the client state."""
    tag = read_tracker(load_dir)
    shards = list_shards(Path(load_dir) / tag)
    if len(shards) != mpu.get_model_parallel_world_size():
        raise CheckpointError(f"{load_dir} was saved at model parallel size {len(shards)}, this run uses "
                              f"{mpu.get_model_parallel_world_size()}: resume needs the same size (reshard the "
                              f"weights with change_mp.py and start from them with --load-pretrained)")
    if hasattr(engine, "engine"):
        path, client_state = engine.engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=load_optimizer,
                                                          load_lr_scheduler_states=False)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {Path(load_dir) / tag}")
        return client_state
    states = load_file(shards[mpu.get_model_parallel_rank()])
    engine.module.load_state_dict(states["module"])
    engine.load_state_dict(states, load_optimizer=load_optimizer)
    return {k: v for k, v in states.items() if k not in ("module", "optimizer", "grad_scaler")}
