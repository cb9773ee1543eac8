"""MixBaseline: several registered methods at once, sharing one student model.

Its components are found through the registry (`STUDENT_MODELS`), by registry or class
name, so this file imports no other method.
"""
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model import ModelOutput

from ..distill_model import (STUDENT_MODELS, DistillBatch, DistillOptions, GLMStudent, Metrics, StepInfo,
                             TeacherInfo, method_options_for, register_student)
from ..losses import zero_loss
from ..options import option

# Base-class terms a component must not add again (the wrapper adds them once); only those
# DistillOptions actually has are switched off in the components.
_ONCE_ONLY_OPTIONS = ("distill_logits_parallel",)


@dataclass(frozen=True)
class MixBaselineOptions:
    """MixBaseline's own flags. The *_bl flags are comma lists of component methods, by
    registry name or by the original's class name (case-insensitive: TinyBERT, MiniLMv2,
    MiniLM, DistilBERT, KD, ...). `mixbaseline_{name}_t` is component `name`'s temperature
    (only TinyBERT has one). `components` holds every other method's typed options, built
    from the run's flags (e.g. --minilmv2_relation_heads), for the components to take theirs."""
    mixbaseline_wo_inter: bool = option(False, "Disable the intermediate losses of all components.")
    mixbaseline_tinybert_t: float = option(1.0, "Temperature of the TinyBERT component.")
    mixbaseline_inter_bl: str = option("", "Comma list of component classes whose intermediate losses are summed.")
    mixbaseline_pre_bl_pt_soft: str = option(
        "", "Comma list of components whose prediction loss is used in pretraining.")
    mixbaseline_pre_bl_ft_soft: str = option(
        "", "Comma list of components whose prediction loss is added in fine-tuning.")
    mixbaseline_inter_checkpoint: bool = option(
        False, "Wrap each component's intermediate loss in activation checkpointing.")
    components: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)   # {method: options}

    def __post_init__(self):
        t = self.mixbaseline_tinybert_t
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"mixbaseline_tinybert_t must be a positive finite number, got {t}")

    @staticmethod
    def split(names: str) -> Tuple[str, ...]:
        return tuple(name.strip() for name in names.split(",") if name.strip())

    def temperature(self, component: str) -> Optional[float]:
        return getattr(self, f"mixbaseline_{component}_t", None)


def resolve_component(name: str) -> Tuple[str, type]:
    """(registry name, class) of a component named by registry or class name; no eval."""
    key = name.strip().lower()
    matches = [(n, cls) for n, cls in STUDENT_MODELS.items() if key in (n.lower(), cls.__name__.lower())]
    if not matches:
        raise KeyError(f"unknown MixBaseline component {name!r}; valid: {', '.join(sorted(STUDENT_MODELS))}")
    registry_name, cls = matches[0]
    if issubclass(cls, MixBaseline):
        raise ValueError("MixBaseline cannot contain itself")
    return registry_name, cls


def _detach_shared_model(component: GLMStudent, model: nn.Module) -> None:
    """Keep `component.model` usable but out of the component's module tree: the wrapper owns
    the model, so its parameters and state-dict entries exist once."""
    delattr(component, "model")                       # unregisters the submodule
    object.__setattr__(component, "model", model)     # a plain attribute, outside the module tree
    shared = {id(p) for p in model.parameters()}
    if any(id(p) in shared for p in component.parameters()):
        raise ValueError(f"component {component.name!r} registers the student model under another name")


def _union(lists: Sequence[Sequence[str]]) -> List[str]:
    return list(dict.fromkeys(name for names in lists for name in names))


def _merge(dicts: Sequence[Tuple[str, Dict[str, Callable]]]) -> Dict[str, Callable]:
    merged: Dict[str, Callable] = {}
    owners: Dict[str, str] = {}
    for component, interventions in dicts:
        for name, fn in interventions.items():
            if name in merged:
                raise ValueError(f"MixBaseline components {owners[name]!r} and {component!r} both intervene on "
                                 f"{name!r}; they cannot be combined")
            merged[name], owners[name] = fn, component
    return merged


@register_student
class MixBaseline(GLMStudent):
    """MixBaseline (GKD, Tan et al. 2023, "GKD: A General Knowledge Distillation Framework for
    Large-scale Pre-trained Language Model", ACL Industry): several methods at once.

    Components are instances of the registered methods named in --mixbaseline_inter_bl,
    --mixbaseline_pre_bl_pt_soft and --mixbaseline_pre_bl_ft_soft (one instance per method,
    sharing this student's model, which is saved once as usual; a component's auxiliary
    layer K is saved as "student.components.<name>.student.K", the component's own renaming
    nested in this one's). Each gets this run's DistillOptions with its own temperature where
    `mixbaseline_<name>_t` exists, and its own typed options from the flags.

    * begin_step: passed on to every component (also with --mixbaseline_wo_inter, so their
      schedules advance).
    * taps / interventions: the union over all components (none with
      --mixbaseline_wo_inter); two components intervening on the same name raise.
    * inter_loss [B]: the base term once + sum of the inter_bl components' inter losses (each
      optionally under activation checkpointing, --mixbaseline_inter_checkpoint).
    * pre_loss [B]: fine-tuning: the base KD pre-loss + each pre_bl_ft_soft component's;
      pretraining: only the pre_bl_pt_soft components'. The hard loss goes to the last of
      these terms only (the others get a zero hard loss), so it counts once.
    * forward: a component's own forward if exactly one overrides it.
    * method_state: {component name: its state}.
    Metrics of component `c` are prefixed "c/".
    """
    name = "mixbaseline"
    options_class = MixBaselineOptions
    inherits_base_inter_loss = True

    composes_others = True

    @classmethod
    def options_from_flags(cls, values: Mapping[str, object]) -> MixBaselineOptions:
        own = {f.name for f in fields(MixBaselineOptions)} - {"components"}
        components = {name: method_options_for(method, values) for name, method in STUDENT_MODELS.items()
                      if method is not cls and method.options_class is not None}
        return MixBaselineOptions(**{k: v for k, v in values.items() if k in own}, components=components)

    def __init__(self, model: nn.Module, options: DistillOptions, teachers: Sequence[TeacherInfo] = (),
                 method_options: Optional[MixBaselineOptions] = None):
        super().__init__(model, options, teachers, method_options)
        opts = self.method_options
        lists = {which: [resolve_component(n)[0] for n in opts.split(getattr(opts, f"mixbaseline_{which}"))]
                 for which in ("inter_bl", "pre_bl_pt_soft", "pre_bl_ft_soft")}
        self.inter_names = tuple(dict.fromkeys(lists["inter_bl"]))
        self.pre_names = {"pretrain": tuple(lists["pre_bl_pt_soft"]), "finetune": tuple(lists["pre_bl_ft_soft"])}
        if not any(lists.values()):
            warnings.warn("mixbaseline without components (--mixbaseline_inter_bl/--mixbaseline_pre_bl_*) is KD",
                          stacklevel=2)
        self.components = nn.ModuleDict()
        for name in dict.fromkeys(n for names in lists.values() for n in names):
            self.components[name] = self._build_component(name, model, opts.components.get(name))
        self.supports_activation_checkpointing = all(c.supports_activation_checkpointing
                                                     for c in self.components.values())
        overriding = [n for n, c in self.components.items() if type(c).forward is not GLMStudent.forward]
        if len(overriding) > 1:
            raise ValueError(f"components {overriding} all override forward; at most one may")
        self._forward_owner: Optional[str] = overriding[0] if overriding else None

    def _build_component(self, name: str, model: nn.Module, options) -> GLMStudent:
        cls = STUDENT_MODELS[name]
        component_options = method_options_for(cls, options)
        overrides = {f: False for f in _ONCE_ONLY_OPTIONS if f in {x.name for x in fields(DistillOptions)}}
        # --mixbaseline_<name>_t: MixBaseline's own flag (TinyBERT), or one a component declares
        temperature = self.method_options.temperature(name)
        if temperature is None:
            temperature = getattr(component_options, f"mixbaseline_{name}_t", None)
        if temperature is not None:
            overrides["distill_temperature"] = temperature
        component = cls(model, replace(self.options, **overrides), self.teachers, method_options=component_options)
        _detach_shared_model(component, model)
        return component

    def bind_teachers(self, modules: Sequence[nn.Module]) -> None:
        super().bind_teachers(modules)
        for component in self.components.values():
            component.bind_teachers(modules)

    # ------------------------------------------------------------------ per-step requests
    def begin_step(self, step: StepInfo) -> None:
        """Every component begins the step (their random draws, their schedules)."""
        super().begin_step(step)
        for component in self.components.values():
            component.begin_step(step)

    def _requests(self, ask: Callable[[GLMStudent], object]) -> list:
        """[(component name, its answer)] of every component; none with --mixbaseline_wo_inter."""
        if self.method_options.mixbaseline_wo_inter:
            return []
        return [(name, ask(c)) for name, c in self.components.items()]

    def student_taps(self, step: StepInfo) -> List[str]:
        return _union([taps for _, taps in self._requests(lambda c: c.student_taps(step))])

    def teacher_taps(self, t_no: int, step: StepInfo) -> List[str]:
        return _union([taps for _, taps in self._requests(lambda c: c.teacher_taps(t_no, step))])

    def student_interventions(self, step: StepInfo) -> Dict[str, Callable]:
        return _merge(self._requests(lambda c: c.student_interventions(step)))

    def teacher_interventions(self, t_no: int, step: StepInfo) -> Dict[str, Callable]:
        return _merge(self._requests(lambda c: c.teacher_interventions(t_no, step)))

    def forward(self, *inputs, taps=(), interventions=None, **kwargs) -> ModelOutput:
        if self._forward_owner is not None:
            return self.components[self._forward_owner](*inputs, taps=taps, interventions=interventions, **kwargs)
        return super().forward(*inputs, taps=taps, interventions=interventions, **kwargs)

    # ------------------------------------------------------------------ losses
    def inter_loss(self, s_out: ModelOutput, t_out: ModelOutput, batch: DistillBatch, step: StepInfo,
                   t_no: int = 0) -> Tuple[Tensor, Metrics]:
        total, metrics = super().inter_loss(s_out, t_out, batch, step, t_no)                # [B]
        if self.method_options.mixbaseline_wo_inter:
            return total, metrics
        for name in self.inter_names:
            component = self.components[name]
            if self.method_options.mixbaseline_inter_checkpoint and torch.is_grad_enabled():
                loss, terms = checkpoint(component.inter_loss, s_out, t_out, batch, step, t_no,
                                         use_reentrant=False)
            else:
                loss, terms = component.inter_loss(s_out, t_out, batch, step, t_no)
            total = total + loss
            metrics.update({f"{name}/{tag}": value for tag, value in terms.items()})
        return total, metrics

    def pre_loss(self, s_logits: Tensor, t_logits: Tensor, hard_loss: Tensor, batch: DistillBatch,
                 step: StepInfo = StepInfo(), t_no: int = 0, mse_t_w: float = 1.0) -> Tuple[Tensor, Metrics]:
        terms = ((None,) if batch.finetune else ()) + self.pre_names[batch.stage]   # None: the base KD term
        total = zero_loss(s_logits, (s_logits.size(0),))                                    # [B]
        metrics: Metrics = {}
        for index, name in enumerate(terms):
            carries_hard = index == len(terms) - 1
            hard = hard_loss if carries_hard else torch.zeros_like(hard_loss)
            if name is None:
                loss, values = super().pre_loss(s_logits, t_logits, hard, batch, step, t_no, mse_t_w)
            else:
                loss, values = self.components[name].pre_loss(s_logits, t_logits, hard, batch, step, t_no, mse_t_w)
            if not carries_hard:
                values.pop("kd/hard", None)
            total = total + loss
            metrics.update({(tag if name is None else f"{name}/{tag}"): value for tag, value in values.items()})
        return total, metrics

    # ------------------------------------------------------------------ schedule state
    def method_state(self) -> dict:
        states = {name: c.method_state() for name, c in self.components.items()}
        return {name: state for name, state in states.items() if state}

    def load_method_state(self, state: dict) -> None:
        unknown = set(state) - set(self.components)
        if unknown:
            raise ValueError(f"method state for {sorted(unknown)}, which are not components of this MixBaseline "
                             f"({sorted(self.components)})")
        for name, component in self.components.items():
            component.load_method_state(state.get(name, {}))
