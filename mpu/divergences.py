"""Divergences between a teacher's and a student's softened distributions over
vocabulary-parallel logits, computed without gathering the vocabulary.

With p_t = softmax(z_t / T) and p_s = softmax(z_s / T) over the whole vocabulary:

* `MixtureKL(a, b, w)`: a * KL(p_t || m) + b * KL(p_s || m), m = w * p_t + (1 - w) * p_s. Its
  members (`MixtureKL.forward_kl()`, ...):
  - forward KL   KL(p_t || p_s)                                  (1, 0, 0)
  - reverse KL   KL(p_s || p_t)                                  (0, 1, 1)
  - JSD_beta     beta KL(p_t || m) + (1 - beta) KL(p_s || m),     (beta, 1 - beta, beta)
                 m = beta p_t + (1 - beta) p_s (TRL's generalised JSD, GKD, Agarwal et al. 2024)
  - skew KL_alpha          KL(p_t || alpha p_t + (1 - alpha) p_s)  (1, 0, alpha)    (DistiLLM,
  - skew reverse KL_alpha  KL(p_s || alpha p_s + (1 - alpha) p_t)  (0, 1, 1 - alpha) Ko et al. 2024)
* `TotalVariation()`: 0.5 * sum_v |p_t - p_s|.

Each divergence is a sum over the vocabulary of elementwise `terms(log p_s, log p_t)`, so a
rank sums its V/p columns and one all-reduce over `group` (None: the model-parallel group)
adds the shards, after the two all-reduced log-sum-exps that normalise the logits. The
backward is written by hand: with e = p * dL/dp (the `grad_terms`), dL/dz = (e - p * sum_v e) / T,
whose sum over the vocabulary is the one collective of the backward. Only the inputs and
the per-row log-sum-exps are kept between forward and backward; `chunk_size` bounds the fp32
temporaries to `chunk_size` rows at a time.

`terms` is also differentiable by autograd without NaN (0 log 0 = 0 where a probability is 0,
even under -inf logits), which is how `distill.losses` uses it on replicated logits.
No T^2 factor is applied. A `mask` `[...]` (nonzero = keep) zeroes the loss and the gradient
of masked rows exactly, even when their logits hold inf or NaN.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .cross_entropy import _chunks, _logsumexp, _scaled, vocab_parallel_kl_div
from .mappings import ProcessGroup, all_reduce_no_grad

# The lowest finite fp32 value: log-probabilities of -inf are raised to it before they enter
# a log-sum-exp, so that its gradient never computes exp(-inf - (-inf)).
_FLOOR = torch.finfo(torch.float32).min


def _p_log_ratio(p: torch.Tensor, log_p: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """p * (log p - log m) elementwise, 0 where p == 0 (also in the gradient)."""
    return p * torch.where(p > 0, log_p - log_m, 0.0)


def _ratio(log_p: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """p / m elementwise, 0 where p == 0 (log p = -inf)."""
    return torch.where(log_p > -math.inf, (log_p - log_m).exp(), 0.0)


@dataclass(frozen=True)
class MixtureKL:
    """a * KL(p_t || m) + b * KL(p_s || m) with the mixture m = w * p_t + (1 - w) * p_s."""
    teacher_weight: float          # a
    student_weight: float          # b
    mixture_teacher_share: float   # w, in [0, 1]

    @classmethod
    def forward_kl(cls) -> "MixtureKL":
        return cls(1.0, 0.0, 0.0)

    @classmethod
    def reverse_kl(cls) -> "MixtureKL":
        return cls(0.0, 1.0, 1.0)

    @classmethod
    def jsd(cls, beta: float) -> "MixtureKL":
        """JSD_beta for 0 < beta < 1; beta = 0 and 1 are forward and reverse KL (TRL's endpoints,
        the limits of JSD_beta / beta and JSD_beta / (1 - beta); JSD_beta itself tends to 0)."""
        _check_fraction("beta", beta, closed=True)
        if beta in (0.0, 1.0):
            return cls.forward_kl() if beta == 0.0 else cls.reverse_kl()
        return cls(beta, 1.0 - beta, beta)

    @classmethod
    def skew_kl(cls, alpha: float) -> "MixtureKL":
        _check_fraction("alpha", alpha, closed=False)
        return cls(1.0, 0.0, alpha)

    @classmethod
    def skew_reverse_kl(cls, alpha: float) -> "MixtureKL":
        _check_fraction("alpha", alpha, closed=False)
        return cls(0.0, 1.0, 1.0 - alpha)

    def log_mixture(self, log_ps: torch.Tensor, log_pt: torch.Tensor) -> torch.Tensor:
        """log m elementwise. [n, V'] -> [n, V']."""
        w = self.mixture_teacher_share
        if w == 0.0:
            return log_ps
        if w == 1.0:
            return log_pt
        return torch.logaddexp(log_pt.clamp(min=_FLOOR) + math.log(w), log_ps.clamp(min=_FLOOR) + math.log1p(-w))

    def terms(self, log_ps: torch.Tensor, log_pt: torch.Tensor) -> torch.Tensor:
        """The loss's elementwise terms; their sum over the vocabulary is the loss. [n, V'] -> [n, V']."""
        log_m = self.log_mixture(log_ps, log_pt)
        out = torch.zeros_like(log_ps)
        if self.teacher_weight:
            out = out + self.teacher_weight * _p_log_ratio(log_pt.exp(), log_pt, log_m)
        if self.student_weight:
            out = out + self.student_weight * _p_log_ratio(log_ps.exp(), log_ps, log_m)
        return out

    def grad_terms(self, log_ps: torch.Tensor, log_pt: torch.Tensor, need_student: bool, need_teacher: bool
                   ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(p_s * dL/dp_s, p_t * dL/dp_t) elementwise, each up to an added multiple of p (which the softmax
        Jacobian removes), None when not needed. [n, V'] -> [n, V'].

        dL/dp_s = b (log p_s - log m + 1) - (1 - w) q / m, dL/dp_t = a (log p_t - log m + 1) - w q / m,
        q = a p_t + b p_s; the constants a and b are dropped, and p / m is taken as exp(log p - log m),
        at most 1 / (1 - w) (student) or 1 / w (teacher), so it never overflows."""
        a, b, w = self.teacher_weight, self.student_weight, self.mixture_teacher_share
        log_m = self.log_mixture(log_ps, log_pt)
        p_s, p_t = log_ps.exp(), log_pt.exp()
        q = a * p_t + b * p_s
        e_s = e_t = None
        if need_student:
            e_s = b * _p_log_ratio(p_s, log_ps, log_m) if b else torch.zeros_like(p_s)
            if w != 1.0:
                e_s = e_s - (1.0 - w) * q * _ratio(log_ps, log_m)
        if need_teacher:
            e_t = a * _p_log_ratio(p_t, log_pt, log_m) if a else torch.zeros_like(p_t)
            if w != 0.0:
                e_t = e_t - w * q * _ratio(log_pt, log_m)
        return e_s, e_t


@dataclass(frozen=True)
class TotalVariation:
    """0.5 * sum_v |p_t - p_s|."""

    def terms(self, log_ps: torch.Tensor, log_pt: torch.Tensor) -> torch.Tensor:
        return 0.5 * (log_pt.exp() - log_ps.exp()).abs()

    def grad_terms(self, log_ps: torch.Tensor, log_pt: torch.Tensor, need_student: bool, need_teacher: bool
                   ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """dL/dp_s = 0.5 sign(p_s - p_t) = -dL/dp_t (0 where they are equal, as autograd's |x|)."""
        p_s, p_t = log_ps.exp(), log_pt.exp()
        half_sign = 0.5 * torch.sign(p_s - p_t)
        return (p_s * half_sign if need_student else None), (-p_t * half_sign if need_teacher else None)


Divergence = Union[MixtureKL, TotalVariation]


def _check_fraction(name: str, value: float, closed: bool) -> None:
    """value in [0, 1] (closed) or [0, 1); NaN fails."""
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ValueError(f"{name} must lie in [0, 1{']' if closed else ')'}, got {value}")


def _log_probs(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor, temperature: float,
               s_lse: Optional[torch.Tensor] = None, t_lse: Optional[torch.Tensor] = None, group: ProcessGroup = None):
    """fp32 log p_s, log p_t of a chunk [n, V/p] (masked rows: zero logits) and their [n, 1]
    log-sum-exps over the whole vocabulary (all-reduced unless given)."""
    rows = keep.unsqueeze(-1)
    s = _scaled(student, temperature).masked_fill(~rows, 0.0)
    t = _scaled(teacher, temperature).masked_fill(~rows, 0.0)
    s_lse = _logsumexp(s, group) if s_lse is None else s_lse
    t_lse = _logsumexp(t, group) if t_lse is None else t_lse
    return s.sub_(s_lse), t.sub_(t_lse), s_lse, t_lse


class _VocabParallelDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, mask, temperature, divergence, group, chunk_size):
        # student, teacher: [N, V/p]; mask: [N] bool
        losses, s_lses, t_lses = [], [], []
        for rows in _chunks(student.size(0), chunk_size):
            log_ps, log_pt, s_lse, t_lse = _log_probs(student[rows], teacher[rows], mask[rows], temperature,
                                                      group=group)
            losses.append(all_reduce_no_grad(divergence.terms(log_ps, log_pt).sum(-1), group))
            s_lses.append(s_lse)
            t_lses.append(t_lse)
        loss = torch.cat(losses)
        loss = torch.where(mask, loss, torch.zeros_like(loss))
        ctx.save_for_backward(student, teacher, mask, torch.cat(s_lses), torch.cat(t_lses))
        ctx.temperature, ctx.divergence, ctx.group, ctx.chunk_size = temperature, divergence, group, chunk_size
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        student, teacher, mask, s_lse, t_lse = ctx.saved_tensors
        need_student, need_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = torch.where(mask, grad_output, torch.zeros_like(grad_output)).unsqueeze(-1) / ctx.temperature
        grad_s = torch.empty_like(student) if need_student else None
        grad_t = torch.empty_like(teacher) if need_teacher else None
        for rows in _chunks(student.size(0), ctx.chunk_size):
            log_ps, log_pt, _, _ = _log_probs(student[rows], teacher[rows], mask[rows], ctx.temperature,
                                              s_lse[rows], t_lse[rows])
            e_s, e_t = ctx.divergence.grad_terms(log_ps, log_pt, need_student, need_teacher)
            pairs = [(e, log_p) for e, log_p in ((e_s, log_ps), (e_t, log_pt)) if e is not None]
            sums = all_reduce_no_grad(torch.stack([e.sum(-1) for e, _ in pairs]), ctx.group)    # [k, n]
            grads = [(e - log_p.exp() * total.unsqueeze(-1)) * scale[rows] for (e, log_p), total in zip(pairs, sums)]
            if need_student:
                grad_s[rows] = grads.pop(0)
            if need_teacher:
                grad_t[rows] = grads.pop(0)
        return grad_s, grad_t, None, None, None, None, None


def vocab_parallel_divergence(divergence: Divergence, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                              temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                              group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """`divergence` (a `MixtureKL` or `TotalVariation`) per row. logits: [..., V/p] -> [...] fp32."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    shape = student_logits.shape[:-1]
    if mask is None:
        mask = torch.ones(shape, dtype=torch.bool, device=student_logits.device)
    elif mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the token shape {tuple(shape)}")
    vocab = student_logits.size(-1)
    loss = _VocabParallelDivergence.apply(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab),
                                          mask.reshape(-1) != 0, float(temperature), divergence, group, chunk_size)
    return loss.view(shape)


def vocab_parallel_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                              mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
                              chunk_size: Optional[int] = None) -> torch.Tensor:
    """KL(p_s || p_t) per token. logits: [..., V/p] -> [...] fp32."""
    return vocab_parallel_divergence(MixtureKL.reverse_kl(), student_logits, teacher_logits, temperature, mask,
                                     group, chunk_size)


def vocab_parallel_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                       mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
                       chunk_size: Optional[int] = None, *, beta: float = 0.5) -> torch.Tensor:
    """JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s, per
    token; beta = 0: forward KL, beta = 1: reverse KL (see `MixtureKL.jsd`). [..., V/p] -> [...] fp32."""
    divergence = MixtureKL.jsd(beta)
    if divergence == MixtureKL.forward_kl():   # the tuned forward-KL kernel
        return vocab_parallel_kl_div(student_logits, teacher_logits, temperature, mask, group, chunk_size)
    return vocab_parallel_divergence(divergence, student_logits, teacher_logits, temperature, mask, group,
                                     chunk_size)


def vocab_parallel_skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                           mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
                           chunk_size: Optional[int] = None, *, alpha: float = 0.1) -> torch.Tensor:
    """KL(p_t || alpha p_t + (1 - alpha) p_s) per token (alpha = 0: forward KL). [..., V/p] -> [...] fp32."""
    return vocab_parallel_divergence(MixtureKL.skew_kl(alpha), student_logits, teacher_logits, temperature, mask,
                                     group, chunk_size)


def vocab_parallel_skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                   temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                                   group: ProcessGroup = None, chunk_size: Optional[int] = None, *,
                                   alpha: float = 0.1) -> torch.Tensor:
    """KL(p_s || alpha p_s + (1 - alpha) p_t) per token (alpha = 0: reverse KL). [..., V/p] -> [...] fp32."""
    return vocab_parallel_divergence(MixtureKL.skew_reverse_kl(alpha), student_logits, teacher_logits, temperature,
                                     mask, group, chunk_size)


def vocab_parallel_total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                   temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                                   group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """0.5 * sum_v |p_t - p_s| per token. logits: [..., V/p] -> [...] fp32."""
    return vocab_parallel_divergence(TotalVariation(), student_logits, teacher_logits, temperature, mask, group,
                                     chunk_size)
