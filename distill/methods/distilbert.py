"""DistilBERT: cosine loss on the final hidden states, T^2 * KL soft term and weighted hard loss.

Taps are GLMModel names; in cloze fine-tuning they hold the choice-expanded rows [B*C, ...],
whose per-row losses are folded back into their sample ([B]).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

import mpu
from model import ModelOutput

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, TeacherInfo, register_student
from ..losses import fold_samples, sample_mean, soft_loss
from ..losses_hidden import cosine_distance
from ..options import option


@dataclass(frozen=True)
class DistilBERTOptions:
    """DistilBERT flags: the loss weights, the fixed-LayerNorm variant, and which
    tokens the cosine / the soft KL cover (the Part-B mask by default, non-pad tokens with
    the *_mask_padding switches)."""
    distilbert_alpha_ce: float = option(1.0, "Weight of the soft-logit KL.")
    distilbert_alpha_mlm: float = option(1.0, "Weight of the hard MLM loss.")
    distilbert_alpha_cos: float = option(1.0, "Weight of the cosine loss on the final hidden states.")
    distilbert_fix_layernorm: bool = option(False, "Match the last layer's tf_output through fixed LayerNorms.")
    distilbert_cos_mask_padding: bool = option(False, "Cosine loss over all non-pad tokens instead of the Part-B mask.")
    distilbert_ce_mask_padding: bool = option(
        False, "Soft-logit KL over all non-pad tokens instead of the Part-B mask.")


@register_student
class DistilBERT(GLMStudent):
    """DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT: smaller, faster,
    cheaper and lighter").

    inter_loss per sample = alpha_cos * mean over its [S] rows of (1 - cos(h_s, h_t)) on the
    final `output` (or, with `distilbert_fix_layernorm`, the last layer's `tf_output` through a
    trainable student LayerNorm and a frozen, fresh (affine-free) teacher LayerNorm); 0 without
    a loss mask (cloze fine-tuning) or when alpha_cos <= 0. pre_loss (replaces the base's) =
    alpha_ce * T^2 * KL(z_t/T || z_s/T) (or the --distill_logit_loss divergence) + alpha_mlm * L_hard.
    Needs H_s = H_t.

    Masks: the Part-B loss mask; the non-pad mask (`DistillBatch.non_pad_mask`, position
    ids > 0) with the *_mask_padding switches. The original wrote that mask as `labels > 0`
    (meaning the non-pad mask); here the targets are 0 outside Part B, so
    `labels > 0` would only repeat the loss mask.

    Fixed (numbers change, gradients do not): each masked row added a constant 1 to the
    original's cosine mean (zero vectors against zero vectors); here it adds 0, so the value is
    the original's minus alpha_cos * (masked rows) / (all rows).
    """
    name = "distilbert"
    options_class = DistilBERTOptions

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.check_teachers_match("hidden_size", "matching hidden states")
        if self.method_options.distilbert_fix_layernorm:
            self.student_layernorm = mpu.LayerNorm(self.config.hidden_size, eps=self.config.layernorm_epsilon)

    def _tap(self, num_layers: int) -> str:
        return f"layers.{num_layers - 1}.tf_output" if self.method_options.distilbert_fix_layernorm else "output"

    def student_taps(self, step: StepInfo) -> List[str]:
        return [self._tap(self.config.num_layers)]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [self._tap(self.teacher_info(t_no).num_layers)]

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0) -> Tuple[Tensor, Metrics]:
        options = self.method_options
        if batch.loss_mask is None or options.distilbert_alpha_cos <= 0:
            return self.zero(s_out), {}
        student = s_out.taps[self.student_taps(step)[0]]                                   # [N, S, H]
        teacher = t_out.taps[self.teacher_taps(t_no, step)[0]]
        if options.distilbert_fix_layernorm:
            student = self.student_layernorm(student)
            teacher = F.layer_norm(teacher.float(), (teacher.size(-1),), eps=self.config.layernorm_epsilon)
        mask = batch.non_pad_mask() if options.distilbert_cos_mask_padding else batch.loss_mask
        rows = cosine_distance(student, teacher, mask=mask)                                # [N]
        cos = options.distilbert_alpha_cos * fold_samples(rows, s_out.logits.size(0))      # [B]
        return cos, {"inter/cos": cos.detach().mean()}

    def soft_mask(self, batch: DistillBatch) -> Optional[Tensor]:
        """The KL mask: none without token logits or with distill_wo_loss_mask, the non-pad
        mask with distilbert_ce_mask_padding, else the loss mask."""
        if not batch.token_level or self.options.distill_wo_loss_mask:
            return None
        if self.method_options.distilbert_ce_mask_padding:
            return batch.non_pad_mask()
        return batch.loss_mask

    def pre_loss(self, s_logits: Tensor, t_logits: Tensor, hard_loss: Tensor, batch: DistillBatch,
                 step: StepInfo = StepInfo(), t_no: int = 0, mse_t_w: float = 1.0) -> Tuple[Tensor, Metrics]:
        """Per sample [B]: alpha_ce * T^2 * KL (or the --distill_logit_loss divergence; the `soft_mask`
        rows, `sample_mean`) + alpha_mlm * hard_loss."""
        options, temperature = self.method_options, self.options.distill_temperature
        mask = self.soft_mask(batch)
        rows = soft_loss(self.options.distill_logit_loss, s_logits, t_logits, vocab_parallel=batch.token_level,
                         temperature=temperature, mask=mask, **self.options.divergence_parameters())  # [B, S] or [B]
        soft = options.distilbert_alpha_ce * temperature ** 2 * sample_mean(rows, mask)    # [B]
        hard = options.distilbert_alpha_mlm * hard_loss.float().expand(s_logits.size(0))  # [B]
        return soft + hard, {"kd/soft": soft.detach().mean(), "kd/hard": hard.detach().mean()}
