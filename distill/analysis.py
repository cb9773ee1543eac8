"""Layer-similarity analysis, `--distil_analysis_inter`: diagnostics, never a loss.

On the forward-repeat passes listed in `--distil_analysis_frcn`, `analysis_taps` asks the
student for every layer's hidden state, attention scores and Q/K/V plus `output` and
`logits_parallel`, and each teacher for the same at the uniformly mapped layers (reversed when
the student is deeper). The methods read their own taps by name, so the extra ones never reach
their losses. `analysis_metrics` then compares, without gradients:

* student and teacher tensors of equal shape: MSE, and KL_T (T in 1, 5, 10, 15, 20) of
  softmax over the last dimension;
* self-relations R = X X^T / sqrt(d) ([..., S, S], which also compare models of different
  widths): MSE and KL (T = 1), for the embeddings (hidden representation 0), the hidden
  states and the per-head Q/K/V.

The original drew figures from these; here every (measure, layer pair) is one scalar metric,
tagged `analysis_inter/<kind>/s<i>_t<j>/<measure>` with kind in emb, hidden (representation
indices i, j), att, q, k, v (layer indices) and `analysis_inter/logits/<measure>`,
and "t<n>/" after "analysis_inter/" when there are several teachers. The trainer decides when
to compute them (e.g. on logging steps) and logs them like any metric.

Model parallelism: hidden states are replicated; head tensors are compared head by head on
each rank and the means averaged over the model-parallel group (equal shards), the logits
with the vocabulary-parallel functions, so every rank returns the MP=1 values.
"""
import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from model import ModelOutput
from mpu.mappings import ProcessGroup, all_reduce_no_grad, group_size

from .distill_model import GLMStudent, StepInfo
from .layer_mapping import hidden_tap, uniform_layers
from .losses import parallel_kl_divergence, parallel_mse

TEMPERATURES = (1.0, 5.0, 10.0, 15.0, 20.0)
HEAD_TAPS = (("attention_scores", "att"), ("query_layer", "q"), ("key_layer", "k"), ("value_layer", "v"))
Pairs = Tuple[Tuple[int, int], ...]


@dataclass(frozen=True)
class AnalysisOptions:
    """distil_analysis_inter: on/off; distil_analysis_frcn: comma list of forward-repeat
    indices analysed (default "0", the first pass)."""
    distil_analysis_inter: bool = False
    distil_analysis_frcn: str = "0"

    def __post_init__(self):
        _repeat_indices(self.distil_analysis_frcn)

    @property
    def repeat_indices(self) -> FrozenSet[int]:
        return _repeat_indices(self.distil_analysis_frcn)

    def active(self, step: StepInfo) -> bool:
        return self.distil_analysis_inter and step.repeat_index in self.repeat_indices


def _repeat_indices(text: str) -> FrozenSet[int]:
    try:
        return frozenset(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"distil_analysis_frcn must be a comma list of integers, got {text!r}") from None


# --------------------------------------------------------------------------- pure measures
def mean_squared_error(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over all elements of (s - t)^2, fp32. Equal shapes -> scalar."""
    return F.mse_loss(student.float(), teacher.float())


def softened_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over rows of KL(softmax(t/T) || softmax(s/T)) along the last dim (no T^2), fp32."""
    log_p_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()


def self_relation(x: Tensor) -> Tensor:
    """X X^T / sqrt(d): [..., S, d] -> [..., S, S], fp32."""
    x = x.float()
    return x @ x.transpose(-1, -2) / math.sqrt(x.size(-1))


def similarity(student: Tensor, teacher: Tensor, relation: bool) -> Dict[str, Tensor]:
    """{"mse", "kl_t<T>"...} when the shapes are equal, plus {"rel_mse", "rel_kl"} of the
    self-relations (when `relation` and their shapes are equal); {} if nothing compares."""
    values: Dict[str, Tensor] = {}
    if student.shape == teacher.shape:
        values["mse"] = mean_squared_error(student, teacher)
        for temperature in TEMPERATURES:
            values[f"kl_t{temperature:g}"] = softened_kl(student, teacher, temperature)
    if relation and student.shape[:-1] == teacher.shape[:-1]:
        s_rel, t_rel = self_relation(student), self_relation(teacher)
        values["rel_mse"] = mean_squared_error(s_rel, t_rel)
        values["rel_kl"] = softened_kl(s_rel, t_rel)
    return values


def logits_similarity(student: Tensor, teacher: Tensor, group: ProcessGroup = None) -> Dict[str, Tensor]:
    """MSE and KL_T of vocabulary-parallel logits [..., V/p] (means over all rows)."""
    values = {"mse": parallel_mse(student.float(), teacher.float(), group=group).mean()}
    for temperature in TEMPERATURES:
        values[f"kl_t{temperature:g}"] = parallel_kl_divergence(student.float(), teacher.float(),
                                                                temperature=temperature, group=group).mean()
    return values


# --------------------------------------------------------------------------- layer pairs
def analysis_pairs(student_layers: int, teacher_layers: int) -> Tuple[Pairs, Pairs]:
    """((student rep, teacher rep) for hidden representations, (student layer, teacher layer)
    for per-layer tensors) under the uniform mapping; the shallower model's every layer."""
    if student_layers <= teacher_layers:
        m = uniform_layers(student_layers, teacher_layers)
        return (tuple((k, m[k]) for k in range(student_layers + 1)),
                tuple((l, m[l + 1] - 1) for l in range(student_layers)))
    m = uniform_layers(teacher_layers, student_layers)
    return (tuple((m[k], k) for k in range(teacher_layers + 1)),
            tuple((m[l + 1] - 1, l) for l in range(teacher_layers)))




def _taps(pairs: Tuple[Pairs, Pairs], side: int, num_layers: int, logits: bool) -> List[str]:
    hidden, layers = pairs
    names = [hidden_tap(pair[side], num_layers) for pair in hidden]
    names += [f"layers.{pair[side]}.{tap}" for pair in layers for tap, _ in HEAD_TAPS]
    return names + (["logits_parallel"] if logits else [])


def analysis_taps(student: GLMStudent, step: StepInfo, options: AnalysisOptions) -> Tuple[List[str], List[List[str]]]:
    """(extra student taps, [extra taps of teacher t_no] per teacher) for this pass; empty
    lists when the analysis is off or the pass is not analysed."""
    if not options.active(step):
        return [], [[] for _ in student.teachers]
    config = student.require_config()
    all_pairs = [analysis_pairs(config.num_layers, t.num_layers) for t in student.teachers]
    student_taps = list(dict.fromkeys(name for pairs in all_pairs
                                      for name in _taps(pairs, 0, config.num_layers, config.output_predict)))
    teacher_taps = [_taps(pairs, 1, t.num_layers, config.output_predict)
                    for pairs, t in zip(all_pairs, student.teachers)]
    return student_taps, teacher_taps


def _mp_mean(values: Dict[str, Tensor], group: ProcessGroup) -> Dict[str, Tensor]:
    """Average per-rank means of head-partitioned tensors over the model-parallel group."""
    world_size = group_size(group)
    return {k: all_reduce_no_grad(v, group) / world_size for k, v in values.items()}


@torch.no_grad()
def analysis_metrics(student: GLMStudent, step: StepInfo, s_out: ModelOutput, t_out: ModelOutput,
                     options: AnalysisOptions, t_no: int = 0, group: ProcessGroup = None) -> Dict[str, Tensor]:
    """The analysis scalars of teacher `t_no` ({} when the pass is not analysed); the outputs
    must carry the taps `analysis_taps` asked for."""
    if not options.active(step):
        return {}
    config = student.require_config()
    teacher_layers = student.teachers[t_no].num_layers
    hidden, layers = analysis_pairs(config.num_layers, teacher_layers)
    prefix = "analysis_inter/" + (f"t{t_no}/" if len(student.teachers) > 1 else "")
    metrics: Dict[str, Tensor] = {}

    def add(tag: str, values: Dict[str, Tensor]) -> None:
        metrics.update({f"{prefix}{tag}/{name}": value for name, value in values.items()})

    for s, t in hidden:
        values = similarity(s_out.taps[hidden_tap(s, config.num_layers)],
                            t_out.taps[hidden_tap(t, teacher_layers)], relation=True)
        add(f"{'emb' if s == 0 else 'hidden'}/s{s}_t{t}", values)
    for s, t in layers:
        for tap, kind in HEAD_TAPS:
            values = similarity(s_out.taps[f"layers.{s}.{tap}"], t_out.taps[f"layers.{t}.{tap}"],
                                relation=kind != "att")
            add(f"{kind}/s{s}_t{t}", _mp_mean(values, group))
    if config.output_predict:
        add("logits", logits_similarity(s_out.taps["logits_parallel"], t_out.taps["logits_parallel"], group))
    return metrics
