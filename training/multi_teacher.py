"""A run's multi-teacher combiner: its construction context (the logits' layout of the stage),
the teachers as the method sees them, the combiner attached to the student (so that its
parameters are trained, saved, resharded and resumed with the student's auxiliary layers),
and `--mt_model_load`."""
from typing import Callable, Sequence, Tuple

import torch

import mpu
from distill.distill_model import GLMStudent, TeacherInfo
from distill.multi_teacher_model import AvgTeacher, Combiner, CombinerContext, build_multi_teacher, combiner_class
from model.checkpoint import CheckpointError
from tasks.collate import num_choices
from tasks.registry import GENERATIVE, MULTI_TOKEN

from .checkpointing import canonical_key, read_model_states
from .config import ConfigError, RunConfig

COMBINER_PREFIX = "student.multi_teacher_model."


def logits_layout(stage, vocab_size: int) -> Tuple[int, int, bool]:
    """(full logit width, tap rows per sample, token level) of a stage's student outputs:
    vocabulary-parallel token logits in pretraining and generative tasks; per-choice scores
    of a multi-token cloze task (its choices are separate rows of the taps); per-class
    scores otherwise."""
    if stage.name == "pretrain" or stage.kind == GENERATIVE:
        return vocab_size, 1, True
    task = stage.task
    if stage.kind == MULTI_TOKEN:
        choices = task.spec.max_choices or num_choices(task.dataset("train")[0])
        return choices, choices, False
    return task.num_labels, 1, False


def combiner_context(cfg: RunConfig, stage, vocab_size: int) -> CombinerContext:
    classes, rows, token_level = logits_layout(stage, vocab_size)
    teachers = tuple(TeacherInfo(t.arch.num_layers, t.arch.hidden_size, t.arch.num_attention_heads)
                     for t in cfg.teachers)
    return CombinerContext(student_hidden_size=cfg.arch.hidden_size, teachers=teachers, num_classes=classes,
                           token_level=token_level, rows_per_sample=rows, teacher_hard_losses=cfg.distill.mt_has_loss)


def method_teacher_infos(cfg: RunConfig, infos: Sequence[TeacherInfo]) -> Tuple[TeacherInfo, ...]:
    """The teachers as the method sees them (MT-BERT with --mt_bert_fit_teacher projects every
    teacher's hidden states to the student's width first)."""
    cls = combiner_class(cfg.distill.multi_teacher_model)
    return cls.method_teacher_infos(cfg.distill.combiner_options, infos, cfg.arch.hidden_size)


def build_combiner(cfg: RunConfig, stage, student: GLMStudent, vocab_size: int,
                   log: Callable[[str], None] = print) -> Combiner:
    """The run's combiner, attached to `student` as `multi_teacher_model`; with
    --mt_model_load (and no --load, which restores everything) its parameters come from that
    checkpoint."""
    name = cfg.distill.multi_teacher_model
    disabled = [i for i, teacher in enumerate(cfg.teachers) if teacher.disabled]
    if disabled and combiner_class(name) is not AvgTeacher:
        raise ConfigError(f"--multi_teacher_model={name} needs every teacher's output, but --mt_disable_operation "
                          f"disables teacher(s) {disabled}; only avg can skip teachers")
    try:
        combiner = build_multi_teacher(name, cfg.distill.combiner_options, cfg.distill.options,
                                       combiner_context(cfg, stage, vocab_size))
    except ValueError as error:
        raise ConfigError(f"--multi_teacher_model={name}: {error}") from None
    student.add_module("multi_teacher_model", combiner)
    path = cfg.distill.mt_model_load
    if path and cfg.train.load:
        log(f"--mt_model_load {path}: skipped, --load restores the combiner with everything else")
    elif path:
        log(f"--mt_model_load {path}: loaded {len(load_combiner_weights(combiner, path))} combiner tensors")
    return combiner


def load_combiner_weights(combiner: Combiner, checkpoint_dir: str) -> Sequence[str]:
    """Copy the `student.multi_teacher_model.*` tensors of a checkpoint (any model-parallel
    size) into `combiner`. Every tensor must match by name and shape; a checkpoint without
    any is an error (the original silently loaded nothing). Returns the names loaded."""
    states = read_model_states(checkpoint_dir, mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size())
    saved = {canonical_key(key)[len(COMBINER_PREFIX):]: value for key, value in states.get("module", {}).items()
             if canonical_key(key).startswith(COMBINER_PREFIX)}
    if not saved:
        raise CheckpointError(f"--mt_model_load={checkpoint_dir}: the checkpoint holds no combiner parameters "
                              f"({COMBINER_PREFIX}*)")
    target = combiner.state_dict()
    missing, unexpected = sorted(set(target) - set(saved)), sorted(set(saved) - set(target))
    if missing or unexpected:
        raise CheckpointError(f"--mt_model_load={checkpoint_dir}: the combiners differ: missing {missing}, "
                              f"unexpected {unexpected}")
    for key, value in target.items():
        if saved[key].shape != value.shape:
            raise CheckpointError(f"--mt_model_load={checkpoint_dir}: {COMBINER_PREFIX}{key} has shape "
                                  f"{tuple(saved[key].shape)}, this run's combiner {tuple(value.shape)}")
    with torch.no_grad():
        combiner.load_state_dict({key: value.to(target[key].dtype) for key, value in saved.items()})
    return sorted(saved)
