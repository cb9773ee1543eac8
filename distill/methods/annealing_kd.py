"""Annealing-KD: the soft MSE against a teacher whose logits are scaled up over training."""
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..distill_model import DistillBatch, DistillOptions, GLMStudent, Metrics, StepInfo, TeacherInfo, register_student
from ..losses_logits import annealing_phi
from ..options import option


def _uses_soft_mse(options: DistillOptions) -> bool:
    """Whether a stage's soft term is the MSE on raw logits (the only one phi scales)."""
    return (options.distill_ft_soft and options.distill_ft_soft_mse) or (
        options.distill_pt_soft and options.distill_pt_soft_mse)


@dataclass(frozen=True)
class AnnealingKDOptions:
    """annealing_kd_max_t: T_max, the number of annealing segments (phi starts at 1/T_max)."""
    annealing_kd_max_t: float = option(7.0, "Maximum annealing temperature.")

    def __post_init__(self):
        annealing_phi(0, 1, self.annealing_kd_max_t)   # validates max_t


@register_student
class AnnealingKD(GLMStudent):
    """Annealing-KD (Jafari et al. 2021, "Annealing Knowledge Distillation", EACL).

    The soft MSE is taken against an annealed teacher: pre_loss(mse_t_w = phi), i.e.
    MSE(z_s, phi * z_t) per sample with --distill_ft_soft --distill_ft_soft_mse, where phi
    rises from 1/T_max to 1 over training (`annealing_phi` of the `step` pre_loss receives).
    No taps, no inter loss, no state between steps. The CE/KL soft variants ignore phi (as in
    the original), hence a warning without an MSE soft term.

    Differences from the original: the fine-tuning MSE applies the loss mask (the base's fix
    of the `maks=` typo; changes numbers only for token-level fine-tuning tasks,
    not for cloze task logits, which have no mask); phi is exact at segment boundaries
    (see `annealing_phi`; changes phi by one segment at a few iterations).
    """
    name = "annealing_kd"
    options_class = AnnealingKDOptions

    def __init__(self, model: nn.Module, options: DistillOptions, teachers: Sequence[TeacherInfo] = (),
                 method_options: Optional[AnnealingKDOptions] = None):
        super().__init__(model, options, teachers, method_options)
        if not _uses_soft_mse(options):
            warnings.warn("annealing_kd anneals only the MSE soft loss: without --distill_ft_soft "
                          "--distill_ft_soft_mse (or the pt pair) it is plain KD", stacklevel=2)

    def phi(self, step: StepInfo) -> float:
        """The teacher-logit weight at `step`."""
        return annealing_phi(step.iteration, step.train_iters, self.method_options.annealing_kd_max_t)

    def pre_loss(self, s_logits: Tensor, t_logits: Tensor, hard_loss: Tensor, batch: DistillBatch,
                 step: StepInfo = StepInfo(), t_no: int = 0, mse_t_w: float = 1.0) -> Tuple[Tensor, Metrics]:
        """The base pre-loss [B] with the MSE's teacher logits scaled by phi(step)."""
        phi = self.phi(step)
        loss, metrics = super().pre_loss(s_logits, t_logits, hard_loss, batch, step, t_no, mse_t_w * phi)
        metrics["annealing/phi"] = torch.tensor(phi)
        return loss, metrics
