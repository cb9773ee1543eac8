"""MiniLMv2: self-attention relation KL of the Q, K and V projections of one layer.

Taps are GLMModel names; in cloze fine-tuning they hold the choice-expanded rows [B*C, ...],
whose per-row losses are folded back into their sample ([B]).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn

import mpu
from model import ModelOutput

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, TeacherInfo, register_student
from ..losses import fold_samples
from ..losses_hidden import relation_kl, split_relation_heads
from ..options import option


@dataclass(frozen=True)
class MiniLMv2Options:
    """MiniLMv2 flags. `minilmv2_teacher_layer` is 1-based (negative: from the end);
    `minilmv2_relation_heads_mt` ("48,64") gives one relation-head count per teacher."""
    minilmv2_relation_heads: int = option(48, "Number of relation heads (48 for base, 64 for large).")
    minilmv2_teacher_layer: int = option(12, "Teacher layer, 1-based; negative counts from the end.")
    minilmv2_wo_inter: bool = option(False, "Disable the relation loss.")
    minilmv2_relation_heads_mt: Optional[str] = option(
        None, "Comma list of relation heads, one per teacher; overrides --minilmv2_relation_heads.")

    def __post_init__(self):
        if self.minilmv2_relation_heads < 1:
            raise ValueError(f"minilmv2_relation_heads must be >= 1, got {self.minilmv2_relation_heads}")
        if self.minilmv2_teacher_layer == 0:
            raise ValueError("minilmv2_teacher_layer is 1-based (or negative from the end); 0 is not a layer")
        heads = self.relation_heads_list
        if any(h < 1 for h in heads):
            raise ValueError(f"minilmv2_relation_heads_mt must list positive counts, got "
                             f"{self.minilmv2_relation_heads_mt!r}")

    @property
    def relation_heads_list(self) -> Tuple[int, ...]:
        text = self.minilmv2_relation_heads_mt
        if not text:
            return ()
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"minilmv2_relation_heads_mt must be a comma list of integers, got {text!r}") from None

    def relation_heads(self, t_no: int) -> int:
        heads = self.relation_heads_list
        if not heads:
            return self.minilmv2_relation_heads
        if t_no >= len(heads):
            raise ValueError(f"minilmv2_relation_heads_mt={self.minilmv2_relation_heads_mt!r} has no entry for "
                             f"teacher {t_no}")
        return heads[t_no]


@register_student
class MiniLMv2(GLMStudent):
    """MiniLMv2 (Wang et al. 2021, "MiniLMv2: Multi-Head Self-Attention Relation Distillation
    for Compressing Pretrained Transformers").

    Loss per teacher and sample: sum over X in {Q, K, V} of the mean over [R, S] rows of
    KL(softmax(X_t X_t^T / sqrt(A_t/R)) || softmax(X_s X_s^T / sqrt(A_s/R))) per relation
    head, X = the mixed projection [B, S, A] of the student's last layer and of teacher layer
    `minilmv2_teacher_layer`, split into R relation heads. At MP = p each rank holds R/p
    relation heads; the mean is all-reduced (the original gathered along the key axis,
    mixing heads at MP > 1; MP=1 numbers are unchanged).
    """
    name = "minilmv2"
    options_class = MiniLMv2Options
    KINDS = ("query", "key", "value")

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        config = self.require_config()
        if not self.method_options.minilmv2_wo_inter:
            student = TeacherInfo(config.num_layers, config.hidden_size, config.num_attention_heads,
                                  getattr(config, "num_key_value_heads", None))
            for t_no, teacher in enumerate(self.teachers):
                self._check_widths(self.method_options.relation_heads(t_no), ("the student", student),
                                   (f"teacher {t_no}", teacher))

    def _check_widths(self, heads: int, *models: Tuple[str, TeacherInfo]) -> None:
        """Each Q and K/V width must split into the relation heads (grouped-query attention
        makes K/V narrower than Q): a build-time error naming the widths."""
        for who, info in models:
            for kind, width in (("query", info.hidden_size), ("key/value", info.key_value_width)):
                if width % heads:
                    raise ValueError(f"minilmv2: {heads} relation heads do not divide {who}'s {kind} width {width} "
                                     f"({info.num_key_value_heads or info.num_attention_heads} key/value heads of "
                                     f"{info.num_attention_heads}); choose --minilmv2_relation_heads dividing "
                                     f"every width")

    def teacher_layer(self, t_no: int) -> int:
        """0-based index of the teacher layer `minilmv2_teacher_layer` names."""
        value, num_layers = self.method_options.minilmv2_teacher_layer, self.teacher_info(t_no).num_layers
        layer = value - 1 if value > 0 else num_layers + value
        if not 0 <= layer < num_layers:
            raise ValueError(f"minilmv2_teacher_layer={value} is outside teacher {t_no}'s {num_layers} layers")
        return layer

    def _taps(self, layer: int) -> List[str]:
        if self.method_options.minilmv2_wo_inter:
            return []
        return [f"layers.{layer}.mixed_{kind}_layer" for kind in self.KINDS]

    def student_taps(self, step: StepInfo) -> List[str]:
        return self._taps(self.config.num_layers - 1)

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return self._taps(self.teacher_layer(t_no))

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0) -> Tuple[Tensor, Metrics]:
        total, metrics = self.zero(s_out), {}
        if self.method_options.minilmv2_wo_inter:
            return total, metrics
        heads = self.method_options.relation_heads(t_no)
        local_heads = mpu.divide(heads, mpu.get_model_parallel_world_size())
        pairs = zip(self.KINDS, self.student_taps(step), self.teacher_taps(t_no, step), strict=True)
        for kind, s_tap, t_tap in pairs:
            rows = relation_kl(split_relation_heads(s_out.taps[s_tap], local_heads),
                               split_relation_heads(t_out.taps[t_tap], local_heads))       # [N]
            loss = fold_samples(rows, s_out.logits.size(0))                                # [B]
            total, metrics[f"inter/rel_{kind[0]}"] = total + loss, loss.detach().mean()
        return total, metrics
