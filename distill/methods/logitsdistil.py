"""GLMD, the authors' word-prediction distillation, with or without vocabulary
compression (the student's map lives in its GLMModel: `model.vocab_map`).

The teacher's LM distribution at every token position (the `logits_parallel` tap, [B(*C), S,
V/p]: choice-expanded rows in cloze fine-tuning) is distilled with T^2 * KL or MSE; no
intermediate layers, no hard labels (pre_loss is the generic one, active only with the
--distill_*_soft/hard flags: stage ft2). The loss itself is `GLMStudent.logits_loss`
(`losses_glmd.logits_distillation_loss` on the vocabulary-aligned logits), which the base
class's --distill_logits_parallel term shares.
"""
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from torch import Tensor

from model import glm_model_of

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..losses import fold_samples, non_pad_mask
from ..options import option


@dataclass(frozen=True)
class LogitsDistilOptions:
    """mask_pad: only non-pad positions (position > 0, column 0 kept); mse: MSE instead of T^2 * KL;
    top_n: distil the teacher's n largest logits (a value in (0, 1): a fraction of V);
    teacher_min: top-n by filling the teacher's other logits with its minimum (else the KL over
    the top-n ids plus a hinge); wo_inter: no logits loss (ft2); teacher_input_ids_map: with
    vocabulary compression, the teacher reads the same replacement tokens as the student;
    mask_a: only Part-B / answer positions."""
    logitsdistil_mask_pad: bool = option(False, "Zero the logits at padding positions.")
    logitsdistil_mse: bool = option(False, "Use MSE instead of KL.")
    logitsdistil_top_n: Optional[float] = option(
        None, "Distil only the teacher's top-n logits; a value in (0,1) is a fraction of the vocabulary.")
    logitsdistil_teacher_min: bool = option(False, "Top-n by filling the teacher's other logits with its minimum.")
    logitsdistil_wo_inter: bool = option(False, "Disable the logits loss (second fine-tuning stage).")
    logitsdistil_teacher_input_ids_map: bool = option(
        False, "Map the teacher's input ids like the compressed student's.")
    logitsdistil_mask_a: bool = option(False, "Distil only Part-B or answer positions.")

    def __post_init__(self):
        top_n = self.logitsdistil_top_n
        if top_n is not None and not (math.isfinite(top_n) and top_n > 0):
            raise ValueError(f"logitsdistil_top_n must be a positive finite number, got {top_n}")
        if self.logitsdistil_teacher_min and top_n is None:
            warnings.warn("--logitsdistil_teacher_min has no effect without --logitsdistil_top_n", stacklevel=3)


def answer_mask(batch: DistillBatch, num_rows: int, seq_length: int) -> Tensor:
    """--logitsdistil_mask_a: loss_mask (pretraining) or logit_mask (fine-tuning) as [N, S]
    (multi-choice [B, C, S] -> [B*C, S])."""
    mask = batch.logit_mask if batch.finetune else batch.loss_mask
    if mask is None:
        what = "logit_mask" if batch.finetune else "loss_mask"
        raise ValueError(f"--logitsdistil_mask_a needs the batch's {what}, which this task does not provide")
    if mask.numel() != num_rows * seq_length:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the logits rows [{num_rows}, {seq_length}]")
    return mask.reshape(num_rows, seq_length) != 0


def _merged(own: List[str], base: List[str]) -> List[str]:
    """This method's taps, then the base class's that are not among them."""
    return own + [name for name in base if name not in own]


@register_student
class LogitsDistil(GLMStudent):
    """GLMD (Tan et al. 2023, "Are Intermediate Layers and Labels Really Necessary? A General
    Language Model Distillation Method", Findings of ACL).

    inter_loss = T^2 * KL(z_s/T || z_t/T) (or MSE) over every token row of the vocabulary-parallel
    LM logits, masked to non-pad (--logitsdistil_mask_pad) and/or answer positions
    (--logitsdistil_mask_a), optionally top-n truncated; per sample [B], the plain mean over its
    token rows (masked rows add 0; in cloze fine-tuning, over all its choices' rows), so the mean
    of the result is the plain mean over all rows.

    Vocabulary compression: with --unmap_vocab_output the teacher's logits are taken at the
    student's kept ids (in row order); with --distill_logit_mask_map (V-column student logits)
    the loss runs over the kept ids only; --logitsdistil_teacher_input_ids_map feeds the teacher
    the replacement tokens the student reads.

    Differences from the original: masks are token masks (the original zeroed the logits: same
    values and gradients, but no NaN from a padded row); top-n at MP>1 is the global top-n
    (the original took each shard's local top-n and added a `loss2` on them), so every MP size
    gives the MP=1 value.
    """
    name = "logitsdistil"
    options_class = LogitsDistilOptions
    inherits_base_inter_loss = True

    def student_taps(self, step: StepInfo) -> List[str]:
        opts = self.method_options
        own = [] if opts.logitsdistil_wo_inter else ["logits_parallel"] + (
            ["position_ids"] if opts.logitsdistil_mask_pad else [])
        return _merged(own, super().student_taps(step))

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        own = [] if self.method_options.logitsdistil_wo_inter else ["logits_parallel"]
        return _merged(own, super().teacher_taps(t_no, step))

    def teacher_interventions(self, t_no: int, step: StepInfo) -> Dict[str, Callable]:
        interventions = dict(super().teacher_interventions(t_no, step))
        if self.method_options.logitsdistil_teacher_input_ids_map:
            glm = glm_model_of(self.model)
            if glm.vocab_map is None:
                raise ValueError("--logitsdistil_teacher_input_ids_map needs a vocabulary-compressed student "
                                 "(--map_vocab_size)")
            interventions["input_ids"] = glm.replace_dropped_ids
        return interventions

    def token_mask(self, s_out, batch: DistillBatch, num_rows: int, seq_length: int) -> Optional[Tensor]:
        """[N, S] bool keep-mask of the enabled masks, or None."""
        opts, mask = self.method_options, None
        if opts.logitsdistil_mask_pad:
            mask = non_pad_mask(s_out.taps["position_ids"]).reshape(num_rows, seq_length)
        if opts.logitsdistil_mask_a:
            answers = answer_mask(batch, num_rows, seq_length)
            mask = answers if mask is None else mask & answers
        return mask

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0) -> Tuple[Tensor, Metrics]:
        opts = self.method_options
        if opts.logitsdistil_wo_inter:
            return super().inter_loss(s_out, t_out, batch, step, t_no)
        s_logits, t_logits = s_out.taps["logits_parallel"], t_out.taps["logits_parallel"]   # [N, S, V/p]
        mask = self.token_mask(s_out, batch, s_logits.size(0), s_logits.size(1))
        rows, metrics = self.logits_loss(s_logits, t_logits, mask=mask, mse=opts.logitsdistil_mse,
                                         top_n=opts.logitsdistil_top_n,
                                         teacher_min=opts.logitsdistil_teacher_min)                  # [N]
        loss = fold_samples(rows, s_out.logits.size(0))                                              # [B]
        metrics["inter/logits"] = loss.detach().mean()
        base, base_metrics = super().inter_loss(s_out, t_out, batch, step, t_no)
        return loss + base, {**metrics, **base_metrics}
