"""Methods driven by a schedule or by extra forward passes: DIITO, SID, Theseus, LRC-BERT and
MobileBERT. The math is in `losses_schedules.py`.

Schedule state (unlocked layer, random generators, interchange masks) is returned by
`method_state()` and restored by `load_method_state()`, so a resumed run continues exactly
(the original checkpointed none of it). Every random draw comes from a generator
the method owns, seeded identically on every rank, so model-parallel ranks agree.
"""
import warnings
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mpu
from model import GLMModel
from model.transformer import GLMTransformer
from mpu.mappings import group_size

from .distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from .layer_mapping import hidden_tap, uniform_layers
from .losses import zero_loss
from .losses_hidden import cosine_distance, head_parallel_mean, hidden_mse
from .losses_schedules import (alignment_points, attention_score_kl, consecutive_masks, cos_nce, interchange,
                               leading_masks, progressive_unlock_due, random_masks, theseus_keep_rate)
from .options import option


# --------------------------------------------------------------------------- shared helpers
def _find(module: nn.Module, kind: type) -> nn.Module:
    found = next((m for m in module.modules() if isinstance(m, kind)), None)
    if found is None:
        raise TypeError(f"{type(module).__name__} contains no {kind.__name__}")
    return found


def _row_mask(batch: DistillBatch, num_rows: int, seq: int, device) -> Tensor:
    """Non-pad mask [N, S] of the model's rows (choice-expanded in cloze fine-tuning):
    position > 0, column 0 always kept. All True without position ids."""
    if batch.position_ids is None:
        return torch.ones(num_rows, seq, dtype=torch.bool, device=device)
    positions = batch.position_ids
    block = positions.dim() >= 3 and positions.size(-2) == 2
    positions = positions.reshape(-1, 2, seq)[:, 0] if block else positions.reshape(-1, seq)   # [N, S]
    if positions.size(0) != num_rows:
        raise ValueError(f"position ids describe {positions.size(0)} rows, the taps {num_rows}")
    mask = positions > 0
    mask[:, 0] = True
    return mask.to(device)


def _per_sample(values: Tensor, batch: DistillBatch) -> Tensor:
    """[N] row values -> [B] per sample: choice rows [B*C] are averaged per sample."""
    if batch.labels is not None and batch.labels.dim() == 1 and values.size(0) != batch.labels.size(0):
        return values.view(batch.labels.size(0), -1).mean(1)
    return values


def _batch(value: Tensor, batch: DistillBatch, keep_batch: bool) -> Tensor:
    """A reduced loss: the scalar as is, or [N] row values -> [B] per sample with keep_batch."""
    return _per_sample(value, batch) if keep_batch else value


def _zero(s_out, batch: DistillBatch, keep_batch: bool) -> Tensor:
    size = batch.labels.size(0) if batch.labels is not None else s_out.logits.size(0)
    return zero_loss(s_out.logits, (size,) if keep_batch else ())


def _attention_pairs(num_layers: int, teacher_layers: int, count: int) -> List[Tuple[str, str]]:
    """Student layer l's scores <-> teacher layer map[l+1]-1 (uniform map), l < count."""
    mapping = uniform_layers(num_layers, teacher_layers)
    return [(f"layers.{layer}.attention_scores", f"layers.{mapping[layer + 1] - 1}.attention_scores")
            for layer in range(count)]


def _hidden_pairs(num_layers: int, teacher_layers: int, indices) -> List[Tuple[str, str]]:
    """Student representation k <-> teacher representation map[k] (uniform map)."""
    mapping = uniform_layers(num_layers, teacher_layers)
    return [(hidden_tap(k, num_layers), hidden_tap(mapping[k], teacher_layers)) for k in indices]


class _Unlocking:
    """Progressive layer unlocking (the original's `nextLockedLay`, from 1). `active` is the
    value this step's taps and losses use (taken at the step's first `student_taps`); the
    methods raise `next_locked` after a step's loss, for the steps that follow."""

    def __init__(self):
        self.next_locked = self.active = 1

    def begin_step(self) -> None:
        self.active = self.next_locked

    def state(self) -> dict:
        return {"next_locked_layer": self.next_locked}

    def load(self, state: dict, method: str) -> None:
        unknown = set(state) - {"next_locked_layer"}
        if unknown:
            raise ValueError(f"{method}: unknown method state keys {sorted(unknown)}")
        self.next_locked = self.active = int(state.get("next_locked_layer", 1))


def _generator_state(generator: torch.Generator, state: dict, method: str, known: set) -> None:
    unknown = set(state) - known
    if unknown:
        raise ValueError(f"{method}: unknown method state keys {sorted(unknown)}")
    if "rng" in state:
        generator.set_state(state["rng"])


# --------------------------------------------------------------------------- DIITO
@dataclass(frozen=True)
class DIITOOptions:
    diito_alignment: str = option(
        "full", "Alignment points of the interchange intervention.", choices=('full', 'middle', 'late'))
    diito_interchange_prop: float = option(0.3, "Fraction of tokens interchanged.")
    diito_interchange_way: str = option(
        "consecutive", "How the interchanged positions are chosen.", choices=('consecutive', 'masked', 'random'))
    diito_interchange_max_token: int = option(-1, "Maximum interchanged tokens; -1 means unlimited.")
    diito_alpha_mlm: float = option(1.0, "Weight of the hard MLM loss.")
    diito_alpha_ce: float = option(1.0, "Weight of the soft KL on the normal pass.")
    diito_alpha_causal_ce: float = option(1.0, "Weight of the soft KL on the interchanged pass.")
    diito_alpha_cos: float = option(1.0, "Weight of the cosine loss on the normal pass.")
    diito_alpha_causal_cos: float = option(1.0, "Weight of the cosine loss on the interchanged pass.")

    def __post_init__(self):
        if self.diito_alignment not in ("full", "middle", "late"):
            raise ValueError(f"diito_alignment={self.diito_alignment!r}; valid: full, middle, late")
        if self.diito_interchange_way not in ("consecutive", "masked", "random"):
            raise ValueError(f"diito_interchange_way={self.diito_interchange_way!r}; "
                             f"valid: consecutive, masked, random")
        if not 0.0 <= self.diito_interchange_prop <= 1.0:
            raise ValueError(f"diito_interchange_prop must lie in [0, 1], got {self.diito_interchange_prop}")


@register_student
class DIITO(GLMStudent):
    """DIITO (Wu et al. 2022, "Causal Distillation for Language Models").

    Pass 0 (`repeat_index` 0): hidden states at the alignment points are tapped on both sides,
    the interchange masks are drawn from the non-pad rows (every row's dual is the next row),
    and the loss is a_cos * COS(output) + pre_loss(soft rate a_ce, hard rate a_mlm). Pass >= 1
    (`--forward_repeat_num=1`): interventions write the dual rows' pass-0 states into the masked
    positions of both models (`interchange`); loss a_causal_cos * COS(output) +
    pre_loss(soft rate a_causal_ce, no hard term). The student's dual states keep their pass-0
    graph, hence no activation checkpointing. `full` alignment: a random student
    representation l in [1, L_s] <-> teacher representations ((l-1)k, lk], k = L_t // L_s.

    `masked` interchange: the first min(count_i, count_dual) predicted (loss-mask) positions
    of each (the original does not handle unequal counts). Fixed (the same construction
    as DistilBERT's cosine): padded rows add 0 to the cosine mean instead of 1 (the value drops
    by the padded fraction; gradients unchanged).
    """
    name = "diito"
    options_class = DIITOOptions
    supports_activation_checkpointing = False
    SEED = 2022

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        o = self.method_options
        self._pass_options = (replace(options, distill_soft_rate=o.diito_alpha_ce, distill_hard_rate=o.diito_alpha_mlm),
                              replace(options, distill_soft_rate=o.diito_alpha_causal_ce, distill_hard_rate=0.0))
        self._num_layers = _find(model, GLMModel).config.num_layers
        self._generator = torch.Generator().manual_seed(self.SEED)
        self._repeat_index = 0
        self._points: Optional[Tuple[List[str], List[List[str]]]] = None
        self._masks: Optional[Tuple[Tensor, Tensor]] = None
        self._duals: Dict[object, Dict[str, Tensor]] = {}

    def _alignment(self) -> Tuple[List[str], List[List[str]]]:
        """(student taps, teacher taps per teacher) of this step's alignment points."""
        how, num_layers = self.method_options.diito_alignment, self._num_layers
        level = 1 + int(torch.randint(num_layers, (1,), generator=self._generator)) if how == "full" else 1
        student, teachers = [], []
        for info in self.teachers:
            student, indices = alignment_points(how, num_layers, info.num_layers, level)
            teachers.append([hidden_tap(i, info.num_layers) for i in indices])
        return [hidden_tap(i, num_layers) for i in student], teachers

    def _with_cos(self, taps: Sequence[str], weight: float) -> List[str]:
        return list(dict.fromkeys([*taps, *(["output"] if weight > 0 else [])]))

    def student_taps(self, step: StepInfo) -> List[str]:
        self._repeat_index = step.repeat_index
        if step.repeat_index == 0:
            self._points, self._masks, self._duals = self._alignment(), None, {}
            return self._with_cos(self._points[0], self.method_options.diito_alpha_cos)
        return self._with_cos([], self.method_options.diito_alpha_causal_cos)

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        if step.repeat_index == 0:
            return self._with_cos(self._points[1][t_no], self.method_options.diito_alpha_cos)
        return self._with_cos([], self.method_options.diito_alpha_causal_cos)

    def _swaps(self, key) -> Dict[str, object]:
        if self._masks is None or key not in self._duals:
            return {}
        mask, dual_mask = self._masks

        def swap(value: Tensor, dual: Tensor) -> Tensor:
            return interchange(value, dual, mask.to(value.device), dual_mask.to(value.device))
        return {tap: (lambda value, dual=dual: swap(value, dual)) for tap, dual in self._duals[key].items()}

    def student_interventions(self, step: StepInfo) -> Dict[str, object]:
        return self._swaps("student") if step.repeat_index >= 1 else {}

    def teacher_interventions(self, t_no: int, step: StepInfo) -> Dict[str, object]:
        return self._swaps(t_no) if step.repeat_index >= 1 else {}

    def _draw_masks(self, non_pad: Tensor, batch: DistillBatch) -> Tuple[Tensor, Tensor]:
        o, candidates = self.method_options, non_pad.cpu()
        if o.diito_interchange_way == "masked":
            if batch.loss_mask is not None:
                candidates = batch.loss_mask.reshape(non_pad.shape).cpu() > 0
            return leading_masks(candidates, candidates.roll(-1, 0), o.diito_interchange_max_token)
        draw = consecutive_masks if o.diito_interchange_way == "consecutive" else random_masks
        return draw(candidates, candidates.roll(-1, 0), o.diito_interchange_prop, o.diito_interchange_max_token,
                    self._generator)

    def inter_loss(self, s_out, t_out, batch, step, t_no=0, keep_batch=False) -> Tuple[Tensor, Metrics]:
        o, first = self.method_options, step.repeat_index == 0
        if first and step.training:
            if t_no == 0:
                any_tap = s_out.taps[self._points[0][0]]
                self._masks = self._draw_masks(_row_mask(batch, *any_tap.shape[:2], any_tap.device), batch)
                self._duals["student"] = {tap: s_out.taps[tap].roll(-1, 0) for tap in self._points[0]}
            self._duals[t_no] = {tap: t_out.taps[tap].roll(-1, 0) for tap in self._points[1][t_no]}
        weight = o.diito_alpha_cos if first else o.diito_alpha_causal_cos
        if weight <= 0:
            return _zero(s_out, batch, keep_batch), {}
        s_output, t_output = s_out.taps["output"], t_out.taps["output"]
        mask = _row_mask(batch, *s_output.shape[:2], s_output.device)
        loss = weight * _batch(cosine_distance(s_output, t_output, mask=mask, keep_batch=keep_batch), batch, keep_batch)
        return loss, {"inter/cos" if first else "inter/causal_cos": loss.detach().mean()}

    def pre_loss(self, *args, **kwargs) -> Tuple[Tensor, Metrics]:
        """The generic pre-loss with this pass's rates (pass 0: a_ce / a_mlm; later: a_causal_ce / 0)."""
        saved, self.options = self.options, self._pass_options[min(self._repeat_index, 1)]
        try:
            return super().pre_loss(*args, **kwargs)
        finally:
            self.options = saved

    def method_state(self) -> dict:
        return {"rng": self._generator.get_state(), "points": self._points, "masks": self._masks}

    def load_method_state(self, state: dict) -> None:
        _generator_state(self._generator, state, self.name, {"rng", "points", "masks"})
        self._points, self._masks = state.get("points"), state.get("masks")


# --------------------------------------------------------------------------- SID
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
    (evaluated after each training step's loss; any other `sid_lim_e` disables the latter).
    Needs equal hidden sizes and head counts. Fixed: n is checkpointed, attention KL
    per head at MP > 1.
    """
    name = "sid"
    options_class = SIDOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self._num_layers = _find(model, GLMModel).config.num_layers
        self.unlocking = _Unlocking()

    def _pairs(self, t_no: int):
        count = self.unlocking.active
        if count > self._num_layers:
            return [], []
        depth = self.teachers[t_no].num_layers
        return (_attention_pairs(self._num_layers, depth, count),
                _hidden_pairs(self._num_layers, depth, range(1, count + 1)))

    def student_taps(self, step: StepInfo) -> List[str]:
        if step.repeat_index == 0:
            self.unlocking.begin_step()
        attention, hidden = self._pairs(0)
        return [s for s, _ in attention + hidden]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        attention, hidden = self._pairs(t_no)
        return [t for _, t in attention + hidden]

    def inter_loss(self, s_out, t_out, batch, step, t_no=0, keep_batch=False) -> Tuple[Tensor, Metrics]:
        attention, hidden = self._pairs(t_no)
        if not hidden:
            return _zero(s_out, batch, keep_batch), {}
        kl = sum(_batch(head_parallel_mean(attention_score_kl(s_out.taps[s], t_out.taps[t]), keep_batch), batch,
                        keep_batch) for s, t in attention)
        cos = sum(_batch(cosine_distance(s_out.taps[s][:, 0], t_out.taps[t][:, 0], keep_batch=keep_batch), batch,
                         keep_batch) for s, t in hidden)                                   # [CLS] rows
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

    def pre_loss(self, s_logits, t_logits, hard_loss, batch, t_no=0, keep_batch=False, mse_t_w=1.0):
        if self.unlocking.active <= self._num_layers:
            return zero_loss(s_logits, (s_logits.size(0),) if keep_batch else ()), {}
        return super().pre_loss(s_logits, t_logits, hard_loss, batch, t_no, keep_batch, mse_t_w)

    def method_state(self) -> dict:
        return self.unlocking.state()

    def load_method_state(self, state: dict) -> None:
        self.unlocking.load(state, self.name)


# --------------------------------------------------------------------------- Theseus
@dataclass(frozen=True)
class TheseusOptions:
    theseus_replacing_rate: float = option(0.3, "Initial probability of keeping a student layer.")
    theseus_not_replaced_steps: float = option(0.66, "Fraction of training after which only student layers are used.")

    def __post_init__(self):
        if not 0.0 <= self.theseus_replacing_rate <= 1.0:
            raise ValueError(f"theseus_replacing_rate must lie in [0, 1], got {self.theseus_replacing_rate}")
        if not self.theseus_not_replaced_steps > 0.0:
            raise ValueError(f"theseus_not_replaced_steps must be positive, got {self.theseus_not_replaced_steps}")


class _FrozenLayer:
    """Runs a teacher layer inside the student's forward with detached parameters (so they
    never receive .grad) and in the teacher's dtype; gradients still flow through it."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, hidden: Tensor, mask: Tensor, taps) -> Tensor:
        params = {name: p.detach() for name, p in self.layer.named_parameters()}
        dtype = next(iter(params.values())).dtype
        out = torch.func.functional_call(self.layer, params, (hidden.to(dtype), mask, taps))
        return out.to(hidden.dtype)


@register_student
class Theseus(GLMStudent):
    """BERT-of-Theseus (Xu et al. 2020, "BERT-of-Theseus: Compressing BERT by Progressive Module
    Replacing").

    Each training forward keeps student layer i with probability r = r0 + it / (T k) (1 - r0)
    (capped at 1), else runs teacher block i (the uniform map's i-th segment of a uniformly
    chosen teacher) in its place, through the `layers` intervention. Loss: the generic
    pre-loss (the recipe: hard only). Needs equal hidden sizes (the recipe initialises the
    student from the teacher's bottom layers, `--student_truncate_tn=0`). Teacher blocks run in
    their eval mode with detached parameters: they get no .grad (the original let them
    accumulate it). The original's "keep at least one student layer" loop had no effect (its
    draws landed past L_s); here it works: when every layer is replaced, one uniformly drawn
    student layer is kept (this changes the sampled architectures in about (1 - r)^L_s of the
    steps). Not ported: the `--distill_test_output` debug routine.
    """
    name = "theseus"
    options_class = TheseusOptions
    SEED = 2020

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self._config = _find(model, GLMModel).config
        self._generator = torch.Generator().manual_seed(self.SEED)
        self._blocks: List[List[List[_FrozenLayer]]] = []
        self._blocks_of: Tuple[int, ...] = ()
        self.keep_rate = float(self.method_options.theseus_replacing_rate)

    def _teacher_blocks(self) -> List[List[List[_FrozenLayer]]]:
        """blocks[t][i]: teacher t's layers replacing student layer i (built once per binding)."""
        bound = tuple(id(module) for module in self.teacher_modules)
        if self._blocks_of != bound:
            self._blocks, self._blocks_of = [], bound
            for module in self.teacher_modules:
                transformer = _find(module, GLMTransformer)
                if transformer.config.hidden_size != self._config.hidden_size:
                    raise ValueError(f"theseus needs equal hidden sizes: teacher {transformer.config.hidden_size}, "
                                     f"student {self._config.hidden_size}")
                layers = transformer.layer_sequence()
                bounds = uniform_layers(self._config.num_layers, len(layers))
                self._blocks.append([[_FrozenLayer(layer) for layer in layers[begin:end]]
                                     for begin, end in zip(bounds, bounds[1:])])
        return self._blocks

    def replacement(self, step: StepInfo) -> Tuple[Tensor, Tensor]:
        """(keep [L_s] bool, teacher index [L_s]) drawn for this forward."""
        o, num_layers = self.method_options, self._config.num_layers
        self.keep_rate = theseus_keep_rate(step.iteration, step.train_iters, o.theseus_replacing_rate,
                                           o.theseus_not_replaced_steps)
        keep = torch.rand(num_layers, generator=self._generator) < self.keep_rate
        rescue = torch.randint(num_layers, (1,), generator=self._generator)
        teacher = torch.randint(max(len(self.teacher_modules), 1), (num_layers,), generator=self._generator)
        if not keep.any():
            keep[rescue] = True
        return keep, teacher

    def student_interventions(self, step: StepInfo) -> Dict[str, object]:
        if not step.training or not self.teacher_modules:
            return {}
        keep, teacher = self.replacement(step)
        blocks = self._teacher_blocks()

        def mixed(layers):
            return [m for i, layer in enumerate(layers)
                    for m in ([layer] if keep[i] else blocks[int(teacher[i])][i])]
        return {"layers": mixed}

    def pre_loss(self, *args, **kwargs) -> Tuple[Tensor, Metrics]:
        """The generic pre-loss, plus this step's keep rate as a metric (the recipe disables the
        teacher's forward, so `inter_loss` is not called)."""
        loss, metrics = super().pre_loss(*args, **kwargs)
        return loss, {**metrics, "theseus/keep_rate": torch.tensor(self.keep_rate)}

    def method_state(self) -> dict:
        return {"rng": self._generator.get_state()}

    def load_method_state(self, state: dict) -> None:
        _generator_state(self._generator, state, self.name, {"rng"})


# --------------------------------------------------------------------------- LRC-BERT
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
    mean_i COS-NCE_i * L_s * alpha with the other rows of the batch as negatives (all
    data-parallel ranks' teacher rows with `lrc_bert_gather_dp`; each rank scores its own rows,
    so the data-parallel mean is the global-batch loss with the exact gradient). Gradient
    perturbation (`lrc_bert_gard_perturb`, with `--forward_repeat_num=1
    --ignore_first_backward_gard`): pass 0 hooks the gradient g of the `embeddings` tap; pass 1
    adds normalize(g, dim=-1) to the embeddings unless g holds inf/NaN.
    Fixed: the negatives' sum leaves out g_ii once, not B times, so the positive
    distance g_ii weighs 1 instead of 1.5: each row's value drops by g_ii / 2 (and its gradient).
    """
    name = "lrc_bert"
    options_class = LRCBertOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        if not self.teachers:
            raise ValueError("lrc_bert needs the teachers' TeacherInfo (their widths size s_fit_dense)")
        config = _find(model, GLMModel).config
        self._num_layers = config.num_layers
        self.s_fit_dense = nn.ModuleList(mpu.ColumnParallelLinear(config.hidden_size, info.hidden_size, bias=False)
                                         for info in self.teachers)
        self._gradient: Optional[Tensor] = None
        self._warned = False

    def _pairs(self, t_no: int) -> List[Tuple[str, str]]:
        return _hidden_pairs(self._num_layers, self.teachers[t_no].num_layers, range(1, self._num_layers + 1))

    def _perturbing(self, step: StepInfo) -> bool:
        return self.method_options.lrc_bert_gard_perturb and step.training

    def student_taps(self, step: StepInfo) -> List[str]:
        taps = [s for s, _ in self._pairs(0)]
        if step.repeat_index == 0:
            self._gradient = None
            if self._perturbing(step):
                taps.append("embeddings")
        return taps

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [t for _, t in self._pairs(t_no)]

    def student_interventions(self, step: StepInfo) -> Dict[str, object]:
        if not (self._perturbing(step) and step.repeat_index >= 1):
            return {}
        gradient = self._gradient
        if gradient is None:
            if not self._warned:
                warnings.warn("lrc_bert: no embedding gradient from pass 0; the perturbation needs "
                              "--forward_repeat_num=1 --ignore_first_backward_gard", stacklevel=2)
                self._warned = True
            return {}
        if not torch.isfinite(gradient).all():
            return {}
        delta = F.normalize(gradient.float(), dim=-1)
        return {"embeddings": lambda embeddings: embeddings + delta.to(embeddings.dtype)}

    def _store_gradient(self, gradient: Tensor) -> None:
        self._gradient = gradient.detach().clone()

    def inter_loss(self, s_out, t_out, batch, step, t_no=0, keep_batch=False) -> Tuple[Tensor, Metrics]:
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
        loss = _per_sample(rows, batch) if keep_batch else rows.mean()
        return loss, {"inter/cos_nce": loss.detach().mean()}


# --------------------------------------------------------------------------- MobileBERT
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
    pre-loss (the recipe: MLM hard loss) is added, before that it is 0. n += 1 once iteration
    >= T / (L_s + 1) * n, with T = train_iters (the original preferred lr_decay_iters, which the
    trainer does not pass in). Needs equal hidden sizes and head counts (IB widths may differ).
    Fixed: n is checkpointed; attention KL per head at MP > 1.
    """
    name = "mobilebert"
    options_class = MobileBERTOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self._num_layers = _find(model, GLMModel).config.num_layers
        self.unlocking = _Unlocking()

    def _terms(self, t_no: int):
        """[(student tap, teacher tap, weight, is attention)] of this step."""
        n, num_layers, depth = self.unlocking.active, self._num_layers, self.teachers[t_no].num_layers
        last = min(n, num_layers)
        small = self.method_options.mobilebert_pkt_small_lr

        def weight(current: bool) -> float:
            return 1.0 if n > num_layers or current else small
        attention = [(s, t, weight(layer == n - 1), True)
                     for layer, (s, t) in enumerate(_attention_pairs(num_layers, depth, last))]
        hidden = [(s, t, weight(k == n), False)
                  for k, (s, t) in enumerate(_hidden_pairs(num_layers, depth, range(last + 1)))]
        return attention + hidden

    def student_taps(self, step: StepInfo) -> List[str]:
        if step.repeat_index == 0:
            self.unlocking.begin_step()
        return [s for s, _, _, _ in self._terms(0)]

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return [t for _, t, _, _ in self._terms(t_no)]

    def inter_loss(self, s_out, t_out, batch, step, t_no=0, keep_batch=False) -> Tuple[Tensor, Metrics]:
        att = hid = _zero(s_out, batch, keep_batch)
        for s, t, weight, is_attention in self._terms(t_no):
            if is_attention:
                value = head_parallel_mean(attention_score_kl(s_out.taps[s], t_out.taps[t]), keep_batch)
                att = att + weight * _batch(value, batch, keep_batch)
            else:
                value = hidden_mse(s_out.taps[s], t_out.taps[t], keep_batch=keep_batch)
                hid = hid + weight * _batch(value, batch, keep_batch)
        if step.training and t_no == 0 and step.repeat_index == 0:
            n = self.unlocking.next_locked
            if n <= self._num_layers and progressive_unlock_due(n, step.iteration, step.train_iters,
                                                                self._num_layers):
                self.unlocking.next_locked = n + 1
        kd_w = self.method_options.mobilebert_kd_w
        return kd_w * (att + hid), {"inter/att": kd_w * att.detach().mean(), "inter/hidden": kd_w * hid.detach().mean(),
                                    "mobilebert/unlocked": torch.tensor(float(self.unlocking.active))}

    def pre_loss(self, s_logits, t_logits, hard_loss, batch, t_no=0, keep_batch=False, mse_t_w=1.0):
        if self.unlocking.active <= self._num_layers:
            return zero_loss(s_logits, (s_logits.size(0),) if keep_batch else ()), {}
        return super().pre_loss(s_logits, t_logits, hard_loss, batch, t_no, keep_batch, mse_t_w)

    def method_state(self) -> dict:
        return self.unlocking.state()

    def load_method_state(self, state: dict) -> None:
        self.unlocking.load(state, self.name)
