"""Relation- and layer-attention methods: RAIL-KD, MGSKD, CKD, ALP-KD, Universal-KD. Each class
declares its taps and combines the pure losses of `distill.losses_relations`; hidden states are
replicated across model-parallel ranks, so the losses are identical on every rank and need no
collective (the projection layers are `mpu.ColumnParallelLinear` with gathered outputs, sharded
and checkpointed like the model).

Shared conventions. Hidden representation k is `hidden_tap(k, L)`. Rows are the
model's rows: [B, S] in pretraining, the B*C choice-expanded rows in cloze fine-tuning; the
non-pad mask comes from the student's `position_ids` tap (position > 0, column 0 kept).
`keep_batch` folds the rows back to the batch ([B*C] -> [B]).
"""
import logging
import math
import random
import warnings
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

import mpu
from model import ModelOutput, glm_config_of

from .distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from .layer_mapping import hidden_tap, random_layers, stride_layers, uniform_layers
from .losses import zero_loss
from .losses_relations import (alp_kd_loss, ckd_ltr_angle, ckd_ltr_dist, ckd_wr_angle, ckd_wr_dist,
                               mgskd_sample_loss, mgskd_token_loss, normalized_squared_distance, span_lengths,
                               span_mask, span_means, universal_kd_loss)
from .options import option

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared helpers


def non_pad_mask(position_ids: Tensor) -> Tensor:
    """[N, 2, S] (or [N, S]) positions -> [N, S] bool: position > 0, column 0 kept ([CLS])."""
    positions = position_ids[:, 0] if position_ids.dim() == 3 else position_ids
    mask = positions > 0
    mask[:, 0] = True
    return mask


def fold_rows(rows: Tensor, batch_size: int, reduce: str = "mean") -> Tensor:
    """Per-row values [N] -> per-sample [B] (N = B*C: the mean or sum over a sample's choices)."""
    if rows.size(0) % batch_size:
        raise ValueError(f"{rows.size(0)} rows do not split into {batch_size} samples")
    rows = rows.reshape(batch_size, -1)
    return rows.sum(1) if reduce == "sum" else rows.mean(1)


def reduce_rows(rows: Tensor, s_out: ModelOutput, keep_batch: bool, reduce: str = "mean") -> Tensor:
    """Per-row loss [N] -> scalar (mean or sum over rows) or [B] with keep_batch."""
    if keep_batch:
        return fold_rows(rows, s_out.logits.size(0), reduce)
    return rows.sum() if reduce == "sum" else rows.mean()


def project(layer: nn.Module, x: Tensor) -> Tensor:
    """An auxiliary layer on fp32 input, in the layer's own precision, back to fp32."""
    return layer(x.to(layer.weight.dtype)).float()


def disabled(s_out: ModelOutput, keep_batch: bool) -> Tuple[Tensor, Metrics]:
    return zero_loss(s_out.logits, (s_out.logits.size(0),) if keep_batch else ()), {}


def hidden_states(out: ModelOutput, names: List[str]) -> List[Tensor]:
    return [out.taps[name].float() for name in names]


def require_teachers(name: str, teachers) -> None:
    if not teachers:
        raise ValueError(f"--student_model={name} needs the teachers' sizes (TeacherInfo) to build its layers")


# --------------------------------------------------------------------------- RAIL-KD
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


@register_student
class RailKD(GLMStudent):
    """RAIL-KD (Haidar et al. 2022, "RAIL-KD: RAndom Intermediate Layer Mapping for Knowledge
    Distillation").

    Student representations 1..L_s-1 (+0, +L_s) and as many teacher representations from
    1..L_t-1, drawn at random (sorted) per teacher and re-sampling period (+0, +L_t), are
    mean-pooled over the sequence (padding included, as the original), projected to u
    (concatenated: [N, m*H] -> [N, u]; layer-wise: [N, n, H] -> [N, n, u]), L2-normalised, and
    `rail_kd_inter_rate * sum (s - t)^2` (a sum over every element). keep_batch: per-sample sums.

    Sampling: the layers of teacher t in period p (p = epoch // rail_kd_epochs, or iteration //
    rail_kd_iters) come from random.Random seeded by (run seed, t, p), so a resumed run draws
    the same layers; `method_state()` holds the seed and the current samples. Differences from
    the original, no number changes in its working configurations: the period bookkeeping is
    per teacher (the original shared it, so teacher 1 missed re-samples); `--rail_kd_no_random`
    uses `stride_layers` (the original crashed when L_t was not a multiple of L_s).
    """
    name = "rail_kd"
    options_class = RailKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        require_teachers(self.name, self.teachers)
        opts, config = self.method_options, glm_config_of(model)
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

    def teacher_indices(self, t_no: int, step: StepInfo) -> List[int]:
        """Teacher representation indices matched this step (sorted)."""
        opts, teacher_layers = self.method_options, self.teachers[t_no].num_layers
        if opts.rail_kd_no_random:
            inner = stride_layers(self.num_layers, teacher_layers)[1:-1]
        else:
            period = self._period(step)
            if self.sampled.get(t_no, (None,))[0] != period:
                rng = random.Random(f"rail_kd:{self.seed}:{t_no}:{period}")
                self.sampled[t_no] = (period, random_layers(self.num_layers, teacher_layers, rng)[1:-1])
                if opts.rail_kd_show_hook_change:
                    logger.info("RAIL-KD teacher %d, period %d: layers %s", t_no, period, self.sampled[t_no][1])
            inner = self.sampled[t_no][1]
        return ([0] if opts.rail_kd_has_embed else []) + list(inner) + (
            [teacher_layers] if opts.rail_kd_has_final else [])

    def student_taps(self, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.num_layers) for k in self.student_indices]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.teachers[t_no].num_layers) for k in self.teacher_indices(t_no, step)]

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0,
                   keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        s_reps = [x.mean(1) for x in hidden_states(s_out, self.student_taps(step))]          # [N, H_s] each
        t_reps = [x.mean(1) for x in hidden_states(t_out, self.teacher_taps(t_no, step))]    # [N, H_t] each
        join = (lambda xs: torch.cat(xs, -1)) if self.method_options.rail_kd_concatenated else (
            lambda xs: torch.stack(xs, 1))
        s_proj = project(self.s_fit_dense, join(s_reps))
        t_proj = project(self.t_fit_dense[t_no], join(t_reps))
        rows = self.method_options.rail_kd_inter_rate * normalized_squared_distance(s_proj, t_proj)
        loss = reduce_rows(rows, s_out, keep_batch, reduce="sum")
        return loss, {"inter/rail_kd": loss.detach().sum() if keep_batch else loss.detach()}

    def method_state(self) -> dict:
        return {"seed": self.seed, "sampled": {t: [p, list(layers)] for t, (p, layers) in self.sampled.items()}}

    def load_method_state(self, state: dict) -> None:
        if set(state) != {"seed", "sampled"}:
            raise ValueError(f"RAIL-KD method state needs keys seed, sampled; got {sorted(state)}")
        self.seed = int(state["seed"])
        self.sampled = {int(t): (int(p), [int(i) for i in layers]) for t, (p, layers) in state["sampled"].items()}


# --------------------------------------------------------------------------- MGSKD
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
    Loss: sum_i w_token*token_i + w_span*span_i + w_sample*sample_i.

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
        opts, config = self.method_options, glm_config_of(model)
        self.num_layers = config.num_layers
        if not opts.mgskd_wo_inter:
            require_teachers(self.name, self.teachers)
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
        teacher_layers = self.teachers[t_no].num_layers
        indices = stride_layers(self.num_layers, teacher_layers)[:-1] + [teacher_layers]
        return [hidden_tap(k, teacher_layers) for k in indices]

    def spans(self, seq_length: int, step: StepInfo, t_no: int) -> List[int]:
        seed = (self.seed * 1_000_003 + step.iteration * 1009 + step.repeat_index * 31 + t_no) % 2 ** 62
        return span_lengths(seq_length, self.method_options.mgskd_span_max_rate,
                            torch.Generator().manual_seed(seed))

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0,
                   keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        opts = self.method_options
        if opts.mgskd_wo_inter:
            return disabled(s_out, keep_batch)
        s_reps = hidden_states(s_out, self.student_taps(step)[:-1])
        t_reps = hidden_states(t_out, self.teacher_taps(t_no, step))
        mask = non_pad_mask(s_out.taps["position_ids"])
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
        rows = sum(weights[k] * v for k, v in terms.items() if torch.is_tensor(v))
        metrics = {f"inter/mgskd_{k}": v.detach().mean() for k, v in terms.items() if torch.is_tensor(v)}
        return reduce_rows(rows, s_out, keep_batch), metrics

    def method_state(self) -> dict:
        return {"seed": self.seed}

    def load_method_state(self, state: dict) -> None:
        if set(state) != {"seed"}:
            raise ValueError(f"MGSKD method state needs the key seed; got {sorted(state)}")
        self.seed = int(state["seed"])


# --------------------------------------------------------------------------- CKD
@dataclass(frozen=True)
class CKDOptions:
    """ckd_window_size: tokens (odd) around each token for the word-relation angles; the four
    weights of word-relation (WR) / layer-transforming-relation (LTR) distance and angle."""
    ckd_window_size: int = option(21, "Window of tokens of the word-relation angle loss.")
    ckd_wrdist_w: float = option(1.0, "Weight of the word-relation distance loss.")
    ckd_ltrdist_w: float = option(1.0, "Weight of the layer-transforming-relation distance loss.")
    ckd_wrangle_w: float = option(10.0, "Weight of the word-relation angle loss.")
    ckd_ltrangle_w: float = option(10.0, "Weight of the layer-transforming-relation angle loss.")

    def __post_init__(self):
        if self.ckd_window_size < 1 or self.ckd_window_size % 2 == 0:
            raise ValueError(f"ckd_window_size must be a positive odd number, got {self.ckd_window_size}")


@register_student
class CKD(GLMStudent):
    """CKD (Park et al. 2021, "Distilling Linguistic Context for Language Model Compression").

    Student representations 0..L_s and the teacher's uniformly mapped ones, stacked to
    [N, L_s+1, S, H]; loss = w_wrdist*WR-dist + w_wrangle*WR-angle + w_ltrdist*LTR-dist +
    w_ltrangle*LTR-angle (see `losses_relations`), each a batch-wide sum over the non-pad
    tokens divided by the original's count. Widths may differ (relations only).

    Fixed: a row with no kept pair (a fully padded row has only its column 0)
    gave NaN on modern torch through a softmax over all -inf; excluded entries are now masked
    explicitly and such rows add 0, which is what torch 1.9 computed, so the numbers are
    unchanged. The angle terms are computed from Gram matrices (memory ~S*w^2 instead of
    S*w*H); differences below fp32 Gram resolution count as zero vectors.
    """
    name = "ckd"
    options_class = CKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        require_teachers(self.name, self.teachers)
        self.num_layers = glm_config_of(model).num_layers

    def student_taps(self, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.num_layers) for k in range(self.num_layers + 1)] + ["position_ids"]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        teacher_layers = self.teachers[t_no].num_layers
        return [hidden_tap(k, teacher_layers) for k in uniform_layers(self.num_layers, teacher_layers)]

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0,
                   keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        opts = self.method_options
        student = torch.stack(hidden_states(s_out, self.student_taps(step)[:-1]), dim=1)    # [N, L, S, H_s]
        teacher = torch.stack(hidden_states(t_out, self.teacher_taps(t_no, step)), dim=1)   # [N, L, S, H_t]
        mask = non_pad_mask(s_out.taps["position_ids"])
        terms = {"wrdist": opts.ckd_wrdist_w * ckd_wr_dist(student, teacher, mask),
                 "wrangle": opts.ckd_wrangle_w * ckd_wr_angle(student, teacher, mask, opts.ckd_window_size),
                 "ltrdist": opts.ckd_ltrdist_w * ckd_ltr_dist(student, teacher, mask),
                 "ltrangle": opts.ckd_ltrangle_w * ckd_ltr_angle(student, teacher, mask)}
        metrics = {f"inter/ckd_{k}": v.detach().mean() for k, v in terms.items()}
        return reduce_rows(sum(terms.values()), s_out, keep_batch), metrics


# --------------------------------------------------------------------------- ALP-KD
@dataclass(frozen=True)
class ALPKDOptions:
    """alp_kd_lambda: weight of the attention-based layer-projection loss."""
    alp_kd_lambda: float = option(0.2, "Weight of the ALP loss; parsed but unused in the original.")

    def __post_init__(self):
        if not math.isfinite(self.alp_kd_lambda):
            raise ValueError(f"alp_kd_lambda must be finite, got {self.alp_kd_lambda}")


@register_student
class ALPKD(GLMStudent):
    """ALP-KD (Passban et al. 2021, "ALP-KD: Attention-Based Layer Projection for Knowledge
    Distillation").

    [CLS] vectors of student representations 1..L_s and teacher representations 1..L_t;
    alpha = softmax(S T^T) over the teacher layers per sample, target tau_i = sum_j alpha_ij
    T_j, loss = lambda * sum_i MSE(S_i, tau_i). Equal student and teacher widths.

    Differs from the original, changing numbers unless --alp_kd_lambda=1: the original parsed
    lambda but never used it (the loss had weight 1); it is applied here, its evident meaning
    (the recipe's 0.7 soft / 0.1 hard / 0.2 lambda weights sum to 1).
    """
    name = "alp_kd"
    options_class = ALPKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        require_teachers(self.name, self.teachers)
        config = glm_config_of(model)
        self.num_layers = config.num_layers
        for t_no, teacher in enumerate(self.teachers):
            if teacher.hidden_size != config.hidden_size:
                raise ValueError(f"ALP-KD needs equal widths: student {config.hidden_size}, teacher {t_no} "
                                 f"{teacher.hidden_size}")

    def student_taps(self, step: StepInfo) -> List[str]:
        return [hidden_tap(k, self.num_layers) for k in range(1, self.num_layers + 1)]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        teacher_layers = self.teachers[t_no].num_layers
        return [hidden_tap(k, teacher_layers) for k in range(1, teacher_layers + 1)]

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0,
                   keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        student = torch.stack([x[:, 0] for x in hidden_states(s_out, self.student_taps(step))], 1)   # [N, L_s, H]
        teacher = torch.stack([x[:, 0] for x in hidden_states(t_out, self.teacher_taps(t_no, step))], 1)
        rows = self.method_options.alp_kd_lambda * alp_kd_loss(student, teacher)
        loss = reduce_rows(rows, s_out, keep_batch)
        return loss, {"inter/alp_kd": loss.detach().mean()}


# --------------------------------------------------------------------------- Universal-KD
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


@register_student
class UniversalKD(GLMStudent):
    """Universal-KD (Wu et al. 2021, "Universal-KD: Attention-based Output-Grounded Intermediate
    Layer Knowledge Distillation").

    Student representations 1..L_s-1 and teacher representations 1..L_t-1 (the outputs only
    with --universal_kd_cg), pooled ([CLS] or the sequence mean, padding included as the
    original), each projected by its own bias-free layer to size U; alpha = softmax(S T^T)
    over the teacher layers, tau_i = sum_j alpha_ij T_j, loss = gamma * sum_i KL(softmax(tau_i)
    || softmax(S_i)) over the features, averaged over rows. The teacher projections are trained
    too (through tau). Same numbers as the original.
    """
    name = "universal_kd"
    options_class = UniversalKDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        require_teachers(self.name, self.teachers)
        opts, config = self.method_options, glm_config_of(model)
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
        return self._taps(self.teachers[t_no].num_layers)

    def _pooled(self, out: ModelOutput, names: List[str], layers: nn.ModuleList) -> Tensor:
        pool = (lambda x: x.mean(1)) if self.method_options.universal_kd_avg else (lambda x: x[:, 0])
        return torch.stack([project(layer, pool(x)) for layer, x in zip(layers, hidden_states(out, names), strict=True)], 1)

    def inter_loss(self, s_out, t_out, batch: DistillBatch, step: StepInfo, t_no: int = 0,
                   keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        opts = self.method_options
        if opts.universal_kd_wo_inter:
            return disabled(s_out, keep_batch)
        student = self._pooled(s_out, self.student_taps(step), self.s_fit_dense)                  # [N, L_s-1, U]
        teacher = self._pooled(t_out, self.teacher_taps(t_no, step), self.t_fit_dense[t_no])      # [N, L_t-1, U]
        rows = opts.universal_kd_gamma * universal_kd_loss(student, teacher)
        loss = reduce_rows(rows, s_out, keep_batch)
        return loss, {"inter/universal_kd": loss.detach().mean()}
