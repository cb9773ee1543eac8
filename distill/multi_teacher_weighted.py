"""Combiners that weight each teacher per sample: MT-BERT (by the
teacher's own hard loss, after projecting hidden states between widths) and Uncertainty (by
the student's normalised entropy)."""
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import mpu
from model import ModelOutput

from .distill_model import DistillBatch, DistillOptions, GLMStudent, Metrics, StepInfo, TeacherInfo
from .losses_multi_teacher import normalized_entropy, uncertainty_rates
from .multi_teacher_model import (Combiner, CombinerContext, TeacherHardLoss, _sample_mask, _suffix,
                                  register_multi_teacher)
from .options import option


# --------------------------------------------------------------------------- MT-BERT
@dataclass(frozen=True)
class MTBERTOptions:
    """mt_bert_fit_teacher: project each teacher's hidden states to the student's width (else
    the student's to each teacher's); mt_bert_wo_convert_layer: no projection;
    mt_bert_fix_layernorm: extra LayerNorms first; mt_bert_wo_hard: no built-in hard term."""
    mt_bert_fit_teacher: bool = option(False, "Project the teacher to the student width instead of the reverse.")
    mt_bert_wo_hard: bool = option(False, "Drop the combiner's built-in hard term.")
    mt_bert_wo_convert_layer: bool = option(False, "No projection between student and teacher widths.")
    mt_bert_fix_layernorm: bool = option(False, "Apply extra LayerNorms to the matched hidden states.")


def _is_hidden_tap(name: str) -> bool:
    return name == "output" or name.endswith(".layernorm_output")


@register_multi_teacher("mt_bert")
class MTBERT(Combiner):
    """MT-BERT (Wu et al. 2021, "One Teacher is Enough? Pre-trained Language Model Distillation
    from Multiple Teachers").

    Per teacher i: the hidden-state taps (`layers.k.layernorm_output`, `output`) pass through
    LayerNorms (--mt_bert_fix_layernorm: `layernorm` on the student's, trainable; the frozen
    `t_layernorm_i` of teacher i's width on the teacher's), then `fit_dense_i` (a
    ColumnParallelLinear, gathered output) maps the teacher's to the student's width
    (--mt_bert_fit_teacher) or the student's to the teacher's; then
    l_i = mean_b(pre_i[b] / (1 + L_hard,i[b])) + inter_i, with the per-sample pre_loss and the
    teacher's per-sample hard loss (--mt_has_loss). Result: sum_i l_i + L_hard(student)
    (without the last term under --mt_bert_wo_hard; the method's own pre_loss should then
    have no hard term, as in the recipe).

    With --mt_bert_fit_teacher the method is built as if every teacher had the student's width
    (what it sees). Fixed: the original applied the student's extra LayerNorm again for every
    further teacher (teacher i saw it applied i + 1 times); here once.
    """
    options_class = MTBERTOptions
    name, mixmt_name = "mt_bert", "MT_BERT"

    def __init__(self, options: MTBERTOptions, distill_options: DistillOptions,
                 context: Optional[CombinerContext] = None):
        super().__init__(options, distill_options, context)
        context = self._require("the student's and teachers' widths")
        if not context.teacher_hard_losses:
            raise ValueError("mt_bert weights each teacher by 1 / (1 + the teacher's hard loss): "
                             "run with --mt_has_loss")
        width = context.student_hidden_size
        for t_no, teacher in enumerate(context.teachers):
            if not options.mt_bert_wo_convert_layer:
                sizes = (teacher.hidden_size, width) if options.mt_bert_fit_teacher else (width, teacher.hidden_size)
                self.add_module(f"fit_dense_{t_no}", mpu.ColumnParallelLinear(*sizes, gather_output=True))
            if options.mt_bert_fix_layernorm:
                self.add_module(f"t_layernorm_{t_no}", nn.LayerNorm(teacher.hidden_size).requires_grad_(False))
        self.layernorm = nn.LayerNorm(width) if options.mt_bert_fix_layernorm else None

    @classmethod
    def method_teacher_infos(cls, options: MTBERTOptions, infos: Sequence[TeacherInfo], student_hidden_size: int):
        if not options.mt_bert_fit_teacher or options.mt_bert_wo_convert_layer:
            return tuple(infos)
        return tuple(dataclasses.replace(info, hidden_size=student_hidden_size) for info in infos)

    def _mapped(self, out: ModelOutput, layers: Sequence[nn.Module]) -> ModelOutput:
        taps = dict(out.taps)
        for name, value in out.taps.items():
            if _is_hidden_tap(name):
                for layer in layers:
                    value = layer(value.float())
                taps[name] = value
        return dataclasses.replace(out, taps=taps)

    def fitted(self, s_out: ModelOutput, t_out: ModelOutput, t_no: int) -> Tuple[ModelOutput, ModelOutput]:
        """Student and teacher outputs with teacher `t_no`'s LayerNorms and projection applied."""
        options = self.options
        s_layers = [self.layernorm] if self.layernorm is not None else []
        t_layers = [getattr(self, f"t_layernorm_{t_no}")] if options.mt_bert_fix_layernorm else []
        if not options.mt_bert_wo_convert_layer:
            (t_layers if options.mt_bert_fit_teacher else s_layers).append(getattr(self, f"fit_dense_{t_no}"))
        return self._mapped(s_out, s_layers), self._mapped(t_out, t_layers)

    def compute(self, student: GLMStudent, s_out: ModelOutput, s_hard_loss: Tensor,
                t_outs: Sequence[Optional[ModelOutput]], batch: DistillBatch, step: StepInfo,
                t_hard_losses: Sequence[TeacherHardLoss] = (), generator: Optional[torch.Generator] = None,
                s_hard_per_sample: Optional[Tensor] = None) -> Tuple[Tensor, Metrics]:
        self._check_outputs(t_outs)
        if s_hard_per_sample is None or len(t_hard_losses) != len(t_outs) or None in t_hard_losses:
            raise ValueError("mt_bert needs the student's and every teacher's per-sample hard losses (--mt_has_loss)")
        terms, metrics, several = [], {}, len(t_outs) > 1
        for t_no, t_out in enumerate(t_outs):
            s_fit, t_fit = self.fitted(s_out, t_out, t_no)
            pre, term_metrics = student.pre_loss(s_out.logits, t_out.logits, s_hard_per_sample, batch, step,
                                                 t_no=t_no)
            pre = (pre / (1.0 + t_hard_losses[t_no][1].detach().float())).mean()
            inter, inter_metrics = student.inter_loss(s_fit, t_fit, batch, step, t_no=t_no)
            terms.append(pre + inter.mean())
            metrics.update(_suffix({**term_metrics, **inter_metrics, "kd/teacher": terms[-1].detach()}, t_no, several))
        total = sum(terms)
        if not self.options.mt_bert_wo_hard:
            total = total + s_hard_loss.float()
            metrics["mt_bert/hard"] = s_hard_loss.detach().float()
        metrics["kd/total"] = total.detach()
        return total, metrics


# --------------------------------------------------------------------------- Uncertainty
@dataclass(frozen=True)
class UncertaintyOptions:
    """Entropy mask: the loss mask, the non-pad tokens (uncertainty_only_mask_pad) or none
    (uncertainty_wo_loss_mask). uncertainty_teacher_seq: colon list, teacher i takes the
    weights of size rank seq[i] (0 = smallest; default: the given order). uncertainty_hard:
    one teacher per sample; uncertainty_wo_rate: every weight 1; uncertainty_inter_entropy:
    entropy-weighted inter losses; uncertainty_wo_hard: no built-in hard term."""
    uncertainty_wo_loss_mask: bool = option(False, "Compute the student entropy without a mask.")
    uncertainty_only_mask_pad: bool = option(False, "Mask the student entropy only at padding.")
    uncertainty_inter_entropy: bool = option(False, "Also weight the intermediate losses by the entropy.")
    uncertainty_teacher_seq: Optional[str] = option(
        None, "Colon list ordering the teachers from small to large, e.g. 1:0.")
    uncertainty_hard: bool = option(False, "Route each sample to one teacher (hard selection).")
    uncertainty_wo_rate: bool = option(False, "Give every teacher weight 1.")
    uncertainty_wo_hard: bool = option(False, "Drop the combiner's built-in hard term.")

    def __post_init__(self):
        if self.uncertainty_wo_loss_mask and self.uncertainty_only_mask_pad:
            raise ValueError("--uncertainty_wo_loss_mask and --uncertainty_only_mask_pad conflict: set at most one")
        if self.uncertainty_teacher_seq:
            try:
                [int(item) for item in self.uncertainty_teacher_seq.split(":")]
            except ValueError:
                raise ValueError(f"--uncertainty_teacher_seq={self.uncertainty_teacher_seq}: expected a colon list of "
                                 f"teacher indices such as 1:0") from None

    def teacher_order(self, num_teachers: int) -> Tuple[int, ...]:
        if not self.uncertainty_teacher_seq:
            return tuple(range(num_teachers))
        order = tuple(int(item) for item in self.uncertainty_teacher_seq.split(":"))
        if sorted(order) != list(range(num_teachers)):
            raise ValueError(f"--uncertainty_teacher_seq={self.uncertainty_teacher_seq} must order all "
                             f"{num_teachers} teachers: a permutation of 0..{num_teachers - 1}")
        return order


@register_multi_teacher("uncertainty")
class Uncertainty(Combiner):
    """Uncertainty-routed teachers (Li et al. 2021, "Dynamic Knowledge Distillation for
    Pre-trained Language Models": the student's uncertainty picks the teacher).

    h = the student's normalised entropy per sample (`normalized_entropy`, under the entropy
    mask); r = `uncertainty_rates(h, N, hard)` (all ones with --uncertainty_wo_rate; the soft
    weights also when --uncertainty_hard meets a batch smaller than N, as in the original);
    pre_i = r[:, seq[i]] * pre_loss_i per sample. With --uncertainty_inter_entropy,
    inter_i = mean_b(inter_i[b] h[b]) and, when that is positive, pre_i *= |1 - h|.
    Result: mean_i (mean_b pre_i + inter_i) + distill_hard_rate * L_hard(student) (the last
    term dropped with --uncertainty_wo_hard). The weights are not detached: as in the
    original, the gradient also reaches the student through h (hard routing has none).

    Soft weights sum to N per sample (as the original; an earlier revision of it divided
    them by their sum, i.e. summed to 1). Fixed: masked tokens add 0 to the entropy (the
    original's zeroed logits added the maximal entropy 1 each) and the normaliser is log V of
    the whole vocabulary at any MP size (the original used the local shard's width).
    """
    options_class = UncertaintyOptions
    name, mixmt_name = "uncertainty", "Uncertainty"

    def __init__(self, options: UncertaintyOptions, distill_options: DistillOptions,
                 context: Optional[CombinerContext] = None):
        super().__init__(options, distill_options, context)
        if context is not None:
            options.teacher_order(len(context.teachers))   # fail at build time

    def rates(self, entropy: Tensor, num_teachers: int) -> Tensor:
        options = self.options
        if options.uncertainty_wo_rate:
            return torch.ones(entropy.size(0), num_teachers, device=entropy.device)
        hard = options.uncertainty_hard and entropy.size(0) >= num_teachers
        if options.uncertainty_hard and not hard:
            warnings.warn(f"--uncertainty_hard needs a batch of at least {num_teachers} samples; a batch of "
                          f"{entropy.size(0)} uses the soft weights")
        return uncertainty_rates(entropy, num_teachers, hard=hard)

    def compute(self, student: GLMStudent, s_out: ModelOutput, s_hard_loss: Tensor,
                t_outs: Sequence[Optional[ModelOutput]], batch: DistillBatch, step: StepInfo,
                t_hard_losses: Sequence[TeacherHardLoss] = (), generator: Optional[torch.Generator] = None,
                s_hard_per_sample: Optional[Tensor] = None) -> Tuple[Tensor, Metrics]:
        self._check_outputs(t_outs)
        if s_hard_per_sample is None:
            raise ValueError("uncertainty needs the student's per-sample hard loss")
        options, num_teachers = self.options, len(t_outs)
        mask = _sample_mask(batch, options.uncertainty_wo_loss_mask, options.uncertainty_only_mask_pad)
        entropy = normalized_entropy(s_out.logits, vocab_parallel=batch.token_level, mask=mask)       # [B]
        rates, order = self.rates(entropy, num_teachers), options.teacher_order(num_teachers)          # [B, N]
        terms, metrics, several = [], {"uncertainty/entropy": entropy.detach().mean()}, num_teachers > 1
        for t_no, t_out in enumerate(t_outs):
            pre, term_metrics = student.pre_loss(s_out.logits, t_out.logits, s_hard_per_sample, batch, step,
                                                 t_no=t_no)
            pre = rates[:, order[t_no]] * pre
            inter, inter_metrics = student.inter_loss(s_out, t_out, batch, step, t_no=t_no)
            if options.uncertainty_inter_entropy:
                inter = (inter * entropy).mean()
                if inter.detach() > 0:
                    pre = (1.0 - entropy).abs() * pre
            else:
                inter = inter.mean()
            terms.append(pre.mean() + inter)
            metrics.update(_suffix({**term_metrics, **inter_metrics, "kd/teacher": terms[-1].detach(),
                                    "uncertainty/rate": rates[:, order[t_no]].detach().mean()}, t_no, several))
        total = sum(terms) / len(terms)
        if not options.uncertainty_wo_hard:
            hard = self.distill_options.distill_hard_rate * s_hard_loss.float()
            total, metrics["uncertainty/hard"] = total + hard, hard.detach()
        metrics["kd/total"] = total.detach()
        return total, metrics
