"""Task heads on a GLMModel: single-token cloze, multi-token cloze and
sequence classification. Multi-choice inputs [B, C, ...] are flattened to [B*C, ...]
rows for the language model; taps therefore describe the choice-expanded rows.

Every head reads the vocabulary-parallel logits (`logits_parallel` tap) or the final
hidden states (`output` tap), so it works at any model-parallel size and whatever the
model's `parallel_output`. Target ids are original ids; under vocabulary compression with
unmap_vocab_output the cloze heads map them to logit columns (`GLMModel.map_output_ids`).
"""
from typing import Collection, Mapping, Optional, Tuple

import torch
from torch import nn

import mpu

from .glm import GLMModel, ModelOutput
from .taps import Intervention


def _flatten_choices(input_ids, position_ids, attention_mask, *per_token) -> Tuple:
    """[B, C, S] inputs -> [B*C, S] rows; returns (num_choices or None, flattened tensors...)."""
    if input_ids.dim() == 2:
        return (None, input_ids, position_ids, attention_mask, *per_token)
    batch, num_choices = input_ids.shape[:2]
    flat = lambda t: None if t is None else t.reshape(batch * num_choices, *t.shape[2:])
    sep = attention_mask.reshape(-1) if torch.is_tensor(attention_mask) and attention_mask.dim() == 2 else attention_mask
    return (num_choices, flat(input_ids), flat(position_ids), sep, *(flat(t) for t in per_token))


def _run(model: GLMModel, needed: str, input_ids, position_ids, attention_mask, taps, interventions):
    """Forward with `needed` captured; returns (needed tensor, the caller's requested taps)."""
    requested = [taps] if isinstance(taps, str) else list(taps)
    recorder = model.make_taps(requested + [needed], interventions)
    model(input_ids, position_ids, attention_mask, taps=recorder)
    captured = recorder.captured
    return captured[needed], {name: captured[name] for name in requested}


def _rows_at(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor[b, index[b]] for every row b: [N, S, X] -> [N, X]."""
    return tensor[torch.arange(tensor.size(0), device=tensor.device), index]


class GLMForSingleTokenCloze(nn.Module):
    """Scores the verbalizer tokens at the [MASK] prediction (the row's `sep` position).

    forward(input_ids [B, S], position_ids [B, 2, S], attention_mask = sep [B],
    target_ids [B, L]) -> ModelOutput(logits [B, L]): raw logits, or log-probabilities
    with `take_softmax`.
    """

    def __init__(self, language_model: GLMModel, take_softmax: bool = False):
        super().__init__()
        self.model = language_model
        self.take_softmax = take_softmax

    def forward(self, input_ids, position_ids, attention_mask, target_ids, logit_mask=None,
                taps: Collection[str] = (), interventions: Optional[Mapping[str, Intervention]] = None) -> ModelOutput:
        logits, captured = _run(self.model, "logits_parallel", input_ids, position_ids, attention_mask,
                                taps, interventions)
        rows = _rows_at(logits, attention_mask)                       # [B, V/p]
        target_ids = self.model.map_output_ids(target_ids)
        if self.take_softmax:
            expanded = rows.unsqueeze(1).expand(-1, target_ids.size(1), -1)  # [B, L, V/p]
            scores = -mpu.vocab_parallel_cross_entropy(expanded, target_ids)
        else:
            scores = mpu.vocab_parallel_select(rows, target_ids)
        return ModelOutput(scores, captured)


class GLMForMultiTokenCloze(nn.Module):
    """Scores each candidate by the summed log-probability of its Part-B tokens.

    forward(input_ids [B, C, S], position_ids [B, C, 2, S], attention_mask = sep [B, C],
    target_ids [B, C, S], logit_mask [B, C, S]) -> ModelOutput(logits [B, C]); the sum is
    divided by (number of answer tokens) ** length_penalty when length_penalty > 0.
    """

    def __init__(self, language_model: GLMModel, take_softmax: bool = True, length_penalty: float = 0.0):
        super().__init__()
        self.model = language_model
        self.take_softmax = take_softmax
        self.length_penalty = length_penalty

    def forward(self, input_ids, position_ids, attention_mask, target_ids, logit_mask,
                taps: Collection[str] = (), interventions: Optional[Mapping[str, Intervention]] = None) -> ModelOutput:
        num_choices, input_ids, position_ids, attention_mask, target_ids, logit_mask = _flatten_choices(
            input_ids, position_ids, attention_mask, target_ids, logit_mask)
        logits, captured = _run(self.model, "logits_parallel", input_ids, position_ids, attention_mask,
                                taps, interventions)
        target_ids = self.model.map_output_ids(target_ids)
        if self.take_softmax:
            token_scores = -mpu.vocab_parallel_cross_entropy(logits, target_ids)              # [B*C, S]
        else:
            token_scores = mpu.vocab_parallel_select(logits, target_ids.unsqueeze(-1)).squeeze(-1)
        logit_mask = logit_mask.to(token_scores.dtype)
        scores = (token_scores * logit_mask).sum(dim=1)                                       # [B*C]
        if self.length_penalty > 0.0:
            scores = scores / logit_mask.sum(dim=1).clamp(min=1.0) ** self.length_penalty
        if num_choices is not None:
            scores = scores.view(-1, num_choices)                                             # [B, C]
        return ModelOutput(scores, captured)


class GLMForSequenceClassification(nn.Module):
    """tanh(Linear) -> dropout -> Linear(num_class) on one pooled final hidden state.

    pool_token: "start" (position sep), "pad" (position sep - 1) or "cls" (position 0).
    forward(input_ids [B, S] or [B, C, S], ...) -> ModelOutput(logits [B, num_class] or [B, C]).
    """

    POOL_TOKENS = ("start", "pad", "cls")

    def __init__(self, language_model: GLMModel, hidden_size: int, hidden_dropout: float, pool_token: str,
                 num_class: int = 1):
        super().__init__()
        if pool_token not in self.POOL_TOKENS:
            raise ValueError(f"unknown pool_token {pool_token!r}; valid: {self.POOL_TOKENS}")
        self.model = language_model
        self.pool_token = pool_token
        self.pool_layer = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(hidden_dropout)
        self.classifier = nn.Linear(hidden_size, num_class)

    def forward(self, input_ids, position_ids, attention_mask,
                taps: Collection[str] = (), interventions: Optional[Mapping[str, Intervention]] = None) -> ModelOutput:
        num_choices, input_ids, position_ids, attention_mask = _flatten_choices(input_ids, position_ids,
                                                                                attention_mask)
        hidden, captured = _run(self.model, "output", input_ids, position_ids, attention_mask, taps, interventions)
        if self.pool_token == "cls":
            pooled = hidden[:, 0]
        else:
            sep = torch.as_tensor(attention_mask, device=hidden.device).expand(hidden.size(0))
            pooled = _rows_at(hidden, sep if self.pool_token == "start" else sep - 1)   # [N, H]
        logits = self.classifier(self.dropout(torch.tanh(self.pool_layer(pooled))))
        if num_choices is not None:
            logits = logits.view(-1, num_choices)
        return ModelOutput(logits, captured)
