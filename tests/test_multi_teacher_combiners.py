"""The multi-teacher combiners against independent computations on fixed teacher outputs (two
and three teachers of different widths): MT-BERT, Uncertainty (soft and hard routing),
RL-KD (actions, rewards and the agent's update over two steps, its state in checkpoints),
MixMT, and their pure functions with literal values. The MP=2 equivalence is in
test_multi_teacher_parallel.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import DistillBatch, DistillOptions, GLMStudent, StepInfo, TeacherInfo, build_multi_teacher
from distill.losses import sample_mean
from distill.losses_multi_teacher import normalized_entropy, policy_loss, sequence_mean, uncertainty_rates
from distill.multi_teacher_model import CombinerContext, combiner_class
from model import ModelOutput

# Both sides compute in fp32 with the same inputs but different operation orders (F.kl_div and
# Categorical vs the project's losses, explicit matmuls vs nn.Linear): a few ulp of the terms.
RTOL, ATOL = 1e-5, 1e-6
B, S, C, HS = 4, 3, 5, 6          # batch, tap length, classes, student width
T = 2.0
OPTIONS = DistillOptions(distill_ft_soft=True, distill_ft_soft_kl=True, distill_ft_hard=True, distill_temperature=T,
                         distill_soft_rate=0.7, distill_hard_rate=0.4)
HIDDEN_TAPS = ("output", "layers.0.layernorm_output")


def close(actual, expected, what=""):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def relation(x):
    """x x^T / width over the positions: [B, S, H] -> [B, S, S], comparable across widths."""
    return x @ x.transpose(-1, -2) / x.size(-1)


class TapRelation(GLMStudent):
    """A test method whose inter loss compares the hidden-state taps' position relations (MSE,
    summed over the taps), so teachers of any width can be compared (and projections matter)."""
    name = "test_tap_relation"

    def inter_loss(self, s_out, t_out, batch, step, t_no=0):
        loss = sum(sample_mean((relation(s_out.taps[n]) - relation(t_out.taps[n])).pow(2))
                   for n in HIDDEN_TAPS)
        return loss, {"inter/relation": loss.detach().mean()}


def make_outputs(widths, seed):
    """Student and teacher outputs (logits [B, C], hidden taps [B, S, H] plus an attention tap
    no combiner touches), the student's hard loss (scalar, per sample) and the teachers' (scalar, [B])."""
    gen = torch.Generator().manual_seed(seed)

    def out(width):
        taps = {name: torch.randn(B, S, width, generator=gen) for name in HIDDEN_TAPS}
        taps["layers.0.attention_scores"] = torch.randn(B, 2, S, S, generator=gen)
        return ModelOutput(torch.randn(B, C, generator=gen) * 2, taps)
    s_out = out(HS)
    for tensor in (s_out.logits, *s_out.taps.values()):
        tensor.requires_grad_()
    t_outs = [out(width) for width in widths]
    s_per_sample = torch.rand(B, generator=gen) + 0.5
    t_hard = [(x.mean(), x) for x in (torch.rand(B, generator=gen) + 0.2 for _ in widths)]
    return s_out, t_outs, s_per_sample.mean(), s_per_sample, t_hard


def context(widths, **overrides):
    teachers = tuple(TeacherInfo(2, width, 2) for width in widths)
    return CombinerContext(**{**dict(student_hidden_size=HS, teachers=teachers, num_classes=C,
                                     teacher_hard_losses=True), **overrides})


# Independent references: per-sample pre_loss (0.7 T^2 KL + 0.4 hard) and the tap relations.
def ref_pre(s_logits, t_logits, s_per_sample):
    kl = F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="none").sum(-1)
    return 0.7 * T * T * kl + 0.4 * s_per_sample


def ref_inter(s_taps, t_taps):
    """Per-sample sum over the hidden taps of the relation MSE: [B]."""
    total = 0
    for name in HIDDEN_TAPS:
        s, t = s_taps[name], t_taps[name]
        s_rel = torch.einsum("bih,bjh->bij", s, s) / s.size(-1)
        t_rel = torch.einsum("bih,bjh->bij", t, t) / t.size(-1)
        total = total + (s_rel - t_rel).pow(2).flatten(1).mean(1)
    return total


def compute(combiner, outputs, batch=None, generator=None):
    s_out, t_outs, s_hard, s_per_sample, t_hard = outputs
    student = TapRelation(nn.Identity(), OPTIONS)
    return combiner.compute(student, s_out, s_hard, t_outs, batch or DistillBatch("finetune"), StepInfo(),
                            t_hard_losses=t_hard, generator=generator, s_hard_per_sample=s_per_sample)


# --------------------------------------------------------------------------- pure functions
def test_pure_functions_literal_values():
    uniform, peaked = torch.zeros(1, 4), torch.tensor([[50.0, 0.0, 0.0, 0.0]])
    close(normalized_entropy(torch.cat([uniform, peaked]), vocab_parallel=False), torch.tensor([1.0, 0.0]))
    rates = uncertainty_rates(torch.tensor([0.0, 0.5, 1.0]), 3)
    close(rates, torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [2.0, 1.0, 0.0]]), "soft rates sum to N")
    # pi = sigmoid(0) = 0.5 for either action: -(2 log 0.5) * (-2) = -4 log 2; probabilities: -(0.5 + 0.5) * (-2) = 2.
    z, a, reward = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor(-2.0)
    close(policy_loss(z, a, reward), torch.tensor(-4 * math.log(2)))
    close(policy_loss(z, a, reward, log_prob=False), torch.tensor(2.0))
    logits, mask = torch.arange(12.0).view(1, 3, 4), torch.tensor([[1.0, 0.0, 1.0]])
    close(sequence_mean(logits, mask), torch.tensor([[8.0, 10.0, 12.0, 14.0]]) / 3, "masked rows count as zeros")


def test_hard_routing_sends_the_most_uncertain_samples_to_the_smallest_teacher():
    entropy = torch.tensor([0.2, 0.9, 0.5, 0.7])   # descending order: samples 1, 3, 2, 0
    # two teachers: ranks 1..4 scaled by 2/4 -> 0.5, 1, 1.5, 2: samples 1, 3 -> teacher 0; 2, 0 -> teacher 1
    close(uncertainty_rates(entropy, 2, hard=True), torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    # three teachers: scaled by 3/4 -> 0.75, 1.5, 2.25, 3: sample 1 -> 0, sample 3 -> 1, samples 2, 0 -> 2
    close(uncertainty_rates(entropy, 3, hard=True),
          torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"at least as many samples \(1\) as teachers \(2\)"):
        uncertainty_rates(entropy[:1], 2, hard=True)


# --------------------------------------------------------------------------- MT-BERT
@pytest.mark.parametrize("widths", [(8, 10), (8, 10, 12)])
@pytest.mark.parametrize("fit_teacher,fix_layernorm,wo_hard", [(True, True, False), (False, False, True)])
def test_mt_bert(widths, fit_teacher, fix_layernorm, wo_hard):
    torch.manual_seed(0)
    flags = dict(mt_bert_fit_teacher=fit_teacher, mt_bert_fix_layernorm=fix_layernorm, mt_bert_wo_hard=wo_hard)
    combiner = build_multi_teacher("mt_bert", flags, OPTIONS, context(widths))
    if fix_layernorm:   # non-trivial affine parameters for the student's extra LayerNorm
        with torch.no_grad():
            combiner.layernorm.weight.uniform_(0.5, 1.5)
            combiner.layernorm.bias.uniform_(-0.5, 0.5)
    outputs = make_outputs(widths, seed=1)
    s_out, t_outs, s_hard, s_per_sample, t_hard = outputs
    total, metrics = compute(combiner, outputs)

    expected = s_hard * (0 if wo_hard else 1)
    for i, (t_out, width) in enumerate(zip(t_outs, widths)):
        fit = getattr(combiner, f"fit_dense_{i}")
        s_taps, t_taps = dict(s_out.taps), dict(t_out.taps)
        for name in HIDDEN_TAPS:
            if fix_layernorm:
                s_taps[name] = F.layer_norm(s_taps[name], (HS,), combiner.layernorm.weight, combiner.layernorm.bias)
                t_taps[name] = F.layer_norm(t_taps[name], (width,))
            if fit_teacher:
                t_taps[name] = t_taps[name] @ fit.weight.T + fit.bias            # [B, S, w] -> [B, S, HS]
            else:
                s_taps[name] = s_taps[name] @ fit.weight.T + fit.bias            # [B, S, HS] -> [B, S, w]
        pre = (ref_pre(s_out.logits, t_out.logits, s_per_sample) / (1 + t_hard[i][1])).mean()
        expected = expected + pre + ref_inter(s_taps, t_taps).mean()
    close(total, expected, "MT-BERT total")
    assert ("mt_bert/hard" in metrics) != wo_hard and f"kd/teacher_t{len(widths) - 1}" in metrics
    total.backward()
    assert combiner.fit_dense_0.weight.grad.abs().sum() > 0
    if fix_layernorm:
        assert combiner.layernorm.weight.grad is not None and not combiner.t_layernorm_0.weight.requires_grad
    infos = combiner_class("mt_bert").method_teacher_infos(combiner.options, context(widths).teachers, HS)
    assert [info.hidden_size for info in infos] == ([HS] * len(widths) if fit_teacher else list(widths))


def test_mt_bert_needs_the_teachers_hard_losses():
    with pytest.raises(ValueError, match="run with --mt_has_loss"):
        build_multi_teacher("mt_bert", {}, OPTIONS, context((8, 10), teacher_hard_losses=False))


# --------------------------------------------------------------------------- Uncertainty
def ref_entropy(logits):
    return torch.distributions.Categorical(logits=logits).entropy() / math.log(logits.size(-1))


@pytest.mark.parametrize("widths", [(8, 10), (8, 10, 12)])
@pytest.mark.parametrize("flags", [{}, {"uncertainty_hard": True}, {"uncertainty_teacher_seq": "SEQ"},
                                   {"uncertainty_inter_entropy": True, "uncertainty_wo_hard": True},
                                   {"uncertainty_wo_rate": True}])
def test_uncertainty(widths, flags):
    n = len(widths)
    seq = [1, 0] if n == 2 else [2, 0, 1]
    flags = {k: (":".join(map(str, seq)) if v == "SEQ" else v) for k, v in flags.items()}
    outputs = make_outputs(widths, seed=2)
    s_out, t_outs, s_hard, s_per_sample, t_hard = outputs
    total, metrics = compute(build_multi_teacher("uncertainty", flags, OPTIONS, context(widths)), outputs)

    h = ref_entropy(s_out.logits)
    order = seq if "uncertainty_teacher_seq" in flags else list(range(n))
    if flags.get("uncertainty_wo_rate"):
        rates = torch.ones(B, n)
    elif flags.get("uncertainty_hard"):   # independent: sort by hand, teacher j gets ranks in (jB/N, (j+1)B/N]
        ranked = sorted(range(B), key=lambda b: -h[b].item())
        rates = torch.zeros(B, n)
        for position, b in enumerate(ranked, start=1):
            rates[b, math.ceil(position * n / B) - 1] = 1.0
    else:
        rates = torch.stack([h + (1 - 2 * h) * j / (n - 1) for j in range(n)], dim=1)
        rates = rates * n / rates.sum(dim=1, keepdim=True)
    terms = []
    for i, t_out in enumerate(t_outs):
        pre = rates[:, order[i]] * ref_pre(s_out.logits, t_out.logits, s_per_sample)
        inter = ref_inter(s_out.taps, t_out.taps)
        if flags.get("uncertainty_inter_entropy"):
            inter, pre = (inter * h).mean(), (1 - h).abs() * pre
        else:
            inter = inter.mean()
        terms.append(pre.mean() + inter)
    expected = sum(terms) / n + (0 if flags.get("uncertainty_wo_hard") else 0.4 * s_hard)
    close(total, expected, f"Uncertainty {flags}")
    close(metrics["uncertainty/entropy"], h.mean().detach())
    total.backward()
    assert s_out.logits.grad is not None


def test_uncertainty_token_level_entropy_is_masked():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 7, generator=gen) * 3
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    h = normalized_entropy(logits, vocab_parallel=True, mask=mask)
    expected = (torch.distributions.Categorical(logits=logits).entropy() * mask).mean(1) / math.log(7)
    close(h, expected, "masked rows add 0, the mean runs over every row")


def test_uncertainty_teacher_order_is_checked():
    with pytest.raises(ValueError, match="must order all 2 teachers"):
        build_multi_teacher("uncertainty", {"uncertainty_teacher_seq": "0:2"}, OPTIONS, context((8, 10)))
    with pytest.raises(ValueError, match="expected a colon list"):
        build_multi_teacher("uncertainty", {"uncertainty_teacher_seq": "a:b"}, OPTIONS, context((8, 10)))


# --------------------------------------------------------------------------- RL-KD
RL_WIDTHS = (8, 10, 12)    # teacher 0 is the semantic model


def rl_combiner(**flags):
    torch.manual_seed(5)
    flags = {"rl_kd_semantic_model": 0, "rl_kd_alpha": 0.3, **flags}
    return build_multi_teacher("rl_kd", flags, OPTIONS, context(RL_WIDTHS))


def rl_expected(combiner, outputs, seed, previous, reward_kind=1, log_prob=True):
    """(total, the state, the actions) of one step by hand; `previous` = (state, actions) or None."""
    s_out, t_outs, s_hard, s_per_sample, t_hard = outputs
    w1, b1 = combiner.agent_semantic_mt_loss.weight, combiner.agent_semantic_mt_loss.bias
    w2, b2 = combiner.agent_mt_soft.weight, combiner.agent_mt_soft.bias
    x1 = torch.cat([t_outs[0].taps["output"][:, 0, :], t_hard[1][1][:, None], t_hard[2][1][:, None]], dim=1)
    x2 = torch.cat([t_outs[1].logits, t_outs[2].logits], dim=1)
    agent = lambda a, b: a @ w1.T + b1 + b @ w2.T + b2                                          # [B, 2]
    uniform = torch.rand(B, 2, generator=torch.Generator().manual_seed(seed))
    actions = (uniform < torch.sigmoid(agent(x1, x2))).float()
    losses = torch.stack([ref_pre(s_out.logits, t_outs[i].logits, s_per_sample)
                          + ref_inter(s_out.taps, t_outs[i].taps) for i in (1, 2)], dim=1)   # [B, 2]
    final = (losses * actions).mean()
    if previous is not None:
        (p1, p2), p_actions = previous
        reward = -s_hard - (t_hard[2][0] if reward_kind == 2 else 0)
        bernoulli = torch.distributions.Bernoulli(logits=agent(p1, p2))
        pi_term = bernoulli.log_prob(p_actions) if log_prob else bernoulli.probs ** p_actions * (
            1 - bernoulli.probs) ** (1 - p_actions)
        final = final - pi_term.sum() * reward.detach()
    return 0.3 * final + 0.7 * s_hard, (x1, x2), actions


@pytest.mark.parametrize("reward_kind,log_prob", [(1, True), (2, True), (1, False)])
def test_rl_kd_actions_rewards_and_update_over_two_steps(reward_kind, log_prob):
    combiner = rl_combiner(rl_kd_reward=reward_kind, rl_kd_policy_prob=not log_prob)
    assert combiner.teacher_taps(0, ["layers.0.attention_scores"]) == ["output"]
    assert combiner.teacher_taps(1, ["a"]) == ["a"]
    first, second = make_outputs(RL_WIDTHS, seed=6), make_outputs(RL_WIDTHS, seed=7)
    total1, metrics1 = compute(combiner, first, generator=torch.Generator().manual_seed(11))
    expected1, state1, actions1 = rl_expected(combiner, first, 11, None)
    close(total1, expected1, "step 1 (no previous step: no policy term)")
    assert "rl_kd/policy" not in metrics1 and 0 < actions1.mean() < 1, "the seed must select some teachers, not all"
    close(metrics1["rl_kd/selected_t1"], actions1[:, 0].mean())
    saved = combiner.combiner_state()

    total2, metrics2 = compute(combiner, second, generator=torch.Generator().manual_seed(12))
    expected2, _, _ = rl_expected(combiner, second, 12, (state1, actions1), reward_kind, log_prob)
    close(total2, expected2, "step 2: the policy term of step 1's state and action with step 2's reward")
    grads = torch.autograd.grad(total2, list(combiner.parameters()))
    expected_grads = torch.autograd.grad(expected2, list(combiner.parameters()))
    for grad, expected in zip(grads, expected_grads):
        close(grad, expected, "agent gradient")
    assert all(g.abs().sum() > 0 for g in grads)

    # The state between steps survives a checkpoint: a fresh combiner with the same weights.
    restored = rl_combiner(rl_kd_reward=reward_kind, rl_kd_policy_prob=not log_prob)
    restored.load_state_dict(combiner.state_dict())
    restored.load_combiner_state(saved)
    again, _ = compute(restored, second, generator=torch.Generator().manual_seed(12))
    assert torch.equal(again, total2)


def test_rl_kd_only_avg_and_bad_configurations():
    combiner = rl_combiner(rl_kd_only_avg=True, rl_kd_semantic_model=None, rl_kd_semantic_model_dim=16)
    assert not any(p.requires_grad for p in combiner.parameters()), "the warm-up stage does not train the agent"
    assert combiner.agent_semantic_mt_loss.in_features == 16 + 3
    outputs = make_outputs(RL_WIDTHS, seed=8)
    s_out, t_outs, s_hard, s_per_sample, _ = outputs
    total, _ = compute(combiner, outputs)
    losses = [(ref_pre(s_out.logits, t.logits, s_hard.expand(B)).mean() + ref_inter(s_out.taps, t.taps).mean())
              for t in t_outs]
    close(total, 0.3 * sum(losses) / 3 + 0.7 * s_hard, "only_avg: alpha * mean_i l_i + (1 - alpha) L_hard")
    with pytest.raises(ValueError, match="--rl_kd_semantic_model=3 but there are 3 teachers"):
        rl_combiner(rl_kd_semantic_model=3)
    with pytest.raises(ValueError, match="semantic teacher 0 has hidden size 8"):
        rl_combiner(rl_kd_semantic_model_dim=9)
    with pytest.raises(ValueError, match="--mt_has_loss"):
        build_multi_teacher("rl_kd", {}, OPTIONS, context(RL_WIDTHS, teacher_hard_losses=False))
    s_out, t_outs, *rest = make_outputs(RL_WIDTHS, seed=8)
    narrow = lambda out: ModelOutput(out.logits[:, :3], out.taps)   # a batch of 3 choices; the agent expects C = 5
    with pytest.raises(ValueError, match="soft state has width 6, the agent was built for 10"):
        compute(rl_combiner(), (narrow(s_out), [narrow(t) for t in t_outs], *rest), generator=torch.Generator())


# --------------------------------------------------------------------------- MixMT and the registry
def test_mixmt_sums_its_components():
    widths = (8, 10)
    flags = {"mixmt_model": "AvgTeacher, uncertainty", "avgmt_sum_loss": True, "uncertainty_hard": True}
    mix = build_multi_teacher("mixmt", flags, OPTIONS, context(widths))
    outputs = make_outputs(widths, seed=9)
    total, metrics = compute(mix, outputs)
    avg, _ = compute(build_multi_teacher("avg", {"avgmt_sum_loss": True}, OPTIONS, context(widths)), outputs)
    unc, _ = compute(build_multi_teacher("uncertainty", {"uncertainty_hard": True}, OPTIONS, context(widths)), outputs)
    close(total, avg + unc, "MixMT = the sum of its components")
    assert {"mixmt/AvgTeacher", "mixmt/Uncertainty", "Uncertainty/uncertainty/entropy", "kd/total"} <= set(metrics)
    rl_mix = build_multi_teacher("mixmt", {"mixmt_model": "AvgTeacher,RL_KD", "rl_kd_semantic_model": 1}, OPTIONS,
                                 context((10, 8)))
    assert sorted(rl_mix.teacher_taps(1, ["x"])) == ["output", "x"], "union of the components' taps"
    assert "RL_KD.agent_mt_soft.weight" in rl_mix.state_dict()
    for names, message in (("", "needs --mixmt_model"), ("AvgTeacher,Foo", "unknown multi-teacher model 'Foo'"),
                           ("MT_BERT,mt_bert", r"lists \['MT_BERT'\] more than once"),
                           ("MixMT", "component of itself")):
        with pytest.raises((ValueError, KeyError), match=message):
            build_multi_teacher("mixmt", {"mixmt_model": names}, OPTIONS, context(widths))


def test_non_avg_combiners_refuse_disabled_teachers():
    outputs = list(make_outputs((8, 10), seed=10))
    outputs[1] = [outputs[1][0], None]
    with pytest.raises(ValueError, match=r"teacher\(s\) \[1\] are disabled by --mt_disable_operation"):
        compute(build_multi_teacher("uncertainty", {}, OPTIONS, context((8, 10))), outputs)
