"""Intermediate-layer losses of TinyBERT, MiniLM, MiniLMv2, DistilBERT and PKD as pure functions.

All math is fp32. Every loss is per sample: dim 0 of the inputs ([B], or the N rows of
choice-expanded cloze inputs) is kept and the rest reduced as the original's `CustomLoss`
does, a plain mean over every element (or row), masked ones included; the mean of the
result is the original's scalar.

Two kinds of inputs:
* replicated tensors (hidden states [B, S, H], identical on every model-parallel rank):
  plain torch ops, no collectives;
* head-partitioned tensors (attention maps [B, nh/p, S, S], values [B, nh/p, S, dh], the
  mixed Q/K/V projections [B, S, A/p]): every head's loss is computed locally and
  `head_parallel_mean` all-reduces the sums over `group` (None: the model-parallel group).
  Heads are never mixed, so MP=p equals MP=1 (the original gathered along the last axis,
  which mixes heads in KL losses at MP > 1).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

import mpu
from mpu.mappings import ProcessGroup, group_size

from .losses import kl_divergence, sample_mean


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape")


def head_parallel_mean(values: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """Per-sample mean over the elements of `values` [B, n/p, ...] whose dim 1 is split across
    `group` -> [B]. Forward: the local sums, all-reduced, divided by the global count per
    sample; backward: identity (each rank's elements get their own 1/count).
    """
    values = values.float()
    local = values.flatten(1).sum(dim=1)                                             # [B]
    return mpu.reduce_from_model_parallel_region(local, group) / (values[0].numel() * group_size(group))


def attention_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor, *,
                  group: ProcessGroup = None) -> torch.Tensor:
    """TinyBERT attention loss: mean (A_s - A_t)^2 over all heads of the group.

    scores: [B, nh/p, S, S] (pre-softmax; masked cells hold the same fill value in both, so
    they add 0 but count in the mean) -> [B].
    """
    _check_same_shape(student_scores, teacher_scores, "attention maps")
    return head_parallel_mean((student_scores.float() - teacher_scores.float()).pow(2), group)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (h_s - h_t)^2 over each sample's elements. hidden: [B, ..., H] replicated -> [B]."""
    _check_same_shape(student, teacher, "hidden states")
    return sample_mean((student.float() - teacher.float()).pow(2))


def probability_kl(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(p_t || p_s) = sum_k p_t (log p_t - log p_s) over the last dim, from probabilities.

    probs: [..., K] -> [...] fp32. Entries with p_t == 0 (masked keys) add exactly 0 with a zero
    gradient; p_s is floored at the smallest normal fp32 inside the log, so an underflowed
    student probability gives a large finite term instead of inf.
    """
    _check_same_shape(student_probs, teacher_probs, "attention probabilities")
    p_t, p_s = teacher_probs.float(), student_probs.float()
    present = p_t > 0
    log_p_t = torch.log(torch.where(present, p_t, torch.ones((), device=p_t.device)))
    log_p_s = torch.log(p_s.clamp_min(torch.finfo(torch.float32).tiny))
    terms = torch.where(present, p_t * (log_p_t - log_p_s), torch.zeros((), device=p_t.device))
    return terms.sum(dim=-1)


def attention_kl(student_probs: torch.Tensor, teacher_probs: torch.Tensor, *,
                 group: ProcessGroup = None) -> torch.Tensor:
    """MiniLM attention loss: mean over [B, nh/p, S] query rows of KL(a_t || a_s) per head.

    probs: [B, nh/p, S, S] attention probabilities (used as they are) -> [B].
    """
    return head_parallel_mean(probability_kl(student_probs, teacher_probs), group)


def self_relation(states: torch.Tensor) -> torch.Tensor:
    """X X^T / sqrt(d) per head. states: [B, n, S, d] -> [B, n, S, S] fp32."""
    states = states.float()
    return torch.matmul(states, states.transpose(-1, -2)) / math.sqrt(states.size(-1))


def split_relation_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, S, W] -> [B, num_heads, S, W / num_heads]: contiguous column blocks as heads."""
    batch, seq, width = states.shape
    if width % num_heads != 0:
        raise ValueError(f"width {width} does not split into {num_heads} relation heads")
    return states.view(batch, seq, num_heads, width // num_heads).transpose(1, 2)


def relation_kl(student_states: torch.Tensor, teacher_states: torch.Tensor, *,
                group: ProcessGroup = None) -> torch.Tensor:
    """MiniLM/MiniLMv2 relation loss: mean over [B, n/p, S] rows of
    KL(softmax(rel_t) || softmax(rel_s)), rel = X X^T / sqrt(d) per head (no mask, no temperature).

    states: [B, n/p, S, d_s] and [B, n/p, S, d_t] (head sizes may differ) -> [B].
    """
    if student_states.shape[:-1] != teacher_states.shape[:-1]:
        raise ValueError(f"relation heads: student {tuple(student_states.shape)} and teacher "
                         f"{tuple(teacher_states.shape)} differ in heads or sequence")
    rows = kl_divergence(self_relation(student_states), self_relation(teacher_states))   # [B, n/p, S]
    return head_parallel_mean(rows, group)


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor, *, mask: Optional[torch.Tensor] = None
                    ) -> torch.Tensor:
    """DistilBERT cosine loss: 1 - cos(s_r, t_r) per row r, masked rows 0, plain mean over each
    sample's rows.

    hidden: [B, S, H] (or [B, H]) replicated; mask: [B, S] (nonzero = keep) or None -> [B].
    Masked rows never reach the cosine, so all-zero or padded rows give neither NaN nor a
    gradient.
    """
    _check_same_shape(student, teacher, "hidden states")
    keep = torch.ones(student.shape[:-1], dtype=torch.bool, device=student.device) if mask is None else mask != 0
    ones = torch.ones((), device=student.device)
    s = torch.where(keep.unsqueeze(-1), student.float(), ones)
    t = torch.where(keep.unsqueeze(-1), teacher.float(), ones)
    rows = torch.where(keep, 1.0 - F.cosine_similarity(s, t, dim=-1), torch.zeros((), device=student.device))
    return sample_mean(rows)


def patience_mse(student: torch.Tensor, teacher: torch.Tensor, *, normalize: bool = False, only_cls: bool = False
                 ) -> torch.Tensor:
    """PKD patient loss: MSE(f(h_s), f(h_t)), f = the [CLS] row (only_cls), then L2-normalised
    over H (normalize). hidden: [B, S, H] replicated -> [B] (mean over each sample's elements)."""
    _check_same_shape(student, teacher, "hidden states")
    s, t = student.float(), teacher.float()
    if only_cls:
        s, t = s[:, 0], t[:, 0]                       # [B, H]
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    return sample_mean((s - t).pow(2))
