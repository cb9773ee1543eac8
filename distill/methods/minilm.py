"""MiniLM: attention-probability KL and value-relation KL of the last layer.

Taps are GLMModel names; in cloze fine-tuning they hold the choice-expanded rows [B*C, ...],
whose per-row losses are folded back into their sample ([B]).
"""
from typing import List, Sequence, Tuple

from torch import Tensor, nn

from model import ModelOutput

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, TeacherInfo, register_student
from ..losses import fold_samples
from ..losses_hidden import attention_kl, relation_kl


@register_student
class MiniLM(GLMStudent):
    """MiniLM (Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
    Compression of Pre-Trained Transformers").

    Loss per teacher and sample: mean over [nh, S] rows of KL(a_t || a_s) on the last layer's
    attention probabilities + the same KL on the value relations softmax(V V^T / sqrt(d_h)),
    per head (head counts must match). No flags.

    Fixed (numbers change): the original passed the attention *probabilities* to a KL that
    applies softmax, i.e. compared softmax(a_s) with softmax(a_t); here the probabilities are
    used directly, as in the paper. Heads are never mixed at MP > 1 (see MiniLMv2).
    """
    name = "minilm"

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.check_teachers_match("num_attention_heads", "the attention and value-relation KL")

    @staticmethod
    def _taps(layer: int) -> List[str]:
        return [f"layers.{layer}.attention_probs", f"layers.{layer}.value_layer"]

    def student_taps(self, step: StepInfo) -> List[str]:
        return self._taps(self.config.num_layers - 1)

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return self._taps(self.teacher_info(t_no).num_layers - 1)

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0) -> Tuple[Tensor, Metrics]:
        (s_att, s_val), (t_att, t_val) = self.student_taps(step), self.teacher_taps(t_no, step)
        batch_size = s_out.logits.size(0)
        att = fold_samples(attention_kl(s_out.taps[s_att], t_out.taps[t_att]), batch_size)   # [N] -> [B]
        val = fold_samples(relation_kl(s_out.taps[s_val], t_out.taps[t_val]), batch_size)    # [N] -> [B]
        return att + val, {"inter/att": att.detach().mean(), "inter/value": val.detach().mean()}
