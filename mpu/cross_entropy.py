"""Losses over vocabulary-parallel logits, computed without gathering the vocabulary.

Logits arrive as this rank's slice `[..., V/p]` of the vocabulary (rank r holds columns
[r*V/p, (r+1)*V/p)). Every function returns a per-token loss `[...]` in fp32 and does
its softmax statistics with all-reduces over `group` (None: the model-parallel group).
Math is in fp32 whatever the input dtype. Backward passes are written by hand so that
only the inputs and per-token statistics are kept between forward and backward.

Soft-label losses (teacher distribution p_t = softmax(z_t / T), student p_s = softmax(z_s / T)):
* `vocab_parallel_kl_div`:  sum_v p_t (log p_t - log p_s)   (= F.kl_div(log p_s, p_t))
* `vocab_parallel_soft_cross_entropy`: -sum_v p_t log p_s   (includes the teacher entropy)
* `vocab_parallel_entropy`: -sum_v p log p
No T^2 factor is applied; callers that want it multiply. A `mask` `[...]` zeroes the loss
and the gradient of masked tokens exactly (no NaN even if their logits are inf/NaN).
`chunk_size` bounds the fp32 temporaries to `chunk_size` tokens at a time.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from .mappings import (ProcessGroup, all_reduce_no_grad, group_rank, group_size, reduce_from_model_parallel_region,
                       scatter_to_model_parallel_region)


def _vocab_range(per_partition: int, group: ProcessGroup) -> Tuple[int, int]:
    start = group_rank(group) * per_partition
    return start, start + per_partition


def _logsumexp(logits: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """log sum_v exp(logits) over the whole vocabulary. logits: [N, V/p] fp32 -> [N, 1].

    One fused logsumexp per shard; across shards the local results are combined with a max
    and a sum all-reduce of [N, 1] (a row of -inf gives -inf, never NaN)."""
    local = torch.logsumexp(logits, dim=-1, keepdim=True)
    if group_size(group) == 1:
        return local
    stabilizer = all_reduce_no_grad(local, group, dist.ReduceOp.MAX)
    stabilizer = torch.where(torch.isfinite(stabilizer), stabilizer, torch.zeros_like(stabilizer))
    return all_reduce_no_grad((local - stabilizer).exp(), group).log() + stabilizer


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group):
        # logits: [N, V/p] (any float dtype), target: [N] global vocabulary ids
        start, end = _vocab_range(logits.size(-1), group)
        logits32 = logits.float()
        lse = _logsumexp(logits32, group)  # [N, 1]
        outside = (target < start) | (target >= end)
        local_target = (target - start).masked_fill(outside, 0)
        picked = logits32.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        picked = all_reduce_no_grad(picked, group)
        ctx.save_for_backward(logits, lse, local_target, outside)
        return lse.squeeze(-1) - picked

    @staticmethod
    def backward(ctx, grad_output):
        logits, lse, local_target, outside = ctx.saved_tensors
        grad = (logits.float() - lse).exp()  # softmax over the full vocabulary, this rank's columns
        inside = (~outside).to(grad.dtype).unsqueeze(-1)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -inside)
        grad.mul_(grad_output.unsqueeze(-1))
        return grad.to(logits.dtype), None, None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                                 group: ProcessGroup = None) -> torch.Tensor:
    """Per-token cross entropy. logits: [..., V/p], target: [...] (global ids) -> loss [...] fp32."""
    shape = target.shape
    logits_2d = vocab_parallel_logits.reshape(-1, vocab_parallel_logits.size(-1))  # [N, V/p]
    loss = _VocabParallelCrossEntropy.apply(logits_2d, target.reshape(-1), group)
    return loss.view(shape)


def vocab_parallel_select(vocab_parallel_logits: torch.Tensor, index: torch.Tensor,
                          group: ProcessGroup = None) -> torch.Tensor:
    """logits[..., index] for global vocabulary ids. logits: [..., V/p], index: [..., k] -> [..., k]."""
    start, end = _vocab_range(vocab_parallel_logits.size(-1), group)
    outside = (index < start) | (index >= end)
    local = vocab_parallel_logits.gather(-1, (index - start).masked_fill(outside, 0))
    return reduce_from_model_parallel_region(local.masked_fill(outside, 0.0), group)


def vocab_parallel_take(vocab_parallel_logits: torch.Tensor, columns: torch.Tensor, group: ProcessGroup = None,
                        chunk_rows: Optional[int] = None) -> torch.Tensor:
    """The columns `columns` ([K] global vocabulary ids, K divisible by the group size) of
    vocabulary-parallel logits, themselves vocabulary-parallel: [..., V/p] -> [..., K/p], rank r
    holding entries [r*K/p, (r+1)*K/p) of `columns` (e.g. a teacher's logits at the ids a
    compressed student keeps, in the student's row order). Differentiable. Each chunk of
    `chunk_rows` rows is all-reduced as [rows, K], which bounds that temporary."""
    world = group_size(group)
    if columns.numel() % world:
        raise ValueError(f"{columns.numel()} columns do not split among {world} model-parallel ranks")
    per_rank = vocab_parallel_logits.size(-1)
    rows = vocab_parallel_logits.reshape(-1, per_rank)                                      # [N, V/p]
    if world == 1:
        return rows[:, columns].reshape(*vocab_parallel_logits.shape[:-1], columns.numel())
    parts = []
    for chunk in _chunks(rows.size(0), chunk_rows):
        picked = vocab_parallel_select(rows[chunk], columns.expand(chunk.stop - chunk.start, -1), group)  # [n, K]
        parts.append(scatter_to_model_parallel_region(picked, group))                       # [n, K/p]
    return torch.cat(parts).reshape(*vocab_parallel_logits.shape[:-1], columns.numel() // world)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    return logits / temperature if temperature != 1.0 else logits


def _soft_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: str, group: ProcessGroup):
    """Loss rows and log-sum-exps for a chunk. student/teacher: [n, V/p] -> [n], [n, 1], [n, 1].

    With p_t = exp(t - lse_t) (sum 1 over the whole vocabulary):
    KL = sum p_t (t - s) - lse_t + lse_s and CE = -sum p_t s + lse_s, so each needs only dot
    products of p_t with the logits (few passes over [n, V/p]). Where a logit is infinite those
    products are NaN; such chunks take the elementwise form with 0 log 0 = 0 (also where the
    student's logit is -inf too: a token neither side can produce)."""
    s, t = _scaled(student, temperature), _scaled(teacher, temperature)
    s_lse, t_lse = _logsumexp(s, group), _logsumexp(t, group)
    p_t = (t - t_lse).exp_()
    local = torch.linalg.vecdot(p_t, t - s) if kind == "kl" else -torch.linalg.vecdot(p_t, s)
    if torch.isnan(local).any():
        log_ps = (s - s_lse).masked_fill_(p_t == 0, 0.0)
        local = (torch.xlogy(p_t, p_t) - p_t * log_ps).sum(-1) if kind == "kl" else -(p_t * log_ps).sum(-1)
        shift = 0.0
    else:
        shift = (s_lse - t_lse).squeeze(-1) if kind == "kl" else s_lse.squeeze(-1)
    return all_reduce_no_grad(local, group) + shift, s_lse, t_lse


def _chunks(num_rows: int, chunk_size: Optional[int]):
    step = num_rows if not chunk_size else chunk_size
    return [slice(i, min(i + step, num_rows)) for i in range(0, max(num_rows, 1), max(step, 1))]


class _VocabParallelSoftLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, mask, temperature, kind, group, chunk_size):
        # student, teacher: [N, V/p]; mask: [N] bool
        rows = _chunks(student.size(0), chunk_size)
        parts = [_soft_rows(student[r], teacher[r], temperature, kind, group) for r in rows]
        loss, s_lse, t_lse = (torch.cat(items) for items in zip(*parts))
        loss = torch.where(mask, loss, torch.zeros_like(loss))
        ctx.save_for_backward(student, teacher, mask, s_lse, t_lse, loss)
        ctx.temperature, ctx.kind, ctx.chunk_size = temperature, kind, chunk_size
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        student, teacher, mask, s_lse, t_lse, loss = ctx.saved_tensors
        temperature = ctx.temperature
        need_student, need_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = torch.where(mask, grad_output, torch.zeros_like(grad_output)).unsqueeze(-1) / temperature
        # Written chunk by chunk into preallocated gradients (no list of chunks to concatenate).
        grad_s = torch.empty_like(student) if need_student else None
        grad_t = torch.empty_like(teacher) if need_teacher else None
        for rows in _chunks(student.size(0), ctx.chunk_size):
            s, t = _scaled(student[rows], temperature), _scaled(teacher[rows], temperature)
            p_t = (t - t_lse[rows]).exp_()
            dropped = ~mask[rows]
            if need_student:  # d/dz_s of both KL and CE: (p_s - p_t) / T
                g = (s - s_lse[rows]).exp_().sub_(p_t).mul_(scale[rows])
                g[dropped] = 0.0
                grad_s[rows] = g
            if need_teacher:  # KL: p_t (log p_t - log p_s - KL) / T;  CE: p_t (-log p_s - CE) / T
                log_ps = s - s_lse[rows]
                inner = (t - t_lse[rows]).sub_(log_ps) if ctx.kind == "kl" else log_ps.neg_()
                g = inner.sub_(loss[rows].unsqueeze(-1)).mul_(p_t).mul_(scale[rows])
                g.masked_fill_(p_t == 0, 0.0)   # 0 * (-inf - -inf) where both logits are -inf
                g[dropped] = 0.0
                grad_t[rows] = g
        return grad_s, grad_t, None, None, None, None, None


def _soft_loss(student_logits, teacher_logits, temperature, mask, group, chunk_size, kind):
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    shape = student_logits.shape[:-1]
    if mask is None:
        mask = torch.ones(shape, dtype=torch.bool, device=student_logits.device)
    elif mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the token shape {tuple(shape)}")
    vocab = student_logits.size(-1)
    loss = _VocabParallelSoftLoss.apply(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab),
                                        mask.reshape(-1).bool(), float(temperature), kind, group, chunk_size)
    return loss.view(shape)


def vocab_parallel_kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                          mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
                          chunk_size: Optional[int] = None) -> torch.Tensor:
    """KL(p_t || p_s) per token, the distillation KL. logits: [..., V/p] -> [...] fp32."""
    return _soft_loss(student_logits, teacher_logits, temperature, mask, group, chunk_size, "kl")


def vocab_parallel_soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                      temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                                      group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """-sum p_t log p_s per token. logits: [..., V/p] -> [...] fp32."""
    return _soft_loss(student_logits, teacher_logits, temperature, mask, group, chunk_size, "ce")


def vocab_parallel_entropy(logits: torch.Tensor, temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                           group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """-sum p log p per token (the soft CE of a distribution with itself). [..., V/p] -> [...] fp32."""
    return _soft_loss(logits, logits, temperature, mask, group, chunk_size, "ce")
