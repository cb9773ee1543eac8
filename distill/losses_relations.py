"""Relation-based intermediate-layer losses of RAIL-KD, MGSKD, CKD, ALP-KD and Universal-KD
as small pure functions.

Conventions. Hidden states are `[N, S, D]` rows (N = B in pretraining, the B*C choice-expanded
rows in cloze fine-tuning), computed in fp32; `mask` [N, S] (bool or 0/1) marks non-pad tokens.
Student and teacher widths may differ unless said otherwise. Where the original divides a
batch-wide sum by a batch-wide count (MGSKD, CKD), the functions return per-row *shares* [N]:
row n's part of the sum times N / count, so that `.mean()` is the original scalar (the methods
fold the rows into their per-sample losses). Teacher-side relations carry no gradient where the original
computed them under `no_grad` (MGSKD, CKD). No function produces NaN on fully masked rows.
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Fill value of excluded entries before a softmax over cosines (which lie in [-1, 1]): finite,
# so no inf/NaN reaches the math or the gradients, and exp(-1e4 - c) is exactly 0 in fp32, so
# kept entries get exactly the probabilities a -inf fill would give.
_EXCLUDED = -1e4
# MGSKD's additive attention-mask value (the original's -10000).
_MGSKD_MASK_FILL = -10000.0
# Differences whose squared norm is below this fraction of |x_p|^2 + |x_n|^2 are below the
# fp32 resolution of a Gram matrix; their direction is undefined and they count as zero
# vectors (as F.normalize treats an exact zero).
_GRAM_RESOLUTION = 1e-6


def _row_shares(row_sums: Tensor, count: Tensor) -> Tensor:
    """[N] sums -> [N] shares whose mean is sum / count (count clamped to >= 1: an all-masked
    batch gives 0 instead of 0/0)."""
    return row_sums * row_sums.size(0) / count.float().clamp(min=1.0)


# --------------------------------------------------------------------------- RAIL-KD
def normalized_squared_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """RAIL-KD: sum of (s/|s| - t/|t|)^2 over every dimension but the first, the L2
    normalisation over the last one. student, teacher: [N, ..., u] -> [N] fp32."""
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return (s - t).pow(2).flatten(1).sum(1)


# --------------------------------------------------------------------------- ALP-KD / Universal-KD
def layer_attention_targets(student: Tensor, teacher: Tensor) -> Tensor:
    """tau_i = sum_j softmax_j(<S_i, T_j>) T_j: each student layer's attention-weighted mix of
    the teacher layers. student [N, Ls, D], teacher [N, Lt, D] -> [N, Ls, D] fp32."""
    student, teacher = student.float(), teacher.float()
    weights = torch.softmax(student @ teacher.transpose(1, 2), dim=-1)   # [N, Ls, Lt]
    return weights @ teacher


def alp_kd_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """ALP-KD: sum_i mean_D (S_i - tau_i)^2 per row. student [N, Ls, D], teacher [N, Lt, D]
    (equal widths) -> [N]; its mean is the original's sum over layers of MSE means."""
    targets = layer_attention_targets(student, teacher)
    return (student.float() - targets).pow(2).mean(-1).sum(-1)


def universal_kd_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Universal-KD: sum_i KL(softmax(tau_i) || softmax(S_i)), softmax over the feature
    dimension. student [N, Ls, U], teacher [N, Lt, U] (projected) -> [N]."""
    targets = layer_attention_targets(student, teacher)
    log_t = torch.log_softmax(targets, dim=-1)
    log_s = torch.log_softmax(student.float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).sum(-1)


# --------------------------------------------------------------------------- MGSKD
def span_lengths(seq_length: int, rate: float, generator: Optional[torch.Generator] = None) -> List[int]:
    """MGSKD's random segmentation of a sequence into n = int(seq_length * rate) spans.

    Lengths int(|z_k| / sum|z| * (S - n)) + 1 with z ~ N(0, 1), then the last ones lengthened
    by 1 until they sum to S. Returns [] when n == 0 (rate 0: the original crashed there). The
    original added 1 to *every* span when the lengths already summed to S (then split failed);
    here nothing is added then.
    """
    num_spans = int(seq_length * rate)
    if num_spans <= 0:
        return []
    weights = torch.randn(num_spans, generator=generator).abs()
    lengths = (weights / weights.sum() * (seq_length - num_spans)).int() + 1
    deficit = seq_length - int(lengths.sum())
    if deficit > 0:
        lengths[num_spans - deficit:] += 1
    elif deficit < 0:   # fp32 rounding pushed a floor up; take it back from the longest span
        lengths[int(lengths.argmax())] += deficit
    return lengths.tolist()


def span_means(hidden: Tensor, lengths: List[int]) -> Tensor:
    """Mean of each span (padding included, as the original). [N, S, D] -> [N, len(lengths), D]."""
    return torch.stack([chunk.mean(1) for chunk in hidden.split(lengths, dim=1)], dim=1)


def span_mask(mask: Tensor, lengths: List[int]) -> Tensor:
    """A span is kept if any of its tokens is. [N, S] -> [N, len(lengths)] bool."""
    return torch.stack([chunk.bool().any(1) for chunk in mask.split(lengths, dim=1)], dim=1)


def _head_scores(hidden: Tensor, num_heads: int) -> Tensor:
    """Scaled dot products per relation head. [N, S, D] -> [N, h, S, S]."""
    rows, length, width = hidden.shape
    if width % num_heads:
        raise ValueError(f"hidden width {width} is not divisible by {num_heads} relation heads")
    heads = hidden.reshape(rows, length, num_heads, width // num_heads).transpose(1, 2)   # [N, h, S, D/h]
    return heads @ heads.transpose(-1, -2) / math.sqrt(width // num_heads)


def _teacher_triplets(scores: Tensor, pair: Tensor, k1: int, k2: int):
    """The teacher's top-k1 'global' tokens (most attention received) and, for each, its top-k2
    'local' neighbours (most attention exchanged, itself excluded from the ranking).
    scores [N, h, S, S] (masked), pair [N, 1, S, S] -> anchors [N, k1], neighbours [N, k1, k2]."""
    length = scores.size(-1)
    probs = torch.softmax(scores + (1.0 - pair) * _MGSKD_MASK_FILL, dim=-1) * pair
    anchors = probs.sum(dim=(1, 2)).topk(min(k1, length), dim=1).indices                     # [N, k1]
    local = probs.sum(1) * (1.0 - torch.eye(length, device=scores.device))                    # [N, S, S]
    neighbours = local.topk(min(k2, length), dim=2).indices                                   # [N, S, k2]
    neighbours = neighbours.gather(1, anchors.unsqueeze(-1).expand(-1, -1, neighbours.size(-1)))
    return anchors, neighbours


def _triplet_angles(hidden: Tensor, anchors: Tensor, neighbours: Tensor) -> Tensor:
    """cos of the angle at each anchor between the differences to two of its neighbours.
    hidden [N, S, D], anchors [N, k1], neighbours [N, k1, k2] -> [N, k1, k2, k2]."""
    rows = torch.arange(hidden.size(0), device=hidden.device)
    anchor_vectors = hidden[rows[:, None], anchors]                                # [N, k1, D]
    neighbour_vectors = hidden[rows[:, None, None], neighbours]                    # [N, k1, k2, D]
    unit = F.normalize(anchor_vectors.unsqueeze(2) - neighbour_vectors, dim=-1)
    return unit @ unit.transpose(-1, -2)


def mgskd_token_loss(student: Tensor, teacher: Tensor, mask: Tensor, *, num_heads: int, k1: int,
                     k2: int) -> Tensor:
    """MGSKD's token (or span) relation loss (TokenPhraseLoss): per-row shares [N].

    Pair term: sum over heads and kept token pairs of (R_s - R_t)^2, R = scaled dot products
    per relation head, divided by the number of kept pairs times heads. Triplet term: at the
    teacher's global tokens, the cosines of the angles between the differences to two local
    neighbours (one relation head), smooth-L1, divided by the number of kept triplets whose
    student angle is nonzero. student [N, S, Ds], teacher [N, S, Dt] (both divisible by
    num_heads), mask [N, S].
    """
    student, teacher = student.float(), teacher.detach().float()
    keep = mask.bool()
    pair = (keep[:, :, None] & keep[:, None, :]).float().unsqueeze(1)                          # [N, 1, S, S]
    s_pair = _head_scores(student, num_heads) * pair
    t_pair = _head_scores(teacher, num_heads) * pair
    pair_sums = (s_pair - t_pair).pow(2).flatten(1).sum(1)
    anchors, neighbours = _teacher_triplets(t_pair, pair, k1, k2)
    rows = torch.arange(keep.size(0), device=keep.device)
    anchor_kept = keep.gather(1, anchors)[:, :, None, None]                                    # [N, k1, 1, 1]
    neighbour_kept = keep[rows[:, None, None], neighbours]                                     # [N, k1, k2]
    off_diagonal = ~torch.eye(neighbours.size(-1), dtype=torch.bool, device=keep.device)
    valid = anchor_kept & neighbour_kept[..., :, None] & neighbour_kept[..., None, :] & off_diagonal
    s_angle = _triplet_angles(student, anchors, neighbours) * valid
    t_angle = _triplet_angles(teacher, anchors, neighbours) * valid
    triplet_sums = F.smooth_l1_loss(s_angle, t_angle, reduction="none").flatten(1).sum(1)
    triplet_count = (valid & (s_angle != 0)).sum()
    return _row_shares(pair_sums, pair.sum() * num_heads) + _row_shares(triplet_sums, triplet_count)


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over the kept tokens. [N, S, D] -> [N, D]."""
    weights = mask.float().unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _sample_angles(pooled: Tensor, num_heads: int) -> Tensor:
    """[N, D] -> [h, N, N, N]: at sample i, cos between the differences to samples j and k."""
    rows, width = pooled.shape
    if width % num_heads:
        raise ValueError(f"hidden width {width} is not divisible by {num_heads} relation heads")
    heads = pooled.reshape(rows, num_heads, width // num_heads).transpose(0, 1)        # [h, N, D/h]
    unit = F.normalize(heads.unsqueeze(1) - heads.unsqueeze(2), dim=-1)               # [h, i, j] = x_j - x_i
    return unit @ unit.transpose(-1, -2)


def mgskd_sample_loss(student: Tensor, teacher: Tensor, mask: Tensor, *, num_heads: int) -> Tensor:
    """MGSKD's sample relation loss (SampleLoss): masked mean pooling, per-head angles over
    sample triplets in the batch, smooth-L1 mean. Returns [N]: the mean over the triplets
    anchored at each row (their mean is the original's mean over all triplets)."""
    s_angle = _sample_angles(_masked_mean(student.float(), mask), num_heads)
    t_angle = _sample_angles(_masked_mean(teacher.detach().float(), mask), num_heads)
    return F.smooth_l1_loss(s_angle, t_angle, reduction="none").mean(dim=(0, 2, 3))


# --------------------------------------------------------------------------- CKD
def _cosines(points: Tensor) -> Tensor:
    """Pairwise cosine similarities. [..., P, D] -> [..., P, P]."""
    unit = F.normalize(points, dim=-1)
    return unit @ unit.transpose(-1, -2)


def _relation_kl(s_cos: Tensor, t_cos: Tensor, keep: Tensor) -> Tensor:
    """Per entry t*(log t - log s), t and s the row softmaxes over the kept entries only; 0 at
    excluded entries and in rows without a kept entry. [..., P, P] -> [..., P, P]."""
    log_t = torch.log_softmax(t_cos.masked_fill(~keep, _EXCLUDED), dim=-1)
    log_s = torch.log_softmax(s_cos.masked_fill(~keep, _EXCLUDED), dim=-1)
    return torch.where(keep, log_t.exp() * (log_t - log_s), torch.zeros((), device=s_cos.device))


def _difference_cosines(points: Tensor, neighbours: Tensor) -> Tensor:
    """cos of the angle at each point between the differences to two of its neighbours.

    points [..., P, D]; neighbours [P, K] (indices into P) -> [..., P, K, K]: <u_k, u_l>,
    u_k = (x_p - x_nk) / |x_p - x_nk|, u = 0 where the difference vanishes. Computed from the
    Gram matrix of the centred points (angles between differences do not depend on the
    centre; centring reduces cancellation), which needs memory ~P*K*K instead of the direct
    P*K*D; a difference below the Gram matrix's fp32 resolution counts as zero.
    """
    points = points - points.mean(dim=-2, keepdim=True)
    gram = points @ points.transpose(-1, -2)
    gram = (gram + gram.transpose(-1, -2)) / 2          # exactly symmetric: G[a, b] == G[b, a] bitwise
    norms = gram.diagonal(dim1=-2, dim2=-1)              # [..., P]
    anchor = torch.arange(neighbours.size(0), device=points.device)[:, None]
    g_pp = norms.unsqueeze(-1)                                                  # [..., P, 1]
    g_pn = gram[..., anchor, neighbours]                                        # [..., P, K]
    g_nn = gram[..., neighbours[:, :, None], neighbours[:, None, :]]            # [..., P, K, K]
    dots = (g_pp - g_pn).unsqueeze(-1) + (g_nn - g_pn.unsqueeze(-2))           # <x_p - x_k, x_p - x_l>
    squares = dots.diagonal(dim1=-2, dim2=-1)                                   # [..., P, K]
    vanishing = squares <= _GRAM_RESOLUTION * (g_pp + norms[..., neighbours])
    inverse = torch.where(vanishing, torch.zeros((), device=points.device), squares.clamp(min=1e-24).rsqrt())
    return dots * inverse.unsqueeze(-1) * inverse.unsqueeze(-2)


def _window_indices(length: int, window: int, device) -> Tensor:
    """[S, w]: positions i - (w-1)/2 ... i + (w-1)/2, clamped to the sequence (edges repeat)."""
    offsets = torch.arange(window, device=device) - (window - 1) // 2
    return (torch.arange(length, device=device)[:, None] + offsets).clamp(0, length - 1)


def ckd_wr_dist(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """CKD word-relation distance: per layer, the row softmax of the token x token cosine
    similarities (self and pad pairs excluded), KL(teacher || student) summed over rows and
    divided by the number of kept token pairs (self pairs included) times layers.
    student [N, L, S, Ds], teacher [N, L, S, Dt], mask [N, S] -> shares [N]."""
    keep = mask.bool()
    pair = keep[:, None, :, None] & keep[:, None, None, :]                             # [N, 1, S, S]
    off = pair & ~torch.eye(keep.size(1), dtype=torch.bool, device=keep.device)
    terms = _relation_kl(_cosines(student.float()), _cosines(teacher.detach().float()), off)
    return _row_shares(terms.flatten(1).sum(1), pair.sum() * student.size(1))


def ckd_ltr_dist(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """CKD layer-transforming-relation distance: per kept token, the row softmax of the layer x
    layer cosine similarities (self excluded), KL(teacher || student), divided by the number of
    kept tokens times L^2. Shapes as `ckd_wr_dist`."""
    keep = mask.bool()
    layers = student.size(1)
    off = keep[:, :, None, None] & ~torch.eye(layers, dtype=torch.bool, device=keep.device)  # [N, S, L, L]
    terms = _relation_kl(_cosines(student.float().transpose(1, 2)), _cosines(teacher.detach().float().transpose(1, 2)),
                         off)
    return _row_shares(terms.flatten(1).sum(1), keep.sum() * layers * layers)


def ckd_wr_angle(student: Tensor, teacher: Tensor, mask: Tensor, window: int) -> Tensor:
    """CKD word-relation angle: per layer and kept token i, the cosines of the angles at i
    between the differences to two tokens of its window (w = window tokens centred on i,
    clamped at the edges, pads included); squared error summed, divided by kept tokens x L x w^2.
    Shapes as `ckd_wr_dist`."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the CKD window must be a positive odd number, got {window}")
    indices = _window_indices(student.size(2), window, student.device)
    s_angle = _difference_cosines(student.float(), indices)                            # [N, L, S, w, w]
    t_angle = _difference_cosines(teacher.detach().float(), indices)
    weights = mask.float()[:, None, :, None, None]
    sums = ((s_angle - t_angle).pow(2) * weights).flatten(1).sum(1)
    return _row_shares(sums, mask.float().sum() * student.size(1) * window * window)


def ckd_ltr_angle(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """CKD layer-transforming-relation angle: per kept token, the cosines of the angles at each
    layer between the differences to two layers, squared error summed, divided by kept
    tokens x L^3. Shapes as `ckd_wr_dist`."""
    layers = student.size(1)
    every_layer = torch.arange(layers, device=student.device).expand(layers, layers)
    s_angle = _difference_cosines(student.float().transpose(1, 2), every_layer)       # [N, S, L, L, L]
    t_angle = _difference_cosines(teacher.detach().float().transpose(1, 2), every_layer)
    weights = mask.float()[:, :, None, None, None]
    sums = ((s_angle - t_angle).pow(2) * weights).flatten(1).sum(1)
    return _row_shares(sums, mask.float().sum() * layers ** 3)
