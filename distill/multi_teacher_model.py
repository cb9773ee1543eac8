"""Combiners of per-teacher losses (spec 2.8) and their registry.

A combiner's `compute` calls `student.pre_loss` and `student.inter_loss` once per teacher
and merges the results. The registry maps `--multi_teacher_model` names to classes; every
class has a typed options dataclass (`options_class`) and is built with
`build_multi_teacher(name, options, distill_options)`.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Type

import torch
from torch import Tensor, nn

from model import ModelOutput

from .distill_model import DistillBatch, DistillOptions, GLMStudent, Metrics, StepInfo
from .losses import zero_loss


@dataclass(frozen=True)
class AvgTeacherOptions:
    """avgmt_teacher_survival_p: each teacher is kept with this probability per step (1: always).
    avgmt_sum_loss: sum the per-teacher losses instead of averaging them."""
    avgmt_teacher_survival_p: float = 1.0
    avgmt_sum_loss: bool = False

    def __post_init__(self):
        p = self.avgmt_teacher_survival_p
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"avgmt_teacher_survival_p must lie in [0, 1], got {p}")


class AvgTeacher(nn.Module):
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

    def __init__(self, options: AvgTeacherOptions, distill_options: DistillOptions):
        super().__init__()
        self.options = options
        self.distill_options = distill_options

    def survivors(self, num_teachers: int, generator: Optional[torch.Generator] = None) -> Sequence[bool]:
        """Which teachers take part in this step."""
        p = self.options.avgmt_teacher_survival_p
        if p >= 1.0:
            return [True] * num_teachers
        return (torch.rand(num_teachers, generator=generator) < p).tolist()

    def compute(self, student: GLMStudent, s_out: ModelOutput, s_hard_loss: Tensor,
                t_outs: Sequence[Optional[ModelOutput]], batch: DistillBatch, step: StepInfo,
                t_hard_losses: Sequence[Optional[Tensor]] = (),
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Metrics]:
        """The combined loss (scalar fp32) and metrics: every term per teacher (suffix "_t{i}"
        when there are several teachers), "kd/teacher" (l_i), "kd/avg_hard" when p < 1, and
        "kd/total". `t_hard_losses` (the teachers' hard losses) is not used by this combiner."""
        if t_hard_losses and len(t_hard_losses) != len(t_outs):
            raise ValueError(f"{len(t_hard_losses)} teacher hard losses for {len(t_outs)} teachers")
        terms, metrics = [], {}
        suffix = (lambda i: f"_t{i}") if len(t_outs) > 1 else (lambda i: "")
        for t_no, (t_out, alive) in enumerate(zip(t_outs, self.survivors(len(t_outs), generator))):
            if not alive:
                continue
            if t_out is None:   # disabled (--mt_disable_operation, e.g. Theseus): only the hard term
                pre, pre_metrics = student.pre_loss(s_out.logits, None, s_hard_loss, batch, t_no=t_no)
                inter, inter_metrics = zero_loss(s_out.logits), {}
            else:
                pre, pre_metrics = student.pre_loss(s_out.logits, t_out.logits, s_hard_loss, batch, t_no=t_no)
                inter, inter_metrics = student.inter_loss(s_out, t_out, batch, step, t_no=t_no)
            terms.append(pre + inter)
            for name, value in {**pre_metrics, **inter_metrics, "kd/teacher": terms[-1].detach()}.items():
                metrics[name + suffix(t_no)] = value
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


# --------------------------------------------------------------------------- registry
MULTI_TEACHER_MODELS: Dict[Optional[str], Type[nn.Module]] = {}


def register_multi_teacher(*names: Optional[str]):
    """Class decorator: register a combiner (with `options_class` and `compute`) under `names`."""
    def register(cls):
        for name in names:
            if MULTI_TEACHER_MODELS.get(name, cls) is not cls:
                raise ValueError(f"multi-teacher model {name!r} is already registered by "
                                 f"{MULTI_TEACHER_MODELS[name].__name__}")
            MULTI_TEACHER_MODELS[name] = cls
        return cls
    return register


register_multi_teacher(None, "", "avg", "tmkd")(AvgTeacher)


def build_multi_teacher(name: Optional[str], options=None, distill_options: DistillOptions = DistillOptions()):
    """The combiner registered as `name` (None/"" = AvgTeacher); `options` of its
    `options_class` (None: the defaults). KeyError listing the valid names for unknown ones."""
    if name not in MULTI_TEACHER_MODELS:
        valid = ", ".join(sorted(repr(key) for key in MULTI_TEACHER_MODELS))
        raise KeyError(f"unknown multi-teacher model {name!r}; valid: {valid}")
    cls = MULTI_TEACHER_MODELS[name]
    options = cls.options_class() if options is None else options
    if not isinstance(options, cls.options_class):
        raise TypeError(f"{cls.__name__} takes {cls.options_class.__name__}, got {type(options).__name__}")
    return cls(options, distill_options)
