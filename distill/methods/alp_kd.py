"""ALP-KD: attention-based layer projection of the teacher's [CLS] vectors (its options, its
class)."""
import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import hidden_tap
from ..losses import fold_samples
from ..losses_relations import alp_kd_loss
from ..options import option


@dataclass(frozen=True)
class ALPKDOptions:
    """alp_kd_lambda: weight of the attention-based layer-projection loss."""
    alp_kd_lambda: float = option(0.2, "Weight of the ALP loss; parsed but unused in the original.")

    def __post_init__(self):
        if not math.isfinite(self.alp_kd_lambda):
            raise ValueError(f"alp_kd_lambda must be finite, got {self.alp_kd_lambda}")


@register_student
class ALPKD(GLMStudent):
    """ALP-KD (Passban et al. 2021, "ALP-KD: Attention-Based Layer Projection for Knowledge
    Distillation").

    [CLS] vectors of student representations 1..L_s and teacher representations 1..L_t;
    alpha = softmax(S T^T) over the teacher layers per row, target tau_i = sum_j alpha_ij
    T_j, loss = lambda * sum_i MSE(S_i, tau_i) per row (the B*C choice rows of cloze
    fine-tuning folded back to the samples: [B]). Equal student and teacher widths.

    Differs from the original, changing numbers unless --alp_kd_lambda=1: the original parsed
    lambda but never used it (the loss had weight 1); it is applied here, its evident meaning
    (the recipe's 0.7 soft / 0.1 hard / 0.2 lambda weights sum to 1).
    """
    name = "alp_kd"
    options_class = ALPKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.require_teachers()
        self.num_layers = self.require_config().num_layers
        self.check_teachers_match("hidden_size", "the layer attention over raw hidden states")

    def student_taps(self, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.num_layers) for k in range(1, self.num_layers + 1)]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        teacher_layers = self.teacher_info(t_no).num_layers
        return [hidden_tap(k, teacher_layers) for k in range(1, teacher_layers + 1)]

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0) -> Tuple[Tensor, Metrics]:
        student = torch.stack([s_out.taps[name][:, 0].float() for name in self.student_taps(step)], 1)   # [N, L_s, H]
        teacher = torch.stack([t_out.taps[name][:, 0].float() for name in self.teacher_taps(t_no, step)], 1)
        rows = self.method_options.alp_kd_lambda * alp_kd_loss(student, teacher)                        # [N]
        loss = fold_samples(rows, s_out.logits.size(0))
        return loss, {"inter/alp_kd": loss.detach().mean()}
