"""Continuation-KD: Annealing-KD's annealed soft MSE under a hinge, traded for the hard loss over training."""
import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..losses import zero_loss
from ..losses_logits import annealing_phi, continuation_loss, continuation_psi
from ..options import option


@dataclass(frozen=True)
class ContinuationKDOptions:
    """max_t: T_max of phi (as Annealing-KD); margin: the soft-loss hinge margin * phi;
    psi_sep: fraction of training after which psi = 1; psi_denominator: psi = it /
    (psi_denominator * T_total) before that."""
    continuation_kd_max_t: float = option(10.0, "Maximum annealing temperature.")
    continuation_kd_margin: float = option(1.0, "Margin of the hinge on the soft loss.")
    continuation_kd_psi_sep: float = option(0.666, "Fraction of training after which only the hard loss is used.")
    continuation_kd_psi_denominator: float = option(1.333, "Denominator of the hard-loss weight schedule.")

    def __post_init__(self):
        annealing_phi(0, 1, self.continuation_kd_max_t)
        continuation_psi(0, 1, self.continuation_kd_psi_sep, self.continuation_kd_psi_denominator)
        for name in ("continuation_kd_margin", "continuation_kd_psi_sep"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")


@register_student
class ContinuationKD(GLMStudent):
    """Continuation-KD (Jafari et al. 2022, "Continuation KD: Improved Knowledge Distillation
    through the Lens of Continuation Optimization", Findings of EMNLP).

    pre_loss [B] = psi * hard + (1 - psi) * soft_b * [soft_b > margin * phi] with
    soft_b = r_soft * MSE(z_s, phi * z_t) per sample (--distill_ft_soft --distill_ft_soft_mse;
    the other soft variants ignore phi), hard = r_hard * L_hard (--distill_ft_hard), phi as in
    Annealing-KD and psi from `continuation_psi`, both at the `step` pre_loss receives
    (`continuation_loss`). A disabled term is 0. No taps, no inter loss, no state between steps.

    Differences from the original: the fine-tuning MSE applies the loss mask (only
    token-level fine-tuning tasks change); phi is exact at segment boundaries; psi is capped
    at 1 (it only exceeds 1 when psi_denominator < psi_sep, a configuration the original
    would turn into a negative soft weight).
    """
    name = "continuation_kd"
    options_class = ContinuationKDOptions

    def schedule(self, step: StepInfo) -> Tuple[float, float]:
        """(phi, psi) at `step`."""
        opts = self.method_options
        return (annealing_phi(step.iteration, step.train_iters, opts.continuation_kd_max_t),
                continuation_psi(step.iteration, step.train_iters, opts.continuation_kd_psi_sep,
                                 opts.continuation_kd_psi_denominator))

    def pre_loss(self, s_logits: Tensor, t_logits: Tensor, hard_loss: Tensor, batch: DistillBatch,
                 step: StepInfo = StepInfo(), t_no: int = 0, mse_t_w: float = 1.0) -> Tuple[Tensor, Metrics]:
        options, finetune = self.options, batch.finetune
        phi, psi = self.schedule(step)
        samples = s_logits.size(0)
        soft = zero_loss(s_logits, (samples,))                                              # [B]
        hard = zero_loss(s_logits, (samples,))                                              # [B]
        if (options.distill_ft_soft if finetune else options.distill_pt_soft) and options.distill_soft_rate:
            soft = options.distill_soft_rate * self._soft_term(s_logits, t_logits, batch, mse_t_w * phi)
        if (options.distill_ft_hard if finetune else options.distill_pt_hard) and options.distill_hard_rate:
            hard = options.distill_hard_rate * hard_loss.float().expand(samples)         # [] or [B] -> [B]
        per_sample = continuation_loss(soft, hard, psi=psi, phi=phi,
                                       margin=self.method_options.continuation_kd_margin)   # [B]
        kept = (soft.detach() > self.method_options.continuation_kd_margin * phi).float().mean()
        metrics = {"kd/soft": soft.detach().mean(), "kd/hard": hard.detach().mean(), "continuation/phi":
                   torch.tensor(phi), "continuation/psi": torch.tensor(psi), "continuation/kept": kept}
        return per_sample, metrics
