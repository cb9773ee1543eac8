"""DIITO, SID, Theseus, LRC-BERT and MobileBERT (distill/methods/{diito,sid,theseus,lrc_bert,mobilebert}.py).

On a tiny fixed teacher (4 layers) and student (2 layers), through the real Trainer's
`forward_pass`: each loss against a plain-torch reference written here from the methods'
formulas on full (MP=1) tensors; the same losses at MP=2 and LRC-BERT's data-parallel gather
at DP=2 (one gloo spawn); the schedules, their method state and an exact resume; fully padded
rows; choice-expanded fine-tuning rows (per-sample [B] losses); pure taps and interventions
getters; short runs. Every pure function gets literal values.
"""
import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import mpu
from dist_utils import assert_rel_close, run_distributed
from distill import (STUDENT_MODELS, AvgTeacherOptions, DistillBatch, DistillOptions, StepInfo, TeacherInfo,
                     build_multi_teacher, build_student)
from distill.layer_mapping import uniform_attention_pairs, uniform_hidden_pairs
from distill.losses_schedules import (alignment_points, attention_score_kl, consecutive_masks, cos_nce, interchange,
                                      leading_masks, progressive_unlock_due, random_masks, theseus_keep_rate)
from glm_fixtures import tiny_config
from model import GLMForMultiTokenCloze, GLMModel
from training.config import ArchConfig, TeacherConfig
from training.teachers import Teacher
from training_fixtures import ListBatches, global_batches, make_trainer, torch_engine
from training.stages import lm_loss

# fp32 throughout; implementation and references differ only in summation order and, at MP=2,
# in the all-reduces (errors ~1e-7 relative), so 1e-5 relative holds with a wide margin.
RTOL = 1e-5
B, SEQ, T = 4, 12, 2.0
STUDENT, TEACHER = dict(num_layers=2), dict(num_layers=4)        # hidden 52, 4 heads of 13
WIDE_TEACHER = dict(num_layers=4, hidden_size=68)                 # LRC-BERT projects 52 -> 68
IB = dict(inverted_bottleneck_mode=True, ib_word_emb=8)
IB_STUDENT = dict(num_layers=2, ib_hidden_size=28, ib_ffn_num=2, **IB)      # MobileBERT: 4 heads of 7
IB_TEACHER = dict(num_layers=4, ib_hidden_size=60, ib_ffn_num=1, **IB)      # 4 heads of 15
CASES = {  # name: (method options, generic options, student, teacher, forward repeats, ignore first backward)
    "diito": (dict(diito_alpha_mlm=0.25, diito_alpha_ce=0.5, diito_alpha_causal_ce=0.75, diito_alpha_cos=1.5,
                   diito_alpha_causal_cos=2.0),
              dict(distill_pt_soft=True, distill_pt_hard=True, distill_temperature=T), STUDENT, TEACHER, 1, False),
    "sid": ({}, dict(distill_pt_soft=True, distill_temperature=T), STUDENT, TEACHER, 0, False),
    "theseus": ({}, dict(distill_pt_hard=True), STUDENT, TEACHER, 0, False),
    "lrc_bert": (dict(lrc_bert_alpha=0.5, lrc_bert_gard_perturb=True),
                 dict(distill_pt_soft=True, distill_temperature=T), STUDENT, WIDE_TEACHER, 1, True),
    "mobilebert": ({}, dict(distill_pt_hard=True), IB_STUDENT, IB_TEACHER, 0, False),
}


# --------------------------------------------------------------------------- builders
def _student(name, glm, teacher_cfg):
    method, options = CASES[name][:2]
    config = tiny_config(**teacher_cfg)
    info = TeacherInfo(config.num_layers, config.hidden_size, config.num_attention_heads)
    return build_student(name, glm, DistillOptions(**options), [info], method_options=method)


def full_states(name, seed=0):
    """MP=1 (state, specs) of the student (with its auxiliary layers) and of the teacher."""
    s_cfg, t_cfg = CASES[name][2:4]
    torch.manual_seed(seed)
    student = _student(name, GLMModel(tiny_config(**s_cfg)), t_cfg)
    torch.manual_seed(seed + 100)
    teacher = GLMModel(tiny_config(**t_cfg))
    return [({k: v.clone() for k, v in m.state_dict().items()}, mpu.partition_specs(m)) for m in (student, teacher)]


def _shard(module, state_specs):
    state, specs = state_specs
    module.load_state_dict(mpu.shard_state_dict(state, specs, mpu.get_model_parallel_rank(),
                                                mpu.get_model_parallel_world_size()))
    return module


def models(name, states, teacher_grad=False, **student_overrides):
    """`name`'s student (bound to its teacher) and teacher at this process's MP size."""
    s_cfg, t_cfg = CASES[name][2:4]
    student = _shard(_student(name, GLMModel(tiny_config(**s_cfg, **student_overrides)), t_cfg), states[0])
    teacher = _shard(GLMModel(tiny_config(**t_cfg)), states[1]).eval()
    teacher.requires_grad_(teacher_grad)
    student.bind_teachers([teacher])
    return student, teacher


def setup(name, states, batches=None, total_iters=6, save_dir=None, teacher_grad=False, method_state=None,
          **student_overrides):
    """A Trainer around `name`'s student and teacher at this process's MP size."""
    repeats, ignore = CASES[name][4:]
    student, teacher = models(name, states, teacher_grad, **student_overrides)
    if method_state is not None:
        student.load_method_state(method_state)
    batches = batches or [batch_with_padding()]
    wrapped = Teacher(teacher, TeacherConfig(ArchConfig(), None), torch.float32)
    trainer = make_trainer(torch_engine(student, lr=3e-3), ListBatches(batches * total_iters, B), total_iters,
                           save_dir=save_dir, student=student, teachers=[wrapped],
                           combiner=build_multi_teacher(None, AvgTeacherOptions(), student.options), lr=3e-3)
    trainer.settings.forward_repeat_num, trainer.settings.ignore_first_backward_gard = repeats, ignore
    return trainer, student, teacher


def batch_with_padding(fully_padded_row=False, seed=0):
    """4 rows of 12 (Part A 7 tokens); row 2 ends in 3 pads; optionally row 1 is all padding."""
    batch = {k: v.clone() for k, v in global_batches(1, B, seq=SEQ, seed=seed)[0].items()}
    batch["text"][2, 9:], batch["position_id"][2, :, 9:], batch["loss_mask"][2, 9:] = 0, 0, 0
    if fully_padded_row:
        batch["text"][1], batch["position_id"][1], batch["loss_mask"][1] = 0, 0, 0
    return batch


def run(model, batch, taps, interventions=None):
    with torch.no_grad():
        return model(batch["text"], batch["position_id"], batch["attention_mask"], taps=taps,
                     interventions=interventions)


# --------------------------------------------------------------------------- plain-torch references
def ref_kl_rows(s, t, temperature=1.0):
    """KL(softmax(t/T) || softmax(s/T)) per row, log-target form (masked cells: 0 * finite)."""
    return F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                    reduction="none").sum(-1)


def ref_non_pad(batch):
    mask = batch["position_id"][:, 0] > 0
    mask[:, 0] = True
    return mask


def ref_soft(s_logits, t_logits, batch):
    return T ** 2 * (ref_kl_rows(s_logits, t_logits, T) * batch["loss_mask"]).mean()


def ref_cos(s, t, mask=None):
    rows = 1 - F.cosine_similarity(s, t, dim=-1)
    return (rows * (1.0 if mask is None else mask)).mean()


def close(actual, expected, what):
    assert_rel_close(torch.as_tensor(actual), torch.as_tensor(expected), RTOL, what)


# --------------------------------------------------------------------------- literal values
def test_pure_functions_literal_values():
    # KL over keys: p_t = (.75, .25), p_s = (.5, .5): .75 ln 1.5 + .25 ln .5; masked keys add 0.
    kl = attention_score_kl(torch.tensor([[0.0, 0.0], [1.0, -16384.0]]),
                            torch.tensor([[math.log(3), 0.0], [0.0, -16384.0]]))
    assert kl.tolist() == pytest.approx([0.75 * math.log(1.5) + 0.25 * math.log(0.5), 0.0], abs=1e-6)
    # COS-NCE, B=2, one vector each: aligned -> l = 1 - 1/2 + 0; swapped -> 1 - 0/2 + 1 (the
    # original's B*g_ii would give 2.5).
    eye = torch.eye(2).view(2, 1, 2)
    assert cos_nce(eye, eye).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert cos_nce(eye, eye.flip(0)).tolist() == pytest.approx([2.0, 2.0], abs=1e-6)
    assert cos_nce(eye[:1], eye[:1]).tolist() == pytest.approx([1.0], abs=1e-6)          # no negatives
    assert cos_nce(eye[1:], eye, positive_offset=1).tolist() == pytest.approx([0.5], abs=1e-6)
    assert [theseus_keep_rate(i, 100, 0.3, 0.66) for i in (0, 33, 80)] == pytest.approx([0.3, 0.65, 1.0])
    assert not progressive_unlock_due(1, 2, 9, 2) and progressive_unlock_due(1, 3, 9, 2)
    assert not progressive_unlock_due(1, 10 ** 6, 0, 2)          # unknown length: never
    # uniform map (5, 12) = [0, 3, 6, 9, 11, 12]: attention l <-> layer map[l+1]-1, representation k <-> map[k]
    assert uniform_attention_pairs(5, 12, 2) == [("layers.0.attention_scores", "layers.2.attention_scores"),
                                                 ("layers.1.attention_scores", "layers.5.attention_scores")]
    assert uniform_hidden_pairs(5, 12, [0, 4, 5]) == [("layers.0.layernorm_output", "layers.0.layernorm_output"),
                                                      ("layers.4.layernorm_output", "layers.11.layernorm_output"),
                                                      ("output", "output")]


def test_interchange_masks_literal_values():
    candidates = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 4 + [0] * 6], dtype=torch.bool)
    dual = candidates.roll(-1, 0)
    gen = torch.Generator().manual_seed(0)
    mask, dual_mask = consecutive_masks(candidates, dual, 0.5, -1, gen)
    assert mask.sum(1).tolist() == dual_mask.sum(1).tolist() == [3, 2, 2]          # floor(min(len, dual) / 2)
    for row in list(mask) + list(dual_mask):                                          # one contiguous span
        where = row.nonzero().flatten()
        assert (where.diff() == 1).all()
    assert not (mask & ~candidates).any() and not (dual_mask & ~dual).any()
    assert consecutive_masks(candidates, dual, 0.5, 1, gen)[0].sum(1).tolist() == [1, 1, 1]     # max_token
    scattered, _ = random_masks(candidates, dual, 0.5, -1, gen)
    assert scattered.sum(1).tolist() == [3, 2, 2] and not (scattered & ~candidates).any()
    first, dual_first = leading_masks(candidates, dual, -1)
    assert first[0].nonzero().flatten().tolist() == list(range(6)) and dual_first.sum(1).tolist() == [6, 4, 4]
    value = torch.arange(6.0).view(2, 3, 1)                                           # rows [0 1 2], [3 4 5]
    swapped = interchange(value, value.roll(-1, 0), torch.tensor([[0, 1, 0], [1, 0, 0]], dtype=torch.bool),
                          torch.tensor([[0, 0, 1], [0, 1, 0]], dtype=torch.bool))
    assert swapped.flatten().tolist() == [0, 5, 2, 1, 4, 5]
    assert alignment_points("full", 2, 4, level=2) == ([2], [3, 4]) and alignment_points("full", 2, 5) == ([1], [1, 2])
    assert alignment_points("middle", 2, 4) == ([2], [3]) and alignment_points("late", 3, 6) == ([2, 3], [5, 6])


# --------------------------------------------------------------------------- golden values
def test_diito_both_passes_match_the_reference():
    states, batch = full_states("diito"), batch_with_padding()
    trainer, student, teacher = setup("diito", states)
    o = student.method_options
    loss0, metrics = trainer.forward_pass(batch, trainer._step_info(0))
    (s_points, t_points), (mask, dual_mask) = student.method_state()["points"], student.method_state()["masks"]
    assert len(s_points) == 1 and len(t_points[0]) == 2                 # full: student l <-> teacher (2l-2, 2l]
    s0, t0 = run(student, batch, [*s_points, "output"]), run(teacher, batch, [*t_points[0], "output"])
    non_pad, hard = ref_non_pad(batch), lm_loss(s0.logits, batch["target"], batch["loss_mask"])
    expected0 = (o.diito_alpha_cos * ref_cos(s0.taps["output"], t0.taps["output"], non_pad)
                 + o.diito_alpha_ce * ref_soft(s0.logits, t0.logits, batch) + o.diito_alpha_mlm * hard)
    close(loss0, expected0, "pass 0")
    lengths = non_pad.sum(1)
    assert mask.sum(1).tolist() == [int(min(a, b) * 0.3) for a, b in zip(lengths, lengths.roll(-1))]
    assert not (mask & ~non_pad).any() and not (dual_mask & ~non_pad.roll(-1, 0)).any()

    def swap(pass0):                                                      # row i takes row i+1's states
        def apply(value):
            out = value.clone()
            for i in range(B):
                out[i, mask[i]] = pass0[(i + 1) % B, dual_mask[i]]
            return out
        return apply
    s1 = run(student, batch, ["output"], {p: swap(s0.taps[p]) for p in s_points})
    t1 = run(teacher, batch, ["output"], {p: swap(t0.taps[p]) for p in t_points[0]})
    loss1, _ = trainer.forward_pass(batch, trainer._step_info(1))
    expected1 = (o.diito_alpha_causal_cos * ref_cos(s1.taps["output"], t1.taps["output"], non_pad)
                 + o.diito_alpha_causal_ce * ref_soft(s1.logits, t1.logits, batch))   # no hard term
    close(loss1, expected1, "pass 1")
    assert not torch.allclose(s1.logits, s0.logits)                      # the interchange changed something


SID_ATTENTION = [("layers.0.attention_scores", "layers.1.attention_scores"),     # uniform map (2, 4): [0, 2, 4]
                 ("layers.1.attention_scores", "layers.3.attention_scores")]
SID_HIDDEN = [("layers.1.layernorm_output", "layers.2.layernorm_output"), ("output", "output")]


@pytest.mark.parametrize("unlocked", [1, 2, 3])
def test_sid_matches_the_reference_at_each_stage(unlocked):
    states, batch = full_states("sid"), batch_with_padding()
    trainer, student, teacher = setup("sid", states, total_iters=100, method_state={"next_locked_layer": unlocked})
    loss, _ = trainer.forward_pass(batch, trainer._step_info(0))
    attention, hidden = SID_ATTENTION[:unlocked], SID_HIDDEN[:unlocked]
    s = run(student, batch, [a for a, _ in attention + hidden])
    t = run(teacher, batch, [b for _, b in attention + hidden])
    if unlocked <= 2:
        expected = sum(ref_kl_rows(s.taps[a], t.taps[b]).mean() for a, b in attention)
        expected = expected + sum(ref_cos(s.taps[a][:, 0], t.taps[b][:, 0]) for a, b in hidden)   # [CLS]
    else:   # all unlocked: the generic pre-loss alone
        expected = ref_soft(s.logits, t.logits, batch)
    close(loss, expected, f"sid, {unlocked} unlocked")


@pytest.mark.parametrize("unlocked", [1, 3])
def test_mobilebert_matches_the_reference(unlocked):
    states, batch = full_states("mobilebert"), batch_with_padding()
    trainer, student, teacher = setup("mobilebert", states, total_iters=100,
                                      method_state={"next_locked_layer": unlocked})
    loss, _ = trainer.forward_pass(batch, trainer._step_info(0))
    attention = SID_ATTENTION[:min(unlocked, 2)]
    hidden = [("layers.0.layernorm_output", "layers.0.layernorm_output"), *SID_HIDDEN][:min(unlocked, 2) + 1]
    s = run(student, batch, [a for a, _ in attention + hidden])
    t = run(teacher, batch, [b for _, b in attention + hidden])
    kl = [ref_kl_rows(s.taps[a], t.taps[b]).mean() for a, b in attention]
    mse = [F.mse_loss(s.taps[a], t.taps[b]) for a, b in hidden]
    if unlocked == 1:    # layer 0 is being learned: its attention and output weigh 1, the embedding 0.1
        expected = 0.5 * (kl[0] + 0.1 * mse[0] + mse[1])
    else:                # all unlocked: every term weighs 1, plus the MLM hard loss
        expected = 0.5 * (sum(kl) + sum(mse)) + lm_loss(s.logits, batch["target"], batch["loss_mask"])
    close(loss, expected, f"mobilebert, {unlocked} unlocked")


def test_lrc_bert_cos_nce_and_gradient_perturbation_match_the_reference():
    states, batch = full_states("lrc_bert"), batch_with_padding()
    trainer, student, teacher = setup("lrc_bert", states)
    captured = {}
    method_interventions = student.student_interventions

    def capture(embeddings):
        captured["embeddings"] = embeddings
        return embeddings
    student.student_interventions = lambda step: {**method_interventions(step), **({} if step.repeat_index else
                                                                                     {"embeddings": capture})}
    loss0, _ = trainer.forward_pass(batch, trainer._step_info(0))
    pairs = [("layers.1.layernorm_output", "layers.2.layernorm_output"), ("output", "output")]
    s, t = run(student, batch, [a for a, _ in pairs]), run(teacher, batch, [b for _, b in pairs])
    weight = student.s_fit_dense[0].weight.detach()                      # [68, 52]
    s_rep = torch.cat([s.taps[a] @ weight.T for a, _ in pairs], dim=1)   # [B, 2S, 68]
    t_rep = torch.cat([t.taps[b] for _, b in pairs], dim=1)
    g = torch.stack([torch.stack([1 - F.cosine_similarity(s_rep[i], t_rep[j], dim=-1).mean() for j in range(B)])
                     for i in range(B)])                                # g_ij = 1 - mean_r cos
    rows = torch.stack([1 - (g[i].sum() - g[i, i]) / (B - 1) / 2 + g[i, i] for i in range(B)])
    expected0 = rows.mean() * 2 * 0.5 + ref_soft(s.logits, t.logits, batch)     # L_s = 2 layers, alpha 0.5
    close(loss0, expected0, "COS-NCE + soft")
    gradient = torch.autograd.grad(loss0, captured["embeddings"], retain_graph=True)[0]
    loss0.backward()                                                     # what --ignore_first_backward_gard does
    close(student._gradient, gradient, "hooked embedding gradient")
    loss1, _ = trainer.forward_pass(batch, trainer._step_info(1))
    delta = F.normalize(gradient, dim=-1)
    s1 = run(student, batch, [a for a, _ in pairs], {"embeddings": lambda embeddings: embeddings + delta})
    s1_rep = torch.cat([s1.taps[a] @ weight.T for a, _ in pairs], dim=1)
    expected1 = cos_nce(s1_rep, t_rep).mean() * 2 * 0.5 + ref_soft(s1.logits, t.logits, batch)
    close(loss1, expected1, "perturbed pass")
    student._gradient = torch.full_like(gradient, float("nan"))          # a NaN gradient: no perturbation
    assert student.student_interventions(trainer._step_info(1)) == {}


def test_theseus_runs_teacher_blocks_without_their_gradients():
    states, batch = full_states("theseus"), batch_with_padding()
    trainer, student, teacher = setup("theseus", states, teacher_grad=True)   # not frozen: still no .grad
    step = trainer._step_info(0)
    saved = student.method_state()
    keep, choice = student.replacement(step)
    student.load_method_state(saved)                                    # the forward draws the same again
    loss, metrics = trainer.forward_pass(batch, step)
    assert choice.tolist() == [0, 0] and keep.tolist() != [True, True]  # seeded: some layer is replaced
    reference = copy.deepcopy(student.model)                             # the student with blocks spliced in
    t_layers = copy.deepcopy(teacher).transformer.layers
    mixed = []
    for i in range(2):                                                   # uniform map (2, 4): block i = 2i, 2i+1
        mixed += [reference.transformer.layers[i]] if keep[i] else [t_layers[2 * i], t_layers[2 * i + 1]]
    reference.transformer.layers = nn.ModuleList(mixed)
    logits = run(reference, batch, []).logits
    close(loss, lm_loss(logits, batch["target"], batch["loss_mask"]), "hard loss of the mixed model")
    assert float(metrics["theseus/keep_rate"]) == pytest.approx(0.3)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.model.word_embeddings.weight.grad.abs().sum() > 0
    # r = 0: every layer would be replaced; one student layer is kept (the original's dead loop, fixed).
    zero = build_student("theseus", GLMModel(tiny_config(**STUDENT)), DistillOptions(),
                         [TeacherInfo(4, 52, 4)], method_options=dict(theseus_replacing_rate=0.0))
    assert all(int(zero.replacement(StepInfo(train_iters=10))[0].sum()) == 1 for _ in range(5))
    assert build_student("theseus", GLMModel(tiny_config(**STUDENT)), DistillOptions()).student_interventions(
        StepInfo()) == {}                                                # no teacher bound: plain student


# --------------------------------------------------------------------------- schedules, state, resume
def test_unlocking_schedules():
    batch = batch_with_padding()
    distill_batch = DistillBatch("pretrain", loss_mask=batch["loss_mask"], position_ids=batch["position_id"])
    outputs = {}
    for name in ("sid", "mobilebert"):
        student, teacher = models(name, full_states(name))
        student.load_method_state({"next_locked_layer": 2})              # every tap, for all the steps below
        s_out = run(student, batch, student.student_taps(StepInfo()))
        t_out = run(teacher, batch, student.teacher_taps(0, StepInfo()))
        outputs[name] = s_out, t_out
        student.load_method_state({})
        seen = []
        for iteration in range(6):                                       # L_s = 2, T = 6: unlock at it 2 and 4
            step = StepInfo(iteration=iteration, train_iters=6)
            student.begin_step(step)
            student.inter_loss(s_out, t_out, distill_batch, step)
            seen.append(student.method_state()["next_locked_layer"])
        assert seen == [1, 1, 2, 2, 3, 3], name
        student.load_method_state({})
        evaluation = StepInfo(iteration=5, train_iters=6, training=False)
        student.begin_step(evaluation)
        student.inter_loss(s_out, t_out, distill_batch, evaluation)
        assert student.method_state() == {"next_locked_layer": 1}        # only training steps count
    student, _ = models("sid", full_states("sid"))
    student.method_options = type(student.method_options)(sid_accumulate_t=10.0)   # cosine < 10: every step
    student.begin_step(StepInfo(train_iters=1000))
    student.inter_loss(*outputs["sid"], distill_batch, StepInfo(train_iters=1000))
    assert student.method_state() == {"next_locked_layer": 2}
    with pytest.raises(ValueError, match="unknown method state keys"):
        student.load_method_state({"next_locked": 2})


@pytest.mark.parametrize("name", ["diito", "sid", "mobilebert", "theseus"])
def test_resume_continues_like_the_uninterrupted_run(name, tmp_path):
    states = full_states(name)
    batches = [batch_with_padding(seed=i) for i in range(4)]
    # 5 steps, saved after 3: SID/MobileBERT unlock layer 2 at iteration 2 (before the save) and
    # layer 3 at iteration 4 (after it); Theseus' keep rate and DIITO's draws move every step.
    straight, student, _ = setup(name, states, batches, total_iters=5, save_dir=str(tmp_path))
    for _ in range(3):
        straight.micro_step(next(straight.data))
    straight.save("3")
    if name in ("sid", "mobilebert"):
        assert student.method_state() == {"next_locked_layer": 2}
    expected = [straight.micro_step(next(straight.data)) for _ in range(2)]
    other_student = full_states(name, seed=9)[0]                         # the checkpoint replaces it
    resumed, again, _ = setup(name, [other_student, states[1]], batches, total_iters=5)
    resumed.resume(str(tmp_path))
    actual = [resumed.micro_step(next(resumed.data)) for _ in range(2)]
    assert _losses(actual) == _losses(expected)                          # CPU fp32: bit for bit
    assert _same(again.method_state(), student.method_state())


def _losses(runs):
    return [{k: float(v) for k, v in metrics.items() if k.startswith("loss")} for metrics in runs]


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _answers(student, teacher, batch, step):
    """What the taps and interventions getters answer at `step`: the taps, and every
    intervention applied to what it would receive (the student's layer list for "layers", else
    the model's value at that point on `batch`)."""
    def applied(interventions, model):
        def received(point):
            if point == "layers":                # only the student's (Theseus)
                return model.model.transformer.layer_sequence()
            return run(model, batch, [point]).taps[point]
        return {point: fn(received(point)) for point, fn in interventions.items()}
    return (student.student_taps(step), student.teacher_taps(0, step),
            applied(student.student_interventions(step), student),
            applied(student.teacher_interventions(0, step), teacher))


def _fingerprint(student):
    """The state a getter could change: the method state and what the getters and losses read
    (LRC-BERT's hooked gradient, Theseus' keep rate, the unlocked layer a SID/MobileBERT step uses)."""
    state = {attr: getattr(student, attr) for attr in ("_gradient", "keep_rate") if hasattr(student, attr)}
    if hasattr(student, "unlocking"):
        state["active"] = student.unlocking.active
    return copy.deepcopy((student.method_state(), state))


@pytest.mark.parametrize("name", list(CASES))
def test_getters_are_pure_queries(name):
    """After `begin_step`, the getters answer the same twice and change no state, on every pass
    of a real step; asked again afterwards about any pass, they still change nothing."""
    trainer, student, teacher = setup(name, full_states(name))
    trainer.state.iteration = 4                  # SID/MobileBERT: layer 2 unlocks in this step, for the next ones
    batch, repeats = batch_with_padding(), CASES[name][4]
    for repeat in range(repeats + 1):
        step = trainer._step_info(repeat)
        student.begin_step(step)
        before = _fingerprint(student)
        first, second = _answers(student, teacher, batch, step), _answers(student, teacher, batch, step)
        assert _same(first, second), (name, repeat)
        assert _same(_fingerprint(student), before), (name, repeat)
        if repeat == 1 or name == "theseus":     # interventions set up by pass 0 / by begin_step
            assert first[2], (name, repeat)
        loss, _ = trainer.forward_pass(batch, step)
        if repeat == 0 and trainer.settings.ignore_first_backward_gard:
            loss.backward()                      # LRC-BERT: the gradient pass 1 perturbs by
    after = _fingerprint(student)
    for repeat in range(repeats + 1):
        _answers(student, teacher, batch, trainer._step_info(repeat))
    assert _same(_fingerprint(student), after), name


# --------------------------------------------------------------------------- robustness and training
def trainer_passes(trainer, batch):
    """One micro-step's passes and backwards as the Trainer runs them (without the optimizer
    step); returns the pass losses."""
    losses, total = [], 0.0
    for repeat in range(trainer.settings.forward_repeat_num + 1):
        loss, metrics = trainer.forward_pass(batch, trainer._step_info(repeat))
        assert torch.isfinite(loss), metrics
        losses.append(loss.detach())
        if repeat == 0 and trainer.settings.ignore_first_backward_gard:
            loss.backward()                     # feeds the gradient hooks; the trainer then drops it
            trainer.student.zero_grad(set_to_none=True)
            loss = 0.0
        total = total + loss
    total.backward()
    return torch.stack(losses)


@pytest.mark.parametrize("name", list(CASES))
def test_fully_padded_rows_give_finite_losses_and_gradients(name):
    trainer, student, _ = setup(name, full_states(name))
    trainer_passes(trainer, batch_with_padding(fully_padded_row=True))
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["sid", "theseus", "lrc_bert", "mobilebert"])
def test_activation_checkpointing_changes_nothing(name):
    """Taps leave checkpointed chunks with their graph, teacher blocks run inside them, the
    embedding hook sits outside them: losses and gradients equal the plain run's."""
    states, batch, results = full_states(name), batch_with_padding(), []
    for checkpointing in (False, True):
        trainer, student, _ = setup(name, states, checkpoint_activations=checkpointing)
        losses = trainer_passes(trainer, batch)
        assert student.model.config.checkpoint_activations == checkpointing
        results.append((losses, {k: p.grad for k, p in student.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (checkpointed, grads) = results
    close(checkpointed, plain, "losses")
    assert grads.keys() == plain_grads.keys()
    for key, grad in grads.items():
        close(grad, plain_grads[key], f"grad {key}")
    assert not STUDENT_MODELS["diito"].supports_activation_checkpointing     # its duals need the pass-0 graph


def finetune_rows_loss(student, teacher, step):
    """The combiner's per-teacher sum [B] on cloze rows: [B=2, C=2, S] flattened to 4 rows, one
    of them fully padded."""
    batch = batch_with_padding(fully_padded_row=True)
    inputs = tuple(batch[k].reshape(2, 2, *batch[k].shape[1:])
                   for k in ("text", "position_id", "attention_mask", "target", "loss_mask"))
    student.begin_step(step)
    s_out = student(*inputs, taps=student.student_taps(step), interventions=student.student_interventions(step))
    with torch.no_grad():
        t_out = teacher(*inputs, taps=student.teacher_taps(0, step),
                        interventions=student.teacher_interventions(0, step))
    labels = torch.tensor([0, 1])
    distill_batch = DistillBatch("finetune", labels=labels, position_ids=inputs[1])
    hard = F.cross_entropy(s_out.logits, labels, reduction="none")
    pre, _ = student.pre_loss(s_out.logits, t_out.logits, hard, distill_batch, step)
    inter, _ = student.inter_loss(s_out, t_out, distill_batch, step)
    return pre + inter


@pytest.mark.filterwarnings("ignore:lrc_bert")   # no pass-0 backward here, so no perturbation
@pytest.mark.parametrize("name", list(CASES))
def test_choice_expanded_finetune_rows(name):
    s_cfg, t_cfg = CASES[name][2:4]
    torch.manual_seed(4)
    student = _student(name, GLMForMultiTokenCloze(GLMModel(tiny_config(**s_cfg))), t_cfg)
    torch.manual_seed(5)
    teacher = GLMForMultiTokenCloze(GLMModel(tiny_config(**t_cfg))).eval()
    student.bind_teachers([teacher])
    for repeat in range(CASES[name][4] + 1):
        per_sample = finetune_rows_loss(student, teacher, StepInfo(repeat_index=repeat, train_iters=100))
        assert per_sample.shape == (2,) and torch.isfinite(per_sample).all()
    total = finetune_rows_loss(student, teacher, StepInfo(train_iters=100)).mean()
    assert torch.isfinite(total)
    if name != "theseus":            # Theseus' loss is the pre-loss only; the others add an inter term
        assert total > 0


@pytest.mark.parametrize("name", list(CASES))
def test_short_run_lowers_the_loss_and_trains_only_the_student(name):
    # SID and MobileBERT: a long schedule, so no layer unlocks (which changes the loss's terms)
    # during the run; Theseus: a short one, so the student takes over every layer.
    trainer, student, teacher = setup(name, full_states(name), total_iters=6 if name == "theseus" else 1000)
    teacher_before = copy.deepcopy(teacher.state_dict())
    loss, _ = trainer.forward_pass(batch_with_padding(), trainer._step_info(0))
    loss.backward()
    for aux_name, param in student.named_parameters():
        if not aux_name.startswith("model."):                                      # LRC-BERT's s_fit_dense
            assert param.grad is not None and param.grad.abs().sum() > 0, aux_name
    student.zero_grad(set_to_none=True)
    losses = [float(trainer.micro_step(next(trainer.data))["loss"]) for _ in range(6)]
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


def test_options_are_validated():
    with pytest.raises(ValueError, match="diito_alignment"):
        _student("diito", GLMModel(tiny_config(**STUDENT)), TEACHER).options_class(diito_alignment="early")
    with pytest.raises(ValueError, match="lrc_bert needs"):
        build_student("lrc_bert", GLMModel(tiny_config(**STUDENT)), DistillOptions())
    with pytest.raises(ValueError, match="equal head counts"):
        attention_score_kl(torch.zeros(1, 4, 3, 3), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="equal \\[R, H\\]"):
        cos_nce(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="different numbers"):
        interchange(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.tensor([[True, True]]),
                    torch.tensor([[True, False]]))


# --------------------------------------------------------------------------- MP=2 and DP=2
MP_CASES = [("diito", None), ("sid", {"next_locked_layer": 2}), ("theseus", None), ("lrc_bert", None),
            ("mobilebert", {"next_locked_layer": 2})]


def _mp_losses(all_states):
    """Pass-0 (and pass-1) losses of one micro-step of every case at this process's MP size."""
    results = {}
    for name, state in MP_CASES:
        trainer, _, _ = setup(name, all_states[name], method_state=state)
        metrics = trainer.micro_step(next(trainer.data))
        results[name] = torch.stack([metrics[k] for k in ("loss", "loss_repeat1") if k in metrics])
    return results


def _gathered_lrc_loss(states, rows):
    """LRC-BERT's inter loss with --lrc_bert_gather_dp on `rows` of the batch, and the grad of s_fit_dense."""
    student, teacher = models("lrc_bert", states)
    student.method_options = type(student.method_options)(lrc_bert_gather_dp=True)
    batch = {k: v[rows] for k, v in batch_with_padding().items()}
    step = StepInfo(train_iters=6)
    student.begin_step(step)
    s_out = student(batch["text"], batch["position_id"], batch["attention_mask"], taps=student.student_taps(step))
    t_out = run(teacher, batch, student.teacher_taps(0, step))
    per_sample, _ = student.inter_loss(s_out, t_out, DistillBatch("pretrain", position_ids=batch["position_id"]), step)
    loss = per_sample.mean()
    loss.backward()
    return loss.detach(), student.s_fit_dense[0].weight.grad


def _parallel_worker(rank, world_size, all_states, expected, gather_expected):
    for name, losses in _mp_losses(all_states).items():
        assert_rel_close(losses, expected[name], RTOL, f"{name} at MP=2")
    mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(1)                                     # now 2 data-parallel ranks
    loss, grad = _gathered_lrc_loss(all_states["lrc_bert"], slice(2 * rank, 2 * rank + 2))
    both = torch.cat([loss.view(1), grad.flatten()])
    dist.all_reduce(both)
    both /= world_size                                                   # what DDP's gradient averaging does
    assert_rel_close(both[0], gather_expected[0], RTOL, "gathered COS-NCE (mean of the ranks)")
    assert_rel_close(both[1:].view_as(grad), gather_expected[1], RTOL, "s_fit_dense gradient (mean of the ranks)")
    return True


@pytest.mark.slow
def test_mp2_equals_mp1_and_dp2_gather_equals_the_full_batch():
    all_states = {name: full_states(name) for name, _ in MP_CASES}
    expected = _mp_losses(all_states)
    gather_expected = _gathered_lrc_loss(all_states["lrc_bert"], slice(0, B))
    assert run_distributed(_parallel_worker, 2, all_states, expected, gather_expected) == [True, True]
