"""RAIL-KD: random intermediate-layer mapping with projected, L2-normalised mean-pooled
representations (its options, its class)."""
import logging
import random
import warnings
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

import mpu

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import hidden_tap, random_layers, stride_layers
from ..losses_relations import normalized_squared_distance
from ..options import option

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RailKDOptions:
    """rail_kd_inter_rate: weight of the loss; rail_kd_u: projection size; teacher layers are
    re-sampled every rail_kd_epochs epochs (if > 0), else every rail_kd_iters iterations
    (if > 0), else every iteration; rail_kd_concatenated: one projection of the concatenated
    layers (else layer-wise); has_embed / has_final: also match representation 0 / the output;
    rail_kd_no_random: fixed stride layers; rail_kd_show_hook_change: log every new sample.
    rail_kd_layer_wise_alpha: parsed but unused, as in the original (a warning when set)."""
    rail_kd_inter_rate: float = option(0.3334, "Weight of the intermediate loss.")
    rail_kd_layer_wise_alpha: float = option(1.0, "Layer-wise alpha; parsed but unused in the original.")
    rail_kd_u: int = option(128, "Projection dimension.")
    rail_kd_epochs: int = option(1, "Re-sample the teacher layers every N epochs (takes priority when > 0).")
    rail_kd_iters: int = option(3000, "Re-sample the teacher layers every N iterations when --rail_kd_epochs is 0.")
    rail_kd_concatenated: bool = option(False, "Concatenated RAIL-KD instead of layer-wise.")
    rail_kd_has_embed: bool = option(False, "Include the embedding layer.")
    rail_kd_has_final: bool = option(False, "Include the final output.")
    rail_kd_show_hook_change: bool = option(False, "Print the sampled teacher layers.")
    rail_kd_no_random: bool = option(False, "Use fixed stride layers instead of random ones.")

    def __post_init__(self):
        if self.rail_kd_u < 1 or self.rail_kd_epochs < 0 or self.rail_kd_iters < 0:
            raise ValueError("rail_kd_u must be >= 1 and rail_kd_epochs / rail_kd_iters >= 0")
        if self.rail_kd_layer_wise_alpha != 1.0:
            warnings.warn("--rail_kd_layer_wise_alpha has no effect (unused in the original, which gives it "
                          "no meaning)", stacklevel=3)


def _project(layer: nn.Module, x: Tensor) -> Tensor:
    """An auxiliary layer on fp32 input, in the layer's own precision, back to fp32."""
    return layer(x.to(layer.weight.dtype)).float()


@register_student
class RailKD(GLMStudent):
    """RAIL-KD (Haidar et al. 2022, "RAIL-KD: RAndom Intermediate Layer Mapping for Knowledge
    Distillation").

    Student representations 1..L_s-1 (+0, +L_s) and as many teacher representations from
    1..L_t-1, drawn at random (sorted) per teacher and re-sampling period (+0, +L_t), are
    mean-pooled over the sequence (padding included, as the original), projected to u
    (concatenated: [N, m*H] -> [N, u]; layer-wise: [N, n, H] -> [N, n, u]), L2-normalised, and
    `rail_kd_inter_rate * sum (s - t)^2`, a SUM over every element of the batch (the original's
    reduction). Per sample: B times the sum over the sample's elements (its rows: its C choice
    rows in cloze fine-tuning), so that the mean of the [B] vector is exactly that batch sum.
    Under the per-sample weighted combiners a sample's value is therefore B times its own sum.

    Sampling: `begin_step` draws the layers of teacher t for period p (p = epoch //
    rail_kd_epochs, or iteration // rail_kd_iters) from random.Random seeded by (run seed, t,
    p), so a resumed run draws the same layers; the taps getters only read them, and
    `method_state()` holds the seed and the current samples. Differences from the original, no
    number changes in its working configurations: the period bookkeeping is per teacher (the
    original shared it, so teacher 1 missed re-samples); `--rail_kd_no_random` uses
    `stride_layers` (the original crashed when L_t was not a multiple of L_s).
    """
    name = "rail_kd"
    options_class = RailKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.require_teachers()
        opts, config = self.method_options, self.require_config()
        self.num_layers = config.num_layers
        self.student_indices = ([0] if opts.rail_kd_has_embed else []) + list(range(1, self.num_layers)) + (
            [self.num_layers] if opts.rail_kd_has_final else [])
        if not self.student_indices:
            raise ValueError("RAIL-KD matches no layer: use a student with >= 2 layers or --rail_kd_has_embed / "
                             "--rail_kd_has_final")
        width = len(self.student_indices) if opts.rail_kd_concatenated else 1
        self.s_fit_dense = mpu.ColumnParallelLinear(config.hidden_size * width, opts.rail_kd_u)
        self.t_fit_dense = nn.ModuleList(mpu.ColumnParallelLinear(t.hidden_size * width, opts.rail_kd_u)
                                         for t in self.teachers)
        self.seed = torch.initial_seed() % 2 ** 31   # the run's seed: identical on every rank
        self.sampled: Dict[int, Tuple[int, List[int]]] = {}   # t_no -> (period, inner teacher layers)

    def _period(self, step: StepInfo) -> int:
        opts = self.method_options
        if opts.rail_kd_epochs > 0:
            return step.epoch // opts.rail_kd_epochs
        return step.iteration // opts.rail_kd_iters if opts.rail_kd_iters > 0 else step.iteration

    def begin_step(self, step: StepInfo) -> None:
        """Draw every teacher's inner layers when `step` starts a new re-sampling period."""
        opts = self.method_options
        if opts.rail_kd_no_random:
            return
        period = self._period(step)
        for t_no, teacher in enumerate(self.teachers):
            if self.sampled.get(t_no, (None,))[0] == period:
                continue
            rng = random.Random(f"rail_kd:{self.seed}:{t_no}:{period}")
            self.sampled[t_no] = (period, random_layers(self.num_layers, teacher.num_layers, rng)[1:-1])
            if opts.rail_kd_show_hook_change:
                logger.info("RAIL-KD teacher %d, period %d: layers %s", t_no, period, self.sampled[t_no][1])

    def teacher_indices(self, t_no: int, step: StepInfo) -> List[int]:
        """Teacher representation indices matched this step (sorted): the layers `begin_step`
        drew for the step's period (RuntimeError when it did not run for that period)."""
        opts, teacher_layers = self.method_options, self.teacher_info(t_no).num_layers
        if opts.rail_kd_no_random:
            inner = stride_layers(self.num_layers, teacher_layers)[1:-1]
        else:
            period, inner = self.sampled.get(t_no, (None, []))
            if period != self._period(step):
                raise RuntimeError(f"RAIL-KD: no teacher {t_no} layers drawn for period {self._period(step)}; "
                                   f"call begin_step(step) before the taps and losses of a step")
        return ([0] if opts.rail_kd_has_embed else []) + list(inner) + (
            [teacher_layers] if opts.rail_kd_has_final else [])

    def student_taps(self, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.num_layers) for k in self.student_indices]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.teacher_info(t_no).num_layers) for k in self.teacher_indices(t_no, step)]

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0) -> Tuple[Tensor, Metrics]:
        s_reps = [s_out.taps[name].float().mean(1) for name in self.student_taps(step)]          # [N, H_s] each
        t_reps = [t_out.taps[name].float().mean(1) for name in self.teacher_taps(t_no, step)]    # [N, H_t] each
        if self.method_options.rail_kd_concatenated:
            s_joined, t_joined = torch.cat(s_reps, -1), torch.cat(t_reps, -1)     # [N, m*H]
        else:
            s_joined, t_joined = torch.stack(s_reps, 1), torch.stack(t_reps, 1)   # [N, n, H]
        s_proj = _project(self.s_fit_dense, s_joined)
        t_proj = _project(self.t_fit_dense[t_no], t_joined)
        rows = self.method_options.rail_kd_inter_rate * normalized_squared_distance(s_proj, t_proj)   # [N]
        samples = s_out.logits.size(0)
        loss = rows.view(samples, -1).sum(dim=1) * samples          # [B*C] -> [B, C] -> [B]: B x the sample's sum
        return loss, {"inter/rail_kd": loss.detach().mean()}

    def method_state(self) -> dict:
        return {"seed": self.seed, "sampled": {t: [p, list(layers)] for t, (p, layers) in self.sampled.items()}}

    def load_method_state(self, state: dict) -> None:
        if set(state) != {"seed", "sampled"}:
            raise ValueError(f"RAIL-KD method state needs keys seed, sampled; got {sorted(state)}")
        self.seed = int(state["seed"])
        self.sampled = {int(t): (int(p), [int(i) for i in layers]) for t, (p, layers) in state["sampled"].items()}
