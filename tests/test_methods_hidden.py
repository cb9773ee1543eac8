"""TinyBERT, MiniLMv2, MiniLM, DistilBERT and PKD (distill/methods/{tinybert,minilmv2,minilm,distilbert,pkd}.py).

Per method, on a tiny fixed teacher (4 layers, 52 wide) and student (2 layers, 28 or 52
wide): the loss against a plain-torch reference written here from the methods' formulas on
full (MP=1) taps, the same loss and gradients at MP=2 (one gloo spawn for all cases), a
short run that lowers the loss, fully padded rows, options and schedule. Every pure loss
also gets a literal value on a tiny tensor. Losses are per sample [B]; the method's loss is
their mean.
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from dist_utils import assert_rel_close, run_distributed
from distill import DistillBatch, DistillOptions, StepInfo, TeacherInfo, build_student
from distill.losses_hidden import (attention_kl, attention_mse, cosine_distance, hidden_mse, patience_mse,
                                   probability_kl, relation_kl, split_relation_heads)
from distill.methods.minilmv2 import MiniLMv2Options
from distill.methods.tinybert import TinyBERTOptions
from glm_fixtures import NO_DROPOUT, blank_infilling_batch
from model import GLMConfig, GLMForMultiTokenCloze, GLMModel
from training.stages import lm_loss

# fp32 throughout; implementation and references differ only in summation order and in the
# all-reduces at MP=2 (errors ~1e-7 relative), so 1e-5 relative holds with a wide margin.
RTOL = 1e-5
TEACHER = (4, 52, 4)                 # layers, hidden, heads (head size 13)
NARROW, WIDE = (2, 28, 4), (2, 52, 4)
VOCAB, SEQ = 136, 11
GRAD_PARAM = "transformer.layers.0.input_layernorm.weight"   # replicated, upstream of every tap

# per_sample: the case's reference is per sample [B] (and a fine-tuning hard loss is [B]); else
# the reference is the scalar mean of the [B] loss.
CASES = {  # name: (method, student, stage, generic options, method options, step, per_sample)
    "tinybert": ("tinybert", NARROW, "pretrain", {}, {}, StepInfo(), False),
    "tinybert_random": ("tinybert", NARROW, "pretrain", {},
                        dict(tinybert_random_layers=True, tinybert_random_e=0, tinybert_random_i=2),
                        StepInfo(iteration=5), False),
    "tinybert_ft": ("tinybert", NARROW, "finetune", {}, {}, StepInfo(), True),
    "minilmv2": ("minilmv2", NARROW, "pretrain", {}, dict(minilmv2_relation_heads=4, minilmv2_teacher_layer=-2),
                 StepInfo(), False),
    "minilm": ("minilm", NARROW, "pretrain", {}, {}, StepInfo(), False),
    "distilbert": ("distilbert", WIDE, "pretrain", dict(distill_temperature=2.0),
                   dict(distilbert_alpha_ce=5.0, distilbert_alpha_mlm=2.0, distilbert_alpha_cos=1.0,
                        distilbert_cos_mask_padding=True), StepInfo(), False),
    "distilbert_ln": ("distilbert", WIDE, "pretrain", {},
                      dict(distilbert_fix_layernorm=True, distilbert_ce_mask_padding=True), StepInfo(), False),
    "pkd": ("pkd", WIDE, "finetune",
            dict(distill_ft_soft=True, distill_ft_soft_kl=True, distill_ft_hard=True, distill_temperature=10.0),
            dict(pkd_normalized_patience=True, pkd_wo_final=True, pkd_only_cls=True), StepInfo(), False),
    "pkd_pt": ("pkd", WIDE, "pretrain", dict(distill_pt_soft=True, distill_pt_hard=True),
               dict(pkd_use_embed=True, pkd_beta=3.0), StepInfo(), False),
}


# --------------------------------------------------------------------------- fixtures
def glm_config(layers, hidden, heads, **overrides):
    return GLMConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, vocab_size=VOCAB,
                     max_sequence_length=32, **NO_DROPOUT, **overrides)


def pretrain_batch():
    """3 blank-infilling rows plus a fully padded one (ids, positions, targets and mask all 0)."""
    ids, position, sep, target, loss_mask = blank_infilling_batch(seed=1, batch=4, seq=SEQ, seps=(4, 6, 11, 1))
    ids[3], position[3], target[3], loss_mask[3] = 0, 0, 0, 0
    return dict(inputs=(ids, position, sep), target=target, loss_mask=loss_mask)


def finetune_batch():
    """2 samples x 3 choices (multi-token cloze); choice 2 of sample 1 is fully padded."""
    ids, position, sep, target, mask = blank_infilling_batch(seed=2, batch=6, seq=SEQ, seps=(4, 6, 9, 5, 7, 1))
    ids[5], position[5], target[5], mask[5] = 0, 0, 0, 0
    choices = lambda t: t.reshape(2, 3, *t.shape[1:])
    return dict(inputs=(choices(ids), choices(position), sep.reshape(2, 3), choices(target), choices(mask)),
                labels=torch.tensor([0, 1]), position=choices(position))


def build(case, checkpoint_activations=False):
    """(student, teacher, batch) of a case, seeded: the same full weights at any MP size."""
    method, student_arch, stage, options, method_options = CASES[case][:5]
    torch.manual_seed(1234)
    teacher = GLMModel(glm_config(*TEACHER))
    student = GLMModel(glm_config(*student_arch, checkpoint_activations=checkpoint_activations))
    if stage == "finetune":
        teacher, student = GLMForMultiTokenCloze(teacher), GLMForMultiTokenCloze(student)
    teacher.eval().requires_grad_(False)
    wrapped = build_student(method, student, DistillOptions(**options), [TeacherInfo(*TEACHER)], method_options)
    return wrapped, teacher, pretrain_batch() if stage == "pretrain" else finetune_batch()


def forward(case, student, teacher, batch):
    """(loss = pre_loss + inter_loss [B], metrics, student output, teacher output, hard loss)."""
    stage, step, per_sample = CASES[case][2], CASES[case][5], CASES[case][6]
    student.begin_step(step)
    s_out = student(*batch["inputs"], taps=student.student_taps(step))
    with torch.no_grad():
        t_out = teacher(*batch["inputs"], taps=student.teacher_taps(0, step))
    if stage == "pretrain":
        hard = lm_loss(s_out.logits, batch["target"], batch["loss_mask"])
        d_batch = DistillBatch("pretrain", loss_mask=batch["loss_mask"], labels=batch["target"],
                               position_ids=batch["inputs"][1], token_level=True)
    else:
        hard = F.cross_entropy(s_out.logits, batch["labels"], reduction="none" if per_sample else "mean")
        d_batch = DistillBatch("finetune", labels=batch["labels"], position_ids=batch["position"])
    pre, pre_metrics = student.pre_loss(s_out.logits, t_out.logits, hard, d_batch, step)
    inter, inter_metrics = student.inter_loss(s_out, t_out, d_batch, step)
    batch_size = s_out.logits.size(0)
    assert pre.shape == inter.shape == (batch_size,) and pre.dtype == inter.dtype == torch.float32
    return pre + inter, {**pre_metrics, **inter_metrics}, s_out, t_out, hard


def loss_and_grads(case):
    """The case's loss (per sample, or the mean: see CASES), the gradient of its sum for a
    replicated student weight, and for fit_dense_0's bias."""
    student, teacher, batch = build(case)
    loss, *_ = forward(case, student, teacher, batch)
    loss = loss if CASES[case][6] else loss.mean()
    loss.sum().backward()
    params = dict(student.named_parameters())
    fit = params["fit_dense_0.bias"].grad if "fit_dense_0.bias" in params else None
    return loss.detach(), grad_param(student).grad.clone(), fit


def grad_param(student):
    """GRAD_PARAM of the student's GLM (inside a task head or not)."""
    return next(p for name, p in student.named_parameters() if name.endswith(GRAD_PARAM))


# --------------------------------------------------------------------------- plain-torch references
def ref_mse(a, b, samples=None):
    """Mean squared error over all elements, or per sample (the first dim cut into `samples`)."""
    if samples is None:
        return F.mse_loss(a.float(), b.float())
    return F.mse_loss(a.float(), b.float(), reduction="none").reshape(samples, -1).mean(dim=1)


def ref_kl_logits(s, t):
    """KL(softmax(t) || softmax(s)) per row."""
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)


def ref_kl_probs(p_s, p_t):
    """KL(p_t || p_s) per row from probabilities (0 log 0 = 0)."""
    return torch.where(p_t > 0, p_t * (p_t.log() - p_s.log()), torch.zeros(())).sum(-1)


def ref_relation(x):
    """[B, n, S, d] -> X X^T / sqrt(d)."""
    return x @ x.transpose(-1, -2) / math.sqrt(x.size(-1))


def ref_heads(x, num_heads):
    b, s, w = x.shape
    return x.reshape(b, s, num_heads, w // num_heads).permute(0, 2, 1, 3)


def reference(case, student, s, t, batch, hard):
    """The case's loss from the method's formulas; s, t: the taps by name (full MP=1 tensors)."""
    if case.startswith("tinybert"):
        fit = lambda x: F.linear(x, student.fit_dense_0.weight, student.fit_dense_0.bias)
        # uniform mapping (2, 4) = [0, 2, 4]; random layers: period 5 // 2 = 2 of teacher 0
        mid = 2 if case != "tinybert_random" else random.Random("tinybert:0:2").sample(range(1, 4), 1)[0]
        samples = 2 if case == "tinybert_ft" else None     # per sample: 2 samples of 3 choice rows
        return (ref_mse(s["layers.0.attention_scores"], t[f"layers.{mid - 1}.attention_scores"], samples)
                + ref_mse(s["layers.1.attention_scores"], t["layers.3.attention_scores"], samples)
                + ref_mse(fit(s["layers.0.layernorm_output"]), t["layers.0.layernorm_output"], samples)
                + ref_mse(fit(s["layers.1.layernorm_output"]), t[f"layers.{mid}.layernorm_output"], samples)
                + ref_mse(fit(s["output"]), t["output"], samples))
    if case == "minilmv2":   # last student layer <-> teacher layer 3 (1-based), 4 relation heads
        return sum(ref_kl_logits(ref_relation(ref_heads(s[f"layers.1.mixed_{k}_layer"], 4)),
                                 ref_relation(ref_heads(t[f"layers.2.mixed_{k}_layer"], 4))).mean()
                   for k in ("query", "key", "value"))
    if case == "minilm":
        return (ref_kl_probs(s["layers.1.attention_probs"], t["layers.3.attention_probs"]).mean()
                + ref_kl_logits(ref_relation(s["layers.1.value_layer"]),
                                ref_relation(t["layers.3.value_layer"])).mean())
    if case.startswith("distilbert"):
        non_pad = batch["inputs"][1][:, 0] > 0
        non_pad[:, 0] = True
        if case == "distilbert":      # cos over non-pad tokens, KL over the Part-B mask, T = 2
            cos = ((1 - F.cosine_similarity(s["output"], t["output"], dim=-1)) * non_pad).mean()
            kl = (ref_kl_logits(s["logits"] / 2, t["logits"] / 2) * batch["loss_mask"]).mean()
            return 5.0 * 4 * kl + 2.0 * hard + cos
        ln = student.student_layernorm
        s_h = F.layer_norm(s["layers.1.tf_output"], (52,), ln.weight, ln.bias)
        t_h = F.layer_norm(t["layers.3.tf_output"], (52,))
        cos = ((1 - F.cosine_similarity(s_h, t_h, dim=-1)) * batch["loss_mask"]).mean()
        return (ref_kl_logits(s["logits"], t["logits"]) * non_pad).mean() + hard + cos
    if case == "pkd":             # student layer 1 <-> teacher layer 2, [CLS], normalised; no final
        patience = 100 * ref_mse(F.normalize(s["layers.1.layernorm_output"][:, 0], dim=-1),
                                 F.normalize(t["layers.2.layernorm_output"][:, 0], dim=-1))
        return patience + 0.5 * 100 * ref_kl_logits(s["logits"] / 10, t["logits"] / 10).mean() + 0.5 * hard
    assert case == "pkd_pt"           # representations 0, 1 <-> 0, 2 and output <-> output; beta = 3
    patience = 3 * (ref_mse(s["layers.0.layernorm_output"], t["layers.0.layernorm_output"])
                    + ref_mse(s["layers.1.layernorm_output"], t["layers.2.layernorm_output"])
                    + ref_mse(s["output"], t["output"]))
    soft = (ref_kl_logits(s["logits"], t["logits"]) * batch["loss_mask"]).mean()
    return patience + 0.5 * soft + 0.5 * hard


# --------------------------------------------------------------------------- literal values
def test_literal_values_of_each_loss():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    assert attention_mse(scores, torch.zeros_like(scores)).item() == pytest.approx(7.5)   # (1+4+9+16)/4
    assert hidden_mse(scores.view(1, 2, 2), torch.ones(1, 2, 2)).item() == pytest.approx(3.5)  # (0+1+4+9)/4
    assert hidden_mse(torch.tensor([[1.0, 3.0], [2.0, 2.0]]), torch.zeros(2, 2)).tolist() == [5.0, 4.0]  # per sample
    p_s, p_t = torch.tensor([[0.25, 0.75, 0.0]]), torch.tensor([[0.5, 0.5, 0.0]])
    # 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3); the masked key (0 in both) adds 0
    assert probability_kl(p_s, p_t).item() == pytest.approx(0.1438410362, rel=1e-6)
    assert attention_kl(p_s.view(1, 1, 1, 3), p_t.view(1, 1, 1, 3)).item() == pytest.approx(0.1438410362, rel=1e-6)
    # rel_s = [[1, 0], [0, 0]], rel_t = 0: the rows' KL(uniform || softmax(rel_s)) are
    # ln(1+e) - ln 2 - 1/2 and 0; their mean
    states = torch.tensor([[1.0], [0.0]]).view(1, 1, 2, 1)
    assert relation_kl(states, torch.zeros_like(states)).item() == pytest.approx(0.0600572535, rel=1e-6)
    s, t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]), torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert cosine_distance(s, t).item() == pytest.approx((1 + 1 - 0.5 ** 0.5) / 2, rel=1e-6)
    assert cosine_distance(s, t, mask=torch.tensor([[1, 0]])).item() == pytest.approx(0.5)  # original: 1.0
    h_s, h_t = torch.tensor([[[3.0, 4.0], [9.0, 9.0]]]), torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    # [CLS] rows normalised: [0.6, 0.8] vs [1, 0] -> (0.16 + 0.64) / 2
    assert patience_mse(h_s, h_t, normalize=True, only_cls=True).item() == pytest.approx(0.4, rel=1e-6)
    assert split_relation_heads(torch.arange(12.0).view(1, 1, 12), 3)[0, :, 0].tolist() == [
        [0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]]


def test_losses_on_fully_masked_or_padded_input_are_finite():
    s = torch.randn(2, 3, 4, requires_grad=True)
    loss = cosine_distance(s, torch.zeros(2, 3, 4), mask=torch.zeros(2, 3))      # [2]
    loss.mean().backward()
    assert torch.equal(loss, torch.zeros(2)) and torch.equal(s.grad, torch.zeros_like(s))
    p_s = torch.tensor([[0.0, 1.0]], requires_grad=True)   # an underflowed student probability
    kl = probability_kl(p_s, torch.tensor([[0.5, 0.5]]))
    kl.backward()
    assert torch.isfinite(kl).all() and torch.isfinite(p_s.grad).all()
    zero_rows = torch.zeros(2, 3, 5, requires_grad=True)
    patience = patience_mse(zero_rows, torch.zeros(2, 3, 5), normalize=True)   # [2]
    patience.mean().backward()
    assert torch.equal(patience, torch.zeros(2)) and torch.isfinite(zero_rows.grad).all()
    with pytest.raises(ValueError, match="differ in shape"):
        hidden_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


# --------------------------------------------------------------------------- golden values per method
@pytest.mark.parametrize("case", list(CASES))
def test_loss_equals_the_plain_torch_reference(case):
    student, teacher, batch = build(case)
    loss, metrics, s_out, t_out, hard = forward(case, student, teacher, batch)
    s_taps = {**s_out.taps, "logits": s_out.logits}
    t_taps = {**t_out.taps, "logits": t_out.logits}
    expected = reference(case, student, s_taps, t_taps, batch, hard)
    assert_rel_close(loss if CASES[case][6] else loss.mean(), expected, RTOL, case)
    assert all(torch.isfinite(v).all() for v in metrics.values()) and loss.abs().sum() > 0
    loss.mean().backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), "NaN/inf gradient with a fully padded row"


def test_distilbert_cosine_fix_shifts_the_value_but_not_the_gradient():
    student, teacher, batch = build("distilbert")
    s_out = student(*batch["inputs"], taps=["output"])
    t_out = teacher(*batch["inputs"], taps=["output"])
    d_batch = DistillBatch("pretrain", loss_mask=batch["loss_mask"], position_ids=batch["inputs"][1], token_level=True)
    per_sample, _ = student.inter_loss(s_out, t_out, d_batch, StepInfo())
    ours = per_sample.mean()
    keep = d_batch.non_pad_mask()
    # the original: masked rows become zero vectors and cosine_embedding_loss gives them 1
    original = F.cosine_embedding_loss((s_out.taps["output"] * keep[..., None]).flatten(0, 1),
                                       (t_out.taps["output"] * keep[..., None]).flatten(0, 1),
                                       torch.ones(keep.numel()))
    assert_rel_close(ours, original - (~keep).float().mean(), RTOL, "value minus the masked rows' constant 1")
    grad_ours = torch.autograd.grad(ours, s_out.taps["output"], retain_graph=True)[0]
    grad_original = torch.autograd.grad(original, s_out.taps["output"])[0]
    assert_rel_close(grad_ours, grad_original, 1e-4, "gradient")   # 1e-4: eps handling of the two cosines


def test_minilm_uses_probabilities_not_their_softmax():
    student, teacher, batch = build("minilm")
    _, metrics, s_out, t_out, _ = forward("minilm", student, teacher, batch)
    a_s, a_t = s_out.taps["layers.1.attention_probs"], t_out.taps["layers.3.attention_probs"]
    original = ref_kl_logits(a_s, a_t).mean()         # the original's KL of softmax(probabilities)
    assert_rel_close(metrics["inter/att"], ref_kl_probs(a_s, a_t).mean(), RTOL, "attention KL")
    # near-uniform attention of a random tiny model: softmax(probabilities) flattens it further
    assert original.item() < 0.1 * metrics["inter/att"].item()


def test_distilbert_inter_is_zero_without_a_loss_mask_and_choice_rows_fold_into_samples():
    student, teacher, batch = build("distilbert")
    out = student(*batch["inputs"], taps=student.student_taps(StepInfo()))
    inter, metrics = student.inter_loss(out, out, DistillBatch("finetune"), StepInfo())
    assert inter.shape == (4,) and not inter.any() and metrics == {}
    student, teacher, batch = build("tinybert_ft")
    per_sample, *_ = forward("tinybert_ft", student, teacher, batch)
    assert per_sample.shape == (2,)


def test_pkd_pre_loss_takes_a_per_sample_or_a_scalar_hard_loss():
    student, teacher, batch = build("pkd")
    s_out, t_out = student(*batch["inputs"]), teacher(*batch["inputs"])
    d_batch = DistillBatch("finetune", labels=batch["labels"], position_ids=batch["position"])
    hard = F.cross_entropy(s_out.logits, batch["labels"], reduction="none")                # [2]
    per_sample, _ = student.pre_loss(s_out.logits, t_out.logits, hard, d_batch, StepInfo())
    scalar, _ = student.pre_loss(s_out.logits, t_out.logits, hard.mean(), d_batch, StepInfo())
    assert per_sample.shape == scalar.shape == (2,)
    # (1 - alpha) = 0.5 of each sample's own hard loss, or of the batch's for every sample
    assert_rel_close(per_sample - scalar, 0.5 * (hard - hard.mean()), RTOL, "hard term per sample")
    assert_rel_close(per_sample.mean(), scalar.mean(), RTOL, "same mean")


@pytest.mark.parametrize("case", list(CASES))
def test_taps_getters_are_pure_queries(case):
    student, _, _ = build(case)
    step = CASES[case][5]
    student.begin_step(step)
    state = student.method_state()
    first = (student.student_taps(step), student.teacher_taps(0, step))
    assert (student.student_taps(step), student.teacher_taps(0, step)) == first
    assert student.method_state() == state


# --------------------------------------------------------------------------- MP=2
def _mp_worker(rank, world_size, expected):
    for case, (ref_loss, ref_grad, ref_fit) in expected.items():
        loss, grad, fit = loss_and_grads(case)
        assert_rel_close(loss, ref_loss, RTOL, f"{case}: loss")
        assert_rel_close(grad, ref_grad, RTOL, f"{case}: replicated-weight gradient")
        if ref_fit is not None:     # ColumnParallelLinear: this rank's slice of the output columns
            assert_rel_close(fit, ref_fit.chunk(world_size)[rank], RTOL, f"{case}: fit_dense gradient")
    return True


@pytest.mark.slow
def test_every_case_at_mp2_matches_mp1():
    expected = {case: loss_and_grads(case) for case in CASES}
    assert run_distributed(_mp_worker, 2, expected) == [True, True]


# --------------------------------------------------------------------------- training behaviour
@pytest.mark.parametrize("case", ["tinybert", "minilmv2", "minilm", "distilbert_ln", "pkd"])
def test_short_run_lowers_the_loss_and_trains_only_the_student(case):
    student, teacher, batch = build(case)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss, *_ = forward(case, student, teacher, batch)
        loss = loss.mean()
        loss.backward()
        if not losses:
            aux = [p for name, p in student.named_parameters() if not name.startswith("model.")]
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aux), "an auxiliary layer has no grad"
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


def test_auxiliary_layers_are_model_parallel_aware_and_saved():
    student, _, _ = build("tinybert")
    assert student.fit_dense_0.weight.shape == (52, 28)
    assert getattr(student.fit_dense_0.weight, "partition_dim", None) == 0
    assert "student.fit_dense_0.weight" in student.state_dict()
    student, _, _ = build("distilbert_ln")
    assert "student.student_layernorm.weight" in student.state_dict()


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        student, teacher, batch = build("tinybert", checkpoint_activations=checkpointing)
        loss, *_ = forward("tinybert", student, teacher, batch)
        loss.mean().backward()
        results.append((loss.detach(), grad_param(student).grad.clone()))
    assert student.supports_activation_checkpointing
    assert_rel_close(results[1][0], results[0][0], RTOL, "loss")
    assert_rel_close(results[1][1], results[0][1], RTOL, "gradient")


# --------------------------------------------------------------------------- options and schedule
def _build_tinybert(**method_options):
    model = GLMModel(glm_config(*NARROW))
    return build_student("tinybert", model, DistillOptions(), [TeacherInfo(*TEACHER)], method_options)


@pytest.mark.parametrize("options,student_taps,teacher_taps", [
    ({}, ["layers.0.layernorm_output", "layers.1.layernorm_output", "output",
          "layers.0.attention_scores", "layers.1.attention_scores"],
     ["layers.0.layernorm_output", "layers.2.layernorm_output", "output",
      "layers.1.attention_scores", "layers.3.attention_scores"]),
    (dict(tinybert_wo_att=True, tinybert_wo_emb=True), ["layers.1.layernorm_output", "output"],
     ["layers.2.layernorm_output", "output"]),
    (dict(tinybert_wo_final=True, tinybert_wo_att=True), ["layers.0.layernorm_output", "layers.1.layernorm_output"],
     ["layers.0.layernorm_output", "layers.2.layernorm_output"]),
    (dict(tinybert_inter_final=True), ["output"], ["output"]),
    (dict(tinybert_inter_final=True, tinybert_custom_final=2), ["layers.1.layernorm_output"],
     ["layers.3.layernorm_output"]),
    (dict(tinybert_only_emb_final=True), ["layers.0.layernorm_output", "output"],
     ["layers.0.layernorm_output", "output"]),
    (dict(tinybert_only_emb=True), ["layers.0.layernorm_output"], ["layers.0.layernorm_output"]),
    (dict(tinybert_wo_inter=True, tinybert_custom_final=1), [], []),
])
def test_tinybert_flags_select_the_taps(options, student_taps, teacher_taps):
    student = _build_tinybert(**options)
    assert set(student.student_taps(StepInfo())) == set(student_taps)
    assert set(student.teacher_taps(0, StepInfo())) == set(teacher_taps)
    assert hasattr(student, "fit_dense_0") != bool(options.get("tinybert_wo_inter"))


def test_tinybert_random_layers_follow_the_period_and_resume_without_state():
    student = _build_tinybert(tinybert_random_layers=True, tinybert_random_e=0, tinybert_random_i=2)
    by_iteration = [student.layer_map(0, StepInfo(iteration=i)) for i in range(40)]
    assert all(m[0] == 0 and m[-1] == 4 and len(m) == 3 for m in by_iteration)
    assert all(by_iteration[i] == by_iteration[i + 1] for i in range(0, 40, 2))   # fixed within a period
    assert len({m[1] for m in by_iteration}) > 1                                   # re-sampled across periods
    assert student.method_state() == {}                                            # nothing to save:
    restored = _build_tinybert(tinybert_random_layers=True, tinybert_random_e=0, tinybert_random_i=2)
    restored.load_method_state(student.method_state())
    assert [restored.layer_map(0, StepInfo(iteration=i)) for i in range(40)] == by_iteration
    per_epoch = _build_tinybert(tinybert_random_layers=True)                       # random_e = 1: per epoch
    assert per_epoch.layer_map(0, StepInfo(iteration=0)) == per_epoch.layer_map(0, StepInfo(iteration=3000))
    assert TinyBERTOptions(tinybert_random_e=0, tinybert_random_i=5).period(StepInfo(iteration=12, epoch=3)) == 2


def test_tinybert_random_show_prints_in_begin_step_once_per_period(capsys):
    student = _build_tinybert(tinybert_random_layers=True, tinybert_random_e=0, tinybert_random_i=2,
                              tinybert_random_show=True)
    lines = []
    for iteration in range(6):                                    # periods 0, 0, 1, 1, 2, 2
        step = StepInfo(iteration=iteration)
        student.begin_step(step)
        lines += capsys.readouterr().out.splitlines()
        taps = student.student_taps(step), student.teacher_taps(0, step)
        assert (student.student_taps(step), student.teacher_taps(0, step)) == taps
        assert capsys.readouterr().out == ""                      # the getters print nothing
    assert [line.split(":")[1] for line in lines] == [" teacher 0 sampling period 0", " teacher 0 sampling period 1",
                                                      " teacher 0 sampling period 2"]
    assert lines[1].endswith(str(student.layer_map(0, StepInfo(iteration=2))))


def test_option_validation_and_mismatched_models_fail_loudly():
    with pytest.raises(ValueError, match="conflict"):
        TinyBERTOptions(tinybert_inter_final=True, tinybert_only_emb=True)
    with pytest.warns(UserWarning, match="tinybert_fit_parallel"):
        TinyBERTOptions(tinybert_fit_parallel=True)
    with pytest.raises(ValueError, match="1-based"):
        MiniLMv2Options(minilmv2_teacher_layer=0)
    assert MiniLMv2Options(minilmv2_relation_heads_mt="8,16").relation_heads(1) == 16
    with pytest.raises(ValueError, match="comma list"):
        MiniLMv2Options(minilmv2_relation_heads_mt="8;16")
    minilmv2 = build_student("minilmv2", GLMModel(glm_config(*NARROW)), DistillOptions(), [TeacherInfo(12, 52, 4)],
                             dict(minilmv2_relation_heads=4))                   # 4 divides 28 and 52
    assert minilmv2.teacher_taps(0, StepInfo())[0] == "layers.11.mixed_query_layer"
    with pytest.raises(ValueError, match="minilmv2: 48 relation heads do not divide the student's query width 28"):
        build_student("minilmv2", GLMModel(glm_config(*NARROW)), DistillOptions(), [TeacherInfo(12, 52, 4)])
    with pytest.raises(ValueError, match="outside teacher 0's 4 layers"):
        build_student("minilmv2", GLMModel(glm_config(*NARROW)), DistillOptions(), [TeacherInfo(*TEACHER)],
                      dict(minilmv2_teacher_layer=5, minilmv2_relation_heads=4)).teacher_taps(0, StepInfo())
    with pytest.raises(ValueError, match="equal num_attention_heads"):
        build_student("minilm", GLMModel(glm_config(*NARROW)), DistillOptions(), [TeacherInfo(4, 52, 13)])
    for method in ("distilbert", "pkd"):
        with pytest.raises(ValueError, match="equal hidden_size"):
            build_student(method, GLMModel(glm_config(*NARROW)), DistillOptions(), [TeacherInfo(*TEACHER)])
    with pytest.raises(ValueError, match="TeacherInfo of teacher 1"):
        _build_tinybert().teacher_taps(1, StepInfo())
