"""Teachers: built from their own architecture, loaded from a checkpoint of any model-parallel
size, frozen (eval mode, no gradients, no optimizer state, not in ZeRO), optionally in half
precision; and the student's initialisation from a teacher's bottom layers."""
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.distributed as dist

import mpu
from model import GLMModel, ModelOutput
from model.glm import MAP_BUFFERS
from mpu.partition import PartitionSpec, get_partition_spec, merge_tensors, shard_of

from .checkpointing import canonical_key, load_model_weights
from .config import ArchConfig, ModelOptions, TeacherConfig
from .preflight import AUXILIARY_PREFIXES


@dataclass
class Teacher:
    module: torch.nn.Module            # the stage's head over the teacher's GLM
    config: TeacherConfig
    dtype: torch.dtype

    def __call__(self, *inputs, taps=(), interventions: Optional[Mapping[str, Callable]] = None) -> ModelOutput:
        with torch.no_grad():
            return self.module(*inputs, taps=taps, interventions=interventions)


def teacher_dtype(half_precision: bool, device: torch.device) -> torch.dtype:
    """--teacher_fp16: fp16 on GPUs; bf16 on CPUs, which have no fast fp16."""
    if not half_precision:
        return torch.float32
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def build_teacher(config: TeacherConfig, head: Callable[[GLMModel], torch.nn.Module], vocab_size: int,
                  model: ModelOptions, device: torch.device, student_max_positions: int, log=print,
                  num_tokens: Optional[int] = None) -> Teacher:
    """`num_tokens` (the tokenizer's size) resolves a fractional teacher map_vocab_size."""
    arch = config.arch
    if arch.max_position_embeddings < student_max_positions:   # the original raises it to the student's
        arch = ArchConfig(**{**arch.__dict__, "max_position_embeddings": student_max_positions})
    glm = GLMModel(arch.glm_config(vocab_size, model, dropout=False, num_tokens=num_tokens))
    module = head(glm)
    if config.random_para:
        log(f"teacher {config.load_pretrained}: random weights (--teacher_random_para)")
    else:
        report = load_model_weights(module, config.load_pretrained, strict=True, what="teacher",
                                    ignored_prefixes=AUXILIARY_PREFIXES, may_be_missing=MAP_BUFFERS)
        log(f"teacher {config.load_pretrained}: {report.summary()}")
    dtype = teacher_dtype(config.half_precision, device)
    module = module.to(device=device, dtype=dtype).eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return Teacher(module, config, dtype)


def full_tensor(tensor: torch.Tensor, spec: Optional[PartitionSpec]) -> torch.Tensor:
    """All-gather a model-parallel shard into the full tensor (replicated ones as they are)."""
    world_size = mpu.get_model_parallel_world_size()
    if spec is None or world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=mpu.get_model_parallel_group())
    return merge_tensors(parts, spec)


def _fused_parts(target_spec: Optional[PartitionSpec], source_spec: Optional[PartitionSpec],
                 key: str) -> Optional[PartitionSpec]:
    """The spec of a fused tensor (stride s > 1: s parts along dim, e.g. [Q; K; V]), else None.
    Teacher and student must fuse the same way; a mismatch raises."""
    if all(spec is None or spec.stride == 1 for spec in (target_spec, source_spec)):
        return None
    if target_spec != source_spec:
        raise ValueError(f"{key}: the student's partition spec {target_spec} and the teacher's {source_spec} "
                         "fuse different parts; cannot truncate one into the other")
    return target_spec


def _copy_leading_block(block: torch.Tensor, source: torch.Tensor, fused: Optional[PartitionSpec],
                        key: str) -> None:
    """Write the leading block of `source` into `block` (both full tensors), in place. A fused
    tensor is cut into `fused.stride` equal parts along `fused.dim` on both sides and each
    student part receives the leading block of the matching teacher part (Q from Q, K from K)."""
    if fused is None:
        common = tuple(slice(0, min(a, b)) for a, b in zip(block.shape, source.shape))
        block[common] = source[common]
        return
    for what, tensor in (("student", block), ("teacher", source)):
        if tensor.size(fused.dim) % fused.stride != 0:
            raise ValueError(f"{key}: the {what}'s size {tensor.size(fused.dim)} along dim {fused.dim} "
                             f"does not split into {fused.stride} fused parts")
    # torch.chunk returns views: writing into each part writes into `block`.
    for block_part, source_part in zip(block.chunk(fused.stride, fused.dim), source.chunk(fused.stride, fused.dim)):
        _copy_leading_block(block_part, source_part, None, key)


@torch.no_grad()
def truncate_teacher_as_student(student: torch.nn.Module, teacher: torch.nn.Module,
                                embedding_rows: Optional[torch.Tensor] = None) -> int:
    """--student_truncate_tn: copy every teacher tensor whose key the student has;
    equal shapes whole, different shapes their leading block along every dimension (computed
    on the full, unsharded tensors, so the result does not depend on the MP size). A fused
    tensor (partition stride s > 1: the [Q; K; V] weight and bias) takes the leading block part
    by part, so the student's K rows come from the teacher's K rows. Student
    layer i receives teacher layer i. A vocabulary-compressed student's word-embedding row j
    receives the teacher's row embedding_rows[j] (`vocab_compression.student_rows_in_teacher`).
    Returns the number of tensors copied."""
    teacher_state = {canonical_key(k): v for k, v in teacher.state_dict(keep_vars=True).items()}
    world_size, rank = mpu.get_model_parallel_world_size(), mpu.get_model_parallel_rank()
    copied = 0
    for key, target in student.state_dict(keep_vars=True).items():
        source = teacher_state.get(canonical_key(key))
        if source is None or canonical_key(key) in MAP_BUFFERS:   # the student's vocabulary map is its own
            continue
        spec, source_spec = get_partition_spec(target), get_partition_spec(source)
        full_source = full_tensor(source.detach(), source_spec)
        if embedding_rows is not None and canonical_key(key) == "word_embeddings.weight":
            full_source = full_source[embedding_rows.to(full_source.device)]
        full_shape = list(target.shape)
        if spec is not None:
            full_shape[spec.dim] *= world_size
        block = torch.empty(full_shape, dtype=target.dtype)
        block.copy_(full_tensor(target.detach(), spec).cpu())
        _copy_leading_block(block, full_source.to(block.dtype).cpu(), _fused_parts(spec, source_spec, key), key)
        target.data.copy_(shard_of(block, spec, rank, world_size) if spec is not None else block)
        copied += 1
    return copied
