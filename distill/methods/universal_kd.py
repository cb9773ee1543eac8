"""Universal-KD: attention-based, output-grounded intermediate-layer distillation over projected
pooled representations (its options, its class)."""
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor, nn

import mpu
from model import ModelOutput

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import hidden_tap
from ..losses import fold_samples
from ..losses_relations import universal_kd_loss
from ..options import option


@dataclass(frozen=True)
class UniversalKDOptions:
    """universal_kd_wo_inter: no loss (second stage); universal_kd_cg: match only the outputs;
    universal_kd_avg: pool by the sequence mean instead of [CLS]; universal_kd_gamma: weight;
    universal_kd_size: projection size (0: the student's width)."""
    universal_kd_wo_inter: bool = option(False, "Disable the intermediate loss (second fine-tuning stage).")
    universal_kd_cg: bool = option(False, "Match only the final output (CG) instead of all layers.")
    universal_kd_avg: bool = option(False, "Pool layers by the sequence mean instead of [CLS].")
    universal_kd_gamma: float = option(0.5, "Weight of the intermediate loss.")
    universal_kd_size: int = option(0, "Projection size; 0 means the student's hidden size.")

    def __post_init__(self):
        if self.universal_kd_size < 0:
            raise ValueError(f"universal_kd_size must be >= 0, got {self.universal_kd_size}")


def _project(layer: nn.Module, x: Tensor) -> Tensor:
    """An auxiliary layer on fp32 input, in the layer's own precision, back to fp32."""
    return layer(x.to(layer.weight.dtype)).float()


@register_student
class UniversalKD(GLMStudent):
    """Universal-KD (Wu et al. 2021, "Universal-KD: Attention-based Output-Grounded Intermediate
    Layer Knowledge Distillation").

    Student representations 1..L_s-1 and teacher representations 1..L_t-1 (the outputs only
    with --universal_kd_cg), pooled ([CLS] or the sequence mean, padding included as the
    original), each projected by its own bias-free layer to size U; alpha = softmax(S T^T)
    over the teacher layers, tau_i = sum_j alpha_ij T_j, loss = gamma * sum_i KL(softmax(tau_i)
    || softmax(S_i)) over the features, per row (the B*C choice rows of cloze fine-tuning
    folded back to the samples: [B]). The teacher projections are trained too (through tau).
    Same numbers as the original.
    """
    name = "universal_kd"
    options_class = UniversalKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.require_teachers()
        opts, config = self.method_options, self.require_config()
        self.num_layers = config.num_layers
        size = opts.universal_kd_size or config.hidden_size
        count = (lambda layers: 1) if opts.universal_kd_cg else (lambda layers: layers - 1)
        if count(self.num_layers) < 1 or any(count(t.num_layers) < 1 for t in self.teachers):
            raise ValueError("Universal-KD matches layers 1..L-1: every model needs >= 2 layers (or use "
                             "--universal_kd_cg)")
        projections = lambda width, layers: nn.ModuleList(mpu.ColumnParallelLinear(width, size, bias=False)
                                                          for _ in range(count(layers)))
        self.s_fit_dense = projections(config.hidden_size, self.num_layers)
        self.t_fit_dense = nn.ModuleList(projections(t.hidden_size, t.num_layers) for t in self.teachers)

    def _taps(self, num_layers: int) -> List[str]:
        if self.method_options.universal_kd_wo_inter:
            return []
        if self.method_options.universal_kd_cg:
            return ["output"]
        return [hidden_tap(k, num_layers) for k in range(1, num_layers)]

    def student_taps(self, step: StepInfo) -> List[str]:
        return self._taps(self.num_layers)

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return self._taps(self.teacher_info(t_no).num_layers)

    def _pooled(self, out: ModelOutput, names: List[str], layers: nn.ModuleList) -> Tensor:
        """The pooled, projected representations: [N, len(names), U]."""
        pool = (lambda x: x.mean(1)) if self.method_options.universal_kd_avg else (lambda x: x[:, 0])
        return torch.stack([_project(layer, pool(out.taps[name].float()))
                            for layer, name in zip(layers, names, strict=True)], 1)

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0) -> Tuple[Tensor, Metrics]:
        opts = self.method_options
        if opts.universal_kd_wo_inter:
            return self.zero(s_out), {}
        student = self._pooled(s_out, self.student_taps(step), self.s_fit_dense)                  # [N, L_s-1, U]
        teacher = self._pooled(t_out, self.teacher_taps(t_no, step), self.t_fit_dense[t_no])      # [N, L_t-1, U]
        rows = opts.universal_kd_gamma * universal_kd_loss(student, teacher)                      # [N]
        loss = fold_samples(rows, s_out.logits.size(0))
        return loss, {"inter/universal_kd": loss.detach().mean()}
