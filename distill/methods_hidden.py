"""Hidden-state and attention methods: TinyBERT, MiniLMv2, MiniLM, DistilBERT, PKD.

Every method declares its taps per step, computes its losses with `distill.losses_hidden` and
returns `(loss, metrics)`. Taps are GLMModel names; in cloze fine-tuning they hold the
choice-expanded rows [B*C, ...], and `keep_batch` results are folded back to [B].
Hidden representation k is `hidden_tap(k, L)`: LN'd layer inputs, then `output`.
"""
import random
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

import mpu
from model import GLMConfig, ModelOutput, glm_config_of

from .distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, TeacherInfo, register_student
from .layer_mapping import hidden_tap, random_layers, stride_layers, uniform_layers
from .losses import custom_mean, soft_loss, zero_loss
from .losses_hidden import (attention_kl, attention_mse, cosine_distance, hidden_mse, patience_mse, relation_kl,
                            split_relation_heads)
from .options import option

TapPairs = List[Tuple[str, str]]   # (student tap, teacher tap)




def per_sample(loss: Tensor, s_out: ModelOutput, keep_batch: bool) -> Tensor:
    """A keep_batch loss over choice-expanded rows [B*C] -> [B] (mean over a sample's choices,
    which is the mean over all its elements: every row has the same size)."""
    batch_size = s_out.logits.size(0)
    if not keep_batch or loss.numel() == batch_size:
        return loss
    return loss.view(batch_size, -1).mean(dim=1)


def teacher_info(student: GLMStudent, t_no: int) -> TeacherInfo:
    """The TeacherInfo of teacher `t_no` (ValueError naming the method when it is missing)."""
    if not 0 <= t_no < len(student.teachers):
        raise ValueError(f"{student.name} needs the TeacherInfo of teacher {t_no}; it was built with "
                         f"{len(student.teachers)} teachers")
    return student.teachers[t_no]


def zero(s_out: ModelOutput, keep_batch: bool) -> Tensor:
    """A zero loss (scalar or [B]) attached to the student's graph."""
    logits = s_out.logits
    return zero_loss(logits, (logits.size(0),) if keep_batch else ())


def check_teachers(student: GLMStudent, config: GLMConfig, field: str, why: str) -> None:
    """Raise unless every teacher's `field` (num_attention_heads, hidden_size) equals the student's."""
    for t_no, teacher in enumerate(student.teachers):
        if getattr(teacher, field) != getattr(config, field):
            raise ValueError(f"{student.name}: {why} needs equal {field}; the student has {getattr(config, field)}, "
                             f"teacher {t_no} {getattr(teacher, field)}")


# --------------------------------------------------------------------------- TinyBERT
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

    Loss per teacher: sum_l MSE(A^s_l, A^t_{map(l+1)-1}) over attention scores
    [B, nh/p, S, S] + sum_k MSE(fit(h^s_k), h^t_{map(k)}) over hidden representations
    k = 0..L_s, map = `uniform_layers` (or, with random layers, the embedding and the final
    state fixed and L_s - 1 sampled teacher layers). `fit_dense_{t}` is a ColumnParallelLinear
    (H_s -> H_t of teacher t, gathered output), one per teacher.

    Differences from the original (numbers unchanged at MP=1): the projection is always
    per teacher and column-parallel, applied inside `inter_loss` instead of rewriting the
    captured tensors in `forward`; the random layers of a sampling period are drawn from a
    generator seeded by (teacher, period), so they are a function of the step and resume
    needs no saved state (the original drew from the global Python `random`, seeded by --seed).
    """
    name = "tinybert"
    options_class = TinyBERTOptions

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.student_config = glm_config_of(model)
        if not self.method_options.tinybert_wo_inter:
            for t_no, teacher in enumerate(self.teachers):
                self.add_module(f"fit_dense_{t_no}", mpu.ColumnParallelLinear(
                    self.student_config.hidden_size, teacher.hidden_size, gather_output=True))
        if self.method_options.matches_attention:
            check_teachers(self, self.student_config, "num_attention_heads", "the attention-score MSE")
        self._shown_period: Dict[int, int] = {}

    def layer_map(self, t_no: int, step: StepInfo) -> List[int]:
        """Teacher representation index for each student representation 0..L_s."""
        options, num_layers = self.method_options, teacher_info(self, t_no).num_layers
        if not options.tinybert_random_layers:
            return uniform_layers(self.student_config.num_layers, num_layers)
        period = options.period(step)
        layers = random_layers(self.student_config.num_layers, num_layers, random.Random(f"tinybert:{t_no}:{period}"))
        if options.tinybert_random_show and self._shown_period.get(t_no) != period:
            self._shown_period[t_no] = period
            print(f"tinybert: teacher {t_no} sampling period {period}: teacher layers {layers}", flush=True)
        return layers

    def tap_pairs(self, t_no: int, step: StepInfo) -> Tuple[TapPairs, TapPairs]:
        """(hidden pairs, attention pairs) of (student tap, teacher tap)."""
        options = self.method_options
        if options.tinybert_wo_inter:
            return [], []
        s_layers, t_layers = self.student_config.num_layers, teacher_info(self, t_no).num_layers
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
                   t_no: int = 0, keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        hidden_pairs, attention_pairs = self.tap_pairs(t_no, step)
        total, metrics = zero(s_out, keep_batch), {}
        if attention_pairs:
            att = sum(attention_mse(s_out.taps[s], t_out.taps[t], keep_batch=keep_batch) for s, t in attention_pairs)
            att = per_sample(att, s_out, keep_batch)
            total, metrics["inter/att"] = total + att, att.detach().mean()
        if hidden_pairs:
            fit = getattr(self, f"fit_dense_{t_no}")
            hid = sum(hidden_mse(fit(s_out.taps[s]), t_out.taps[t], keep_batch=keep_batch) for s, t in hidden_pairs)
            hid = per_sample(hid, s_out, keep_batch)
            total, metrics["inter/hidden"] = total + hid, hid.detach().mean()
        return total, metrics


# --------------------------------------------------------------------------- MiniLMv2
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

    Loss per teacher: sum over X in {Q, K, V} of the mean over [B, R, S] rows of
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
        self.student_config = glm_config_of(model)

    def teacher_layer(self, t_no: int) -> int:
        value, num_layers = self.method_options.minilmv2_teacher_layer, teacher_info(self, t_no).num_layers
        layer = value - 1 if value > 0 else num_layers + value
        if not 0 <= layer < num_layers:
            raise ValueError(f"minilmv2_teacher_layer={value} is outside teacher {t_no}'s {num_layers} layers")
        return layer

    def _taps(self, layer: int) -> List[str]:
        if self.method_options.minilmv2_wo_inter:
            return []
        return [f"layers.{layer}.mixed_{kind}_layer" for kind in self.KINDS]

    def student_taps(self, step: StepInfo) -> List[str]:
        return self._taps(self.student_config.num_layers - 1)

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return self._taps(self.teacher_layer(t_no))

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0, keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        total, metrics = zero(s_out, keep_batch), {}
        if self.method_options.minilmv2_wo_inter:
            return total, metrics
        heads = self.method_options.relation_heads(t_no)
        local_heads = mpu.divide(heads, mpu.get_model_parallel_world_size())
        pairs = zip(self.KINDS, self.student_taps(step), self.teacher_taps(t_no, step), strict=True)
        for kind, s_tap, t_tap in pairs:
            loss = relation_kl(split_relation_heads(s_out.taps[s_tap], local_heads),
                               split_relation_heads(t_out.taps[t_tap], local_heads), keep_batch=keep_batch)
            loss = per_sample(loss, s_out, keep_batch)
            total, metrics[f"inter/rel_{kind[0]}"] = total + loss, loss.detach().mean()
        return total, metrics


# --------------------------------------------------------------------------- MiniLM
@register_student
class MiniLM(GLMStudent):
    """MiniLM (Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
    Compression of Pre-Trained Transformers").

    Loss per teacher: mean over [B, nh, S] rows of KL(a_t || a_s) on the last layer's
    attention probabilities + the same KL on the value relations softmax(V V^T / sqrt(d_h)),
    per head (head counts must match). No flags.

    Fixed (numbers change): the original passed the attention *probabilities* to a KL that
    applies softmax, i.e. compared softmax(a_s) with softmax(a_t); here the probabilities are
    used directly, as in the paper. Heads are never mixed at MP > 1 (see MiniLMv2).
    """
    name = "minilm"

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.student_config = glm_config_of(model)
        check_teachers(self, self.student_config, "num_attention_heads", "the attention and value-relation KL")

    @staticmethod
    def _taps(layer: int) -> List[str]:
        return [f"layers.{layer}.attention_probs", f"layers.{layer}.value_layer"]

    def student_taps(self, step: StepInfo) -> List[str]:
        return self._taps(self.student_config.num_layers - 1)

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return self._taps(teacher_info(self, t_no).num_layers - 1)

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0, keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        (s_att, s_val), (t_att, t_val) = self.student_taps(step), self.teacher_taps(t_no, step)
        att = per_sample(attention_kl(s_out.taps[s_att], t_out.taps[t_att], keep_batch=keep_batch), s_out, keep_batch)
        val = per_sample(relation_kl(s_out.taps[s_val], t_out.taps[t_val], keep_batch=keep_batch), s_out, keep_batch)
        return att + val, {"inter/att": att.detach().mean(), "inter/value": val.detach().mean()}


# --------------------------------------------------------------------------- DistilBERT
@dataclass(frozen=True)
class DistilBERTOptions:
    """DistilBERT flags: the loss weights, the fixed-LayerNorm variant, and which
    tokens the cosine / the soft KL cover (the Part-B mask by default, non-pad tokens with
    the *_mask_padding switches)."""
    distilbert_alpha_ce: float = option(1.0, "Weight of the soft-logit KL.")
    distilbert_alpha_mlm: float = option(1.0, "Weight of the hard MLM loss.")
    distilbert_alpha_cos: float = option(1.0, "Weight of the cosine loss on the final hidden states.")
    distilbert_fix_layernorm: bool = option(False, "Match the last layer's tf_output through fixed LayerNorms.")
    distilbert_cos_mask_padding: bool = option(False, "Cosine loss over all non-pad tokens instead of the Part-B mask.")
    distilbert_ce_mask_padding: bool = option(
        False, "Soft-logit KL over all non-pad tokens instead of the Part-B mask.")


@register_student
class DistilBERT(GLMStudent):
    """DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT: smaller, faster,
    cheaper and lighter").

    inter_loss = alpha_cos * mean over [B*S] rows of (1 - cos(h_s, h_t)) on the final `output`
    (or, with `distilbert_fix_layernorm`, the last layer's `tf_output` through a trainable
    student LayerNorm and a frozen, fresh (affine-free) teacher LayerNorm); 0 without a loss
    mask (cloze fine-tuning) or when alpha_cos <= 0. pre_loss (replaces the base's) =
    alpha_ce * T^2 * KL(z_t/T || z_s/T) + alpha_mlm * L_hard. Needs H_s = H_t.

    Masks: the Part-B loss mask; the non-pad mask (`DistillBatch.non_pad_mask`, position
    ids > 0) with the *_mask_padding switches. The original wrote that mask as `labels > 0`
    (meaning the non-pad mask); here the targets are 0 outside Part B, so
    `labels > 0` would only repeat the loss mask.

    Fixed (numbers change, gradients do not): each masked row added a constant 1 to the
    original's cosine mean (zero vectors against zero vectors); here it adds 0, so the value is
    the original's minus alpha_cos * (masked rows) / (all rows).
    """
    name = "distilbert"
    options_class = DistilBERTOptions

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.student_config = glm_config_of(model)
        check_teachers(self, self.student_config, "hidden_size", "matching hidden states")
        if self.method_options.distilbert_fix_layernorm:
            config = self.student_config
            self.student_layernorm = mpu.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def _tap(self, num_layers: int) -> str:
        return f"layers.{num_layers - 1}.tf_output" if self.method_options.distilbert_fix_layernorm else "output"

    def student_taps(self, step: StepInfo) -> List[str]:
        return [self._tap(self.student_config.num_layers)]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [self._tap(teacher_info(self, t_no).num_layers)]

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0, keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        options = self.method_options
        if batch.loss_mask is None or options.distilbert_alpha_cos <= 0:
            return zero(s_out, keep_batch), {}
        student = s_out.taps[self.student_taps(step)[0]]
        teacher = t_out.taps[self.teacher_taps(t_no, step)[0]]
        if options.distilbert_fix_layernorm:
            student = self.student_layernorm(student)
            teacher = F.layer_norm(teacher.float(), (teacher.size(-1),), eps=self.student_config.layernorm_epsilon)
        mask = batch.non_pad_mask() if options.distilbert_cos_mask_padding else batch.loss_mask
        cos = options.distilbert_alpha_cos * cosine_distance(student, teacher, mask=mask, keep_batch=keep_batch)
        cos = per_sample(cos, s_out, keep_batch)
        return cos, {"inter/cos": cos.detach().mean()}

    def soft_mask(self, batch: DistillBatch) -> Optional[Tensor]:
        """The KL mask: none without token logits or with distill_wo_loss_mask, the non-pad
        mask with distilbert_ce_mask_padding, else the loss mask."""
        if not batch.token_level or self.options.distill_wo_loss_mask:
            return None
        if self.method_options.distilbert_ce_mask_padding:
            return batch.non_pad_mask()
        return batch.loss_mask

    def pre_loss(self, s_logits: Tensor, t_logits: Tensor, hard_loss: Tensor, batch: DistillBatch, t_no: int = 0,
                 keep_batch: bool = False, mse_t_w: float = 1.0) -> Tuple[Tensor, Metrics]:
        options, temperature = self.method_options, self.options.distill_temperature
        mask = self.soft_mask(batch)
        rows = soft_loss("kl", s_logits, t_logits, vocab_parallel=batch.token_level, temperature=temperature,
                         mask=mask)
        soft = options.distilbert_alpha_ce * temperature ** 2 * custom_mean(rows, mask, keep_batch)
        hard = options.distilbert_alpha_mlm * hard_loss.float()
        return soft + hard, {"kd/soft": soft.detach().mean(), "kd/hard": hard.detach().mean()}


# --------------------------------------------------------------------------- PKD
@dataclass(frozen=True)
class PKDOptions:
    """PKD flags: pre_loss = (1 - pkd_alpha) hard + pkd_alpha soft, plus
    pkd_beta * the patient loss on stride-mapped hidden states."""
    pkd_normalized_patience: bool = option(False, "L2-normalise the matched hidden states.")
    pkd_alpha: float = option(0.5, "Weight of the soft term; the hard term gets 1 - alpha.")
    pkd_beta: float = option(100.0, "Weight of the patient intermediate-layer loss.")
    pkd_use_embed: bool = option(False, "Include the embedding layer in the matched layers.")
    pkd_wo_final: bool = option(False, "Exclude the teacher's final output from the matched layers.")
    pkd_only_cls: bool = option(False, "Match only the [CLS] position.")


@register_student
class PKD(GLMStudent):
    """Patient KD (Sun et al. 2019, "Patient Knowledge Distillation for BERT Model Compression").

    inter_loss = beta * sum_k MSE(f(h^s_k), f(h^t_{k*stride})) for student representations
    k = 1..L_s-1 (0..L_s-1 with pkd_use_embed) plus `output` <-> `output` unless pkd_wo_final;
    stride = floor(L_t / L_s) (`stride_layers`); f = the [CLS] row (pkd_only_cls), then L2
    normalisation (pkd_normalized_patience). pre_loss = (1 - alpha) * hard + alpha * soft,
    each term enabled by the generic stage flags as in the base. Needs H_s = H_t.
    Same numbers as the original.
    """
    name = "pkd"
    options_class = PKDOptions

    def __init__(self, model: nn.Module, options, teachers: Sequence[TeacherInfo] = (), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self.student_config = glm_config_of(model)
        check_teachers(self, self.student_config, "hidden_size", "matching hidden states")

    def tap_pairs(self, t_no: int) -> TapPairs:
        options, s_layers = self.method_options, self.student_config.num_layers
        t_layers = teacher_info(self, t_no).num_layers
        mapping = stride_layers(s_layers, t_layers)
        first = 0 if options.pkd_use_embed else 1
        pairs = [(hidden_tap(k, s_layers), hidden_tap(mapping[k], t_layers)) for k in range(first, s_layers)]
        return pairs if options.pkd_wo_final else pairs + [("output", "output")]

    def student_taps(self, step: StepInfo) -> List[str]:
        return sorted({s for t_no in range(len(self.teachers)) for s, _ in self.tap_pairs(t_no)})

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [t for _, t in self.tap_pairs(t_no)]

    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0, keep_batch: bool = False) -> Tuple[Tensor, Metrics]:
        options, pairs = self.method_options, self.tap_pairs(t_no)
        if not pairs:
            return zero(s_out, keep_batch), {}
        loss = options.pkd_beta * sum(
            patience_mse(s_out.taps[s], t_out.taps[t], normalize=options.pkd_normalized_patience,
                         only_cls=options.pkd_only_cls, keep_batch=keep_batch) for s, t in pairs)
        loss = per_sample(loss, s_out, keep_batch)
        return loss, {"inter/patience": loss.detach().mean()}

    def pre_loss(self, s_logits: Tensor, t_logits: Tensor, hard_loss: Tensor, batch: DistillBatch, t_no: int = 0,
                 keep_batch: bool = False, mse_t_w: float = 1.0) -> Tuple[Tensor, Metrics]:
        options, alpha = self.options, self.method_options.pkd_alpha
        finetune = batch.finetune
        total = zero_loss(s_logits, (s_logits.size(0),) if keep_batch else ())
        metrics: Metrics = {}
        if (options.distill_ft_soft if finetune else options.distill_pt_soft) and options.distill_soft_rate:
            soft = alpha * options.distill_soft_rate * self._soft_term(s_logits, t_logits, batch, keep_batch, mse_t_w)
            total, metrics["kd/soft"] = total + soft, soft.detach().mean()
        if (options.distill_ft_hard if finetune else options.distill_pt_hard) and options.distill_hard_rate:
            hard = (1.0 - alpha) * options.distill_hard_rate * hard_loss.float()
            total, metrics["kd/hard"] = total + hard, hard.detach().mean()
        return total, metrics
