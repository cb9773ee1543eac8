"""GLMD's all-position logits losses as small pure functions, and how a
vocabulary-compressed student's logits line up with a teacher's (`VocabView`).

Logits arrive vocabulary-parallel, `[..., V/p]` (this rank's columns of the vocabulary); every
collective is over `group` (None: the model-parallel group), and the full vocabulary is never
gathered: the softmax statistics are all-reduced (`mpu.vocab_parallel_kl_div`, or the
--distill_logit_loss divergence of `mpu.divergences`), the MSE sums are all-reduced, and top-n
gathers only each rank's local top-n values and indices.

`mask` (`[...]`, nonzero = keep) is a token mask: a masked row contributes 0 and still counts
in the mean (`sample_mean`). The original multiplied the logits by the mask instead, which
makes masked rows uniform-against-uniform (KL 0, MSE 0): the same values and gradients, but
no inf/NaN of a padded row can reach the math here.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist

import mpu
from mpu.mappings import ProcessGroup, all_reduce_no_grad, group_rank, group_size, resolve_group

from .losses import _keep, parallel_mse, sample_mean, soft_loss
from .losses import mse as mse_rows

# Rows at a time inside the vocabulary-parallel KL: bounds its fp32 temporaries to
# KL_CHUNK_ROWS x V/p (see bench/logits_kl.py).
KL_CHUNK_ROWS = 256
# The logit given to dropped vocabulary columns (--distill_logit_mask_map): exp() of it is an
# exact 0 in fp32 at any temperature we accept, while differences stay finite (no NaN).
DROPPED_LOGIT = -1e9


@dataclass(frozen=True)
class VocabView:
    """How a vocabulary-compressed student's logits line up with a teacher's.

    kept_ids: [M] the original id of each student row (in row order); kept_mask: [V] bool, True
    for kept original ids; unmapped: the student's logits are over its M rows
    (--unmap_vocab_output), so the teacher's are column-selected at kept_ids; mask_map
    (--distill_logit_mask_map): with V-column student logits, the losses run over kept ids only.
    """
    kept_ids: torch.Tensor
    kept_mask: torch.Tensor
    unmapped: bool
    mask_map: bool

    def align(self, s_logits_parallel: torch.Tensor, t_logits_parallel: torch.Tensor, group: ProcessGroup = None
              ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(student, teacher, column keep-mask [V/p] or None), ready for a loss: [..., V/p] or
        [..., M/p] logits of equal shapes. The teacher has no gradient."""
        if self.unmapped:
            with torch.no_grad():
                teacher = mpu.vocab_parallel_take(t_logits_parallel.detach(), self.kept_ids.to(t_logits_parallel.device),
                                                  group, chunk_rows=KL_CHUNK_ROWS)             # [..., M/p]
            return s_logits_parallel, teacher, None
        if not self.mask_map:
            return s_logits_parallel, t_logits_parallel, None
        per_rank = s_logits_parallel.size(-1)
        start = group_rank(group) * per_rank
        return s_logits_parallel, t_logits_parallel, self.kept_mask[start:start + per_rank].to(s_logits_parallel.device)


def restrict_columns(s: torch.Tensor, t: torch.Tensor, column_keep: Optional[torch.Tensor], fill: float
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """fp32 student and teacher logits [..., V/p] with the dropped columns set to `fill`
    (DROPPED_LOGIT for softmax losses, 0 for MSE); unchanged without a mask."""
    if column_keep is None:
        return s, t
    return s.float().masked_fill(~column_keep, fill), t.float().masked_fill(~column_keep, fill)


def kept_fraction(column_keep: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """The fraction of the whole vocabulary that `column_keep` ([V/p], this rank's share) keeps."""
    kept = all_reduce_no_grad(column_keep.sum().float().reshape(1), group)
    return (kept / (column_keep.numel() * group_size(group))).squeeze(0)


def num_top(top_n: float, vocab_size: int) -> int:
    """The n of --logitsdistil_top_n: a value in (0, 1) is a fraction of the vocabulary."""
    if not top_n > 0:
        raise ValueError(f"logitsdistil_top_n must be positive, got {top_n}")
    n = int(top_n * vocab_size) if top_n < 1 else int(top_n)
    return max(1, min(n, vocab_size))


def global_top_n(logits: torch.Tensor, n: int, group: ProcessGroup = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The n largest logits of each row over the whole vocabulary and their global ids.

    logits: [N, V/p] -> values [N, n] (no gradient), ids [N, n] (long), identical on every
    rank. Each rank gathers only its local top-min(n, V/p), never the vocabulary."""
    per_rank = logits.size(-1)
    values, index = logits.detach().topk(min(n, per_rank), dim=-1)
    index = index + group_rank(group) * per_rank
    if group_size(group) > 1:
        world = resolve_group(group)
        parts = [[torch.empty_like(t) for _ in range(group_size(group))] for t in (values, index)]
        dist.all_gather(parts[0], values.contiguous(), group=world)
        dist.all_gather(parts[1], index.contiguous(), group=world)
        values, index = torch.cat(parts[0], dim=-1), torch.cat(parts[1], dim=-1)
        values, picked = values.topk(n, dim=-1)
        index = index.gather(-1, picked)
    return values, index


def teacher_min_fill(t_logits: torch.Tensor, n: int, group: ProcessGroup = None,
                     column_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Teacher logits below each row's n-th largest set to the teacher's minimum logit
    (the minimum of the whole tensor over every shard, as in the original). [N, V/p] -> same.
    With `column_keep` ([V/p]) the minimum is over the kept columns, and dropped columns
    stay at DROPPED_LOGIT."""
    t = t_logits.detach().float()
    threshold = global_top_n(t, n, group)[0][:, -1:]                           # [N, 1]
    counted = t if column_keep is None else t.masked_fill(~column_keep, float("inf"))
    minimum = counted.min().reshape(1)
    if group_size(group) > 1:
        minimum = all_reduce_no_grad(minimum, group, dist.ReduceOp.MIN)
    filled = torch.where(t >= threshold, t, minimum)
    return filled if column_keep is None else filled.masked_fill(~column_keep, DROPPED_LOGIT)


def top_n_hinge(s_logits: torch.Tensor, top_index: torch.Tensor, s_top: torch.Tensor, keep: torch.Tensor,
                group: ProcessGroup = None) -> torch.Tensor:
    """loss1 = mean over the positive entries of relu(z_s - min(z_s[top])) at the non-top ids.

    s_logits: [N, V/p]; top_index: [N, n] global ids; s_top: [N, n] the student's logits there
    (replicated); keep: [N] bool. Returns a scalar, 0 when no entry is positive."""
    per_rank = s_logits.size(-1)
    start = group_rank(group) * per_rank
    local = top_index - start
    inside = (local >= 0) & (local < per_rank)
    is_top = torch.zeros(s_logits.size(0), per_rank + 1, dtype=torch.bool, device=s_logits.device)
    is_top.scatter_(-1, local.masked_fill(~inside, per_rank), True)          # other ranks' ids: extra column
    is_top = is_top[:, :per_rank]
    floor = mpu.copy_to_model_parallel_region(s_top.min(dim=-1, keepdim=True).values, group)   # [N, 1]
    hinge = torch.relu(s_logits.float() - floor)
    counted = ~is_top & (hinge > 0) & keep.unsqueeze(-1)
    total = mpu.reduce_from_model_parallel_region(torch.where(counted, hinge, 0.0).sum().reshape(1), group)
    count = all_reduce_no_grad(counted.sum().float().reshape(1), group)
    return (total / count.clamp(min=1.0)).squeeze(0)


def _row_loss(s: torch.Tensor, t: torch.Tensor, keep: torch.Tensor, temperature: float, mse: bool,
              group: ProcessGroup, vocab_parallel: bool, divergence: str, jsd_beta: float, skew_alpha: float
              ) -> torch.Tensor:
    """Per-row T^2 * the divergence (a `soft_loss` kind, with its `jsd_beta` / `skew_alpha`), or the
    MSE mean over the (whole) last dim. [N, V'] -> [N] fp32.

    vocab_parallel: [N, V/p] shards (collectives over `group`); else replicated [N, n]."""
    if mse:
        return parallel_mse(s, t, mask=keep, group=group) if vocab_parallel else mse_rows(s, t, mask=keep)
    rows = soft_loss(divergence, s, t, vocab_parallel=vocab_parallel, temperature=temperature, jsd_beta=jsd_beta,
                     skew_alpha=skew_alpha, mask=keep, group=group, chunk_size=KL_CHUNK_ROWS)
    return rows * temperature ** 2


def logits_distillation_loss(s_logits_parallel: torch.Tensor, t_logits_parallel: torch.Tensor, *,
                             temperature: float = 1.0, mask: Optional[torch.Tensor] = None, mse: bool = False,
                             group: ProcessGroup = None, top_n: Optional[float] = None, teacher_min: bool = False,
                             column_keep: Optional[torch.Tensor] = None, divergence: str = "fkl",
                             jsd_beta: float = 0.5, skew_alpha: float = 0.1) -> Tuple[torch.Tensor, dict]:
    """GLMD's logits loss over every token position.

    s_logits_parallel, t_logits_parallel: [B, S, V/p]; mask: [B, S] (nonzero = keep) or None.
    Loss per row: T^2 * KL(softmax(t/T) || softmax(s/T)) (`divergence` "fkl"; or T^2 times another
    of `losses.DIVERGENCES`, with `jsd_beta` / `skew_alpha`), or with `mse` the mean over the whole
    vocabulary of (s - t)^2 (a divergence other than "fkl" refuses it). top_n (n, or a fraction
    of V in (0, 1)): with `teacher_min` the teacher's logits below its n-th largest are set to
    its minimum first; otherwise the loss runs over the teacher's global top-n ids only (student
    gathered there; the divergence of the two distributions renormalised over those ids), plus
    the hinge `top_n_hinge`. Reduction: per row, the mean over its S positions (masked ones count) -> [B].
    Returns (loss, {"logits/hinge": ...} when the hinge is on).
    """
    if s_logits_parallel.shape != t_logits_parallel.shape:
        raise ValueError(f"student logits {tuple(s_logits_parallel.shape)} and teacher logits "
                         f"{tuple(t_logits_parallel.shape)} differ in shape")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if mse and divergence != "fkl":
        raise ValueError(f"the logits MSE and the divergence {divergence!r} exclude each other")
    rows_shape = s_logits_parallel.shape[:-1]
    keep = _keep(mask, rows_shape, s_logits_parallel.device).reshape(-1)        # [N]
    per_rank = s_logits_parallel.size(-1)
    s = s_logits_parallel.reshape(-1, per_rank)                                  # [N, V/p]
    t = t_logits_parallel.reshape(-1, per_rank)
    vocab_size = per_rank * group_size(group)
    if column_keep is not None:
        vocab_size = round(float(kept_fraction(column_keep, group)) * vocab_size)
        s, t = restrict_columns(s, t, column_keep, 0.0 if mse and top_n is None else DROPPED_LOGIT)
    metrics, hinge = {}, None
    if top_n is not None:
        n = num_top(top_n, vocab_size)
        t = torch.where(keep.unsqueeze(-1), t.float(), 0.0)          # as the original's zeroed rows
        if column_keep is not None:
            t = t.masked_fill(~column_keep, DROPPED_LOGIT)
        if teacher_min:
            t = teacher_min_fill(t, n, group, column_keep)
        else:
            s = torch.where(keep.unsqueeze(-1), s.float(), 0.0)
            t_top, top_index = global_top_n(t, n, group)
            s_top = mpu.vocab_parallel_select(s, top_index, group)                 # [N, n], replicated
            hinge = top_n_hinge(s, top_index, s_top, keep, group)
            s, t = s_top, t_top
            metrics["logits/hinge"] = hinge.detach()
    rows = _row_loss(s, t, keep, temperature, mse, group, vocab_parallel=hinge is None, divergence=divergence,
                     jsd_beta=jsd_beta, skew_alpha=skew_alpha)
    if mse and hinge is None and column_keep is not None:   # a mean over the kept columns, not all V
        rows = rows / kept_fraction(column_keep, group)
    loss = sample_mean(rows.reshape(rows_shape))                                        # [B, S] -> [B]
    return (loss if hinge is None else loss + hinge), metrics
