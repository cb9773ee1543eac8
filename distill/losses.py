"""Prediction-layer distillation losses as small pure functions.

Every loss takes student and teacher logits and keyword hyper-parameters, computes in fp32
and returns one value per row (`[...]` = the logits' shape without the last dimension):

* replicated logits `[..., C]` (task scores, identical on every model-parallel rank): torch ops;
* vocabulary-parallel logits `[..., V/p]` (`parallel_*`): the `mpu` vocabulary-parallel
  functions, whose all-reduces over `group` (None: the model-parallel group) are the only
  collectives here.

Besides the original's soft CE, KL and MSE, the divergences that --distill_logit_loss chooses
(`DIVERGENCES`; definitions in `mpu.divergences`): forward KL (`kl_divergence`), `reverse_kl`,
`jsd` (TRL's generalised Jensen-Shannon), `skew_kl` and `skew_reverse_kl` (DistiLLM) and
`total_variation`. The replicated ones differentiate the elementwise terms of
`mpu.MixtureKL`/`mpu.TotalVariation` by autograd; the parallel ones use their hand-written backward.

`mask` (`[...]`, nonzero = keep) zeroes masked rows exactly: their logits are replaced by
zeros before the math and their loss after it, so a fully masked row gives 0 with a zero
gradient even when its logits hold inf or NaN. `sample_mean` is the original's `CustomLoss`
reduction per sample: multiply by the mask, then a plain mean over ALL of the sample's rows,
masked ones included (so magnitudes scale with padding, as in the original); the mean of its
[B] result is the original's scalar.

One conscious difference from `CustomLoss`: there the mask of the soft CE/KL was an
*input* mask (logits times mask), so a masked row of the soft CE contributed the constant
log(V) (uniform against uniform) to the mean; here it contributes 0. The KL and MSE values
and every gradient are the same.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

import mpu
from mpu.mappings import ProcessGroup, group_size


def _keep(mask: Optional[torch.Tensor], rows_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Boolean keep-mask [...] for rows of shape `rows_shape`."""
    if mask is None:
        return torch.ones(rows_shape, dtype=torch.bool, device=device)
    if mask.shape != rows_shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the rows {tuple(rows_shape)}")
    return mask != 0


def _masked_inputs(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor):
    """fp32 copies of both logits with masked rows set to 0 (no inf/NaN reaches the math)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits "
                         f"{tuple(teacher.shape)} differ in shape")
    rows = keep.unsqueeze(-1)
    return (torch.where(rows, student.float(), torch.zeros((), device=student.device)),
            torch.where(rows, teacher.float(), torch.zeros((), device=teacher.device)))


def _log_probs(student: torch.Tensor, teacher: torch.Tensor, temperature: float):
    """p_t, log p_t, log p_s of the softened logits; both logs are 0 where p_t == 0, so that
    0 * log 0 terms (-inf logits) are 0 with finite gradients."""
    p_t = F.softmax(teacher / temperature, dim=-1)
    absent = p_t == 0
    log_p_t = F.log_softmax(teacher / temperature, dim=-1).masked_fill(absent, 0.0)
    log_p_s = F.log_softmax(student / temperature, dim=-1).masked_fill(absent, 0.0)
    return p_t, log_p_t, log_p_s


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


# --------------------------------------------------------------------------- replicated logits
def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """-sum_c softmax(t/T)_c log softmax(s/T)_c per row. logits: [..., C] -> [...] fp32 (no T^2)."""
    _check_temperature(temperature)
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    s, t = _masked_inputs(student_logits, teacher_logits, keep)
    p_t, log_p_t, log_p_s = _log_probs(s, t, temperature)
    loss = -(p_t * log_p_s).sum(dim=-1)
    return torch.where(keep, loss, torch.zeros((), device=loss.device))


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) per row. logits: [..., C] -> [...] fp32 (no T^2)."""
    _check_temperature(temperature)
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    s, t = _masked_inputs(student_logits, teacher_logits, keep)
    p_t, log_p_t, log_p_s = _log_probs(s, t, temperature)
    loss = (p_t * (log_p_t - log_p_s)).sum(dim=-1)
    return torch.where(keep, loss, torch.zeros((), device=loss.device))


def _divergence_rows(divergence: "mpu.Divergence", student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """`divergence` (an `mpu.MixtureKL` or `mpu.TotalVariation`) per row, by autograd through its
    elementwise terms. logits: [..., C] -> [...] fp32 (no T^2)."""
    _check_temperature(temperature)
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    s, t = _masked_inputs(student_logits, teacher_logits, keep)
    terms = divergence.terms(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1))
    loss = terms.sum(dim=-1)
    return torch.where(keep, loss, torch.zeros((), device=loss.device))


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(softmax(s/T) || softmax(t/T)) per row. logits: [..., C] -> [...] fp32 (no T^2)."""
    return _divergence_rows(mpu.MixtureKL.reverse_kl(), student_logits, teacher_logits, temperature, mask)


def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5, temperature: float = 1.0,
        mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence per row (TRL's GKD): with p_t, p_s the softened
    distributions and m = beta p_t + (1 - beta) p_s, JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m)
    for 0 < beta < 1; beta = 0 is forward KL and beta = 1 reverse KL (TRL's endpoints: JSD_beta / beta
    tends to forward KL as beta -> 0, JSD_beta / (1 - beta) to reverse KL as beta -> 1).
    logits: [..., C] -> [...] fp32 (no T^2)."""
    divergence = mpu.MixtureKL.jsd(beta)
    if divergence == mpu.MixtureKL.forward_kl():
        return kl_divergence(student_logits, teacher_logits, temperature=temperature, mask=mask)
    return _divergence_rows(divergence, student_logits, teacher_logits, temperature, mask)


def skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
            temperature: float = 1.0, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DistiLLM's skew KL per row: KL(p_t || alpha p_t + (1 - alpha) p_s), alpha in [0, 1) (0: forward
    KL). logits: [..., C] -> [...] fp32 (no T^2)."""
    return _divergence_rows(mpu.MixtureKL.skew_kl(alpha), student_logits, teacher_logits, temperature, mask)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
                    temperature: float = 1.0, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DistiLLM's skew reverse KL per row: KL(p_s || alpha p_s + (1 - alpha) p_t), alpha in [0, 1) (0:
    reverse KL). logits: [..., C] -> [...] fp32 (no T^2)."""
    return _divergence_rows(mpu.MixtureKL.skew_reverse_kl(alpha), student_logits, teacher_logits, temperature, mask)


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """0.5 * sum_c |softmax(t/T)_c - softmax(s/T)_c| per row. logits: [..., C] -> [...] fp32."""
    return _divergence_rows(mpu.TotalVariation(), student_logits, teacher_logits, temperature, mask)


def mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, teacher_weight: float = 1.0,
        mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean_c (s_c - w * t_c)^2 per row. logits: [..., C] -> [...] fp32."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    s, t = _masked_inputs(student_logits, teacher_logits, keep)
    loss = (s - teacher_weight * t).pow(2).mean(dim=-1)
    return torch.where(keep, loss, torch.zeros((), device=loss.device))


# --------------------------------------------------------------------------- vocabulary-parallel logits
def parallel_soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                                temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                                group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """`soft_cross_entropy` over the whole vocabulary. logits: [..., V/p] -> [...] fp32 (no T^2)."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    return mpu.vocab_parallel_soft_cross_entropy(student_logits, teacher_logits, temperature, keep, group, chunk_size)


def parallel_kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                           temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                           group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """`kl_divergence` over the whole vocabulary. logits: [..., V/p] -> [...] fp32 (no T^2)."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    return mpu.vocab_parallel_kl_div(student_logits, teacher_logits, temperature, keep, group, chunk_size)


def parallel_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                        mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
                        chunk_size: Optional[int] = None) -> torch.Tensor:
    """`reverse_kl` over the whole vocabulary. logits: [..., V/p] -> [...] fp32 (no T^2)."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    return mpu.vocab_parallel_reverse_kl(student_logits, teacher_logits, temperature, keep, group, chunk_size)


def parallel_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5,
                 temperature: float = 1.0, mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
                 chunk_size: Optional[int] = None) -> torch.Tensor:
    """`jsd` over the whole vocabulary. logits: [..., V/p] -> [...] fp32 (no T^2)."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    return mpu.vocab_parallel_jsd(student_logits, teacher_logits, temperature, keep, group, chunk_size, beta=beta)


def parallel_skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
                     temperature: float = 1.0, mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
                     chunk_size: Optional[int] = None) -> torch.Tensor:
    """`skew_kl` over the whole vocabulary. logits: [..., V/p] -> [...] fp32 (no T^2)."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    return mpu.vocab_parallel_skew_kl(student_logits, teacher_logits, temperature, keep, group, chunk_size,
                                      alpha=alpha)


def parallel_skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
                             temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                             group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """`skew_reverse_kl` over the whole vocabulary. logits: [..., V/p] -> [...] fp32 (no T^2)."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    return mpu.vocab_parallel_skew_reverse_kl(student_logits, teacher_logits, temperature, keep, group, chunk_size,
                                              alpha=alpha)


def parallel_total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                             temperature: float = 1.0, mask: Optional[torch.Tensor] = None,
                             group: ProcessGroup = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """`total_variation` over the whole vocabulary. logits: [..., V/p] -> [...] fp32."""
    keep = _keep(mask, student_logits.shape[:-1], student_logits.device)
    return mpu.vocab_parallel_total_variation(student_logits, teacher_logits, temperature, keep, group, chunk_size)


def parallel_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, teacher_weight: float = 1.0,
                 mask: Optional[torch.Tensor] = None, group: ProcessGroup = None) -> torch.Tensor:
    """`mse` averaged over the whole vocabulary: local mean over V/p, all-reduced, / world size.

    logits: [..., V/p] -> [...] fp32. Forward: all-reduce; backward: identity (each rank's
    share of the gradient is already local).
    """
    local = mse(student_logits, teacher_logits, teacher_weight=teacher_weight, mask=mask)
    return mpu.reduce_from_model_parallel_region(local, group) / group_size(group)


# --------------------------------------------------------------------------- reduction and helpers
def sample_mean(loss: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The original's `CustomLoss` reduction per sample: loss * mask, then the mean over every
    dimension but 0.

    loss: [B, ...] -> [B] fp32. Every sample has the same number of elements, so the mean of
    the result is the plain mean over the whole tensor (masked elements included)."""
    loss = loss.float()
    if mask is not None:
        loss = loss * mask.to(loss.dtype)
    return loss.flatten(1).mean(dim=1) if loss.dim() > 1 else loss


def fold_samples(rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-row values [N] -> per-sample [B], N = B*C (cloze fine-tuning expands each sample
    into its C choice rows): the mean over a sample's rows, so the mean of the result is the
    mean over all rows. [B] stays as it is."""
    if rows.dim() != 1 or rows.size(0) % batch_size:
        raise ValueError(f"{tuple(rows.shape)} row values do not split into {batch_size} samples")
    return rows.view(batch_size, -1).mean(dim=1)                                   # [B, C] -> [B]


def non_pad_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """The non-pad tokens: position ids [N, 2, S] (GLM's 2-D positions) or [N, S] -> [N, S]
    bool, True where the position is > 0, with column 0 (the [CLS] token at position 0) kept."""
    positions = position_ids[:, 0] if position_ids.dim() == 3 else position_ids
    mask = positions > 0
    mask[:, 0] = True
    return mask


class _ZeroLike(torch.autograd.Function):
    """forward: zeros of `shape`; backward: a zero gradient for `like` (never NaN)."""

    @staticmethod
    def forward(ctx, like, shape):
        ctx.like_shape, ctx.like_dtype = like.shape, like.dtype
        return torch.zeros(shape, dtype=torch.float32, device=like.device)

    @staticmethod
    def backward(ctx, grad_output):
        return torch.zeros(ctx.like_shape, dtype=ctx.like_dtype, device=grad_output.device), None


def zero_loss(like: torch.Tensor, shape=()) -> torch.Tensor:
    """An fp32 zero of `shape`, attached to `like`'s graph when it has one, so that a
    backward through a loss that happens to be 0 never errors."""
    if like.requires_grad:
        return _ZeroLike.apply(like, tuple(shape))
    return torch.zeros(shape, dtype=torch.float32, device=like.device)


SoftLoss = Callable[..., torch.Tensor]
# (kind, vocabulary-parallel?) -> per-row loss function
SOFT_LOSSES: Dict[tuple, SoftLoss] = {
    ("ce", False): soft_cross_entropy, ("ce", True): parallel_soft_cross_entropy,
    ("kl", False): kl_divergence, ("kl", True): parallel_kl_divergence,
    ("mse", False): mse, ("mse", True): parallel_mse,
    ("rkl", False): reverse_kl, ("rkl", True): parallel_reverse_kl,
    ("jsd", False): jsd, ("jsd", True): parallel_jsd,
    ("skl", False): skew_kl, ("skl", True): parallel_skew_kl,
    ("srkl", False): skew_reverse_kl, ("srkl", True): parallel_skew_reverse_kl,
    ("tvd", False): total_variation, ("tvd", True): parallel_total_variation,
}
# The divergences of --distill_logit_loss; "fkl" (forward KL, the original's) is the soft loss "kl".
DIVERGENCES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")
# The keyword hyper-parameters of each soft loss (others: temperature only).
_HYPER_PARAMETERS = {"mse": ("teacher_weight",), "jsd": ("temperature", "beta"), "skl": ("temperature", "alpha"),
                     "srkl": ("temperature", "alpha")}


def soft_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, vocab_parallel: bool,
              temperature: float = 1.0, teacher_weight: float = 1.0, jsd_beta: float = 0.5, skew_alpha: float = 0.1,
              mask: Optional[torch.Tensor] = None, group: ProcessGroup = None,
              chunk_size: Optional[int] = None) -> torch.Tensor:
    """Per-row soft loss `kind`: "ce", "kl" (or "fkl"), "mse", or a divergence "rkl", "jsd" (with
    `jsd_beta`), "skl", "srkl" (with `skew_alpha`), "tvd". MSE takes the teacher weight and no
    temperature, the others the temperature. `chunk_size`: rows at a time of the
    vocabulary-parallel softmax losses. logits: [..., C] or [..., V/p] -> [...] fp32 (no T^2)."""
    kind = "kl" if kind == "fkl" else kind
    if (kind, vocab_parallel) not in SOFT_LOSSES:
        raise KeyError(f"unknown soft loss {kind!r}; valid: ce, kl, mse, {', '.join(DIVERGENCES)}")
    given = dict(temperature=temperature, teacher_weight=teacher_weight, beta=jsd_beta, alpha=skew_alpha)
    kwargs = {name: given[name] for name in _HYPER_PARAMETERS.get(kind, ("temperature",))}
    kwargs["mask"] = mask
    if vocab_parallel:
        kwargs["group"] = group
        if kind != "mse":
            kwargs["chunk_size"] = chunk_size
    return SOFT_LOSSES[kind, vocab_parallel](student_logits, teacher_logits, **kwargs)
