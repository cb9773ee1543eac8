"""CKD: word-relation and layer-transforming-relation distances and angles (its options, its
class)."""
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import hidden_tap, uniform_layers
from ..losses import fold_samples, non_pad_mask
from ..losses_relations import ckd_ltr_angle, ckd_ltr_dist, ckd_wr_angle, ckd_wr_dist
from ..options import option


@dataclass(frozen=True)
class CKDOptions:
    """ckd_window_size: tokens (odd) around each token for the word-relation angles; the four
    weights of word-relation (WR) / layer-transforming-relation (LTR) distance and angle."""
    ckd_window_size: int = option(21, "Window of tokens of the word-relation angle loss.")
    ckd_wrdist_w: float = option(1.0, "Weight of the word-relation distance loss.")
    ckd_ltrdist_w: float = option(1.0, "Weight of the layer-transforming-relation distance loss.")
    ckd_wrangle_w: float = option(10.0, "Weight of the word-relation angle loss.")
    ckd_ltrangle_w: float = option(10.0, "Weight of the layer-transforming-relation angle loss.")

    def __post_init__(self):
        if self.ckd_window_size < 1 or self.ckd_window_size % 2 == 0:
            raise ValueError(f"ckd_window_size must be a positive odd number, got {self.ckd_window_size}")


@register_student
class CKD(GLMStudent):
    """CKD (Park et al. 2021, "Distilling Linguistic Context for Language Model Compression").

    Student representations 0..L_s and the teacher's uniformly mapped ones, stacked to
    [N, L_s+1, S, H]; loss = w_wrdist*WR-dist + w_wrangle*WR-angle + w_ltrdist*LTR-dist +
    w_ltrangle*LTR-angle (see `losses_relations`), each a batch-wide sum over the non-pad
    tokens divided by the original's count, returned as per-row shares (N rows: [B] in
    pretraining, the B*C choice rows in cloze fine-tuning) folded back to the samples ([B]);
    their mean is the original's value. Widths may differ (relations only).

    Fixed: a row with no kept pair (a fully padded row has only its column 0)
    gave NaN on modern torch through a softmax over all -inf; excluded entries are now masked
    explicitly and such rows add 0, which is what torch 1.9 computed, so the numbers are
    unchanged. The angle terms are computed from Gram matrices (memory ~S*w^2 instead of
    S*w*H); differences below fp32 Gram resolution count as zero vectors.
    """
    name = "ckd"
    options_class = CKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.require_teachers()
        self.num_layers = self.require_config().num_layers

    def student_taps(self, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.num_layers) for k in range(self.num_layers + 1)] + ["position_ids"]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        teacher_layers = self.teacher_info(t_no).num_layers
        return [hidden_tap(k, teacher_layers) for k in uniform_layers(self.num_layers, teacher_layers)]

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0) -> Tuple[Tensor, Metrics]:
        opts = self.method_options
        student = torch.stack([s_out.taps[name].float() for name in self.student_taps(step)[:-1]], dim=1)
        teacher = torch.stack([t_out.taps[name].float() for name in self.teacher_taps(t_no, step)], dim=1)
        # student [N, L, S, H_s], teacher [N, L, S, H_t]
        mask = non_pad_mask(s_out.taps["position_ids"])                                   # [N, S]
        terms = {"wrdist": opts.ckd_wrdist_w * ckd_wr_dist(student, teacher, mask),
                 "wrangle": opts.ckd_wrangle_w * ckd_wr_angle(student, teacher, mask, opts.ckd_window_size),
                 "ltrdist": opts.ckd_ltrdist_w * ckd_ltr_dist(student, teacher, mask),
                 "ltrangle": opts.ckd_ltrangle_w * ckd_ltr_angle(student, teacher, mask)}     # [N] each
        metrics = {f"inter/ckd_{k}": v.detach().mean() for k, v in terms.items()}
        return fold_samples(sum(terms.values()), s_out.logits.size(0)), metrics
