"""Every combiner at MP=2 (gloo, CPU processes) gives the MP=1 loss and gradients on
vocabulary-parallel token logits: avg/tmkd (with survival), MT-BERT (column-parallel
projections of teachers of different widths), Uncertainty (soft and hard routing, the entropy
over the whole vocabulary), RL-KD over two steps (its row-parallel agent over the teachers'
logit shards) and MixMT. The combiners' parameters are built once at MP=1 and split by their
partition metadata. One spawn runs every check."""
import pytest
import torch
from torch import nn

import mpu
from dist_utils import assert_rel_close, run_distributed
from distill import DistillBatch, DistillOptions, GLMStudent, StepInfo, TeacherInfo, build_multi_teacher
from distill.losses import sample_mean
from distill.multi_teacher_model import CombinerContext
from model import ModelOutput

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

# fp32 throughout; sharding only changes the order of the partial sums the all-reduces add
# (errors ~1e-7 relative), so 1e-5 relative holds with a wide margin.
RTOL = 1e-5
B, S, V, HS = 3, 4, 34, 6           # V/2 = 17 vocabulary columns per rank
WIDTHS = (8, 10, 12)
OPTIONS = DistillOptions(distill_pt_soft=True, distill_pt_hard=True, distill_temperature=2.0, distill_hard_rate=0.5)
HIDDEN_TAPS = ("output", "layers.0.layernorm_output")
CASES = [  # (label, combiner name, flags, number of teachers, steps)
    ("tmkd sum, survival 0.5", "tmkd", {"avgmt_sum_loss": True, "avgmt_teacher_survival_p": 0.5}, 3, 1),
    ("mt_bert fit_teacher + LN", "mt_bert", {"mt_bert_fit_teacher": True, "mt_bert_fix_layernorm": True}, 2, 1),
    ("mt_bert student -> teacher", "mt_bert", {}, 3, 1),
    ("uncertainty soft, pad mask", "uncertainty",
     {"uncertainty_only_mask_pad": True, "uncertainty_inter_entropy": True}, 3, 1),
    ("uncertainty hard", "uncertainty", {"uncertainty_hard": True, "uncertainty_teacher_seq": "1:0"}, 2, 1),
    ("rl_kd two steps, reward 2", "rl_kd", {"rl_kd_semantic_model": 0, "rl_kd_reward": 2}, 3, 2),
    ("mixmt Uncertainty + RL_KD", "mixmt", {"mixmt_model": "Uncertainty,RL_KD", "rl_kd_semantic_model": 2}, 3, 2),
]


class TapRelation(GLMStudent):
    """Inter loss: MSE between the hidden taps' position relations x x^T / width (any widths)."""
    name = "test_parallel_relation"

    def inter_loss(self, s_out, t_out, batch, step, t_no=0):
        rel = lambda x: x @ x.transpose(-1, -2) / x.size(-1)
        loss = sum(sample_mean((rel(s_out.taps[n]) - rel(t_out.taps[n])).pow(2))
                   for n in HIDDEN_TAPS)
        return loss, {}


def _inputs():
    gen = torch.Generator().manual_seed(21)
    steps = []
    for _ in range(2):
        logits = [torch.randn(B, S, V, generator=gen) * 2 for _ in range(1 + len(WIDTHS))]
        taps = [{n: torch.randn(B, S, w, generator=gen) for n in HIDDEN_TAPS} for w in (HS, *WIDTHS)]
        hard = [torch.rand(B, generator=gen) + 0.5 for _ in range(1 + len(WIDTHS))]
        steps.append((logits, taps, hard))
    loss_mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float)   # row 2 padded
    labels = torch.tensor([[3, 4, 0, 6], [1, 0, 2, 2], [0, 0, 0, 0]])
    return steps, loss_mask, labels


def _build(name, flags, num_teachers, states=None):
    torch.manual_seed(3)
    teachers = tuple(TeacherInfo(2, width, 2) for width in WIDTHS[:num_teachers])
    context = CombinerContext(student_hidden_size=HS, teachers=teachers, num_classes=V, token_level=True,
                              teacher_hard_losses=True)
    combiner = build_multi_teacher(name, flags, OPTIONS, context)
    if states is not None:
        full, specs = states
        combiner.load_state_dict(mpu.shard_state_dict(full, specs, mpu.get_model_parallel_rank(),
                                                      mpu.get_model_parallel_world_size()))
    return combiner


def _run_cases(inputs, shard, states=None):
    """Per case and step: (loss, grad of the student's logit shard, grads of the combiner's parameters)."""
    steps, loss_mask, labels = inputs
    batch = DistillBatch("pretrain", loss_mask=loss_mask, labels=labels, token_level=True)
    results = []
    for index, (label, name, flags, num_teachers, num_steps) in enumerate(CASES):
        combiner = _build(name, flags, num_teachers, None if states is None else states[index])
        student = TapRelation(nn.Identity(), OPTIONS)
        for step, (logits, taps, hard) in enumerate(steps[:num_steps]):
            s_logits = shard(logits[0]).requires_grad_()
            s_out = ModelOutput(s_logits, taps[0])
            t_outs = [ModelOutput(shard(logits[i]), taps[i]) for i in range(1, num_teachers + 1)]
            t_hard = [(hard[i].mean(), hard[i]) for i in range(1, num_teachers + 1)]
            loss, _ = combiner.compute(student, s_out, hard[0].mean(), t_outs, batch, StepInfo(iteration=step),
                                       t_hard_losses=t_hard, generator=torch.Generator().manual_seed(40 + step),
                                       s_hard_per_sample=hard[0])
            params = [(k, p) for k, p in combiner.named_parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, [s_logits] + [p for _, p in params], allow_unused=True)
            param_grads = {k: (g if g is not None else torch.zeros_like(p)) for (k, p), g in zip(params, grads[1:])}
            results.append((f"{label} step {step}", loss.detach(), grads[0], param_grads))
    return results


def _shard_last_dim(full, rank, world_size):
    return full.chunk(world_size, dim=-1)[rank].clone()


def _worker(rank, world_size, inputs, states, expected):
    actual = _run_cases(inputs, lambda full: _shard_last_dim(full, rank, world_size), states)
    assert len(actual) == len(expected)
    for (label, loss, s_grad, p_grads), (_, ref_loss, ref_s_grad, ref_p_grads), in zip(actual, expected):
        assert_rel_close(loss, ref_loss, RTOL, f"{label}: loss")
        assert_rel_close(s_grad, _shard_last_dim(ref_s_grad, rank, world_size), RTOL, f"{label}: student logit grad")
        index = next(i for i, case in enumerate(CASES) if label.startswith(case[0]))
        _, specs = states[index]
        ref_shards = mpu.shard_state_dict(ref_p_grads, specs, rank, world_size)
        assert ref_shards.keys() == p_grads.keys(), label
        for key, grad in p_grads.items():
            assert_rel_close(grad, ref_shards[key], RTOL, f"{label}: grad of {key}")
    return True


def test_every_combiner_at_mp2_matches_mp1():
    inputs = _inputs()
    states = []
    for label, name, flags, num_teachers, _ in CASES:
        combiner = _build(name, flags, num_teachers)
        states.append(({k: v.clone() for k, v in combiner.state_dict().items()}, mpu.partition_specs(combiner)))
    expected = _run_cases(inputs, lambda full: full.clone())
    assert all(torch.isfinite(loss) and loss != 0 for _, loss, _, _ in expected)
    sharded = {label for (label, *_), (_, specs) in zip(CASES, states) if specs}
    assert sharded == {"mt_bert fit_teacher + LN", "mt_bert student -> teacher", "rl_kd two steps, reward 2",
                       "mixmt Uncertainty + RL_KD"}, "the column- and row-parallel combiner parameters"
    policy_steps = [grads for label, _, _, grads in expected if label.startswith("rl_kd") and label.endswith("1")]
    assert policy_steps and all(g.abs().sum() > 0 for g in policy_steps[0].values()), "the agent learns at step 2"
    assert run_distributed(_worker, 2, inputs, states, expected) == [True, True]
