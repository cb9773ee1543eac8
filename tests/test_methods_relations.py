"""RAIL-KD, MGSKD, CKD, ALP-KD and Universal-KD (distill/methods/{rail_kd,mgskd,ckd,alp_kd,
universal_kd}.py): each loss against a plain-torch reference written here from the methods'
formulas on the full tapped tensors (per sample where a sample's value depends on its rows
only), a literal value per pure loss on a tiny tensor, MP=2 (gloo) against MP=1, fully padded
rows, per-sample losses on choice-expanded rows, pure taps getters, short pretraining runs,
and the RAIL-KD / MGSKD schedule state (resume reproduces the uninterrupted run)."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

import mpu
from dist_utils import assert_rel_close, run_distributed
from distill import AvgTeacher, AvgTeacherOptions, DistillBatch, DistillOptions, StepInfo, TeacherInfo, build_student
from distill.layer_mapping import random_layers
from distill.losses_relations import (alp_kd_loss, ckd_ltr_angle, ckd_ltr_dist, ckd_wr_angle, ckd_wr_dist,
                                      mgskd_sample_loss, mgskd_token_loss, normalized_squared_distance,
                                      span_lengths, universal_kd_loss)
from glm_fixtures import blank_infilling_batch, tiny_config
from model import GLMForMultiTokenCloze, GLMModel

# Implementation and references are both fp32 but differ in summation order, and the CKD
# angles come from Gram matrices there and from direct differences here: the differences
# stay at a few ulp of the summed terms, far below 1e-5 relative.
RTOL = 1e-5
# MP=2 gradients of the projection layers: the hidden states reach them through all-reduces
# in another order, and Universal-KD's gradient is a difference of nearly cancelling
# softmax/KL terms, which turns those ~1e-7 differences into up to ~1.2e-5 of the largest
# entry (measured); 1e-4 leaves margin and still catches any wrong shard (errors of O(1)).
GRAD_RTOL = 1e-4
STUDENT = dict(num_layers=2)                                           # hidden 52 = 4 heads of 13
WIDE_TEACHER = dict(num_layers=4, hidden_size=68, num_attention_heads=4)   # 4 heads of 17
SAME_TEACHER = dict(num_layers=4)                                      # equal widths (ALP-KD)
METHODS = {  # name: (method options, teacher config)
    "rail_kd": (dict(rail_kd_u=10, rail_kd_concatenated=True, rail_kd_has_embed=True, rail_kd_has_final=True,
                     rail_kd_inter_rate=0.5), WIDE_TEACHER),
    "rail_kd_layer_wise": (dict(rail_kd_u=10, rail_kd_has_final=True), WIDE_TEACHER),
    "mgskd": (dict(mgskd_multi_heads=4, mgskd_triplet_k1=4, mgskd_triplet_k2=5, mgskd_sample_level_m=2,
                   mgskd_weight_sample=3.0, mgskd_weight_span=0.5, mgskd_span_max_rate=0.4), WIDE_TEACHER),
    "ckd": (dict(ckd_window_size=5, ckd_wrangle_w=2.0, ckd_ltrangle_w=3.0), WIDE_TEACHER),
    "alp_kd": (dict(alp_kd_lambda=0.3), SAME_TEACHER),
    "universal_kd": (dict(universal_kd_gamma=0.7), WIDE_TEACHER),
}


def method_name(key):
    return "rail_kd" if key.startswith("rail_kd") else key


def padded_batch(fully_padded_row=False):
    """3 rows of 11 tokens; row 2 ends in 3 pads (position 0); optionally row 1 fully padded."""
    ids, position, sep, target, loss_mask = blank_infilling_batch(seed=1, seps=(4, 6, 8))
    position[2, :, 8:] = 0
    loss_mask[2, 8:] = 0
    if fully_padded_row:
        position[1] = 0
        loss_mask[1] = 0
    return ids, position, sep, target, loss_mask


def build(key, seed=11, teacher_seed=7, student_config=(), **overrides):
    """(student wrapper, frozen teacher GLM) built from fixed seeds; `overrides`: method options."""
    options, teacher_config = METHODS[key]
    options = dict(options, **overrides)
    torch.manual_seed(teacher_seed)
    teacher = GLMModel(tiny_config(**teacher_config)).requires_grad_(False)
    torch.manual_seed(seed)
    info = TeacherInfo(teacher_config["num_layers"], teacher.config.hidden_size, 4)
    student = build_student(method_name(key), GLMModel(tiny_config(**STUDENT, **dict(student_config))),
                            DistillOptions(), [info], method_options=options)
    return student, teacher


def run_models(student, teacher, batch, step=StepInfo()):
    """(student output, teacher output, DistillBatch) of one pass, begun by `begin_step`."""
    ids, position, sep, target, loss_mask = batch
    student.begin_step(step)
    s_out = student(ids, position, sep, taps=student.student_taps(step))
    with torch.no_grad():
        t_out = teacher(ids, position, sep, taps=student.teacher_taps(0, step))
    distill_batch = DistillBatch("pretrain", loss_mask=loss_mask, labels=target, position_ids=position,
                                 token_level=True)
    return s_out, t_out, distill_batch


def run_inter(student, teacher, batch, step=StepInfo()):
    """(per-sample inter loss [B], metrics, student taps, teacher taps) of one pass."""
    s_out, t_out, distill_batch = run_models(student, teacher, batch, step)
    loss, metrics = student.inter_loss(s_out, t_out, distill_batch, step)
    return loss, metrics, s_out.taps, t_out.taps


def keep_of(position):
    mask = position[:, 0] > 0
    mask[:, 0] = True
    return mask


# --------------------------------------------------------------------------- plain-torch references
def unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def ref_rail_kd(student, s_taps, t_taps, rate, concatenated):
    names = sorted(s_taps)        # layers.0..., layers.1..., output: representation order
    t_names = sorted(t_taps)
    s = [s_taps[n].mean(1) for n in names]
    t = [t_taps[n].mean(1) for n in t_names]
    s, t = (torch.cat(s, -1), torch.cat(t, -1)) if concatenated else (torch.stack(s, 1), torch.stack(t, 1))
    s = s @ student.s_fit_dense.weight.T + student.s_fit_dense.bias
    t = t @ student.t_fit_dense[0].weight.T + student.t_fit_dense[0].bias
    return rate * (unit(s) - unit(t)).pow(2).sum()


def ref_pair_and_triplets(s, t, keep, heads, k1, k2):
    """MGSKD TokenPhraseLoss on one representation, row by row."""
    rows, length = keep.shape
    pair_sum = pair_count = triplet_sum = triplet_count = 0.0
    for n in range(rows):
        m = keep[n].float()
        pair = m[:, None] * m[None, :]
        probs = 0.0
        for h in range(heads):
            sh, th = s[n].reshape(length, heads, -1)[:, h], t[n].reshape(length, heads, -1)[:, h]
            rs = sh @ sh.T / math.sqrt(sh.size(-1)) * pair
            rt = th @ th.T / math.sqrt(th.size(-1)) * pair
            pair_sum += ((rs - rt) ** 2).sum()
            pair_count += pair.sum()
            probs = probs + torch.softmax(rt - 10000.0 * (1 - pair), -1) * pair
        anchors = torch.argsort(probs.sum(0), descending=True)[:min(k1, length)]
        local = probs * (1 - torch.eye(length))
        for a in anchors:
            neighbours = torch.argsort(local[a], descending=True)[:min(k2, length)]
            s_angle = unit(s[n, a] - s[n, neighbours]) @ unit(s[n, a] - s[n, neighbours]).T
            t_angle = unit(t[n, a] - t[n, neighbours]) @ unit(t[n, a] - t[n, neighbours]).T
            valid = (m[a] * m[neighbours][:, None] * m[neighbours][None, :]) * (1 - torch.eye(len(neighbours)))
            triplet_sum += F.smooth_l1_loss(s_angle * valid, t_angle * valid, reduction="sum")
            triplet_count += ((s_angle * valid) != 0).sum()
    return pair_sum / pair_count + triplet_sum / max(triplet_count, 1)


def ref_sample(s, t, keep, heads):
    m = keep.float()[..., None]
    pooled = [(x * m).sum(1) / m.sum(1) for x in (s, t)]
    total = 0.0
    for h in range(heads):
        angles = []
        for p in pooled:
            ph = p.reshape(p.size(0), heads, -1)[:, h]
            angles.append(torch.stack([unit(ph - ph[i]) @ unit(ph - ph[i]).T for i in range(ph.size(0))]))
        total += F.smooth_l1_loss(angles[0], angles[1], reduction="sum")
    return total / (heads * s.size(0) ** 3)


def ref_mgskd(options, s_taps, t_taps, keep, lengths):
    s_reps = [s_taps["layers.0.layernorm_output"], s_taps["layers.1.layernorm_output"], s_taps["output"]]
    t_reps = [t_taps["layers.0.layernorm_output"], t_taps["layers.2.layernorm_output"], t_taps["output"]]  # stride 2
    heads, k1, k2 = options["mgskd_multi_heads"], options["mgskd_triplet_k1"], options["mgskd_triplet_k2"]
    bounds = [0] + torch.tensor(lengths).cumsum(0).tolist()
    spans = lambda x: torch.stack([x[:, a:b].mean(1) for a, b in zip(bounds, bounds[1:])], 1)
    span_keep = torch.stack([keep[:, a:b].any(1) for a, b in zip(bounds, bounds[1:])], 1)
    total = 0.0
    for i, (s, t) in enumerate(zip(s_reps, t_reps)):
        if i < options["mgskd_sample_level_m"]:
            total += options.get("mgskd_weight_token", 1.0) * ref_pair_and_triplets(s, t, keep, heads, k1, k2)
            total += options["mgskd_weight_span"] * ref_pair_and_triplets(spans(s), spans(t), span_keep, heads, k1,
                                                                          k2)
        else:
            total += options["mgskd_weight_sample"] * ref_sample(s, t, keep, heads)
    return total


def ref_ckd(options, s_taps, t_taps, keep):
    """The original's formulation: -inf fills and torch 1.9's kl_div (terms where target > 0)."""
    s = torch.stack([s_taps["layers.0.layernorm_output"], s_taps["layers.1.layernorm_output"], s_taps["output"]], 1)
    t = torch.stack([t_taps["layers.0.layernorm_output"], t_taps["layers.2.layernorm_output"], t_taps["output"]], 1)
    rows, layers, length, _ = s.shape
    m = keep.float()
    kl = lambda p_t, log_s: torch.where(p_t > 0, p_t * (p_t.log() - log_s), torch.zeros(())).sum()

    def relation_dist(x_s, x_t, pair):   # x: [..., P, D]; pair: [..., P, P]
        size = x_s.size(-2)
        fill = lambda c: c.masked_fill(torch.eye(size, dtype=torch.bool), -math.inf).masked_fill(pair == 0, -math.inf)
        p_t = torch.softmax(fill(unit(x_t) @ unit(x_t).transpose(-1, -2)), -1) * pair
        log_s = torch.log_softmax(fill(unit(x_s) @ unit(x_s).transpose(-1, -2)), -1) * pair
        return kl(p_t, log_s) / pair.expand(p_t.shape).sum()

    def angles(x, neighbours):   # x [..., P, D], neighbours [P, K] -> [..., P, K, K]
        diff = unit(x.unsqueeze(-2) - x[..., neighbours, :])
        return diff @ diff.transpose(-1, -2)

    window = options["ckd_window_size"]
    offsets = torch.arange(window) - window // 2
    indices = (torch.arange(length)[:, None] + offsets).clamp(0, length - 1)
    wr_angle = ((angles(s, indices) - angles(t, indices)) ** 2 * m[:, None, :, None, None]).sum() / (
        m.sum() * layers * window ** 2)
    every = torch.arange(layers).expand(layers, layers)
    s_tok, t_tok = s.transpose(1, 2), t.transpose(1, 2)
    ltr_angle = ((angles(s_tok, every) - angles(t_tok, every)) ** 2 * m[:, :, None, None, None]).sum() / (
        m.sum() * layers ** 3)
    wr_dist = relation_dist(s, t, (m[:, None, :, None] * m[:, None, None, :]).expand(rows, layers, length, length))
    ltr_dist = relation_dist(s_tok, t_tok, m[:, :, None, None].expand(rows, length, layers, layers))
    return (options.get("ckd_wrdist_w", 1.0) * wr_dist + options["ckd_wrangle_w"] * wr_angle
            + options.get("ckd_ltrdist_w", 1.0) * ltr_dist + options["ckd_ltrangle_w"] * ltr_angle)


def ref_layer_attention(s, t):
    """tau_i = sum_j softmax_j(<S_i, T_j>) T_j, one student layer at a time."""
    return [(torch.softmax((s[:, i:i + 1] * t).sum(-1), -1).unsqueeze(-1) * t).sum(1) for i in range(s.size(1))]


def ref_alp_kd(lam, s_taps, t_taps):
    s = torch.stack([s_taps["layers.1.layernorm_output"][:, 0], s_taps["output"][:, 0]], 1)
    t = torch.stack([t_taps[f"layers.{j}.layernorm_output"][:, 0] for j in (1, 2, 3)] + [t_taps["output"][:, 0]], 1)
    return lam * sum(F.mse_loss(s[:, i], target) for i, target in enumerate(ref_layer_attention(s, t)))


def ref_universal_kd(gamma, student, s_taps, t_taps):
    s = torch.stack([s_taps["layers.1.layernorm_output"][:, 0] @ student.s_fit_dense[0].weight.T], 1)
    t = torch.stack([t_taps[f"layers.{j}.layernorm_output"][:, 0] @ student.t_fit_dense[0][j - 1].weight.T
                     for j in (1, 2, 3)], 1)
    kls = [F.kl_div(F.log_softmax(s[:, i], -1), F.softmax(target, -1), reduction="batchmean")
           for i, target in enumerate(ref_layer_attention(s, t))]
    return gamma * sum(kls)


def reference(key, student, s_taps, t_taps, batch):
    options, _ = METHODS[key]
    keep = keep_of(batch[1])
    if key.startswith("rail_kd"):
        return ref_rail_kd(student, s_taps, t_taps, options.get("rail_kd_inter_rate", 0.3334),
                           options.get("rail_kd_concatenated", False))
    if key == "mgskd":
        return ref_mgskd(options, s_taps, t_taps, keep, student.spans(batch[0].size(1), StepInfo(), 0))
    if key == "ckd":
        return ref_ckd(options, s_taps, t_taps, keep)
    if key == "alp_kd":
        return ref_alp_kd(options["alp_kd_lambda"], s_taps, t_taps)
    return ref_universal_kd(options["universal_kd_gamma"], student, s_taps, t_taps)


def per_sample_reference(key, student, s_taps, t_taps, samples):
    """[samples] references of the methods whose per-sample value depends on the sample's rows
    only, from `reference`'s formulas on each sample's rows (its C choice rows in cloze): RAIL-KD
    B x the sample's sum, ALP-KD and Universal-KD the mean over its rows. None for MGSKD and
    CKD, whose row shares divide by batch-wide counts."""
    options, _ = METHODS[key]
    if key in ("mgskd", "ckd"):
        return None
    per = next(iter(s_taps.values())).size(0) // samples
    values = []
    for b in range(samples):
        s_part = {name: x[b * per:(b + 1) * per] for name, x in s_taps.items()}
        t_part = {name: x[b * per:(b + 1) * per] for name, x in t_taps.items()}
        if key.startswith("rail_kd"):
            values.append(samples * ref_rail_kd(student, s_part, t_part, options.get("rail_kd_inter_rate", 0.3334),
                                                options.get("rail_kd_concatenated", False)))
        elif key == "alp_kd":
            values.append(ref_alp_kd(options["alp_kd_lambda"], s_part, t_part))
        else:
            values.append(ref_universal_kd(options["universal_kd_gamma"], student, s_part, t_part))
    return torch.stack(values)


# --------------------------------------------------------------------------- golden values
@pytest.mark.parametrize("key", sorted(METHODS))
def test_loss_matches_the_plain_torch_reference(key):
    student, teacher = build(key)
    batch = padded_batch()
    s_out, t_out, distill_batch = run_models(student, teacher, batch)
    loss, metrics = student.inter_loss(s_out, t_out, distill_batch, StepInfo())
    s_taps = {k: v.detach() for k, v in s_out.taps.items() if k != "position_ids"}
    expected = reference(key, student, s_taps, t_out.taps, batch)
    # Per sample [B]; the method's loss (RAIL-KD's batch sum, the others' batch means) is its mean.
    assert loss.shape == (3,) and loss.dtype == torch.float32 and loss.mean().item() > 0
    assert_rel_close(loss.mean(), expected, RTOL, key)
    per_sample = per_sample_reference(key, student, s_taps, t_out.taps, 3)
    if per_sample is not None:
        assert_rel_close(loss, per_sample, RTOL, f"{key} per sample")
    assert metrics and all(not v.requires_grad and v.shape == () for v in metrics.values())
    # AvgTeacher (no prediction-layer term here) reduces the [B] vector by its mean: the same number.
    total, _ = AvgTeacher(AvgTeacherOptions(), DistillOptions()).compute(
        student, s_out, torch.tensor(0.0), [t_out], distill_batch, StepInfo())
    assert_rel_close(total, expected, RTOL, f"{key} through AvgTeacher")


@pytest.mark.parametrize("key", sorted(METHODS))
def test_taps_getters_are_pure(key):
    """After begin_step, the getters are queries: two calls agree and change no method state."""
    student, _ = build(key)
    step = StepInfo(epoch=2, iteration=5)
    student.begin_step(step)
    state = student.method_state()
    first = (student.student_taps(step), student.teacher_taps(0, step))
    assert (student.student_taps(step), student.teacher_taps(0, step)) == first
    assert student.method_state() == state


def test_ckd_fully_padded_row_matches_torch_1_9_semantics():
    """The original's torch 1.9 dropped the NaN rows through kl_div's target > 0; the explicit
    masking gives that value, finitely, with finite gradients."""
    student, teacher = build("ckd")
    batch = padded_batch(fully_padded_row=True)
    loss, _, s_taps, t_taps = run_inter(student, teacher, batch)
    expected = ref_ckd(METHODS["ckd"][0], {k: v.detach() for k, v in s_taps.items()}, t_taps, keep_of(batch[1]))
    assert torch.isfinite(expected)
    assert_rel_close(loss.mean(), expected, RTOL, "ckd with a fully padded row")


@pytest.mark.parametrize("key", sorted(METHODS))
def test_fully_padded_rows_give_no_nan(key):
    student, teacher = build(key)
    loss, _, _, _ = run_inter(student, teacher, padded_batch(fully_padded_row=True))
    loss.mean().backward()
    assert loss.shape == (3,) and torch.isfinite(loss).all(), key
    for name, param in student.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), f"{key}: {name}"


def test_literal_values():
    # RAIL-KD: two orthogonal directions, |u - v|^2 = 2.
    assert normalized_squared_distance(torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, -3.0]])).item() == \
        pytest.approx(2.0, abs=1e-6)
    # ALP-KD / Universal-KD: S = (1, 0) against T = {(1, 0), (0, 1)}: alpha = (p, 1-p), p = e/(1+e).
    s, t = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = math.e / (1 + math.e)
    assert alp_kd_loss(s, t).item() == pytest.approx((1 - p) ** 2, abs=1e-6)        # ((1-p)^2 + (1-p)^2) / 2
    q = 1 / (1 + math.exp(1 - 2 * p))                                                # softmax(p, 1-p)_0
    assert universal_kd_loss(s, t).item() == pytest.approx(q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)),
                                                           abs=1e-6)
    # Three points: teacher (0,0), (1,0), (0,1); student (0,0), (1,0), (-1,0).
    teacher, student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0],
                                                                                         [-1.0, 0.0]])
    gap = (1 - 1 / math.sqrt(2)) ** 2     # (1 - cos 45 deg)^2
    # MGSKD sample angles (one head): errors 1 at (0,1,2), (0,2,1) and 1 - 1/sqrt 2 at four more
    # triplets; smooth-L1 0.5 and gap / 2; mean over the 27 triplets.
    rows = mgskd_sample_loss(student[:, None], teacher[:, None], torch.ones(3, 1), num_heads=1)
    assert rows.mean().item() == pytest.approx((2 * 0.5 + 4 * gap / 2) / 27, abs=1e-6)
    # MGSKD token relations: a student = 2 x teacher has the teacher's angles, and pair scores
    # 4x: two nonzero entries 1/sqrt 2 -> (3/sqrt 2)^2 each, over 9 pairs.
    rows = mgskd_token_loss(2 * teacher[None], teacher[None], torch.ones(1, 3), num_heads=1, k1=3, k2=3)
    assert rows.item() == pytest.approx(2 * 4.5 / 9, abs=1e-6)
    # CKD LTR angle: the same three points as three layers of one token: errors 2 + 4 * gap over 27.
    rows = ckd_ltr_angle(student[None, :, None], teacher[None, :, None], torch.ones(1, 1))
    assert rows.item() == pytest.approx((2 + 4 * gap) / 27, abs=1e-6)
    # CKD WR angle, window 3, one layer of three tokens: only token 1 sees both others: 2 * gap over 27.
    rows = ckd_wr_angle(student[None, None], teacher[None, None], torch.ones(1, 3), window=3)
    assert rows.item() == pytest.approx(2 * gap / 27, abs=1e-6)
    # CKD LTR dist: teacher rows are uniform (cosines with the zero vector are 0); student rows 1, 2
    # are (p, 1-p): KL(uniform || (p, 1-p)) = -ln 2 - (ln p + ln(1-p)) / 2 each, over 9 pairs.
    kl_uniform = -math.log(2) - (math.log(p) + math.log(1 - p)) / 2
    rows = ckd_ltr_dist(student[None, :, None], teacher[None, :, None], torch.ones(1, 1))
    assert rows.item() == pytest.approx(2 * kl_uniform / 9, abs=1e-6)
    # CKD WR dist: tokens t = (1,0),(1,0),(0,1), s = (1,0),(0,1),(1,0): row 0 KL((p,1-p)||(1-p,p))
    # = 2p - 1, row 1 KL((p,1-p)||uniform), row 2 KL(uniform||(p,1-p)); over 9 pairs.
    t_tokens = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s_tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    kl_to_uniform = math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)
    rows = ckd_wr_dist(s_tokens[None, None], t_tokens[None, None], torch.ones(1, 3))
    assert rows.item() == pytest.approx((2 * p - 1 + kl_to_uniform + kl_uniform) / 9, abs=1e-6)


def test_span_lengths():
    gen = torch.Generator().manual_seed(3)
    lengths = span_lengths(50, 0.4, gen)
    # Independently: the same normal draws, int(|z| / sum |z| * (S - n)) + 1, last ones + 1.
    z = torch.randn(20, generator=torch.Generator().manual_seed(3)).abs()
    expected = [int(v) + 1 for v in (z / z.sum() * 30).tolist()]
    for i in range(50 - sum(expected)):
        expected[-1 - i] += 1
    assert lengths == expected and sum(lengths) == 50 and min(lengths) >= 1
    assert span_lengths(50, 0.0, gen) == [] and span_lengths(2, 0.4, gen) == []   # no span: no crash
    assert span_lengths(4, 0.4, gen) == [4]   # the original lengthened this to [5] and crashed


# --------------------------------------------------------------------------- choice-expanded rows
@pytest.mark.parametrize("key", ["mgskd", "ckd", "universal_kd", "rail_kd"])
def test_cloze_rows_fold_back_to_samples(key):
    """Multi-choice fine-tuning: [B, C, S] inputs become B*C rows; the mask comes from the
    flattened position ids; the loss has one value per sample."""
    student, teacher = build(key)
    ids, position, sep, target, loss_mask = padded_batch()
    cloze_s, cloze_t = GLMForMultiTokenCloze(student.model), GLMForMultiTokenCloze(teacher)
    student.model = cloze_s
    step = StepInfo()
    student.begin_step(step)
    pairs = lambda x: torch.cat([x, x.flip(0)])[:4].reshape(2, 2, *x.shape[1:])   # B=2 samples x C=2 choices
    inputs = (pairs(ids), pairs(position), pairs(sep[:, None]).reshape(2, 2), pairs(target), pairs(loss_mask))
    s_out = student(*inputs, taps=student.student_taps(step))
    with torch.no_grad():
        t_out = cloze_t(*inputs, taps=student.teacher_taps(0, step))
    batch = DistillBatch("finetune", labels=torch.tensor([0, 1]))
    loss, _ = student.inter_loss(s_out, t_out, batch, step)
    assert s_out.logits.shape == (2, 2) and loss.shape == (2,)
    flat = {k: v.detach() for k, v in s_out.taps.items() if k != "position_ids"}
    expected = reference(key, student, flat, t_out.taps, (inputs[0].flatten(0, 1), inputs[1].flatten(0, 1)))
    assert_rel_close(loss.mean(), expected, RTOL, f"{key} on choice rows")
    per_sample = per_sample_reference(key, student, flat, t_out.taps, 2)
    if per_sample is not None:
        assert_rel_close(loss, per_sample, RTOL, f"{key} per sample on choice rows")


# --------------------------------------------------------------------------- short runs
@pytest.mark.parametrize("key", sorted(METHODS))
def test_a_short_pretraining_run_decreases_the_loss(key):
    student, teacher = build(key)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    batch, losses = padded_batch(), []
    for _ in range(6):
        optimizer.zero_grad()
        loss, _, _, _ = run_inter(student, teacher, batch)
        loss = loss.mean()
        loss.backward()
        if not losses:
            for name, param in student.named_parameters():
                if not name.startswith("model."):   # the auxiliary (projection) layers
                    assert param.grad is not None and param.grad.abs().sum() > 0, f"{key}: {name}"
                    assert mpu.get_partition_spec(param) is not None, f"{key}: {name} has no partition metadata"
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{key}: {losses}"
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("key", ["rail_kd", "ckd", "universal_kd"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(key):
    """The taps leave the checkpointed layer chunks with their graphs."""
    results = []
    for checkpointing in (False, True):
        student, teacher = build(key, student_config={"checkpoint_activations": checkpointing})
        assert student.supports_activation_checkpointing
        loss, _, _, _ = run_inter(student, teacher, padded_batch())
        loss.mean().backward()
        # Parameters after the last tapped layer get no gradient without checkpointing and a zero one with it.
        results.append((loss.detach(), {n: torch.zeros_like(p) if p.grad is None else p.grad
                                        for n, p in student.named_parameters()}))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert_rel_close(checkpointed, plain, RTOL, f"{key} loss")
    assert sum(bool(g.abs().sum() > 0) for g in plain_grads.values()) > 10
    for name, grad in plain_grads.items():
        assert_rel_close(checkpointed_grads[name], grad, RTOL, f"{key} {name}")   # the same ops, recomputed


# --------------------------------------------------------------------------- schedules and options
def test_rail_kd_resamples_per_period_and_resumes():
    torch.manual_seed(5)
    teachers = [TeacherInfo(8, 52, 4)]
    student = build_student("rail_kd", GLMModel(tiny_config(num_layers=3)), DistillOptions(), teachers,
                            method_options=dict(rail_kd_u=8))
    def layers(s, **step):
        s.begin_step(StepInfo(**step))
        return s.teacher_taps(0, StepInfo(**step))

    first = layers(student, epoch=0, iteration=0)
    assert first == layers(student, epoch=0, iteration=7)     # cached within an epoch
    inner = random_layers(3, 8, random.Random(f"rail_kd:{student.seed}:0:0"))[1:-1]
    assert first == [f"layers.{i}.layernorm_output" for i in inner]
    by_epoch = [layers(student, epoch=e) for e in range(8)]
    assert len({tuple(x) for x in by_epoch}) > 1               # re-sampled when the epoch changes
    # The getter only reads what begin_step drew: the same answer twice, no state change, and
    # a step of another period without its begin_step is refused instead of re-sampled.
    state = student.method_state()
    assert student.teacher_taps(0, StepInfo(epoch=7)) == student.teacher_taps(0, StepInfo(epoch=7)) == by_epoch[7]
    with pytest.raises(RuntimeError, match="begin_step"):
        student.teacher_taps(0, StepInfo(epoch=3))
    assert student.method_state() == state
    # Resume: a student built with another seed continues like the saved one.
    layers(student, epoch=3)
    state = student.method_state()
    torch.manual_seed(99)
    resumed = build_student("rail_kd", GLMModel(tiny_config(num_layers=3)), DistillOptions(), teachers,
                            method_options=dict(rail_kd_u=8))
    assert resumed.seed != student.seed
    resumed.load_method_state(state)
    assert resumed.method_state() == state
    assert [layers(resumed, epoch=e) for e in range(3, 8)] == by_epoch[3:]
    with pytest.raises(ValueError, match="seed, sampled"):
        resumed.load_method_state({"seed": 1})
    # Iteration periods, and fixed stride layers.
    by_iters = build_student("rail_kd", GLMModel(tiny_config(num_layers=3)), DistillOptions(), teachers,
                             method_options=dict(rail_kd_u=8, rail_kd_epochs=0, rail_kd_iters=4))
    assert layers(by_iters, iteration=4) == layers(by_iters, iteration=7)
    fixed = build_student("rail_kd", GLMModel(tiny_config(num_layers=3)), DistillOptions(), teachers,
                          method_options=dict(rail_kd_u=8, rail_kd_no_random=True, rail_kd_has_final=True))
    assert layers(fixed) == ["layers.2.layernorm_output", "layers.4.layernorm_output", "output"]


def test_rail_kd_resumed_training_continues_identically():
    """Train 2 epochs x 2 steps, save weights + method state after the first epoch, restore
    into a student built from another seed, and continue: the losses are identical."""
    def step_loss(student, teacher, optimizer, epoch):
        optimizer.zero_grad()
        loss, _, _, _ = run_inter(student, teacher, padded_batch(), StepInfo(epoch=epoch))
        loss = loss.mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    student, teacher = build("rail_kd")
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    step_loss(student, teacher, optimizer, 0)
    saved = ({k: v.clone() for k, v in student.state_dict().items()}, student.method_state())
    uninterrupted = [step_loss(student, teacher, optimizer, e) for e in (1, 1, 2)]
    resumed, _ = build("rail_kd", seed=123)
    resumed.load_state_dict(saved[0])
    resumed.load_method_state(saved[1])
    optimizer = torch.optim.SGD(resumed.parameters(), lr=0.1)
    assert [step_loss(resumed, teacher, optimizer, e) for e in (1, 1, 2)] == uninterrupted


def test_mgskd_spans_and_state():
    student, teacher = build("mgskd")
    assert student.spans(11, StepInfo(iteration=3), 0) == student.spans(11, StepInfo(iteration=3), 0)
    assert sum(student.spans(11, StepInfo(iteration=4), 0)) == 11
    state = student.method_state()
    other, _ = build("mgskd", seed=321)
    other.load_method_state(state)
    assert [other.spans(40, StepInfo(iteration=i), 0) for i in range(5)] == \
        [student.spans(40, StepInfo(iteration=i), 0) for i in range(5)]
    # Rate 0 (the original crashed): no span term, a warning at construction.
    with pytest.warns(UserWarning, match="span_max_rate=0"):
        options = dict(METHODS["mgskd"][0], mgskd_span_max_rate=0.0)
        no_spans = build_student("mgskd", GLMModel(tiny_config(**STUDENT)), DistillOptions(),
                                 [TeacherInfo(4, 68, 4)], method_options=options)
    loss, metrics, _, _ = run_inter(no_spans, teacher, padded_batch())
    assert torch.isfinite(loss).all() and "inter/mgskd_span" not in metrics
    # The second fine-tuning stage: no taps, exactly 0.
    off = build_student("mgskd", GLMModel(tiny_config(**STUDENT)), DistillOptions(), [TeacherInfo(4, 68, 4)],
                        method_options=dict(mgskd_wo_inter=True))
    assert off.student_taps(StepInfo()) == []
    assert torch.equal(run_inter(off, teacher, padded_batch())[0], torch.zeros(3))


def test_options_and_sizes_fail_loudly():
    teachers = [TeacherInfo(4, 68, 4)]
    with pytest.raises(ValueError, match="equal hidden_size"):
        build_student("alp_kd", GLMModel(tiny_config(**STUDENT)), DistillOptions(), teachers)
    with pytest.raises(ValueError, match="not divisible"):
        build_student("mgskd", GLMModel(tiny_config(**STUDENT)), DistillOptions(), teachers)   # 64 heads
    with pytest.raises(ValueError, match="odd"):
        build_student("ckd", GLMModel(tiny_config(**STUDENT)), DistillOptions(), teachers,
                      method_options=dict(ckd_window_size=4))
    with pytest.raises(ValueError, match="teachers"):
        build_student("universal_kd", GLMModel(tiny_config(**STUDENT)), DistillOptions())
    with pytest.warns(UserWarning, match="rail_kd_layer_wise_alpha has no effect"):
        build_student("rail_kd", GLMModel(tiny_config(**STUDENT)), DistillOptions(), teachers,
                      method_options=dict(rail_kd_layer_wise_alpha=0.5))
    # ALP-KD's lambda scales the loss (the original ignored it).
    student, teacher = build("alp_kd")
    loss, _, _, _ = run_inter(student, teacher, padded_batch())
    unit_lambda, _ = build("alp_kd", alp_kd_lambda=1.0)
    assert_rel_close(run_inter(unit_lambda, teacher, padded_batch())[0] * 0.3, loss, RTOL, "lambda")
    # Universal-KD CG mode: one projection per side, the outputs only.
    cg = build_student("universal_kd", GLMModel(tiny_config(**STUDENT)), DistillOptions(), teachers,
                       method_options=dict(universal_kd_cg=True))
    assert cg.student_taps(StepInfo()) == ["output"] and len(cg.t_fit_dense[0]) == 1


# --------------------------------------------------------------------------- MP=2
def _mp_results(keys, states, rank=0, world_size=1):
    """Loss and auxiliary-weight gradients (this rank's shards) of every method."""
    results = {}
    for key in keys:
        student, teacher = build(key)
        student_state, teacher_state, method_state = states[key]
        student.load_state_dict(mpu.shard_state_dict(student_state, mpu.partition_specs(student), rank, world_size))
        teacher.load_state_dict(mpu.shard_state_dict(teacher_state, mpu.partition_specs(teacher), rank, world_size))
        student.load_method_state(method_state)
        loss, _, _, _ = run_inter(student, teacher, padded_batch())
        loss.mean().backward()
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if not n.startswith("model.")}
        results[key] = (loss.detach(), grads, {n: mpu.get_partition_spec(p) for n, p in student.named_parameters()})
    return results


def _mp_worker(rank, world_size, states, expected):
    actual = _mp_results(sorted(states), states, rank, world_size)
    for key, (loss, grads, specs) in actual.items():
        assert_rel_close(loss, expected[key][0], RTOL, f"{key} loss at MP=2")
        for name, grad in grads.items():
            assert_rel_close(grad, mpu.shard_of(expected[key][1][name], specs[name], rank, world_size), GRAD_RTOL,
                             f"{key} {name} gradient shard")
    return True


@pytest.mark.slow
def test_losses_at_mp2_match_mp1():
    states = {}
    for key in sorted(METHODS):
        student, teacher = build(key)
        states[key] = (student.state_dict(), teacher.state_dict(), student.method_state())
    expected = {key: value[:2] for key, value in _mp_results(sorted(METHODS), states).items()}
    assert run_distributed(_mp_worker, 2, states, expected) == [True, True]
