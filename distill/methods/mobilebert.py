"""MobileBERT: progressive knowledge transfer of attention maps and hidden states."""
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from ..distill_model import GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import uniform_attention_pairs, uniform_hidden_pairs
from ..losses import fold_samples
from ..losses_hidden import head_parallel_mean, hidden_mse
from ..losses_schedules import ProgressiveUnlocking, attention_score_kl, progressive_unlock_due
from ..options import option


@dataclass(frozen=True)
class MobileBERTOptions:
    mobilebert_kd_w: float = option(0.5, "Weight of the intermediate loss.")
    mobilebert_pkt_small_lr: float = option(
        0.1, "Down-weighting of already-transferred layers in progressive knowledge transfer.")


@register_student
class MobileBERT(GLMStudent):
    """MobileBERT (Sun et al. 2020, "MobileBERT: a Compact Task-Agnostic BERT for
    Resource-Limited Devices"): progressive knowledge transfer.

    With n = `next_locked_layer` (from 1), the loss is kd_w * (sum_l w_l KL(attention scores of
    student layer l < n vs. teacher layer map[l+1]-1) + sum_k w_k MSE(representation k <= n vs.
    teacher representation map[k])), uniform map. While n <= L_s the newly unlocked layer's
    terms (attention l = n-1, representation k = n) weigh 1 and the already-passed ones
    `mobilebert_pkt_small_lr`; after all are unlocked every term weighs 1 and the generic
    pre-loss (the recipe: MLM hard loss) is added, before that it is 0. The schedule runs in
    `begin_step` of a training step's first pass: the step uses the n reached so far, then
    n += 1 (for the steps that follow) once iteration >= T / (L_s + 1) * n, with T =
    train_iters (the original preferred lr_decay_iters, which the trainer does not pass in).
    Needs equal hidden sizes and head counts (IB widths may differ).
    Fixed: n is checkpointed (`method_state`), so a resumed run continues exactly; attention
    KL per head at MP > 1.
    """
    name = "mobilebert"
    options_class = MobileBERTOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self._num_layers = self.require_config().num_layers
        self.unlocking = ProgressiveUnlocking()

    def _terms(self, t_no: int) -> List[Tuple[str, str, float, bool]]:
        """[(student tap, teacher tap, weight, is attention)] of this step."""
        n, num_layers, depth = self.unlocking.active, self._num_layers, self.teacher_info(t_no).num_layers
        last = min(n, num_layers)
        small = self.method_options.mobilebert_pkt_small_lr

        def weight(current: bool) -> float:
            return 1.0 if n > num_layers or current else small
        attention = [(s, t, weight(layer == n - 1), True)
                     for layer, (s, t) in enumerate(uniform_attention_pairs(num_layers, depth, last))]
        hidden = [(s, t, weight(k == n), False)
                  for k, (s, t) in enumerate(uniform_hidden_pairs(num_layers, depth, range(last + 1)))]
        return attention + hidden

    def begin_step(self, step: StepInfo) -> None:
        """Pass 0: this step uses the layers unlocked so far; a training step then unlocks the
        next one for the steps that follow when it is due."""
        if step.repeat_index != 0:
            return
        self.unlocking.begin_step()
        n = self.unlocking.next_locked
        if step.training and n <= self._num_layers and progressive_unlock_due(n, step.iteration, step.train_iters,
                                                                              self._num_layers):
            self.unlocking.next_locked = n + 1

    def student_taps(self, step: StepInfo) -> List[str]:
        return [s for s, _, _, _ in self._terms(0)]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [t for _, t, _, _ in self._terms(t_no)]

    def inter_loss(self, s_out, t_out, batch, step, t_no=0) -> Tuple[Tensor, Metrics]:
        """kd_w * (weighted attention KL + weighted hidden MSE) per sample [B]."""
        samples = s_out.logits.size(0)
        att = hid = self.zero(s_out)
        for s, t, weight, is_attention in self._terms(t_no):
            if is_attention:
                value = head_parallel_mean(attention_score_kl(s_out.taps[s], t_out.taps[t]))   # [N, nh/p, S] -> [N]
                att = att + weight * fold_samples(value, samples)
            else:
                value = hidden_mse(s_out.taps[s], t_out.taps[t])                                # [N, S, H] -> [N]
                hid = hid + weight * fold_samples(value, samples)
        kd_w = self.method_options.mobilebert_kd_w
        return kd_w * (att + hid), {"inter/att": kd_w * att.detach().mean(), "inter/hidden": kd_w * hid.detach().mean(),
                                    "mobilebert/unlocked": torch.tensor(float(self.unlocking.active))}

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
