"""KD losses on vocabulary-parallel logits at MP=2 (gloo, CPU processes) equal MP=1: every
token-level pre_loss variant, per-sample losses, the gradient of each rank's logit shard, and
AvgTeacher over two teachers. One spawn runs all the checks."""
import pytest
import torch

from dist_utils import assert_rel_close, run_distributed
from distill import AvgTeacher, AvgTeacherOptions, DistillBatch, DistillOptions, GLMStudent, StepInfo
from model import ModelOutput

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

# fp32 throughout; sharding only changes the order of the partial sums the all-reduces add
# (errors ~1e-7), so 1e-5 relative holds with a wide margin.
RTOL = 1e-5
B, S, V = 3, 5, 34          # V/2 = 17 columns per rank
T = 2.0
CASES = [  # (label, options, stage, per-sample hard loss (else a scalar), mse teacher weight)
    ("pt soft KL (T^2)", dict(distill_pt_soft=True), "pretrain", False, 1.0),
    ("pt soft KL, [B] hard", dict(distill_pt_soft=True), "pretrain", True, 1.0),
    ("pt soft CE", dict(distill_pt_soft=True, distill_pt_soft_ce=True), "pretrain", False, 1.0),
    ("pt soft MSE", dict(distill_pt_soft=True, distill_pt_soft_mse=True), "pretrain", False, 0.5),
    ("pt soft MSE, [B] hard", dict(distill_pt_soft=True, distill_pt_soft_mse=True), "pretrain", True, 0.5),
    ("pt soft + hard, rates", dict(distill_pt_soft=True, distill_pt_hard=True, distill_soft_rate=0.5,
                                   distill_hard_rate=2.0), "pretrain", False, 1.0),
    ("wo_loss_mask", dict(distill_pt_soft=True, distill_wo_loss_mask=True), "pretrain", False, 1.0),
    ("only_mask_pad", dict(distill_pt_soft=True, distill_only_mask_pad=True), "pretrain", True, 1.0),
    ("ft token soft CE", dict(distill_ft_soft=True), "finetune", False, 1.0),
    ("ft token soft MSE (masked)", dict(distill_ft_soft=True, distill_ft_soft_mse=True), "finetune", False, 0.5),
]


def _inputs():
    gen = torch.Generator().manual_seed(5)
    s, t0, t1 = (torch.randn(B, S, V, generator=gen) * 2 for _ in range(3))
    loss_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float)  # row 1 padded
    labels = torch.tensor([[5, 6, 7, 0, 9], [1, 2, 3, 4, 0], [0, 8, 8, 8, 8]])
    return dict(s=s, t0=t0, t1=t1, loss_mask=loss_mask, labels=labels, hard=torch.tensor(1.7))


def _all_losses(inputs, shard):
    """Every case's loss and student-logit gradient on `shard(logits)` (the full logits at MP=1)."""
    results = []
    for label, options, stage, per_sample_hard, weight in CASES:
        s = shard(inputs["s"]).requires_grad_()
        batch = DistillBatch(stage, loss_mask=inputs["loss_mask"], labels=inputs["labels"], token_level=True)
        student = GLMStudent(torch.nn.Identity(), DistillOptions(distill_temperature=T, **options))
        hard = inputs["hard"].expand(B) if per_sample_hard else inputs["hard"]
        loss, _ = student.pre_loss(s, shard(inputs["t0"]), hard, batch, mse_t_w=weight)          # [B]
        loss.sum().backward()
        results.append((label, loss.detach(), s.grad))
    # AvgTeacher over two teachers (the mean of two vocabulary-parallel KLs).
    s = shard(inputs["s"]).requires_grad_()
    student = GLMStudent(torch.nn.Identity(), DistillOptions(distill_pt_soft=True, distill_temperature=T))
    batch = DistillBatch("pretrain", loss_mask=inputs["loss_mask"], token_level=True)
    t_outs = [ModelOutput(shard(inputs["t0"])), ModelOutput(shard(inputs["t1"]))]
    loss, _ = AvgTeacher(AvgTeacherOptions(), student.options).compute(student, ModelOutput(s), inputs["hard"],
                                                                       t_outs, batch, StepInfo())
    loss.backward()
    results.append(("AvgTeacher", loss.detach(), s.grad))
    return results


def _shard_last_dim(full, rank, world_size):
    return full.chunk(world_size, dim=-1)[rank].clone()


def _kd_worker(rank, world_size, inputs, expected):
    actual = _all_losses(inputs, lambda full: _shard_last_dim(full, rank, world_size))
    for (label, loss, grad), (_, ref_loss, ref_grad) in zip(actual, expected):
        assert_rel_close(loss, ref_loss, RTOL, f"{label}: loss")
        assert_rel_close(grad, _shard_last_dim(ref_grad, rank, world_size), RTOL, f"{label}: grad")
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), label
    return True


def test_kd_losses_at_mp2_match_mp1():
    inputs = _inputs()
    expected = _all_losses(inputs, lambda full: full.clone())
    assert all(loss.abs().sum() > 0 for _, loss, _ in expected)
    assert run_distributed(_kd_worker, 2, inputs, expected) == [True, True]
