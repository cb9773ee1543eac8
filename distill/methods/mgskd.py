"""MGSKD: token, span and sample relations (pairs and triplet angles) between student and
teacher representations (its options, its class)."""
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import hidden_tap, stride_layers
from ..losses import fold_samples, non_pad_mask
from ..losses_relations import mgskd_sample_loss, mgskd_token_loss, span_lengths, span_mask, span_means
from ..options import option


@dataclass(frozen=True)
class MGSKDOptions:
    """Weights of the sample / token / span terms; representations with index <
    mgskd_sample_level_m use the token and span terms, the others the sample term; k1 global
    tokens and k2 neighbours per token for the triplet angles (clamped to the length);
    mgskd_multi_heads relation heads (must divide both widths); int(S * mgskd_span_max_rate)
    random spans per step; mgskd_wo_inter disables the loss (second fine-tuning stage)."""
    mgskd_weight_sample: float = option(4.0, "Weight of the sample-level loss.")
    mgskd_weight_token: float = option(1.0, "Weight of the token-level loss.")
    mgskd_weight_span: float = option(1.0, "Weight of the span-level loss.")
    mgskd_sample_level_m: int = option(2, "Representations from this index on use the sample-level loss.")
    mgskd_triplet_k1: int = option(20, "Number of global tokens of the triplet angle loss.")
    mgskd_triplet_k2: int = option(20, "Number of local neighbours per global token.")
    mgskd_multi_heads: int = option(64, "Number of relation heads the hidden states are split into.")
    mgskd_span_max_rate: float = option(0.4, "Number of spans as a fraction of the sequence length.")
    mgskd_wo_inter: bool = option(False, "Disable the intermediate loss (second fine-tuning stage).")

    def __post_init__(self):
        if min(self.mgskd_triplet_k1, self.mgskd_triplet_k2, self.mgskd_multi_heads) < 1:
            raise ValueError("mgskd_triplet_k1, mgskd_triplet_k2 and mgskd_multi_heads must be >= 1")
        if not 0.0 <= self.mgskd_span_max_rate <= 1.0:
            raise ValueError(f"mgskd_span_max_rate must lie in [0, 1], got {self.mgskd_span_max_rate}")
        if self.mgskd_span_max_rate == 0.0 and self.mgskd_weight_span and not self.mgskd_wo_inter:
            warnings.warn("--mgskd_span_max_rate=0 makes no spans: the span term (--mgskd_weight_span) is 0",
                          stacklevel=3)


@register_student
class MGSKD(GLMStudent):
    """MGSKD (Liu et al. 2022, "Multi-Granularity Structural Knowledge Distillation for Language
    Model Compression").

    Student representations 0..L_s and teacher representations at stride k = L_t // L_s
    (0, k, ..., (L_s-1)k, then L_t). Representation i < M: token relations (pairs and
    triplet angles over the tokens) plus the same over random spans (span means; a span is
    kept if any of its tokens is); i >= M: sample relations (angles over the batch rows).
    Loss: sum_i w_token*token_i + w_span*span_i + w_sample*sample_i, computed over the model's
    rows ([B] in pretraining, the B*C choice rows in cloze fine-tuning; the non-pad mask from
    the student's position ids) as per-row shares whose mean is the original's batch value,
    folded back to the samples ([B]).

    The spans are drawn per step from a generator seeded by (run seed, iteration, repeat,
    teacher) (the original used the global RNG); `method_state()` holds the seed. Fixed:
    `--mgskd_span_max_rate 0` (or a sequence too short for one span) gives no span term (the
    original crashed); span lengths that already summed to S are kept (the original then
    lengthened every span and crashed); the last teacher representation is always the output
    (with L_t not a multiple of L_s the original paired the student's output with a middle
    teacher layer); an all-padded batch gives 0, not 0/0. Numbers are unchanged otherwise.
    """
    name = "mgskd"
    options_class = MGSKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        opts, config = self.method_options, self.require_config()
        self.num_layers = config.num_layers
        if not opts.mgskd_wo_inter:
            self.require_teachers()
            for what, width in [("student", config.hidden_size)] + [(f"teacher {i}", t.hidden_size)
                                                                   for i, t in enumerate(self.teachers)]:
                if width % opts.mgskd_multi_heads:
                    raise ValueError(f"MGSKD: the {what} width {width} is not divisible by "
                                     f"--mgskd_multi_heads={opts.mgskd_multi_heads}")
        self.seed = torch.initial_seed() % 2 ** 31

    def student_taps(self, step: StepInfo) -> List[str]:
        if self.method_options.mgskd_wo_inter:
            return []
        return [hidden_tap(k, self.num_layers) for k in range(self.num_layers + 1)] + ["position_ids"]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        if self.method_options.mgskd_wo_inter:
            return []
        teacher_layers = self.teacher_info(t_no).num_layers
        indices = stride_layers(self.num_layers, teacher_layers)[:-1] + [teacher_layers]
        return [hidden_tap(k, teacher_layers) for k in indices]

    def spans(self, seq_length: int, step: StepInfo, t_no: int) -> List[int]:
        """The random span lengths of this step and teacher (a pure function of the seed and step)."""
        seed = (self.seed * 1_000_003 + step.iteration * 1009 + step.repeat_index * 31 + t_no) % 2 ** 62
        return span_lengths(seq_length, self.method_options.mgskd_span_max_rate,
                            torch.Generator().manual_seed(seed))

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0) -> Tuple[Tensor, Metrics]:
        opts = self.method_options
        if opts.mgskd_wo_inter:
            return self.zero(s_out), {}
        s_reps = [s_out.taps[name].float() for name in self.student_taps(step)[:-1]]     # [N, S, H_s] each
        t_reps = [t_out.taps[name].float() for name in self.teacher_taps(t_no, step)]    # [N, S, H_t] each
        mask = non_pad_mask(s_out.taps["position_ids"])                                   # [N, S]
        lengths = self.spans(mask.size(1), step, t_no)
        relation = dict(num_heads=opts.mgskd_multi_heads, k1=opts.mgskd_triplet_k1, k2=opts.mgskd_triplet_k2)
        terms = {"token": 0.0, "span": 0.0, "sample": 0.0}
        for index, (s, t) in enumerate(zip(s_reps, t_reps, strict=True)):
            if index < opts.mgskd_sample_level_m:
                terms["token"] = terms["token"] + mgskd_token_loss(s, t, mask, **relation)
                if lengths:
                    terms["span"] = terms["span"] + mgskd_token_loss(
                        span_means(s, lengths), span_means(t, lengths), span_mask(mask, lengths), **relation)
            else:
                terms["sample"] = terms["sample"] + mgskd_sample_loss(s, t, mask, num_heads=opts.mgskd_multi_heads)
        weights = {"token": opts.mgskd_weight_token, "span": opts.mgskd_weight_span,
                   "sample": opts.mgskd_weight_sample}
        rows = sum(weights[k] * v for k, v in terms.items() if torch.is_tensor(v))                 # [N]
        metrics = {f"inter/mgskd_{k}": v.detach().mean() for k, v in terms.items() if torch.is_tensor(v)}
        return fold_samples(rows, s_out.logits.size(0)), metrics

    def method_state(self) -> dict:
        return {"seed": self.seed}

    def load_method_state(self, state: dict) -> None:
        if set(state) != {"seed"}:
            raise ValueError(f"MGSKD method state needs the key seed; got {sorted(state)}")
        self.seed = int(state["seed"])
