"""Patient KD: MSE between stride-mapped hidden states, alpha-weighted soft and hard terms.

Taps are GLMModel names; in cloze fine-tuning they hold the choice-expanded rows [B*C, ...],
whose per-row losses are folded back into their sample ([B]). Hidden representation k is
`hidden_tap(k, L)`: the LN'd layer inputs, then `output`.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from torch import Tensor, nn

from model import ModelOutput

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, TeacherInfo, register_student
from ..layer_mapping import TapPairs, hidden_tap, stride_layers
from ..losses import fold_samples
from ..losses_hidden import patience_mse
from ..options import option

@dataclass(frozen=True)
class PKDOptions:
    """PKD flags: pre_loss = (1 - pkd_alpha) hard + pkd_alpha soft, plus
    pkd_beta * the patient loss on stride-mapped hidden states."""
    pkd_normalized_patience: bool = option(False, "L2-normalise the matched hidden states.")
    pkd_alpha: float = option(0.5, "Weight of the soft term; the hard term gets 1 - alpha.")
    pkd_beta: float = option(100.0, "Weight of the patient intermediate-layer loss.")
    pkd_use_embed: bool = option(False, "Include the embedding layer in the matched layers.")
    pkd_wo_final: bool = option(False, "Exclude the teacher's final output from the matched layers.")
    pkd_only_cls: bool = option(False, "Match only the [CLS] position.")


@register_student
class PKD(GLMStudent):
    """Patient KD (Sun et al. 2019, "Patient Knowledge Distillation for BERT Model Compression").

    inter_loss = beta * sum_k MSE(f(h^s_k), f(h^t_{k*stride})) per sample, for student
    representations k = 1..L_s-1 (0..L_s-1 with pkd_use_embed) plus `output` <-> `output` unless
    pkd_wo_final; stride = floor(L_t / L_s) (`stride_layers`); f = the [CLS] row (pkd_only_cls),
    then L2 normalisation (pkd_normalized_patience). pre_loss = (1 - alpha) * hard + alpha * soft,
    each term enabled by the generic stage flags as in the base. Needs H_s = H_t.
    Same numbers as the original.
    """
    name = "pkd"
    options_class = PKDOptions

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.check_teachers_match("hidden_size", "matching hidden states")

    def tap_pairs(self, t_no: int) -> TapPairs:
        """(student tap, teacher tap) of every matched hidden representation."""
        options, s_layers = self.method_options, self.config.num_layers
        t_layers = self.teacher_info(t_no).num_layers
        mapping = stride_layers(s_layers, t_layers)
        first = 0 if options.pkd_use_embed else 1
        pairs = [(hidden_tap(k, s_layers), hidden_tap(mapping[k], t_layers)) for k in range(first, s_layers)]
        return pairs if options.pkd_wo_final else pairs + [("output", "output")]

    def student_taps(self, step: StepInfo) -> List[str]:
        return sorted({s for t_no in range(len(self.teachers)) for s, _ in self.tap_pairs(t_no)})

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [t for _, t in self.tap_pairs(t_no)]

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0) -> Tuple[Tensor, Metrics]:
        options, pairs = self.method_options, self.tap_pairs(t_no)
        if not pairs:
            return self.zero(s_out), {}
        rows = sum(patience_mse(s_out.taps[s], t_out.taps[t], normalize=options.pkd_normalized_patience,
                                only_cls=options.pkd_only_cls) for s, t in pairs)              # [N]
        loss = options.pkd_beta * fold_samples(rows, s_out.logits.size(0))                     # [B]
        return loss, {"inter/patience": loss.detach().mean()}

    def pre_loss_rates(self, step: StepInfo) -> Tuple[float, float]:
        """pre_loss = alpha * r_soft * soft + (1 - alpha) * r_hard * hard_loss (the generic terms)."""
        alpha = self.method_options.pkd_alpha
        return alpha * self.options.distill_soft_rate, (1.0 - alpha) * self.options.distill_hard_rate
