"""GLMD (`logitsdistil`) and its pure logits loss: every variant (mask_pad, mask_a, top-n with
the hinge, teacher_min, MSE) against an independent full-vocabulary reference in plain torch
written the original's way (logits multiplied by the masks), a literal value, fully padded rows,
the options table, a short training run, and one MP=2 spawn (vocabulary split in two)
comparing every loss and gradient with MP=1. The method's loss is per sample ([B]); the references
are the original's batch means, compared with its mean (and per sample where the cloze rows fold)."""
import math

import pytest
import torch
import torch.nn.functional as F

from dist_utils import assert_rel_close, run_distributed
from distill import STUDENT_MODELS, AvgTeacher, AvgTeacherOptions, DistillBatch, DistillOptions, StepInfo, TeacherInfo
from distill import build_student
from distill.losses_glmd import logits_distillation_loss
from distill.methods.logitsdistil import LogitsDistilOptions
from model import ModelOutput
from training.config import ArchConfig, TeacherConfig
from training.teachers import Teacher
from training_fixtures import ListBatches, full_state, global_batches, make_trainer, sharded_model, torch_engine

# fp32 everywhere; implementation and reference differ only in summation order (a few ulp) and,
# at MP=2, in the order of the all-reduced partial sums: 1e-5 relative is a wide margin.
RTOL = 1e-5
B, C, S, V = 2, 3, 5, 34          # V / 2 = 17 columns per rank at MP=2; N = B*C = 6 cloze rows


def make_inputs(seed=0):
    """Cloze-style fine-tuning rows [B*C, S, V] (used as pretraining rows too), positions with
    padding (row 1 fully padded after column 0), Part-B / answer masks."""
    gen = torch.Generator().manual_seed(seed)
    n = B * C
    position = torch.zeros(n, 2, S, dtype=torch.long)
    position[:, 0] = torch.tensor([[0, 1, 2, 3, 0], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4],
                                   [0, 1, 0, 0, 0], [0, 1, 2, 0, 0], [0, 1, 2, 3, 4]])
    answers = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1],
                            [0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float)
    return dict(s=torch.randn(n, S, V, generator=gen) * 3, t=torch.randn(n, S, V, generator=gen) * 3,
                position=position, answers=answers)


# --------------------------------------------------------------------------- the reference
def ref_loss(s, t, mask, temperature, mse=False, top_n=None, teacher_min=False):
    """The original's computation on full logits [N, S, V]: logits times the mask, then top-n,
    then T^2 * F.kl_div on softened logits (or F.mse_loss), a plain mean over all rows."""
    m = mask.float().unsqueeze(-1)
    s, t = s * m, t * m
    hinge = 0.0
    if top_n is not None:
        n = int(top_n * V) if top_n < 1 else int(top_n)
        top = t.topk(n, dim=-1)
        if teacher_min:
            t = torch.where(t >= top.values[..., -1:], t, t.min())
        else:
            s_top = s.gather(-1, top.indices)
            others = torch.ones_like(s, dtype=torch.bool).scatter(-1, top.indices, False)
            h = torch.relu(s - s_top.min(-1, keepdim=True).values)
            picked = h[others & (h > 0)]
            hinge = picked.mean() if picked.numel() else 0.0
            s, t = s_top, top.values
    if mse:
        return F.mse_loss(s, t) + hinge
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="none").sum(-1)
    return temperature ** 2 * kl.mean() + hinge


def non_pad(position):
    mask = position[:, 0] > 0
    mask[:, 0] = True
    return mask


# (label, stage, method options, temperature, reference kwargs, mask kind)
CASES = [
    ("mask_pad", "pretrain", dict(logitsdistil_mask_pad=True), 15.0, {}, "pad"),
    ("mask_a_pt", "pretrain", dict(logitsdistil_mask_a=True), 2.0, {}, "answers"),
    ("pad_and_answers_ft", "finetune", dict(logitsdistil_mask_pad=True, logitsdistil_mask_a=True), 2.0, {}, "both"),
    ("no_mask", "finetune", {}, 1.0, {}, "none"),
    ("top_n", "pretrain", dict(logitsdistil_mask_pad=True, logitsdistil_top_n=5), 2.0, dict(top_n=5), "pad"),
    ("top_n_over_shard", "pretrain", dict(logitsdistil_top_n=20), 3.0, dict(top_n=20), "none"),
    ("top_fraction_min", "pretrain", dict(logitsdistil_mask_pad=True, logitsdistil_top_n=0.2,
                                          logitsdistil_teacher_min=True), 3.0, dict(top_n=0.2, teacher_min=True), "pad"),
    ("mse", "pretrain", dict(logitsdistil_mask_pad=True, logitsdistil_mse=True), 15.0, dict(mse=True), "pad"),
    ("mse_top_n", "finetune", dict(logitsdistil_mse=True, logitsdistil_top_n=4), 1.0, dict(mse=True, top_n=4), "none"),
]


def _mask(kind, inputs):
    pad, answers = non_pad(inputs["position"]), inputs["answers"] > 0
    return {"pad": pad, "answers": answers, "both": pad & answers, "none": torch.ones_like(pad)}[kind]


def _batch(stage, inputs):
    if stage == "pretrain":
        return DistillBatch("pretrain", loss_mask=inputs["answers"], token_level=True)
    return DistillBatch("finetune", logit_mask=inputs["answers"].reshape(B, C, S), labels=torch.tensor([0, 2]))


def _method_loss(stage, method_options, temperature, inputs, shard):
    """(per-sample loss [B], student-logit gradient of its mean) of the method's inter_loss on
    logits sharded by `shard` (B = 6 pretraining rows, or 2 cloze samples of C = 3 rows)."""
    student = build_student("logitsdistil", torch.nn.Identity(), DistillOptions(distill_temperature=temperature),
                            method_options=method_options)
    s = shard(inputs["s"]).requires_grad_()
    logits = s if stage == "pretrain" else torch.zeros(B, C)
    s_out = ModelOutput(logits, {"logits_parallel": s, "position_ids": inputs["position"]})
    t_out = ModelOutput(logits, {"logits_parallel": shard(inputs["t"])})
    loss, metrics = student.inter_loss(s_out, t_out, _batch(stage, inputs), StepInfo())
    assert loss.shape == (logits.size(0),) and loss.dtype == torch.float32
    loss.mean().backward()
    assert "inter/logits" in metrics and metrics["inter/logits"].shape == ()
    return loss.detach(), s.grad


def _reference(case, inputs):
    label, _, _, temperature, kwargs, kind = case
    s = inputs["s"].clone().requires_grad_()
    loss = ref_loss(s, inputs["t"], _mask(kind, inputs), temperature, **kwargs)
    loss.backward()
    return loss.detach(), s.grad


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_method_matches_the_reference(case):
    inputs = make_inputs()
    label, stage, method_options, temperature, _, _ = case
    loss, grad = _method_loss(stage, method_options, temperature, inputs, lambda x: x.clone())
    ref, ref_grad = _reference(case, inputs)
    assert_rel_close(loss.mean(), ref, RTOL, f"{label}: loss")
    assert_rel_close(grad, ref_grad, RTOL, f"{label}: grad")


def test_hinge_is_active_and_the_loss_folds_choices_per_sample():
    inputs = make_inputs()
    hinge_metrics = logits_distillation_loss(inputs["s"], inputs["t"], top_n=5)[1]
    assert hinge_metrics["logits/hinge"] > 0, "the top-n case must exercise the hinge"
    per_sample, _ = _method_loss("finetune", dict(logitsdistil_mask_pad=True), 2.0, inputs, lambda x: x.clone())
    assert per_sample.shape == (B,)
    # Sample b: the reference over its C choice rows alone (rows b*C .. b*C + C-1).
    pad = non_pad(inputs["position"])
    expected = torch.stack([ref_loss(inputs["s"][b * C:(b + 1) * C], inputs["t"][b * C:(b + 1) * C],
                                     pad[b * C:(b + 1) * C], 2.0) for b in range(B)])
    assert_rel_close(per_sample, expected, RTOL, "per-sample folding of the choice rows")


def test_literal_value():
    # p_t = (1/4, 3/4), p_s uniform: KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812...; one of two rows masked.
    s = torch.zeros(1, 2, 2)
    t = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0]]])
    loss, _ = logits_distillation_loss(s, t, mask=torch.tensor([[True, False]]))     # one row: [1]
    expected = (0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    torch.testing.assert_close(loss, torch.tensor([expected]), rtol=1e-6, atol=0)   # fp32 of a 1e-1 value
    mse, _ = logits_distillation_loss(s, t, mask=torch.tensor([[True, False]]), mse=True)
    torch.testing.assert_close(mse, torch.tensor([math.log(3.0) ** 2 / 4]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c[5] == "pad"], ids=lambda c: c[0])
def test_fully_padded_rows_give_no_nan(case):
    inputs = make_inputs()
    _, stage, method_options, temperature, _, _ = case
    clean, _ = _method_loss(stage, method_options, temperature, inputs, lambda x: x.clone())
    poisoned = dict(inputs, s=inputs["s"].clone(), t=inputs["t"].clone())
    poisoned["s"][1, 1:, 0], poisoned["s"][1, 1:, 1] = float("inf"), float("nan")   # row 1: padding after col 0
    poisoned["t"][1, 1:, 2] = float("nan")
    loss, grad = _method_loss(stage, method_options, temperature, poisoned, lambda x: x.clone())
    assert_rel_close(loss, clean, RTOL, "padded positions add 0")   # every sample
    assert torch.isfinite(grad).all() and grad[1, 1:].abs().sum() == 0


def test_options_are_validated_and_reach_the_method():
    assert STUDENT_MODELS["logitsdistil"].options_class is LogitsDistilOptions
    with pytest.raises(ValueError, match="top_n"):
        LogitsDistilOptions(logitsdistil_top_n=0.0)
    with pytest.warns(UserWarning, match="teacher_min"):
        LogitsDistilOptions(logitsdistil_teacher_min=True)
    student = build_student("logitsdistil", torch.nn.Identity(), DistillOptions(),
                            method_options={"logitsdistil_wo_inter": True})
    assert student.student_taps(StepInfo()) == [] and student.teacher_taps(0, StepInfo()) == []
    student = build_student("logitsdistil", torch.nn.Identity(), DistillOptions(),
                            method_options={"logitsdistil_mask_pad": True})
    assert student.student_taps(StepInfo()) == ["logits_parallel", "position_ids"]
    with pytest.raises(ValueError, match="logit_mask"):
        build_student("logitsdistil", torch.nn.Identity(), DistillOptions(),
                      method_options={"logitsdistil_mask_a": True}).token_mask(None, DistillBatch("finetune"), 2, 3)


def test_short_run_decreases_the_loss():
    steps = 6
    options = DistillOptions(distill_temperature=2.0)
    state, specs = full_state()
    student = build_student("logitsdistil", sharded_model(state, specs), options, [TeacherInfo(2, 52, 4)],
                            {"logitsdistil_mask_pad": True, "logitsdistil_top_n": 8})
    teacher = Teacher(sharded_model(*full_state(seed=5, hidden_size=52), hidden_size=52).eval(),
                      TeacherConfig(ArchConfig(), None), torch.float32)
    batches = global_batches(1, 4)
    trainer = make_trainer(torch_engine(student, lr=3e-3), ListBatches(batches * steps, 4), steps, student=student,
                           combiner=AvgTeacher(AvgTeacherOptions(), options), teachers=[teacher], lr=3e-3)
    losses = [float(trainer.micro_step(next(trainer.data))["loss"]) for _ in range(steps)]
    assert losses[-1] < losses[0], losses


# --------------------------------------------------------------------------- MP=2
def _shard_last(full, rank, world_size):
    return full.chunk(world_size, dim=-1)[rank].clone()


def _mp2_worker(rank, world_size, inputs, expected):
    shard = lambda full: _shard_last(full, rank, world_size)   # noqa: E731
    for case, (ref, ref_grad) in zip(CASES, expected):
        label, stage, method_options, temperature, _, _ = case
        loss, grad = _method_loss(stage, method_options, temperature, inputs, shard)
        assert_rel_close(loss.mean(), ref, RTOL, f"{label}: loss at MP=2")
        assert_rel_close(grad, shard(ref_grad), RTOL, f"{label}: grad at MP=2")
    return True


@pytest.mark.slow
def test_every_variant_at_mp2_matches_mp1():
    inputs = make_inputs()
    expected = [_reference(case, inputs) for case in CASES]
    assert run_distributed(_mp2_worker, 2, inputs, expected) == [True, True]
