"""BERT-of-Theseus: progressive module replacing, teacher blocks run inside the student."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from model import tap_model_of

from ..distill_model import GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import uniform_layers
from ..losses_schedules import theseus_keep_rate
from ..options import option


@dataclass(frozen=True)
class TheseusOptions:
    theseus_replacing_rate: float = option(0.3, "Initial probability of keeping a student layer.")
    theseus_not_replaced_steps: float = option(0.66, "Fraction of training after which only student layers are used.")

    def __post_init__(self):
        if not 0.0 <= self.theseus_replacing_rate <= 1.0:
            raise ValueError(f"theseus_replacing_rate must lie in [0, 1], got {self.theseus_replacing_rate}")
        if not self.theseus_not_replaced_steps > 0.0:
            raise ValueError(f"theseus_not_replaced_steps must be positive, got {self.theseus_not_replaced_steps}")


Blocks = List[List[List[object]]]   # blocks[t][i]: teacher t's frozen layers replacing student layer i


@register_student
class Theseus(GLMStudent):
    """BERT-of-Theseus (Xu et al. 2020, "BERT-of-Theseus: Compressing BERT by Progressive Module
    Replacing").

    Each training forward keeps student layer i with probability r = r0 + it / (T k) (1 - r0)
    (capped at 1), else runs teacher block i (the uniform map's i-th segment of a uniformly
    chosen teacher) in its place, through the `layers` intervention. `begin_step` draws the
    pass's replacement (from the method's own generator, seeded identically on every rank and
    checkpointed in `method_state`, so ranks agree and a resumed run continues exactly);
    `student_interventions` only applies it. Loss: the generic pre-loss (the recipe: hard
    only). Needs equal hidden sizes (the recipe initialises the student from the teacher's
    bottom layers, `--student_truncate_tn=0`). Teacher blocks run in their eval mode with
    detached parameters: they get no .grad (the original let them accumulate it). The
    original's "keep at least one student layer" loop had no effect (its draws landed past
    L_s); here it works: when every layer is replaced, one uniformly drawn student layer is
    kept (this changes the sampled architectures in about (1 - r)^L_s of the steps). Not
    ported: the `--distill_test_output` debug routine.
    """
    name = "theseus"
    options_class = TheseusOptions
    SEED = 2020

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        self._num_layers = self.require_config().num_layers
        self._hidden_size = self.require_config().hidden_size
        self._generator = torch.Generator().manual_seed(self.SEED)
        self._blocks: Blocks = []
        self._blocks_of: Tuple[int, ...] = ()
        # This pass's (keep [L_s] bool, teacher index [L_s]) and the blocks they index; None: the plain student.
        self._replacement: Optional[Tuple[Tensor, Tensor, Blocks]] = None
        self.keep_rate = float(self.method_options.theseus_replacing_rate)

    def _teacher_blocks(self) -> Blocks:
        """blocks[t][i]: teacher t's layers replacing student layer i (built once per binding)."""
        bound = tuple(id(module) for module in self.teacher_modules)
        if self._blocks_of != bound:
            self._blocks, self._blocks_of = [], bound
            for t_no, module in enumerate(self.teacher_modules):
                teacher = tap_model_of(module)
                self._check_teacher(t_no, teacher)
                layers = teacher.layer_sequence()
                bounds = uniform_layers(self._num_layers, len(layers))
                self._blocks.append([[teacher.frozen_layer(layer) for layer in layers[begin:end]]
                                     for begin, end in zip(bounds, bounds[1:])])
        return self._blocks

    def _check_teacher(self, t_no: int, teacher: nn.Module) -> None:
        """Teacher layers run on the student's hidden states (and, in HF decoders, on its rotary
        embeddings): equal width, and for HF models the same family and head count."""
        config, own = teacher.config, self.require_config()
        if config.hidden_size != own.hidden_size:
            raise ValueError(f"theseus needs equal hidden sizes: teacher {t_no} {config.hidden_size}, "
                             f"student {own.hidden_size}")
        if type(config) is not type(own):
            raise ValueError(f"theseus: teacher {t_no} ({type(teacher).__name__}) and the student "
                             f"({type(tap_model_of(self.model)).__name__}) are different model kinds")
        if getattr(own, "model_type", None) is not None and (
                (config.model_type, config.num_attention_heads) != (own.model_type, own.num_attention_heads)):
            raise ValueError(f"theseus: teacher {t_no} is {config.model_type} with {config.num_attention_heads} heads, "
                             f"the student {own.model_type} with {own.num_attention_heads}; its layers need the "
                             f"student's family and head count")

    def _keep_rate(self, step: StepInfo) -> float:
        o = self.method_options
        return theseus_keep_rate(step.iteration, step.train_iters, o.theseus_replacing_rate,
                                 o.theseus_not_replaced_steps)

    def replacement(self, step: StepInfo) -> Tuple[Tensor, Tensor]:
        """(keep [L_s] bool, teacher index [L_s]) for a forward at `step`: a draw from the
        method's generator (it advances); `begin_step` makes one per training pass."""
        num_layers = self._num_layers
        keep = torch.rand(num_layers, generator=self._generator) < self._keep_rate(step)
        rescue = torch.randint(num_layers, (1,), generator=self._generator)
        teacher = torch.randint(max(len(self.teacher_modules), 1), (num_layers,), generator=self._generator)
        if not keep.any():
            keep[rescue] = True
        return keep, teacher

    def begin_step(self, step: StepInfo) -> None:
        """A training pass with bound teachers: draw which layers the teachers replace, and
        record the keep rate (a metric); otherwise the plain student runs."""
        self._replacement = None
        if not step.training or not self.teacher_modules:
            return
        self.keep_rate = self._keep_rate(step)
        blocks = self._teacher_blocks()
        self._replacement = (*self.replacement(step), blocks)

    def student_interventions(self, step: StepInfo) -> Dict[str, object]:
        if self._replacement is None or not step.training:
            return {}
        keep, teacher, blocks = self._replacement

        def mixed(layers):
            return [m for i, layer in enumerate(layers)
                    for m in ([layer] if keep[i] else blocks[int(teacher[i])][i])]
        return {"layers": mixed}

    def pre_loss(self, s_logits, t_logits, hard_loss, batch, step=StepInfo(), t_no=0, mse_t_w=1.0
                 ) -> Tuple[Tensor, Metrics]:
        """The generic pre-loss, plus the latest training pass's keep rate as a metric (the
        recipe disables the teacher's forward, so `inter_loss` is not called)."""
        loss, metrics = super().pre_loss(s_logits, t_logits, hard_loss, batch, step, t_no, mse_t_w)
        return loss, {**metrics, "theseus/keep_rate": torch.tensor(self.keep_rate)}

    def method_state(self) -> dict:
        return {"rng": self._generator.get_state()}

    def load_method_state(self, state: dict) -> None:
        unknown = set(state) - {"rng"}
        if unknown:
            raise ValueError(f"{self.name}: unknown method state keys {sorted(unknown)}")
        if "rng" in state:
            self._generator.set_state(state["rng"])
