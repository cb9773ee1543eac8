"""TinyBERT: attention-score and projected hidden-state MSE against uniformly (or randomly)
mapped teacher layers.

Taps are GLMModel names; in cloze fine-tuning they hold the choice-expanded rows [B*C, ...],
whose per-row losses are folded back into their sample ([B]). Hidden representation k is
`hidden_tap(k, L)`: the LN'd layer inputs, then `output`.
"""
import random
import warnings
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from torch import Tensor, nn

import mpu
from model import ModelOutput

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, TeacherInfo, register_student
from ..layer_mapping import TapPairs, hidden_tap, random_layers, uniform_layers
from ..losses import fold_samples
from ..losses_hidden import attention_mse, hidden_mse
from ..options import option

@dataclass(frozen=True)
class TinyBERTOptions:
    """TinyBERT flags. `tinybert_fit_parallel`/`tinybert_fit_compatible_mt` are
    always in effect here (one ColumnParallelLinear per teacher), so setting them changes nothing."""
    tinybert_inter_final: bool = option(False, "Match only the final hidden state.")
    tinybert_only_emb_final: bool = option(False, "Match only the embedding and final hidden states.")
    tinybert_custom_final: int = option(1, "Which state is final: 1 the output, 2 the second-to-last layer.")
    tinybert_only_emb: bool = option(False, "Match only the embedding hidden state.")
    tinybert_wo_att: bool = option(False, "Drop the attention-score MSE.")
    tinybert_wo_inter: bool = option(False, "No intermediate-layer loss (second fine-tuning stage).")
    tinybert_wo_final: bool = option(False, "Drop the final output state.")
    tinybert_wo_emb: bool = option(False, "Drop the embedding state.")
    tinybert_fit_parallel: bool = option(False, "Make the projection fit_dense a ColumnParallelLinear.")
    tinybert_fit_compatible_mt: bool = option(False, "One projection per teacher, for teachers of different widths.")
    tinybert_random_layers: bool = option(False, "Re-sample the intermediate teacher layers at random.")
    tinybert_random_e: int = option(1, "Re-sample the layers every e epochs (takes priority when > 0).")
    tinybert_random_i: int = option(3000, "Re-sample the layers every i iterations when --tinybert_random_e is 0.")
    tinybert_random_show: bool = option(False, "Print the sampled teacher layers.")

    def __post_init__(self):
        selectors = [n for n in ("tinybert_inter_final", "tinybert_only_emb_final", "tinybert_only_emb")
                     if getattr(self, n)]
        if len(selectors) > 1:
            raise ValueError(f"--{' and --'.join(selectors)} conflict: set at most one")
        if self.tinybert_custom_final < 1:
            raise ValueError(f"tinybert_custom_final must be >= 1, got {self.tinybert_custom_final}")
        if self.tinybert_random_e < 0 or self.tinybert_random_i < 1:
            raise ValueError(f"need tinybert_random_e >= 0 and tinybert_random_i >= 1, got "
                             f"{self.tinybert_random_e} and {self.tinybert_random_i}")
        unused = [n for n in ("tinybert_fit_parallel", "tinybert_fit_compatible_mt") if getattr(self, n)]
        if self.tinybert_custom_final != 1 and not (self.tinybert_inter_final or self.tinybert_only_emb_final):
            unused.append("tinybert_custom_final")
        if self.tinybert_random_show and not self.tinybert_random_layers:
            unused.append("tinybert_random_show")
        for name in unused:
            warnings.warn(f"--{name} has no effect here", stacklevel=3)

    @property
    def matches_attention(self) -> bool:
        return not (self.tinybert_wo_inter or self.tinybert_wo_att or self.tinybert_inter_final
                    or self.tinybert_only_emb_final or self.tinybert_only_emb)

    def period(self, step: StepInfo) -> int:
        """Index of the random-layer sampling period the step falls in."""
        if self.tinybert_random_e > 0:
            return step.epoch // self.tinybert_random_e
        return step.iteration // self.tinybert_random_i


@register_student
class TinyBERT(GLMStudent):
    """TinyBERT (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding").

    Loss per teacher and sample: sum_l MSE(A^s_l, A^t_{map(l+1)-1}) over attention scores
    [B, nh/p, S, S] + sum_k MSE(fit(h^s_k), h^t_{map(k)}) over hidden representations
    k = 0..L_s, map = `uniform_layers` (or, with random layers, the embedding and the final
    state fixed and L_s - 1 sampled teacher layers). `fit_dense_{t}` is a ColumnParallelLinear
    (H_s -> H_t of teacher t, gathered output), one per teacher.

    Differences from the original (numbers unchanged at MP=1): the projection is always
    per teacher and column-parallel, applied inside `inter_loss` instead of rewriting the
    captured tensors in `forward`; the random layers of a sampling period are drawn from a
    generator seeded by (teacher, period), so they are a function of the step and resume
    needs no saved state (the original drew from the global Python `random`, seeded by --seed).
    With `tinybert_random_show`, `begin_step` prints each new period's layers.
    """
    name = "tinybert"
    options_class = TinyBERTOptions

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        config = self.require_config()
        if not self.method_options.tinybert_wo_inter:
            for t_no, teacher in enumerate(self.teachers):
                self.add_module(f"fit_dense_{t_no}", mpu.ColumnParallelLinear(
                    config.hidden_size, teacher.hidden_size, gather_output=True))
        if self.method_options.matches_attention:
            self.check_teachers_match("num_attention_heads", "the attention-score MSE")
        self._shown_period: Dict[int, int] = {}   # teacher -> the last period printed (random_show)

    def begin_step(self, step: StepInfo) -> None:
        """With `tinybert_random_show`: print the layers of every teacher whose period is new."""
        options = self.method_options
        if not (options.tinybert_random_layers and options.tinybert_random_show):
            return
        period = options.period(step)
        for t_no in range(len(self.teachers)):
            if self._shown_period.get(t_no) != period:
                self._shown_period[t_no] = period
                print(f"tinybert: teacher {t_no} sampling period {period}: teacher layers "
                      f"{self.layer_map(t_no, step)}", flush=True)

    def layer_map(self, t_no: int, step: StepInfo) -> List[int]:
        """Teacher representation index for each student representation 0..L_s."""
        options, num_layers = self.method_options, self.teacher_info(t_no).num_layers
        if not options.tinybert_random_layers:
            return uniform_layers(self.config.num_layers, num_layers)
        period = options.period(step)
        return random_layers(self.config.num_layers, num_layers, random.Random(f"tinybert:{t_no}:{period}"))

    def tap_pairs(self, t_no: int, step: StepInfo) -> Tuple[TapPairs, TapPairs]:
        """(hidden pairs, attention pairs) of (student tap, teacher tap)."""
        options = self.method_options
        if options.tinybert_wo_inter:
            return [], []
        s_layers, t_layers = self.config.num_layers, self.teacher_info(t_no).num_layers
        layers = self.layer_map(t_no, step)
        back = options.tinybert_custom_final - 1
        if back > s_layers:
            raise ValueError(f"tinybert_custom_final={options.tinybert_custom_final} exceeds the student's "
                             f"{s_layers} layers")
        final = (s_layers - back, t_layers - back)
        if options.tinybert_inter_final:
            reps = [final]
        elif options.tinybert_only_emb_final:
            reps = [(0, 0), final]
        elif options.tinybert_only_emb:
            reps = [(0, 0)]
        else:
            reps = [(k, layers[k]) for k in range(s_layers + 1)]
        reps = [(s, t) for s, t in reps if not (options.tinybert_wo_emb and s == 0)
                and not (options.tinybert_wo_final and s == s_layers)]
        hidden = [(hidden_tap(s, s_layers), hidden_tap(t, t_layers)) for s, t in reps]
        attention = [(f"layers.{l}.attention_scores", f"layers.{layers[l + 1] - 1}.attention_scores")
                     for l in range(s_layers)] if options.matches_attention else []
        return hidden, attention

    def student_taps(self, step: StepInfo) -> List[str]:
        taps = {s for t_no in range(len(self.teachers)) for pairs in self.tap_pairs(t_no, step) for s, _ in pairs}
        return sorted(taps)

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return sorted({t for pairs in self.tap_pairs(t_no, step) for _, t in pairs})

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0) -> Tuple[Tensor, Metrics]:
        hidden_pairs, attention_pairs = self.tap_pairs(t_no, step)
        batch_size = s_out.logits.size(0)
        total, metrics = self.zero(s_out), {}
        if attention_pairs:
            rows = sum(attention_mse(s_out.taps[s], t_out.taps[t]) for s, t in attention_pairs)    # [N]
            att = fold_samples(rows, batch_size)                                                   # [B]
            total, metrics["inter/att"] = total + att, att.detach().mean()
        if hidden_pairs:
            fit = getattr(self, f"fit_dense_{t_no}")
            rows = sum(hidden_mse(fit(s_out.taps[s]), t_out.taps[t]) for s, t in hidden_pairs)     # [N]
            hid = fold_samples(rows, batch_size)                                                   # [B]
            total, metrics["inter/hidden"] = total + hid, hid.detach().mean()
        return total, metrics
