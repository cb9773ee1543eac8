"""KD (the GLMStudent base): every pre_loss variant against plain-torch references on full
tensors plus literal values, the AvgTeacher combiner, checkpoint key renaming, registries
and the fully-padded edge cases. The MP=2 equivalence is in test_distill_kd_parallel.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpu
from distill import (MULTI_TEACHER_MODELS, STUDENT_MODELS, AvgTeacher, AvgTeacherOptions, DistillBatch,
                     DistillOptions, GLMStudent, StepInfo, TeacherInfo, build_multi_teacher, build_student,
                     register_student)
from distill.losses import fold_samples, non_pad_mask, sample_mean
from glm_fixtures import tiny_config
from model import GLMModel, ModelOutput

# The implementation and the references both compute in fp32 but sum in different orders
# (the vocabulary-parallel functions subtract a max, F.kl_div does not); differences are a
# few ulp of the largest term, far below 1e-5 relative.
RTOL, ATOL = 1e-5, 1e-7
B, S, V, C = 3, 5, 34, 4
T = 2.0


def close(actual, expected, what=""):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def token_batch(seed=0, stage="pretrain"):
    """Token logits [B, S, V] for student and teacher, a Part-B loss mask, labels with pads (0)."""
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, S, V, generator=gen) * 2).requires_grad_()
    t = torch.randn(B, S, V, generator=gen) * 2
    loss_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.float)
    labels = torch.tensor([[5, 6, 7, 0, 9], [1, 2, 3, 4, 0], [0, 8, 8, 8, 8]])
    hard = torch.rand((), generator=gen) + 1.0
    return s, t, hard, DistillBatch(stage, loss_mask=loss_mask, labels=labels, token_level=True)


def task_batch(seed=1):
    """Task logits [B, C] (cloze fine-tuning: no loss mask), labels [B]."""
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, C, generator=gen) * 3).requires_grad_()
    t = torch.randn(B, C, generator=gen) * 3
    hard_per_sample = torch.rand(B, generator=gen) + 0.5
    return s, t, hard_per_sample, DistillBatch("finetune", labels=torch.tensor([0, 3, 1]))


# Plain-torch references: per-row losses on full tensors.
def ref_kl(s, t, temperature):
    return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="none").sum(-1)


def ref_ce(s, t, temperature):
    return -(F.softmax(t / temperature, -1) * F.log_softmax(s / temperature, -1)).sum(-1)


def ref_mse(s, t, weight, mask):
    """Mean over every element of [.., V], masked ones included (CustomLoss)."""
    per_element = F.mse_loss(s, weight * t, reduction="none")
    return per_element * (1.0 if mask is None else mask.unsqueeze(-1))


def reduce_ref(rows, mask, per_sample):
    rows = rows * (1.0 if mask is None else mask)
    return rows.flatten(1).mean(1) if per_sample else rows.mean()


def run_per_sample(options, s, t, hard, batch, mse_t_w=1.0):
    """pre_loss as the method returns it: one value per sample [B]."""
    student = GLMStudent(nn.Identity(), DistillOptions(**options))
    loss, metrics = student.pre_loss(s, t, hard, batch, mse_t_w=mse_t_w)
    assert loss.shape == (s.size(0),) and loss.dtype == torch.float32
    return loss, metrics


def run(options, s, t, hard, batch, mse_t_w=1.0):
    """pre_loss reduced as AvgTeacher reduces it (the mean over samples)."""
    loss, metrics = run_per_sample(options, s, t, hard, batch, mse_t_w)
    return loss.mean(), metrics


# --------------------------------------------------------------------------- pre_loss variants
PT_CASES = {  # name: (options, golden per-sample soft loss (s, t, mask) -> [B]); MSE teacher weight 0.5
    "pt_soft_kl_default": (dict(distill_pt_soft=True), lambda s, t, m: T ** 2 * reduce_ref(ref_kl(s, t, T), m, True)),
    "pt_soft_ce": (dict(distill_pt_soft=True, distill_pt_soft_ce=True),
                   lambda s, t, m: reduce_ref(ref_ce(s, t, T), m, True)),
    "pt_soft_mse": (dict(distill_pt_soft=True, distill_pt_soft_mse=True),
                    lambda s, t, m: ref_mse(s, t, 0.5, m).flatten(1).mean(1)),
}


@pytest.mark.parametrize("name", sorted(PT_CASES))
@pytest.mark.parametrize("per_sample", [False, True])
def test_pretraining_soft_variants(name, per_sample):
    options, golden = PT_CASES[name]
    s, t, hard, batch = token_batch()
    loss, metrics = (run_per_sample if per_sample else run)(dict(options, distill_temperature=T), s, t, hard, batch,
                                                            mse_t_w=0.5)
    mask = batch.loss_mask
    expected = golden(s, t, mask)
    expected = expected if per_sample else expected.mean()  # equal row counts: mean of means = mean
    close(loss, expected, name)
    assert set(metrics) == {"kd/soft"} and not metrics["kd/soft"].requires_grad
    loss.sum().backward()
    masked_grad = s.grad * (1 - mask).unsqueeze(-1)
    assert torch.equal(masked_grad, torch.zeros_like(masked_grad)), "masked tokens received a gradient"


def test_pretraining_hard_rates_and_combination():
    s, t, hard, batch = token_batch()
    loss, metrics = run(dict(distill_pt_hard=True, distill_hard_rate=0.3), s, t, hard, batch)
    close(loss, 0.3 * hard, "hard only")
    both = dict(distill_pt_soft=True, distill_pt_hard=True, distill_soft_rate=0.5, distill_hard_rate=2.0,
                distill_temperature=T)
    loss, metrics = run(both, s, t, hard, batch)
    soft = 0.5 * T ** 2 * reduce_ref(ref_kl(s, t, T), batch.loss_mask, False)
    close(loss, soft + 2.0 * hard, "soft + hard")
    close(metrics["kd/soft"], soft.detach(), "kd/soft metric")
    close(metrics["kd/hard"], 2.0 * hard, "kd/hard metric")
    # A zero rate disables its term (the original computes it only if the rate is nonzero).
    loss, metrics = run(dict(both, distill_soft_rate=0.0), s, t, hard, batch)
    assert set(metrics) == {"kd/hard"}
    close(loss, 2.0 * hard, "zero soft rate")
    # Fine-tuning flags have no effect in pretraining.
    loss, metrics = run(dict(distill_ft_soft=True, distill_ft_hard=True), s, t, hard, batch)
    assert loss.item() == 0.0 and metrics == {}


@pytest.mark.parametrize("per_sample", [False, True])
def test_finetuning_cloze_variants(per_sample):
    s, t, hard, batch = task_batch()
    hard = hard if per_sample else hard.mean()     # the per-sample hard loss, or the batch's (a scalar)
    reduce = (lambda rows: rows) if per_sample else (lambda rows: rows.mean())
    go = run_per_sample if per_sample else run
    loss, metrics = go(dict(distill_ft_soft=True, distill_temperature=T), s, t, hard, batch)
    close(loss, reduce(ref_ce(s, t, T)), "ft soft CE, no T^2")
    loss, _ = go(dict(distill_ft_soft=True, distill_ft_soft_kl=True, distill_temperature=T), s, t, hard, batch)
    close(loss, reduce(T ** 2 * ref_kl(s, t, T)), "ft soft T^2 KL")
    loss, _ = go(dict(distill_ft_soft=True, distill_ft_soft_mse=True), s, t, hard, batch, mse_t_w=0.7)
    close(loss, reduce(F.mse_loss(s, 0.7 * t, reduction="none").mean(-1)), "ft soft MSE")
    loss, metrics = go(dict(distill_ft_hard=True, distill_hard_rate=0.25), s, t, hard, batch)
    close(loss, 0.25 * hard, "ft hard")
    # A scalar hard loss counts for every sample.
    scalar_hard, _ = run_per_sample(dict(distill_ft_hard=True, distill_hard_rate=0.25), s, t, hard.mean(), batch)
    close(scalar_hard, 0.25 * hard.mean().expand(B), "scalar hard loss per sample")
    # No loss_mask in cloze fine-tuning, so the mask flags change nothing.
    for flag in ("distill_wo_loss_mask", "distill_only_mask_pad"):
        masked, _ = go({"distill_ft_soft": True, "distill_temperature": T, flag: True}, s, t, hard, batch)
        close(masked, reduce(ref_ce(s, t, T)), flag)


def test_finetuning_token_soft_mse_applies_the_mask():
    """The original ignored the mask here (a `maks=` typo); it is applied on purpose."""
    s, t, hard, batch = token_batch(stage="finetune")
    options = dict(distill_ft_soft=True, distill_ft_soft_mse=True)
    loss, _ = run(options, s, t, hard, batch, mse_t_w=0.5)
    close(loss, ref_mse(s, t, 0.5, batch.loss_mask).mean(), "masked ft MSE")
    # Changing the logits of masked tokens changes nothing.
    noisy = s.detach() + 100.0 * (1 - batch.loss_mask).unsqueeze(-1)
    close(run(options, noisy, t, hard, batch, mse_t_w=0.5)[0], loss.detach(), "masked tokens ignored")


def test_mask_options():
    s, t, hard, batch = token_batch()
    base = dict(distill_pt_soft=True, distill_temperature=T)
    loss, _ = run(dict(base, distill_wo_loss_mask=True), s, t, hard, batch)
    close(loss, T ** 2 * ref_kl(s, t, T).mean(), "distill_wo_loss_mask: m = 1")
    loss, _ = run(dict(base, distill_only_mask_pad=True), s, t, hard, batch)
    close(loss, T ** 2 * reduce_ref(ref_kl(s, t, T), (batch.labels > 0).float(), False), "only_mask_pad")
    # Without token-level labels distill_only_mask_pad falls back to the loss mask.
    batch.labels = torch.tensor([1, 2, 3])
    loss, _ = run(dict(base, distill_only_mask_pad=True), s, t, hard, batch)
    close(loss, T ** 2 * reduce_ref(ref_kl(s, t, T), batch.loss_mask, False), "[B] labels")


def test_literal_values():
    """Teacher p = (3/4, 1/4) (logits ln 3, 0) against a uniform student (logits 0, 0)."""
    teacher = torch.tensor([[math.log(3.0), 0.0], [5.0, -5.0]])
    student = torch.zeros(2, 2)
    # pt KL, second token masked out but counted in the mean: (3/4 ln 3/2 + 1/4 ln 1/2) / 2
    pt = DistillBatch("pretrain", loss_mask=torch.tensor([[1.0, 0.0]]), token_level=True)
    loss, _ = run(dict(distill_pt_soft=True), student[None], teacher[None], torch.tensor(0.0), pt)
    assert loss.item() == pytest.approx(0.0654060, abs=1e-7)  # fp32 value, 7 digits printed
    # ft CE on task logits, one row: -(3/4 ln 1/2 + 1/4 ln 1/2) = ln 2
    ft = DistillBatch("finetune")
    loss, _ = run(dict(distill_ft_soft=True), student[:1], teacher[:1], torch.tensor(0.0), ft)
    assert loss.item() == pytest.approx(0.6931472, abs=1e-7)
    # ft MSE: ((0 - ln 3)^2 + 0) / 2
    loss, _ = run(dict(distill_ft_soft=True, distill_ft_soft_mse=True), student[:1], teacher[:1],
                  torch.tensor(0.0), ft)
    assert loss.item() == pytest.approx(0.6034745, abs=1e-7)


def test_neither_term_enabled_is_exactly_zero():
    s, t, hard, batch = token_batch()
    hard.requires_grad_()
    loss, metrics = run(dict(distill_temperature=T), s, t, hard, batch)
    assert loss.dtype == torch.float32 and loss.shape == () and loss.item() == 0.0 and metrics == {}
    loss.backward()  # no "does not require grad" error: the zero hangs off the student logits
    assert torch.equal(s.grad, torch.zeros_like(s))
    loss, _ = run_per_sample({}, s, t, hard, batch)
    assert torch.equal(loss, torch.zeros(B))
    # Also on a graph-less input (evaluation).
    loss, _ = run({}, s.detach(), t, hard, batch)
    assert loss.item() == 0.0


@pytest.mark.parametrize("options", [dict(distill_pt_soft=True), dict(distill_pt_soft=True, distill_pt_soft_ce=True),
                                     dict(distill_pt_soft=True, distill_pt_soft_mse=True)])
def test_fully_padded_rows_give_no_nan(options):
    s, t, hard, batch = token_batch()
    batch.loss_mask[1] = 0.0                       # one fully padded row
    poisoned = s.detach().clone()
    poisoned[1, :, 0], poisoned[1, :, 1] = float("inf"), float("nan")
    poisoned.requires_grad_()
    loss, _ = run(dict(options, distill_temperature=T), poisoned, t, hard, batch)
    clean, _ = run(dict(options, distill_temperature=T), s, t, hard, batch)
    close(loss, clean, "padded row contributes 0")
    loss.backward()
    assert torch.isfinite(poisoned.grad).all() and poisoned.grad[1].abs().sum() == 0
    batch.loss_mask.zero_()                        # every row padded
    loss, _ = run(dict(options, distill_temperature=T), poisoned, t, hard, batch)
    assert loss.item() == 0.0


def test_task_logits_with_minus_inf_columns_and_masked_rows():
    """Replicated path: padded choices (-inf in both models) and a masked row give no NaN."""
    s = torch.tensor([[1.0, 2.0, float("-inf")], [float("nan"), 0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.5, -1.0, float("-inf")], [3.0, 0.0, 1.0]])
    batch = DistillBatch("finetune", loss_mask=torch.tensor([1.0, 0.0]))
    for options in (dict(distill_ft_soft=True), dict(distill_ft_soft=True, distill_ft_soft_kl=True)):
        loss, _ = run(dict(options, distill_temperature=T), s, t, torch.tensor(0.0), batch)
        ref = ref_ce if "distill_ft_soft_kl" not in options else (lambda a, b, T_: T_ ** 2 * ref_kl(a, b, T_))
        close(loss, ref(s[:1, :2], t[:1, :2], T).sum() / 2, f"{options}")  # / 2: the masked row counts
        s.grad = None
        loss.backward()
        assert torch.isfinite(s.grad).all()


def test_sample_mean_counts_masked_rows():
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert sample_mean(loss, mask).tolist() == [0.5, 3.5]                 # exact in fp32
    assert sample_mean(loss, mask).mean().item() == 8.0 / 4               # the original's CustomLoss scalar
    assert sample_mean(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]   # [B] stays


def test_fold_samples_and_non_pad_mask():
    rows = torch.tensor([1.0, 3.0, 5.0, 7.0, 2.0, 6.0])                   # 2 samples of 3 choice rows
    assert fold_samples(rows, 2).tolist() == [3.0, 5.0]
    assert torch.equal(fold_samples(rows, 6), rows)
    with pytest.raises(ValueError, match="do not split into 4 samples"):
        fold_samples(rows, 4)
    positions = torch.tensor([[[0, 1, 2, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]])   # [N, 2, S]
    expected = [[True, True, True, False], [True, False, False, False]]  # column 0 ([CLS]) always kept
    assert non_pad_mask(positions).tolist() == expected
    assert non_pad_mask(positions[:, 0]).tolist() == expected             # [N, S] positions too


# --------------------------------------------------------------------------- options
def test_options_validation():
    with pytest.raises(ValueError, match="distill_ft_soft_kl.*distill_ft_soft_mse"):
        DistillOptions(distill_ft_soft=True, distill_ft_soft_kl=True, distill_ft_soft_mse=True)
    with pytest.raises(ValueError, match="distill_pt_soft_ce.*distill_pt_soft_mse"):
        DistillOptions(distill_pt_soft=True, distill_pt_soft_ce=True, distill_pt_soft_mse=True)
    with pytest.raises(ValueError, match="distill_wo_loss_mask.*distill_only_mask_pad"):
        DistillOptions(distill_wo_loss_mask=True, distill_only_mask_pad=True)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="distill_temperature"):
            DistillOptions(distill_temperature=bad)
    with pytest.raises(ValueError, match="distill_hard_rate"):
        DistillOptions(distill_hard_rate=float("nan"))
    with pytest.warns(UserWarning, match="distill_pt_soft_ce has no effect without --distill_pt_soft"):
        DistillOptions(distill_pt_soft_ce=True)
    with pytest.raises(ValueError, match="avgmt_teacher_survival_p"):
        AvgTeacherOptions(avgmt_teacher_survival_p=1.5)
    with pytest.raises(ValueError, match="stage"):
        DistillBatch("train")


# --------------------------------------------------------------------------- AvgTeacher
class _HiddenMSEStudent(GLMStudent):
    """A test method with an intermediate loss: MSE between the "h" taps."""
    name = "test_hidden_mse"

    def inter_loss(self, s_out, t_out, batch, step, t_no=0):
        loss = sample_mean(F.mse_loss(s_out.taps["h"], t_out.taps["h"], reduction="none"))      # [B]
        return loss, {"inter/h": loss.detach().mean()}


def _outputs(num_teachers, seed=3):
    gen = torch.Generator().manual_seed(seed)
    out = lambda: ModelOutput(torch.randn(B, C, generator=gen), {"h": torch.randn(B, 6, generator=gen)})
    s_out = out()
    s_out.logits.requires_grad_()
    return s_out, [out() for _ in range(num_teachers)], torch.rand((), generator=gen) + 1.0


AVG_DISTILL = DistillOptions(distill_ft_soft=True, distill_ft_hard=True, distill_temperature=T, distill_hard_rate=0.5)


def _per_teacher(student, s_out, hard, t_outs, batch):
    return [sum(f[0] for f in (student.pre_loss(s_out.logits, t.logits, hard, batch, t_no=i),
                               student.inter_loss(s_out, t, batch, StepInfo(), t_no=i))).mean()
            for i, t in enumerate(t_outs)]


def test_avg_teacher_single_teacher_is_pre_plus_inter():
    student = _HiddenMSEStudent(nn.Identity(), AVG_DISTILL)
    s_out, (t_out,), hard = _outputs(1)
    batch = DistillBatch("finetune")
    total, metrics = build_multi_teacher(None, None, AVG_DISTILL).compute(student, s_out, hard, [t_out], batch,
                                                                          StepInfo())
    pre, pre_metrics = student.pre_loss(s_out.logits, t_out.logits, hard, batch)
    inter, _ = student.inter_loss(s_out, t_out, batch, StepInfo())
    assert pre.shape == inter.shape == (B,)
    assert torch.equal(total, (pre + inter).mean())                      # exactly: the same ops
    assert inter.mean().item() > 0 and set(metrics) == {"kd/soft", "kd/hard", "inter/h", "kd/teacher", "kd/total"}
    assert torch.equal(metrics["kd/soft"], pre_metrics["kd/soft"])
    total.backward()
    assert s_out.logits.grad is not None


def test_avg_teacher_mean_sum_and_disabled_teacher():
    student = _HiddenMSEStudent(nn.Identity(), AVG_DISTILL)
    s_out, t_outs, hard = _outputs(2)
    batch = DistillBatch("finetune")
    l0, l1 = _per_teacher(student, s_out, hard, t_outs, batch)
    mean, metrics = AvgTeacher(AvgTeacherOptions(), AVG_DISTILL).compute(student, s_out, hard, t_outs, batch,
                                                                         StepInfo())
    close(mean, (l0 + l1) / 2, "mean of two teachers")
    assert {"kd/soft_t0", "kd/soft_t1", "kd/hard_t0", "inter/h_t1", "kd/teacher_t1", "kd/total"} <= set(metrics)
    close(metrics["kd/teacher_t1"], l1.detach(), "per-teacher metric")
    summed, _ = AvgTeacher(AvgTeacherOptions(avgmt_sum_loss=True), AVG_DISTILL).compute(
        student, s_out, hard, t_outs, batch, StepInfo())
    close(summed, l0 + l1, "sum of two teachers")
    # A disabled teacher (no forward) contributes the terms that need no teacher: the hard term.
    hard_term = AVG_DISTILL.distill_hard_rate * hard
    first_only, metrics = AvgTeacher(AvgTeacherOptions(), AVG_DISTILL).compute(
        student, s_out, hard, [t_outs[0], None], batch, StepInfo())
    close(first_only, (l0 + hard_term) / 2, "disabled teacher")
    assert "kd/hard_t1" in metrics and "kd/soft_t1" not in metrics and "inter/h_t1" not in metrics
    both_off, _ = AvgTeacher(AvgTeacherOptions(), AVG_DISTILL).compute(student, s_out, hard, [None, None], batch,
                                                                       StepInfo())
    close(both_off, hard_term, "all teachers disabled")


def test_avg_teacher_survival():
    student = _HiddenMSEStudent(nn.Identity(), AVG_DISTILL)
    s_out, t_outs, hard = _outputs(4)
    batch = DistillBatch("finetune")
    losses = _per_teacher(student, s_out, hard, t_outs, batch)
    combiner = AvgTeacher(AvgTeacherOptions(avgmt_teacher_survival_p=0.5), AVG_DISTILL)
    for seed in (0, 1, 2):
        alive = (torch.rand(4, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist()
        total, metrics = combiner.compute(student, s_out, hard, t_outs, batch, StepInfo(),
                                          generator=torch.Generator().manual_seed(seed))
        kept = [loss for loss, keep in zip(losses, alive) if keep] + [0.5 * hard]  # + distill_hard_rate * L_hard
        close(total, sum(kept) / len(kept), f"seed {seed}")
        assert {f"kd/teacher_t{i}" for i in range(4) if alive[i]} == {k for k in metrics if "teacher" in k}
        close(metrics["kd/avg_hard"], 0.5 * hard, "appended hard term")
    assert alive == [False, True, False, True], "seed 2 keeps teachers 1 and 3 (torch's CPU generator)"


# --------------------------------------------------------------------------- checkpoints and registries
class _AuxStudent(GLMStudent):
    name = "test_aux"

    def __init__(self, model, options, teachers=()):
        super().__init__(model, options, teachers)
        self.fit_dense = mpu.ColumnParallelLinear(52, 26)
        self.scale = nn.Linear(3, 2)


def test_state_dict_renaming_round_trip():
    torch.manual_seed(11)
    model = GLMModel(tiny_config())
    student = _AuxStudent(model, DistillOptions())
    state = student.state_dict()
    aux = {"student.fit_dense.weight", "student.fit_dense.bias", "student.scale.weight", "student.scale.bias"}
    assert set(state) == set(model.state_dict()) | aux
    assert list(state)[:len(model.state_dict())] == list(model.state_dict())   # order kept
    with_vars = student.state_dict(keep_vars=True)
    assert with_vars["student.fit_dense.weight"] is student.fit_dense.weight
    assert with_vars["word_embeddings.weight"] is model.word_embeddings.weight
    specs = mpu.partition_specs(student)
    assert specs == {**mpu.partition_specs(model), "student.fit_dense.weight": {"dim": 0, "stride": 1},
                     "student.fit_dense.bias": {"dim": 0, "stride": 1}}
    # Load into a differently initialised student, directly and nested in a wrapper (DeepSpeed's `module`).
    other = _AuxStudent(GLMModel(tiny_config()), DistillOptions())
    assert other.load_state_dict(state) is not None
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())
    wrapper = nn.ModuleDict({"module": _AuxStudent(GLMModel(tiny_config()), DistillOptions())})
    nested = {"module." + k: v for k, v in state.items()}
    assert set(wrapper.state_dict()) == set(nested)
    wrapper.load_state_dict(nested)
    assert torch.equal(wrapper["module"].fit_dense.weight, student.fit_dense.weight)
    # The model part is a plain model state dict; errors name the external keys.
    GLMModel(tiny_config()).load_state_dict({k: v for k, v in state.items() if k not in aux})
    del nested["module.student.scale.bias"]
    nested["module.not_a_key"] = torch.zeros(1)
    result = wrapper.load_state_dict(nested, strict=False)
    assert result.missing_keys == ["module.student.scale.bias"] and result.unexpected_keys == ["module.not_a_key"]
    with pytest.raises(RuntimeError, match='"student.scale.bias"'):
        other.load_state_dict({k: v for k, v in state.items() if k != "student.scale.bias"})


def test_registries():
    assert STUDENT_MODELS["kd"] is GLMStudent
    assert isinstance(build_student("kd", nn.Identity(), DistillOptions()), GLMStudent)
    with pytest.raises(KeyError, match="unknown student model 'tinybret'; valid: .*kd"):
        build_student("tinybret", nn.Identity(), DistillOptions())
    with pytest.raises(ValueError, match="already registered"):
        register_student(type("Impostor", (GLMStudent,), {"name": "kd"}))
    for name in (None, "", "avg", "tmkd"):
        assert MULTI_TEACHER_MODELS[name] is AvgTeacher
    with pytest.raises(KeyError, match="unknown multi-teacher model 'mt_bret'; valid: .*'avg'"):
        build_multi_teacher("mt_bret", None, DistillOptions())
    with pytest.raises(TypeError, match="AvgTeacherOptions"):
        build_multi_teacher("avg", DistillOptions(), DistillOptions())


def test_base_requests_and_state():
    student = GLMStudent(nn.Identity(), DistillOptions())
    step = StepInfo(iteration=3)
    student.begin_step(step)
    assert student.student_taps(step) == [] and student.teacher_taps(0, step) == []
    assert student.student_interventions(step) == {} and student.teacher_interventions(1, step) == {}
    assert student.method_state() == {}
    student.load_method_state({})
    with pytest.raises(ValueError, match="no method state"):
        student.load_method_state({"stage": 1})
    # forward passes taps and interventions through to the wrapped model.
    torch.manual_seed(0)
    glm = GLMModel(tiny_config())
    ids = torch.randint(0, 136, (1, 6))
    position = torch.stack([torch.arange(6), torch.zeros(6, dtype=torch.long)])[None]
    out = GLMStudent(glm, DistillOptions())(ids, position, torch.tensor([3]), taps=["output"])
    assert torch.equal(out.logits, glm(ids, position, torch.tensor([3])).logits) and set(out.taps) == {"output"}
    position_ids = torch.tensor([[[0, 1, 2, 0, 0]]]).expand(1, 2, 5)
    assert DistillBatch("pretrain", position_ids=position_ids).non_pad_mask().tolist() == [[True, True, True,
                                                                                           False, False]]


def test_base_kit_config_and_teacher_checks():
    """What every method used to look up for itself: the student's config and the teachers' sizes."""
    config = tiny_config()
    glm = GLMModel(config)
    teachers = [TeacherInfo(num_layers=4, hidden_size=config.hidden_size, num_attention_heads=8)]
    student = GLMStudent(glm, DistillOptions(), teachers)
    assert student.config is glm.config and student.require_config() is glm.config
    assert student.teacher_info(0) is teachers[0]
    with pytest.raises(ValueError, match="kd needs the TeacherInfo of teacher 1; it was built with 1 teachers"):
        student.teacher_info(1)
    student.check_teachers_match("hidden_size", "a shared width")
    with pytest.raises(ValueError, match="kd: head mapping needs equal num_attention_heads; the student has "
                                         f"{config.num_attention_heads}, teacher 0 8"):
        student.check_teachers_match("num_attention_heads", "head mapping")
    with pytest.raises(ValueError, match="needs the teachers' sizes"):
        GLMStudent(glm, DistillOptions()).require_teachers()
    bare = GLMStudent(nn.Identity(), DistillOptions())
    assert bare.config is None
    with pytest.raises(TypeError, match="kd needs a GLM or Hugging Face student .* got Identity"):
        bare.require_config()
    zero = bare.zero(ModelOutput(torch.ones(3, 2, requires_grad=True), {}))
    assert zero.shape == (3,) and zero.requires_grad and torch.equal(zero, torch.zeros(3))
