"""Pure losses and schedule rules of the scheduled methods: DIITO, SID, Theseus, LRC-BERT and
MobileBERT (distill/methods/{diito,sid,theseus,lrc_bert,mobilebert}.py), and the one piece of
state two of them share: SID's and MobileBERT's `ProgressiveUnlocking`.

Losses compute in fp32 and keep dim 0 (the rows); the methods reduce them per sample with the
shared reductions of `losses.py` / `losses_hidden.py`. Attention maps are partitioned by heads
across model-parallel ranks: per-head rows are computed locally here and averaged by
`losses_hidden.head_parallel_mean`, so heads are never mixed (the original gathered along the
key axis, which mixes heads at MP > 1). No collectives in this file.
"""
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F

from .layer_mapping import stride_layers
from .losses import kl_divergence


# --------------------------------------------------------------------------- losses
def attention_score_kl(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) over the keys of every attention row (the original's
    `kl_div(student, teacher)` on scores). scores: [B, nh/p, S, S] masked pre-softmax scores ->
    rows [B, nh/p, S] fp32; average them with `losses_hidden.head_parallel_mean`. Masked keys
    (probability exactly 0 in the teacher) add 0."""
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"attention maps differ in shape: student {tuple(student_scores.shape)}, teacher "
                         f"{tuple(teacher_scores.shape)} (the method needs equal head counts and inputs)")
    return kl_divergence(student_scores, teacher_scores)


def cos_nce(student: torch.Tensor, teacher: torch.Tensor, positive_offset: int = 0) -> torch.Tensor:
    """LRC-BERT's COS-NCE per student row, with the positive term fixed.

    student: [N, R, H] (R = layers x positions, projected to the teacher width), teacher:
    [M, R, H] with M >= N; student row i's positive is teacher row positive_offset + i, every
    other teacher row is a negative. C_ij = mean_r cos(s_ri, t_rj), g = 1 - C,
    l_i = 1 - (sum_j g_ij - g_ii) / (M - 1) / 2 + g_ii  -> [N] fp32.
    The original subtracted M * g_ii instead of g_ii. With M = 1 there are no
    negatives and the negative term is 0.
    """
    if student.shape[1:] != teacher.shape[1:]:
        raise ValueError(f"COS-NCE needs equal [R, H], got {tuple(student.shape)} and {tuple(teacher.shape)}")
    num_rows, num_vectors = student.size(0), student.size(1)
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    similarity = torch.einsum("irh,jrh->ij", s, t) / num_vectors          # [N, M]
    distance = 1.0 - similarity
    positive = distance[torch.arange(num_rows), positive_offset + torch.arange(num_rows)]   # [N]
    negatives = (distance.sum(dim=1) - positive) / max(teacher.size(0) - 1, 1)
    return 1.0 - negatives / 2.0 + positive


# --------------------------------------------------------------------------- schedules
def progressive_unlock_due(next_locked: int, iteration: int, total_iters: int, num_layers: int) -> bool:
    """SID/MobileBERT's 'avg' schedule: layer `next_locked` unlocks once
    iteration >= total_iters / (num_layers + 1) * next_locked."""
    return total_iters > 0 and iteration >= total_iters / (num_layers + 1) * next_locked


class ProgressiveUnlocking:
    """SID's and MobileBERT's progressive layer unlocking (the original's `nextLockedLay`, from 1).

    `active`: the value this step's taps and losses use, taken from `next_locked` at the step's
    first pass (`begin_step`); the methods raise `next_locked` for the steps that follow.
    `state()` / `load()` are the method's checkpointed method state."""

    def __init__(self):
        self.next_locked = self.active = 1

    def begin_step(self) -> None:
        self.active = self.next_locked

    def state(self) -> dict:
        return {"next_locked_layer": self.next_locked}

    def load(self, state: dict, method: str) -> None:
        unknown = set(state) - {"next_locked_layer"}
        if unknown:
            raise ValueError(f"{method}: unknown method state keys {sorted(unknown)}")
        self.next_locked = self.active = int(state.get("next_locked_layer", 1))


def theseus_keep_rate(iteration: int, total_iters: int, replacing_rate: float, not_replaced_steps: float) -> float:
    """Probability of keeping each student layer: r0 + it / (T * k) * (1 - r0), capped at 1
    (all student layers after a fraction k of training). r0 while T is unknown (0)."""
    if total_iters <= 0:
        return min(1.0, replacing_rate)
    if not_replaced_steps <= 0:
        return 1.0
    return min(1.0, replacing_rate + iteration / (total_iters * not_replaced_steps) * (1.0 - replacing_rate))


# --------------------------------------------------------------------------- DIITO interchange
def alignment_points(how: str, student_layers: int, teacher_layers: int,
                     level: int = 1) -> Tuple[List[int], List[int]]:
    """DIITO's aligned hidden representations (student indices, teacher indices):
    `full`: student `level` (in [1, L_s], drawn per step) <-> teacher ((level-1)k, level k],
    k = L_t // L_s; `middle`: L_s // 2 + 1 <-> L_t // 2 + 1; `late`: L-1 and L on both sides."""
    if how == "full":
        stride = stride_layers(student_layers, teacher_layers)[1]
        return [level], list(range((level - 1) * stride + 1, level * stride + 1))
    if how == "middle":
        return [student_layers // 2 + 1], [teacher_layers // 2 + 1]
    if how == "late":
        return [student_layers - 1, student_layers], [teacher_layers - 1, teacher_layers]
    raise ValueError(f"unknown DIITO alignment {how!r}; valid: full, middle, late")


def _span_counts(lengths: torch.Tensor, dual_lengths: torch.Tensor, prop: float, max_token: int) -> torch.Tensor:
    counts = torch.floor(torch.minimum(lengths, dual_lengths).double() * prop).long()
    return counts.clamp(max=max_token) if max_token >= 0 else counts


def _ranks(candidates: torch.Tensor) -> torch.Tensor:
    """Index of each candidate position among its row's candidates ([N, S] long)."""
    return candidates.long().cumsum(dim=1) - 1


def consecutive_masks(candidates: torch.Tensor, dual_candidates: torch.Tensor, prop: float, max_token: int,
                      generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One span of n_i = floor(min(len_i, len_dual_i) * prop) candidate positions (capped by
    max_token unless -1) at a uniformly random start, drawn independently for the row and its
    dual. candidates, dual_candidates: [N, S] bool -> (mask, dual_mask) [N, S] bool."""
    lengths, dual_lengths = candidates.sum(1), dual_candidates.sum(1)
    counts = _span_counts(lengths, dual_lengths, prop, max_token)
    draws = torch.rand(2, candidates.size(0), generator=generator, dtype=torch.float64)
    starts = torch.floor(draws[0] * (lengths - counts + 1).double()).long()
    dual_starts = torch.floor(draws[1] * (dual_lengths - counts + 1).double()).long()

    def span(cands, begin):
        rank = _ranks(cands)
        return cands & (rank >= begin[:, None]) & (rank < (begin + counts)[:, None])
    return span(candidates, starts), span(dual_candidates, dual_starts)


def random_masks(candidates: torch.Tensor, dual_candidates: torch.Tensor, prop: float, max_token: int,
                 generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """n_i (as in `consecutive_masks`) scattered candidate positions, drawn independently for
    the row and its dual. [N, S] bool -> (mask, dual_mask) [N, S] bool."""
    counts = _span_counts(candidates.sum(1), dual_candidates.sum(1), prop, max_token)

    def scatter(cands):
        scores = torch.rand(cands.shape, generator=generator, dtype=torch.float64).masked_fill(~cands, math.inf)
        rank = scores.argsort(dim=1).argsort(dim=1)
        return cands & (rank < counts[:, None])
    return scatter(candidates), scatter(dual_candidates)


def leading_masks(candidates: torch.Tensor, dual_candidates: torch.Tensor,
                  max_token: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first n_i = min(count_i, count_dual_i) candidates of each (capped by max_token unless
    -1): DIITO's `masked` way with the predicted positions as candidates."""
    counts = _span_counts(candidates.sum(1), dual_candidates.sum(1), 1.0, max_token)
    return (candidates & (_ranks(candidates) < counts[:, None]),
            dual_candidates & (_ranks(dual_candidates) < counts[:, None]))


def interchange(value: torch.Tensor, dual_value: torch.Tensor, mask: torch.Tensor,
                dual_mask: torch.Tensor) -> torch.Tensor:
    """value with value[mask] = dual_value[dual_mask] (row by row, in position order).

    value, dual_value: [N, S, H]; mask, dual_mask: [N, S] bool with equal counts per row.
    Differentiable in both values."""
    if not torch.equal(mask.sum(1), dual_mask.sum(1)):
        raise ValueError("interchange masks select different numbers of positions per row")
    out = value.clone()
    out[mask] = dual_value[dual_mask].to(value.dtype)
    return out
