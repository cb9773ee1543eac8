"""RL-KD's combiner: a teacher-selection agent trained by REINFORCE."""
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

import mpu
from model import ModelOutput

from .distill_model import DistillBatch, DistillOptions, GLMStudent, Metrics, StepInfo
from .losses_multi_teacher import policy_loss, sequence_mean
from .multi_teacher_model import (Combiner, CombinerContext, TeacherHardLoss, _sample_mask, _suffix, _teacher_terms,
                                  register_multi_teacher)
from .options import option


@dataclass(frozen=True)
class RLKDOptions:
    """See `RLKD`. rl_kd_reward: 1 = -L_hard(student), 2 = also - L_hard(last distilled
    teacher). rl_kd_policy_prob: the original's policy term (probabilities, not logs)."""
    rl_kd_wo_loss_mask: bool = option(False, "Feed the agent unmasked token logits.")
    rl_kd_only_mask_pad: bool = option(False, "Mask the agent's token logits only at padding.")
    rl_kd_reward: int = option(
        1, "Reward: 1 is minus the student's hard loss, 2 also subtracts the last teacher's.", choices=(1, 2))
    rl_kd_semantic_model: Optional[int] = option(None, "Index of the teacher that provides the agent's semantic state.")
    rl_kd_semantic_model_dim: Optional[int] = option(
        None, "Width of the semantic state, required when no semantic teacher is present.")
    rl_kd_only_avg: bool = option(False, "Average the teachers without the agent (warm-up stage).")
    rl_kd_wo_hard: bool = option(False, "Drop the combiner's built-in hard term.")
    rl_kd_alpha: float = option(0.5, "Weight of the teacher part; the hard term gets 1 - alpha.")
    rl_kd_policy_prob: bool = option(
        False, "This project's addition: the original's policy term -sum(pi) * reward instead of -sum(log pi) * reward.")

    def __post_init__(self):
        if self.rl_kd_reward not in (1, 2):
            raise ValueError(f"rl_kd_reward must be 1 or 2, got {self.rl_kd_reward}")
        if not math.isfinite(self.rl_kd_alpha):
            raise ValueError(f"rl_kd_alpha must be finite, got {self.rl_kd_alpha}")
        if self.rl_kd_wo_loss_mask and self.rl_kd_only_mask_pad:
            raise ValueError("--rl_kd_wo_loss_mask and --rl_kd_only_mask_pad conflict: set at most one")
        for name in ("rl_kd_semantic_model", "rl_kd_semantic_model_dim"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "rl_kd_semantic_model" else 1):
                raise ValueError(f"--{name}={value} is out of range")


@register_multi_teacher("rl_kd")
class RLKD(Combiner):
    """RL-KD (Yuan et al. 2021, "Reinforced Multi-Teacher Selection for Knowledge Distillation").

    The semantic teacher (--rl_kd_semantic_model) is run for its final hidden state only and
    is not distilled from. For the other tn teachers, l_i[b] = pre_i[b] + inter_i[b]. The
    agent's state (detached): x1 = [CLS] of the semantic teacher's `output` ([B, R*D], R rows
    per sample) next to each teacher's per-sample hard loss, and x2 = the teachers' logits
    side by side (token logits: `sequence_mean` under the mask). s = sigmoid(
    agent_semantic_mt_loss(x1) + agent_mt_soft(x2)) [B, tn]; actions a ~ Bernoulli(s) from the
    step's generator; final = mean_{b,i}(l_i[b] a[b, i]). The agent learns from the PREVIOUS
    call's state and action with this call's reward (-L_hard(student), or also minus the last
    distilled teacher's with --rl_kd_reward=2): final += `policy_loss`.
    Result: alpha * final + (1 - alpha) * L_hard(student), or final with --rl_kd_wo_hard.
    --rl_kd_only_avg (the warm-up stage): final = mean_i l_i, and the agent is built (so its
    shapes carry over to the next stage) but frozen.

    Differs from the original on purpose: the policy gradient uses log-probabilities,
    -sum log(pi) * reward (REINFORCE); the original used -sum pi * reward, which
    --rl_kd_policy_prob restores (it changes the trained agent, hence the published RL-KD
    numbers). The previous state and action are checkpointed (the original lost them on
    resume); reward 2 uses the last distilled teacher (the original's loop variable could be
    the semantic teacher); agent_mt_soft over vocabulary-parallel logits is a RowParallelLinear
    whose input columns are laid out teacher by teacher (stride tn), so MP=2 equals MP=1.
    """
    options_class = RLKDOptions
    name, mixmt_name = "rl_kd", "RL_KD"

    def __init__(self, options: RLKDOptions, distill_options: DistillOptions,
                 context: Optional[CombinerContext] = None):
        super().__init__(options, distill_options, context)
        context = self._require("the teachers, the logits' width and the rows per sample")
        num_teachers, semantic = len(context.teachers), options.rl_kd_semantic_model
        if semantic is not None and semantic >= num_teachers:
            raise ValueError(f"--rl_kd_semantic_model={semantic} but there are {num_teachers} teachers")
        self.distilled = [t_no for t_no in range(num_teachers) if t_no != semantic]
        if not self.distilled:
            raise ValueError("rl_kd needs a teacher to distil from besides the semantic one")
        self.semantic_dim = self._semantic_dim(context)
        if not options.rl_kd_only_avg and not context.teacher_hard_losses:
            raise ValueError("rl_kd's agent reads the teachers' hard losses: run with --mt_has_loss "
                             "(or --rl_kd_only_avg)")
        if not options.rl_kd_only_avg and semantic is None and self.semantic_dim:
            raise ValueError(f"--rl_kd_semantic_model_dim={self.semantic_dim} without a semantic teacher: give "
                             f"--rl_kd_semantic_model (or --rl_kd_only_avg)")
        tn, classes = len(self.distilled), context.num_classes
        self.agent_semantic_mt_loss = nn.Linear(self.semantic_dim * context.rows_per_sample + tn, tn)
        self.agent_mt_soft = (mpu.RowParallelLinear(classes * tn, tn, input_is_parallel=True, stride=tn)
                              if context.token_level else nn.Linear(classes * tn, tn))
        if options.rl_kd_only_avg:
            self.requires_grad_(False)
        self._previous: Optional[Dict[str, Tensor]] = None

    def _semantic_dim(self, context: CombinerContext) -> int:
        options = self.options
        if options.rl_kd_semantic_model is None:
            return options.rl_kd_semantic_model_dim or 0
        width = context.teachers[options.rl_kd_semantic_model].hidden_size
        if options.rl_kd_semantic_model_dim not in (None, width):
            raise ValueError(f"--rl_kd_semantic_model_dim={options.rl_kd_semantic_model_dim} but the semantic teacher "
                             f"{options.rl_kd_semantic_model} has hidden size {width}")
        return width

    def teacher_taps(self, t_no: int, taps: Sequence[str]) -> List[str]:
        return ["output"] if t_no == self.options.rl_kd_semantic_model else list(taps)

    def state(self, t_outs: Sequence[ModelOutput], t_hard_losses: Sequence[TeacherHardLoss],
              batch: DistillBatch, batch_size: int) -> Dict[str, Tensor]:
        """The agent's detached inputs {"semantic_loss": [B, R*D + tn], "soft": [B, C*tn (/p)]}."""
        context, options = self.context, self.options
        parts = []
        if options.rl_kd_semantic_model is not None:
            cls = t_outs[options.rl_kd_semantic_model].taps["output"][:, 0, :]                        # [B*R, D]
            parts.append(cls.float().reshape(batch_size, -1))
        parts += [t_hard_losses[t_no][1].float().reshape(batch_size, 1) for t_no in self.distilled]
        mask = _sample_mask(batch, options.rl_kd_wo_loss_mask, options.rl_kd_only_mask_pad)
        soft = [sequence_mean(t_outs[t_no].logits, mask) if context.token_level else t_outs[t_no].logits.float()
                for t_no in self.distilled]
        state = {"semantic_loss": torch.cat(parts, dim=-1).detach(), "soft": torch.cat(soft, dim=-1).detach()}
        expected = {"semantic_loss": self.agent_semantic_mt_loss.in_features,
                    "soft": self.agent_mt_soft.weight.size(1)}
        for name, width in expected.items():
            if state[name].size(-1) != width:
                raise ValueError(f"rl_kd: the agent's {name} state has width {state[name].size(-1)}, the agent was "
                                 f"built for {width} (a task with a variable number of choices needs "
                                 f"--fix_variable_num_choices)")
        return state

    def agent_logits(self, state: Mapping[str, Tensor]) -> Tensor:
        """The agent's pre-sigmoid scores [B, tn]."""
        return self.agent_semantic_mt_loss(state["semantic_loss"]) + self.agent_mt_soft(state["soft"])

    def compute(self, student: GLMStudent, s_out: ModelOutput, s_hard_loss: Tensor,
                t_outs: Sequence[Optional[ModelOutput]], batch: DistillBatch, step: StepInfo,
                t_hard_losses: Sequence[TeacherHardLoss] = (), generator: Optional[torch.Generator] = None,
                s_hard_per_sample: Optional[Tensor] = None) -> Tuple[Tensor, Metrics]:
        self._check_outputs(t_outs)
        options, only_avg = self.options, self.options.rl_kd_only_avg
        if not only_avg and (s_hard_per_sample is None or len(t_hard_losses) != len(t_outs)
                             or any(t_hard_losses[t_no] is None for t_no in self.distilled)):
            raise ValueError("rl_kd's agent needs the student's and the teachers' per-sample hard losses "
                             "(--mt_has_loss)")
        terms, metrics, several = [], {}, len(self.distilled) > 1
        for t_no in self.distilled:
            hard = s_hard_loss if only_avg else s_hard_per_sample
            pre, inter, term_metrics = _teacher_terms(student, s_out, t_outs[t_no], hard, batch, step, t_no)
            terms.append((pre + inter).mean() if only_avg else pre + inter)
            metrics.update(_suffix({**term_metrics, "kd/teacher": terms[-1].detach().mean()}, t_no, several))
        if only_avg:
            final = sum(terms) / len(terms)
        else:
            final = self._select_and_learn(terms, t_outs, t_hard_losses, batch, s_hard_loss, generator, metrics)
        alpha = options.rl_kd_alpha
        total = final if options.rl_kd_wo_hard else alpha * final + (1 - alpha) * s_hard_loss.float()
        metrics["kd/total"] = total.detach()
        return total, metrics

    def _select_and_learn(self, terms, t_outs, t_hard_losses, batch, s_hard_loss, generator, metrics) -> Tensor:
        state = self.state(t_outs, t_hard_losses, batch, terms[0].size(0))
        with torch.no_grad():
            selection = torch.sigmoid(self.agent_logits(state))                                         # [B, tn]
        uniform = torch.rand(selection.shape, generator=generator).to(selection.device)
        actions = (uniform < selection).float()
        final = (torch.stack(terms, dim=-1) * actions).mean()
        for column, t_no in enumerate(self.distilled):
            metrics[f"rl_kd/selected_t{t_no}"] = actions[:, column].mean()
        if self._previous is not None:
            reward = -s_hard_loss.detach().float()
            if self.options.rl_kd_reward == 2:
                reward = reward - t_hard_losses[self.distilled[-1]][0].detach().float()
            previous = {name: value.to(selection.device) for name, value in self._previous.items()}
            rl_loss = policy_loss(self.agent_logits(previous), previous["action"], reward,
                                  log_prob=not self.options.rl_kd_policy_prob)
            final, metrics["rl_kd/policy"] = final + rl_loss, rl_loss.detach()
        self._previous = {**state, "action": actions}
        return final

    # ------------------------------------------------------------------ state between steps
    def combiner_state(self) -> dict:
        """{"previous": one entry per data-parallel rank} (each rank saw other samples)."""
        mine = None if self._previous is None else {k: v.detach().cpu() for k, v in self._previous.items()}
        if dist.is_initialized() and mpu.get_data_parallel_world_size() > 1:
            gathered = [None] * mpu.get_data_parallel_world_size()
            dist.all_gather_object(gathered, mine, group=mpu.get_data_parallel_group())
            return {"previous": gathered}
        return {"previous": [mine]}

    def load_combiner_state(self, state: dict) -> None:
        if not state:
            self._previous = None
            return
        unknown = set(state) - {"previous"}
        if unknown:
            raise ValueError(f"rl_kd: unknown combiner state keys {sorted(unknown)}")
        ranks = mpu.get_data_parallel_world_size()
        if len(state["previous"]) != ranks:
            raise ValueError(f"rl_kd: the checkpoint holds the agent's previous state for {len(state['previous'])} "
                             f"data-parallel ranks, this run has {ranks}: resume with the same number of processes")
        self._previous = state["previous"][mpu.get_data_parallel_rank()]
