"""LRC-BERT: latent-representation contrastive distillation with gradient perturbation."""
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mpu
from mpu.mappings import group_size

from ..distill_model import GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import uniform_hidden_pairs
from ..losses import fold_samples
from ..losses_schedules import cos_nce
from ..options import option


@dataclass(frozen=True)
class LRCBertOptions:
    lrc_bert_alpha: float = option(1.0, "Weight of the contrastive intermediate loss.")
    lrc_bert_gard_perturb: bool = option(False, "Train with gradient perturbation of the embeddings.")
    lrc_bert_gather_dp: bool = option(False, "Gather the batch across data-parallel ranks for more negatives.")


@register_student
class LRCBert(GLMStudent):
    """LRC-BERT (Fu et al. 2021, "LRC-BERT: Latent-representation Contrastive Knowledge
    Distillation for Natural Language Understanding").

    Student representations 1..L_s, projected by `s_fit_dense[t]` (H_s -> H_t, no bias), and the
    teacher's uniform-mapped ones are concatenated over layers x positions; the loss is
    COS-NCE_i * L_s * alpha per row i (folded per sample) with the other rows of the batch as
    negatives (all data-parallel ranks' teacher rows with `lrc_bert_gather_dp`; each rank scores
    its own rows, so the data-parallel mean is the global-batch loss with the exact gradient).
    Gradient perturbation (`lrc_bert_gard_perturb`, with `--forward_repeat_num=1
    --ignore_first_backward_gard`): pass 0 hooks the gradient g of the `embeddings` tap
    (`begin_step` of pass 0 forgets the previous step's); pass 1 adds normalize(g, dim=-1) to
    the embeddings unless g holds inf/NaN.
    Fixed: the negatives' sum leaves out g_ii once, not B times, so the positive
    distance g_ii weighs 1 instead of 1.5: each row's value drops by g_ii / 2 (and its gradient).
    """
    name = "lrc_bert"
    options_class = LRCBertOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.require_teachers()   # their widths size s_fit_dense
        config = self.require_config()
        self._num_layers = config.num_layers
        self.s_fit_dense = nn.ModuleList(mpu.ColumnParallelLinear(config.hidden_size, info.hidden_size, bias=False)
                                         for info in self.teachers)
        self._gradient: Optional[Tensor] = None
        self._warned = False

    def _pairs(self, t_no: int) -> List[Tuple[str, str]]:
        return uniform_hidden_pairs(self._num_layers, self.teacher_info(t_no).num_layers,
                                    range(1, self._num_layers + 1))

    def _perturbing(self, step: StepInfo) -> bool:
        return self.method_options.lrc_bert_gard_perturb and step.training

    def begin_step(self, step: StepInfo) -> None:
        """Pass 0 forgets the previous step's embedding gradient; a perturbed pass without one
        warns (once per run)."""
        if step.repeat_index == 0:
            self._gradient = None
        elif self._perturbing(step) and self._gradient is None and not self._warned:
            warnings.warn("lrc_bert: no embedding gradient from pass 0; the perturbation needs "
                          "--forward_repeat_num=1 --ignore_first_backward_gard", stacklevel=2)
            self._warned = True

    def student_taps(self, step: StepInfo) -> List[str]:
        taps = [s for s, _ in self._pairs(0)]
        if step.repeat_index == 0 and self._perturbing(step):
            taps.append("embeddings")
        return taps

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [t for _, t in self._pairs(t_no)]

    def student_interventions(self, step: StepInfo) -> Dict[str, object]:
        gradient = self._gradient
        if not (self._perturbing(step) and step.repeat_index >= 1) or gradient is None:
            return {}
        if not torch.isfinite(gradient).all():
            return {}
        delta = F.normalize(gradient.float(), dim=-1)
        return {"embeddings": lambda embeddings: embeddings + delta.to(embeddings.dtype)}

    def _store_gradient(self, gradient: Tensor) -> None:
        self._gradient = gradient.detach().clone()

    def inter_loss(self, s_out, t_out, batch, step, t_no=0) -> Tuple[Tensor, Metrics]:
        """alpha * L_s * COS-NCE per sample [B]; pass 0 hooks the embeddings' gradient."""
        embeddings = s_out.taps.get("embeddings")
        if t_no == 0 and step.repeat_index == 0 and embeddings is not None and embeddings.requires_grad:
            embeddings.register_hook(self._store_gradient)
        pairs, fit = self._pairs(t_no), self.s_fit_dense[t_no]
        student = torch.cat([fit(s_out.taps[s]) for s, _ in pairs], dim=1)           # [N, L_s * S, H_t]
        teacher = torch.cat([t_out.taps[t] for _, t in pairs], dim=1).float()         # [N, L_s * S, H_t]
        offset, group = 0, mpu.get_data_parallel_group()
        if self.method_options.lrc_bert_gather_dp and group is not None and group_size(group) > 1:
            # [N, R, H] -> every rank's rows [N * dp, R, H], in rank order (the teacher has no graph)
            offset = mpu.get_data_parallel_rank() * teacher.size(0)
            teacher = mpu.gather_from_model_parallel_region(teacher.movedim(0, -1).contiguous(), group).movedim(-1, 0)
        rows = cos_nce(student, teacher, offset) * (len(pairs) * self.method_options.lrc_bert_alpha)   # [N]
        loss = fold_samples(rows, s_out.logits.size(0))                                                 # [B]
        return loss, {"inter/cos_nce": loss.detach().mean()}
