"""Combiners of per-teacher losses and their registry.

A combiner's `compute` calls `student.pre_loss` and `student.inter_loss` once per teacher
(each returns a per-sample loss [B]) and reduces them to the run's loss: AvgTeacher by the
mean, MT-BERT, Uncertainty and RL-KD with their per-sample weights. The registry maps `--multi_teacher_model` names to classes; every class
has a typed options dataclass (`options_class`, built from the flag values by
`options_from_flags`) and is built with `build_multi_teacher(name, options, distill_options,
context)`. A combiner is an `nn.Module`: a run attaches it to the student as
`multi_teacher_model`, so its parameters (MT-BERT's projections, RL-KD's agent) are trained,
saved under `student.multi_teacher_model.*` and resharded like any auxiliary layer; its state
between steps (RL-KD's previous state and action) goes into checkpoints through
`combiner_state()` / `load_combiner_state()`.

compute(student, s_out, s_hard_loss, t_outs, batch, step, t_hard_losses=(), generator=None,
        s_hard_per_sample=None) -> (loss, metrics)
    s_hard_loss: the student's hard loss (scalar); s_hard_per_sample: the same per sample [B];
    t_outs: one ModelOutput per teacher (None: disabled by --mt_disable_operation);
    t_hard_losses: per teacher (scalar, [B]) hard losses with --mt_has_loss, else None;
    generator: the step's random draws (the same state on every model-parallel rank).
"""
import math
from dataclasses import dataclass, field, fields
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn

from model import ModelOutput

from .distill_model import DistillBatch, DistillOptions, GLMStudent, Metrics, StepInfo, TeacherInfo
from .losses import zero_loss
from .options import option
from .registry import Registry

TeacherHardLoss = Optional[Tuple[Tensor, Tensor]]   # (scalar, per sample [B]) with --mt_has_loss


@dataclass(frozen=True)
class CombinerContext:
    """What combiners with parameters need at construction.

    num_classes: the full width of the logits (a task's classes or choices; the padded
    vocabulary when `token_level`, i.e. vocabulary-parallel token logits). rows_per_sample:
    rows of the taps per sample (C for multi-token cloze, whose choices are separate rows).
    teacher_hard_losses: the trainer computes each teacher's hard loss (--mt_has_loss).
    """
    student_hidden_size: int
    teachers: Tuple[TeacherInfo, ...]
    num_classes: int
    token_level: bool = False
    rows_per_sample: int = 1
    teacher_hard_losses: bool = False


def _options_from(cls_options: type, values: Mapping[str, object]):
    names = {f.name for f in fields(cls_options)}
    return cls_options(**{k: v for k, v in values.items() if k in names})


def _suffix(metrics: Metrics, t_no: int, several: bool) -> Metrics:
    return {f"{name}_t{t_no}" if several else name: value for name, value in metrics.items()}


def _teacher_terms(student: GLMStudent, s_out: ModelOutput, t_out: ModelOutput, hard: Tensor, batch: DistillBatch,
                   step: StepInfo, t_no: int) -> Tuple[Tensor, Tensor, Metrics]:
    """(pre_loss [B], inter_loss [B], their metrics) of the student against teacher `t_no`."""
    pre, pre_metrics = student.pre_loss(s_out.logits, t_out.logits, hard, batch, step, t_no=t_no)
    inter, inter_metrics = student.inter_loss(s_out, t_out, batch, step, t_no=t_no)
    return pre, inter, {**pre_metrics, **inter_metrics}


def _sample_mask(batch: DistillBatch, without_mask: bool, only_pad: bool) -> Optional[Tensor]:
    """The token mask [B, S] of an entropy or logit summary: none, the non-pad tokens, or the loss mask."""
    if without_mask or batch.loss_mask is None:
        return None
    if only_pad and batch.labels is not None and batch.labels.dim() > 1:
        return batch.labels > 0
    return batch.loss_mask


class Combiner(nn.Module):
    """Base of the combiners: options, the teacher-tap hook, state in checkpoints."""
    name = ""                 # the registry name, and the flag group of its options
    composes_others = False   # True: built of other combiners, so it takes their options too (MixMT)
    flag_prefix: Optional[str] = None   # the prefix of its options' names (default: name + "_")
    options_class: type = type(None)
    mixmt_name = ""           # the original's class name, as --mixmt_model lists it

    def __init__(self, options, distill_options: DistillOptions, context: Optional[CombinerContext] = None):
        super().__init__()
        self.options, self.distill_options, self.context = options, distill_options, context

    @classmethod
    def options_from_flags(cls, values: Mapping[str, object]):
        return _options_from(cls.options_class, values)

    @classmethod
    def method_teacher_infos(cls, options, infos: Sequence[TeacherInfo], student_hidden_size: int):
        """The teachers as the method sees them (MT-BERT may project them to the student's width)."""
        return tuple(infos)

    def teacher_taps(self, t_no: int, taps: Sequence[str]) -> List[str]:
        """The taps teacher `t_no` runs with, given the method's (the original's `hooks_process`)."""
        return list(taps)

    def combiner_state(self) -> dict:
        """State between steps (not parameters) for checkpoints."""
        return {}

    def load_combiner_state(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state between steps, got keys {sorted(state)}")

    def _require(self, what: str) -> CombinerContext:
        if self.context is None:
            raise ValueError(f"{type(self).__name__} needs a CombinerContext ({what})")
        return self.context

    def _check_outputs(self, t_outs: Sequence[Optional[ModelOutput]]) -> None:
        disabled = [i for i, t_out in enumerate(t_outs) if t_out is None]
        if disabled:
            raise ValueError(f"{self.mixmt_name} needs every teacher's output; teacher(s) {disabled} are disabled by "
                             f"--mt_disable_operation (only the avg combiner can skip teachers)")


# --------------------------------------------------------------------------- registry
MULTI_TEACHER_MODELS = Registry("--multi_teacher_model", Combiner)


def register_multi_teacher(*names: Optional[str]):
    """Class decorator: register a combiner (with `options_class` and `compute`) under `names`."""
    return MULTI_TEACHER_MODELS.register(*names)


def combiner_class(name: Optional[str]) -> Type[Combiner]:
    """A combiner by registry name (avg, mt_bert, ...) or the original's class name (MT_BERT, ...)."""
    if name in MULTI_TEACHER_MODELS:
        return MULTI_TEACHER_MODELS[name]
    by_class = {cls.mixmt_name: cls for cls in MULTI_TEACHER_MODELS.values()}
    if name in by_class:
        return by_class[name]
    valid = ", ".join(sorted(repr(key) for key in MULTI_TEACHER_MODELS) + sorted(by_class))
    raise KeyError(f"unknown multi-teacher model {name!r}; valid: {valid}")


def build_multi_teacher(name: Optional[str], options=None, distill_options: DistillOptions = DistillOptions(),
                        context: Optional[CombinerContext] = None) -> Combiner:
    """The combiner registered as `name` (None/"" = AvgTeacher). `options`: an instance of its
    `options_class`, a mapping of flag values, or None (the defaults). KeyError listing the
    valid names for unknown ones."""
    if name not in MULTI_TEACHER_MODELS:
        combiner_class(name)   # raises, listing the valid names
    cls = MULTI_TEACHER_MODELS[name]
    if options is None or isinstance(options, Mapping):
        options = cls.options_from_flags(options or {})
    if not isinstance(options, cls.options_class):
        raise TypeError(f"{cls.__name__} takes {cls.options_class.__name__}, got {type(options).__name__}")
    return cls(options, distill_options, context)


# --------------------------------------------------------------------------- AvgTeacher (avg, tmkd)
@dataclass(frozen=True)
class AvgTeacherOptions:
    """avgmt_teacher_survival_p: each teacher is kept with this probability per step (1: always).
    avgmt_sum_loss: sum the per-teacher losses instead of averaging them."""
    avgmt_teacher_survival_p: float = option(
        1.0, "Probability of keeping each teacher; below 1 also adds the hard term (DGKD).")
    avgmt_sum_loss: bool = option(False, "Sum the teachers' losses instead of averaging.")
    avgmt_inter_checkpoint: bool = option(False, "Parsed but unused in the original.", no_effect=True)
    avgmt_pre_checkpoint: bool = option(False, "Parsed but unused in the original.", no_effect=True)

    def __post_init__(self):
        p = self.avgmt_teacher_survival_p
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"avgmt_teacher_survival_p must lie in [0, 1], got {p}")


@register_multi_teacher(None, "", "avg", "tmkd")
class AvgTeacher(Combiner):
    """Average (or sum) of the per-teacher losses l_i = pre_loss_i + inter_loss_i (TMKD-like,
    Yang et al. 2020 "Model Compression with Two-stage Multi-teacher Knowledge Distillation").
    The default combiner, also for a single teacher, where it reduces to pre_loss + inter_loss.

    With survival p < 1, teacher i is skipped when u_i >= p, where u = torch.rand(N, generator)
    is drawn once per call for all N teachers (disabled ones included, so the draw does not
    depend on which are disabled), and distill_hard_rate * L_hard(student) is appended to the
    list. With model parallelism every rank of a model-parallel group must pass a generator in
    the same state (the vocabulary-parallel losses of a teacher are collectives). The result
    is the sum or the mean of the list. A disabled teacher (None in t_outs) adds nothing to
    the list, so the mean runs over the enabled, surviving teachers (plus the hard term);
    an empty list gives 0.
    """
    options_class = AvgTeacherOptions
    name, flag_prefix, mixmt_name = "avg", "avgmt_", "AvgTeacher"

    def survivors(self, num_teachers: int, generator: Optional[torch.Generator] = None) -> Sequence[bool]:
        """Which teachers take part in this step."""
        p = self.options.avgmt_teacher_survival_p
        if p >= 1.0:
            return [True] * num_teachers
        return (torch.rand(num_teachers, generator=generator) < p).tolist()

    def compute(self, student: GLMStudent, s_out: ModelOutput, s_hard_loss: Tensor,
                t_outs: Sequence[Optional[ModelOutput]], batch: DistillBatch, step: StepInfo,
                t_hard_losses: Sequence[TeacherHardLoss] = (), generator: Optional[torch.Generator] = None,
                s_hard_per_sample: Optional[Tensor] = None) -> Tuple[Tensor, Metrics]:
        """The combined loss (scalar fp32) and metrics: every term per teacher (suffix "_t{i}"
        when there are several teachers), "kd/teacher" (l_i), "kd/avg_hard" when p < 1, and
        "kd/total". `t_hard_losses` (the teachers' hard losses) is not used by this combiner."""
        if t_hard_losses and len(t_hard_losses) != len(t_outs):
            raise ValueError(f"{len(t_hard_losses)} teacher hard losses for {len(t_outs)} teachers")
        terms, metrics = [], {}
        for t_no, (t_out, alive) in enumerate(zip(t_outs, self.survivors(len(t_outs), generator))):
            if not alive:
                continue
            if t_out is None:   # disabled (--mt_disable_operation, e.g. Theseus): only the hard term
                pre, term_metrics = student.pre_loss(s_out.logits, None, s_hard_loss, batch, step, t_no=t_no)
                inter = zero_loss(s_out.logits)
            else:
                pre, inter, term_metrics = _teacher_terms(student, s_out, t_out, s_hard_loss, batch, step, t_no)
            terms.append((pre + inter).mean())
            metrics.update(_suffix({**term_metrics, "kd/teacher": terms[-1].detach()}, t_no, len(t_outs) > 1))
        if self.options.avgmt_teacher_survival_p < 1.0:
            terms.append(self.distill_options.distill_hard_rate * s_hard_loss.float())
            metrics["kd/avg_hard"] = terms[-1].detach()
        if not terms:
            total = zero_loss(s_out.logits)
        elif self.options.avgmt_sum_loss:
            total = sum(terms)
        else:
            total = sum(terms) / len(terms)
        metrics["kd/total"] = total.detach()
        return total, metrics


# --------------------------------------------------------------------------- MixMT
@dataclass(frozen=True)
class MixMTOptions:
    """mixmt_model: comma list of combiners (the original's class names AvgTeacher, MT_BERT,
    Uncertainty, RL_KD, or registry names); components: every other combiner's typed options
    ({class name: options}), built from the run's flags, for the components to take theirs."""
    mixmt_model: str = option("", "Comma list of combiner classes whose results are summed, e.g. AvgTeacher,MT_BERT.")
    components: Mapping[str, object] = field(default_factory=dict)

    def component_classes(self) -> List[Type[Combiner]]:
        names = [name.strip() for name in self.mixmt_model.split(",") if name.strip()]
        if not names:
            raise ValueError("mixmt needs --mixmt_model, a comma list such as AvgTeacher,MT_BERT")
        classes = [combiner_class(name) for name in names]
        for name, cls in zip(names, classes):
            if cls is MixMT:
                raise ValueError(f"--mixmt_model={self.mixmt_model}: {name} cannot be a component of itself")
        duplicates = {cls.mixmt_name for cls in classes if classes.count(cls) > 1}
        if duplicates:
            raise ValueError(f"--mixmt_model={self.mixmt_model} lists {sorted(duplicates)} more than once")
        return classes


@register_multi_teacher("mixmt")
class MixMT(Combiner):
    """MixMT: the sum of the listed combiners' losses (each with its own built-in terms, as in
    the original). Components are looked up in the registry (the original `eval`ed the
    names), are submodules named by class (`student.multi_teacher_model.MT_BERT.*`) and share
    the step's generator in the listed order; teacher taps are the union of the components'.
    Metrics: each component's under "<Class>/", its loss as "mixmt/<Class>"."""
    options_class = MixMTOptions
    name, mixmt_name = "mixmt", "MixMT"
    composes_others = True

    def __init__(self, options: MixMTOptions, distill_options: DistillOptions,
                 context: Optional[CombinerContext] = None):
        super().__init__(options, distill_options, context)
        self.names = []
        for cls in options.component_classes():
            component = cls(options.components[cls.mixmt_name], distill_options, context)
            self.add_module(cls.mixmt_name, component)
            self.names.append(cls.mixmt_name)

    @classmethod
    def options_from_flags(cls, values: Mapping[str, object]) -> MixMTOptions:
        components = {combiner.mixmt_name: combiner.options_from_flags(values)
                      for combiner in MULTI_TEACHER_MODELS.classes() if combiner is not cls}
        return MixMTOptions(mixmt_model=str(values.get("mixmt_model") or ""), components=components)

    @classmethod
    def method_teacher_infos(cls, options: MixMTOptions, infos: Sequence[TeacherInfo], student_hidden_size: int):
        """The components' common view; the teachers as they are when views differ (e.g. MT-BERT's
        projections next to a combiner that hands the method the raw outputs)."""
        views = {component.method_teacher_infos(options.components[component.mixmt_name], infos,
                                                student_hidden_size) for component in options.component_classes()}
        return views.pop() if len(views) == 1 else tuple(infos)

    def teacher_taps(self, t_no: int, taps: Sequence[str]) -> List[str]:
        merged: Dict[str, None] = {}
        for name in self.names:
            merged.update(dict.fromkeys(getattr(self, name).teacher_taps(t_no, taps)))
        return list(merged)

    def compute(self, student: GLMStudent, s_out: ModelOutput, s_hard_loss: Tensor,
                t_outs: Sequence[Optional[ModelOutput]], batch: DistillBatch, step: StepInfo,
                t_hard_losses: Sequence[TeacherHardLoss] = (), generator: Optional[torch.Generator] = None,
                s_hard_per_sample: Optional[Tensor] = None) -> Tuple[Tensor, Metrics]:
        total, metrics = zero_loss(s_out.logits), {}
        for name in self.names:
            loss, component_metrics = getattr(self, name).compute(
                student, s_out, s_hard_loss, t_outs, batch, step, t_hard_losses=t_hard_losses, generator=generator,
                s_hard_per_sample=s_hard_per_sample)
            total = total + loss
            metrics.update({f"{name}/{key}": value for key, value in component_metrics.items()})
            metrics[f"mixmt/{name}"] = loss.detach()
        metrics["kd/total"] = total.detach()
        return total, metrics

    def combiner_state(self) -> dict:
        return {name: getattr(self, name).combiner_state() for name in self.names}

    def load_combiner_state(self, state: dict) -> None:
        unknown = set(state) - set(self.names)
        if unknown:
            raise ValueError(f"mixmt: the checkpoint has state of {sorted(unknown)}, this run combines {self.names}")
        for name in self.names:
            getattr(self, name).load_combiner_state(state.get(name, {}))
