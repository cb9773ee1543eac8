"""Pure functions of the multi-teacher combiners: the student's normalised entropy
and Uncertainty's teacher weights, RL-KD's policy term and its token-logit summary.

Tensors in, tensors out; the only collectives are the vocabulary-parallel entropy's (over
`group`, None: the model-parallel group) when `vocab_parallel` is set.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

import mpu
from mpu.mappings import ProcessGroup, group_size

from .losses import sample_mean, soft_cross_entropy


def normalized_entropy(logits: torch.Tensor, *, vocab_parallel: bool, mask: Optional[torch.Tensor] = None,
                       group: ProcessGroup = None) -> torch.Tensor:
    """Per-sample entropy of softmax(logits), divided by log C (C: the full last dimension,
    the whole vocabulary for vocabulary-parallel logits), so it lies in [0, 1].

    logits: [B, C] replicated, or [B, S, V/p] vocabulary-parallel; mask: the rows' shape
    ([B] or [B, S]), nonzero = keep. Returns [B] fp32: the plain mean over a sample's rows
    (`sample_mean`), where a masked row counts as 0. Differentiable in `logits`.
    """
    num_classes = logits.size(-1) * (group_size(group) if vocab_parallel else 1)
    if num_classes < 2:
        raise ValueError(f"the entropy of {num_classes} class is always 0: normalising it needs at least 2 classes")
    if vocab_parallel:
        keep = None if mask is None else mask != 0
        rows = mpu.vocab_parallel_entropy(logits, 1.0, keep, group)
    else:
        rows = soft_cross_entropy(logits, logits, mask=mask)     # -sum p log p per row
    return sample_mean(rows) / math.log(num_classes)


def uncertainty_rates(entropy: torch.Tensor, num_teachers: int, hard: bool = False) -> torch.Tensor:
    """Uncertainty's per-sample teacher weights [B, N]; column j is the j-th smallest teacher.

    Soft: r_j = h + (1 - 2h) j / (N - 1), rescaled so that sum_j r_j = N (the raw sum is
    always N/2): a confident student (h -> 0) leans on the large teachers, an uncertain one
    (h -> 1) on the small ones. Differentiable in `entropy`.
    Hard (needs B >= N): samples ranked by descending entropy (rank 1..B, ties in index
    order) and scaled to q = rank * N / B in (0, N]; sample b goes wholly to teacher j with
    j < q_b <= j + 1, so the most uncertain samples go to the smallest teacher.
    One teacher: all ones. entropy: [B] -> [B, N] fp32.
    """
    batch = entropy.size(0)
    if num_teachers == 1:
        return torch.ones(batch, 1, device=entropy.device)
    columns = torch.arange(num_teachers, device=entropy.device, dtype=torch.float32)
    if hard:
        if batch < num_teachers:
            raise ValueError(f"hard routing needs at least as many samples ({batch}) as teachers ({num_teachers})")
        order = torch.sort(-entropy.detach(), stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, batch + 1, device=entropy.device)
        scaled = (rank.float() * num_teachers / batch).unsqueeze(-1)                  # [B, 1]
        return ((scaled > columns) & (scaled <= columns + 1)).float()
    h = entropy.float().unsqueeze(-1)                                                 # [B, 1]
    raw = h + (1.0 - 2.0 * h) * columns / (num_teachers - 1)
    return raw / raw.sum(dim=-1, keepdim=True) * num_teachers


def policy_loss(agent_logits: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor,
                log_prob: bool = True) -> torch.Tensor:
    """REINFORCE term of RL-KD's teacher selector: -sum_{b,i} log pi_{b,i} * reward, with
    pi = s a + (1 - s)(1 - a), s = sigmoid(agent_logits), a the sampled Bernoulli actions.
    `log_prob=False` gives the original's -sum pi * reward (probabilities, not their logs).

    agent_logits: [B, N], actions: [B, N] (0/1), reward: scalar (no gradient) -> scalar fp32.
    """
    z, a = agent_logits.float(), actions.float()
    if log_prob:   # log sigmoid(z) for a = 1, log sigmoid(-z) = log(1 - s) for a = 0; stable for any z
        terms = a * F.logsigmoid(z) + (1.0 - a) * F.logsigmoid(-z)
    else:
        s = torch.sigmoid(z)
        terms = s * a + (1.0 - s) * (1.0 - a)
    return -terms.sum() * reward.detach().float()


def sequence_mean(logits: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RL-KD's summary of token logits: mean over the sequence of logits * mask (masked
    positions count as zeros, as in the original). logits: [B, S, V/p], mask: [B, S] ->
    [B, V/p] fp32."""
    logits = logits.float()
    if mask is not None:
        logits = logits * mask.to(logits.dtype).unsqueeze(-1)
    return logits.mean(dim=-2)
