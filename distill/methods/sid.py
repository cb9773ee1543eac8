"""SID: layer-by-layer distillation of internal representations with progressive unlocking."""
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from ..distill_model import GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import uniform_attention_pairs, uniform_hidden_pairs
from ..losses import fold_samples
from ..losses_hidden import cosine_distance, head_parallel_mean
from ..losses_schedules import ProgressiveUnlocking, attention_score_kl, progressive_unlock_due
from ..options import option


@dataclass(frozen=True)
class SIDOptions:
    sid_accumulate_t: float = option(0.0, "Unlock the next layer when the cosine loss falls below this threshold.")
    sid_lim_e: str = option("avg", "Layer-unlocking schedule; avg unlocks layers evenly over training.")

    def __post_init__(self):
        if self.sid_lim_e != "avg":
            warnings.warn(f"sid_lim_e={self.sid_lim_e!r}: only 'avg' unlocks layers by iteration; layers now "
                          f"unlock only when the cosine loss falls below sid_accumulate_t", stacklevel=3)


@register_student
class SID(GLMStudent):
    """SID (Aguilar et al. 2020, "Knowledge Distillation from Internal Representations").

    Layers unlock progressively (n = `next_locked_layer`, from 1): while n <= L_s the loss is
    sum_l KL(attention scores of student layers l < n vs. the uniform-mapped teacher layers)
    + sum_k COS([CLS] of student representations 1..n vs. teacher representations map[k]);
    the pre-loss is 0 until n > L_s, then the generic one alone applies. n += 1 when the cosine
    loss < `sid_accumulate_t` or, with `sid_lim_e=avg`, once iteration >= T / (L_s + 1) * n
    (evaluated after each training step's loss, as it depends on it; any other `sid_lim_e`
    disables the latter). The n a step uses is taken in `begin_step` of its first pass.
    Needs equal hidden sizes and head counts. Fixed: n is checkpointed (`method_state`), so a
    resumed run continues exactly; attention KL per head at MP > 1.
    """
    name = "sid"
    options_class = SIDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self._num_layers = self.require_config().num_layers
        self.unlocking = ProgressiveUnlocking()

    def _pairs(self, t_no: int) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        """(attention pairs, hidden pairs) of this step against teacher `t_no`; none once all are unlocked."""
        count = self.unlocking.active
        if count > self._num_layers:
            return [], []
        depth = self.teacher_info(t_no).num_layers
        return (uniform_attention_pairs(self._num_layers, depth, count),
                uniform_hidden_pairs(self._num_layers, depth, range(1, count + 1)))

    def begin_step(self, step: StepInfo) -> None:
        """Pass 0: this step uses the layers unlocked so far."""
        if step.repeat_index == 0:
            self.unlocking.begin_step()

    def student_taps(self, step: StepInfo) -> List[str]:
        attention, hidden = self._pairs(0)
        return [s for s, _ in attention + hidden]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        attention, hidden = self._pairs(t_no)
        return [t for _, t in attention + hidden]

    def inter_loss(self, s_out, t_out, batch, step, t_no=0) -> Tuple[Tensor, Metrics]:
        """Attention KL + [CLS] cosine per sample [B]; pass 0 of a training step (teacher 0)
        then decides whether the next layer unlocks."""
        attention, hidden = self._pairs(t_no)
        if not hidden:
            return self.zero(s_out), {}
        samples = s_out.logits.size(0)
        kl = sum(fold_samples(head_parallel_mean(attention_score_kl(s_out.taps[s], t_out.taps[t])), samples)
                 for s, t in attention)                                                  # [N, nh/p, S] -> [B]
        cos = sum(fold_samples(cosine_distance(s_out.taps[s][:, 0], t_out.taps[t][:, 0]), samples)
                  for s, t in hidden)                                                    # [CLS] rows [N, H] -> [B]
        if step.training and t_no == 0 and step.repeat_index == 0:
            self._advance(float(cos.detach().mean()), step)
        return kl + cos, {"inter/att": kl.detach().mean(), "inter/cls_cos": cos.detach().mean(),
                          "sid/unlocked": torch.tensor(float(self.unlocking.active))}

    def _advance(self, cos: float, step: StepInfo) -> None:
        n = self.unlocking.next_locked
        by_time = self.method_options.sid_lim_e == "avg" and progressive_unlock_due(n, step.iteration,
                                                                                   step.train_iters, self._num_layers)
        if n <= self._num_layers and (cos < self.method_options.sid_accumulate_t or by_time):
            self.unlocking.next_locked = n + 1

    def pre_loss_rates(self, step: StepInfo) -> Tuple[float, float]:
        """No prediction-layer loss (rates 0: the generic pre-loss is 0 [B]) while layers are
        locked, then the run's rates."""
        if self.unlocking.active <= self._num_layers:
            return 0.0, 0.0
        return super().pre_loss_rates(step)

    def method_state(self) -> dict:
        return self.unlocking.state()

    def load_method_state(self, state: dict) -> None:
        self.unlocking.load(state, self.name)
