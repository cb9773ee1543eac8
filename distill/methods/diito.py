"""DIITO: causal distillation by interchange interventions (the interchange math is in
`losses_schedules.py`)."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..distill_model import DistillBatch, GLMStudent, Metrics, StepInfo, register_student
from ..layer_mapping import hidden_tap
from ..losses import fold_samples, non_pad_mask
from ..losses_hidden import cosine_distance
from ..losses_schedules import alignment_points, consecutive_masks, interchange, leading_masks, random_masks
from ..options import option


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


def _non_pad_rows(batch: DistillBatch, num_rows: int, seq: int, device) -> Tensor:
    """Non-pad mask [N, S] of the model's rows (choice-expanded in cloze fine-tuning), by
    `losses.non_pad_mask`; all True without position ids."""
    if batch.position_ids is None:
        return torch.ones(num_rows, seq, dtype=torch.bool, device=device)
    positions = batch.position_ids
    if positions.dim() >= 3 and positions.size(-2) == 2:
        positions = positions.reshape(-1, 2, seq)            # [B(, C), 2, S] -> [N, 2, S]
    else:
        positions = positions.reshape(-1, seq)               # [B(, C), S] -> [N, S]
    if positions.size(0) != num_rows:
        raise ValueError(f"position ids describe {positions.size(0)} rows, the taps {num_rows}")
    return non_pad_mask(positions).to(device)


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

    State: `begin_step` of pass 0 draws the step's alignment points and forgets the previous
    step's masks and duals; pass 0's training `inter_loss` draws the masks (they need the
    batch's non-pad rows) and keeps the dual states for the interventions of the passes that
    follow. All of it, and the generator, is in `method_state()`, so a resumed run continues
    exactly; every draw comes from the method's own generator, seeded identically on every
    rank, so model-parallel ranks agree.

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
        self._num_layers = self.require_config().num_layers
        self._generator = torch.Generator().manual_seed(self.SEED)
        self._points: Optional[Tuple[List[str], List[List[str]]]] = None
        self._masks: Optional[Tuple[Tensor, Tensor]] = None
        self._duals: Dict[object, Dict[str, Tensor]] = {}

    def _alignment(self) -> Tuple[List[str], List[List[str]]]:
        """(student taps, teacher taps per teacher) of this step's alignment points (draws the
        `full` level from the generator)."""
        how, num_layers = self.method_options.diito_alignment, self._num_layers
        level = 1 + int(torch.randint(num_layers, (1,), generator=self._generator)) if how == "full" else 1
        student, teachers = [], []
        for info in self.teachers:
            student, indices = alignment_points(how, num_layers, info.num_layers, level)
            teachers.append([hidden_tap(i, info.num_layers) for i in indices])
        return [hidden_tap(i, num_layers) for i in student], teachers

    def begin_step(self, step: StepInfo) -> None:
        """Pass 0: draw this step's alignment points; the previous step's masks and duals are dropped."""
        if step.repeat_index == 0:
            self._points, self._masks, self._duals = self._alignment(), None, {}

    def _with_cos(self, taps: Sequence[str], weight: float) -> List[str]:
        return list(dict.fromkeys([*taps, *(["output"] if weight > 0 else [])]))

    def student_taps(self, step: StepInfo) -> List[str]:
        if step.repeat_index == 0:
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
                candidates = batch.loss_mask.reshape(non_pad.shape).cpu() > 0         # [B(, C), S] -> [N, S]
            return leading_masks(candidates, candidates.roll(-1, 0), o.diito_interchange_max_token)
        draw = consecutive_masks if o.diito_interchange_way == "consecutive" else random_masks
        return draw(candidates, candidates.roll(-1, 0), o.diito_interchange_prop, o.diito_interchange_max_token,
                    self._generator)

    def inter_loss(self, s_out, t_out, batch, step, t_no=0) -> Tuple[Tensor, Metrics]:
        """weight * COS(output) per sample [B] (weight a_cos on pass 0, a_causal_cos later);
        pass 0 of a training step also draws the masks and keeps the dual states."""
        o, first = self.method_options, step.repeat_index == 0
        if first and step.training:
            if t_no == 0:
                any_tap = s_out.taps[self._points[0][0]]                                # [N, S, H]
                self._masks = self._draw_masks(_non_pad_rows(batch, *any_tap.shape[:2], any_tap.device), batch)
                self._duals["student"] = {tap: s_out.taps[tap].roll(-1, 0) for tap in self._points[0]}
            self._duals[t_no] = {tap: t_out.taps[tap].roll(-1, 0) for tap in self._points[1][t_no]}
        weight = o.diito_alpha_cos if first else o.diito_alpha_causal_cos
        if weight <= 0:
            return self.zero(s_out), {}
        s_output, t_output = s_out.taps["output"], t_out.taps["output"]                 # [N, S, H]
        mask = _non_pad_rows(batch, *s_output.shape[:2], s_output.device)
        rows = cosine_distance(s_output, t_output, mask=mask)                           # [N]
        loss = weight * fold_samples(rows, s_out.logits.size(0))                        # [B]
        return loss, {"inter/cos" if first else "inter/causal_cos": loss.detach().mean()}

    def pre_loss_rates(self, step: StepInfo) -> Tuple[float, float]:
        """This pass's (r_soft, r_hard): pass 0 (a_ce, a_mlm), later passes (a_causal_ce, 0: no
        hard term); the stage flags (--distill_pt_soft, ...) still enable the terms of the
        generic `pre_loss`."""
        o = self.method_options
        return (o.diito_alpha_ce, o.diito_alpha_mlm) if step.repeat_index == 0 else (o.diito_alpha_causal_ce, 0.0)

    def method_state(self) -> dict:
        return {"rng": self._generator.get_state(), "points": self._points, "masks": self._masks}

    def load_method_state(self, state: dict) -> None:
        unknown = set(state) - {"rng", "points", "masks"}
        if unknown:
            raise ValueError(f"{self.name}: unknown method state keys {sorted(unknown)}")
        if "rng" in state:
            self._generator.set_state(state["rng"])
        self._points, self._masks = state.get("points"), state.get("masks")
