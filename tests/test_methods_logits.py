"""Annealing-KD, Continuation-KD, MixBaseline and the layer-similarity analysis: schedules and
losses against plain-torch references and literal values, MixBaseline's composition (with
`kd`, a test-only component and, when registered, the README's TinyBERT/MiniLMv2/MiniLM/
DistilBERT mixtures), state, checkpoints, fully padded rows, short training runs, and one
MP=2 spawn comparing every loss and the analysis metrics with MP=1."""
import contextlib
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dist_utils import assert_rel_close, run_distributed
from distill import (STUDENT_MODELS, AvgTeacher, AvgTeacherOptions, DistillBatch, DistillOptions, GLMStudent,
                     StepInfo, TeacherInfo, build_student, register_student)
from distill.analysis import (AnalysisOptions, analysis_metrics, analysis_pairs, analysis_taps, self_relation,
                              softened_kl)
from distill.losses import sample_mean, soft_loss
from distill.losses_logits import annealing_phi, continuation_loss, continuation_psi
from distill.methods.mixbaseline import MixBaselineOptions, resolve_component
from glm_fixtures import blank_infilling_batch, tiny_config
from model import GLMModel, ModelOutput
from training.config import ArchConfig, TeacherConfig
from training.teachers import Teacher
from training_fixtures import ListBatches, full_state, global_batches, make_trainer, sharded_model, torch_engine
from training.stages import lm_loss

# fp32 everywhere; implementation and references differ only in summation order (a few ulp),
# and at MP=2 in the order of the all-reduced partial sums: 1e-5 relative is a wide margin.
RTOL, ATOL = 1e-5, 1e-7
B, S, V, C = 3, 5, 34, 4          # V / 2 = 17 columns per rank at MP=2
H_S, H_T = 6, 10                  # the test component's hidden widths


def close(actual, expected, what=""):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def token_inputs(seed=0):
    """Student/teacher token logits [B, S, V], hidden taps, a Part-B mask (row 1 fully padded)."""
    gen = torch.Generator().manual_seed(seed)
    return dict(s=torch.randn(B, S, V, generator=gen) * 2, t=torch.randn(B, S, V, generator=gen) * 2,
                h_s=torch.randn(B, S, H_S, generator=gen), h_t=torch.randn(B, S, H_T, generator=gen),
                loss_mask=torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.float),
                labels=torch.tensor([[5, 6, 7, 0, 9], [0, 0, 0, 0, 0], [0, 8, 8, 8, 8]]), hard=torch.tensor(1.7),
                fit_w=torch.randn(H_T, H_S, generator=gen) * 0.3, fit_b=torch.randn(H_T, generator=gen) * 0.1)


def token_batch(inputs, stage="pretrain"):
    return DistillBatch(stage, loss_mask=inputs["loss_mask"], labels=inputs["labels"], token_level=True)


def ref_row_mse(s, t, weight=1.0):
    return (s - weight * t).pow(2).mean(-1)


def ref_ce(s, t, temperature):
    return -(F.softmax(t / temperature, -1) * F.log_softmax(s / temperature, -1)).sum(-1)


def ref_kl(s, t, temperature):
    return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="none").sum(-1)


def at(iteration, total):
    """The StepInfo of iteration `iteration` of `total`."""
    return StepInfo(iteration=iteration, train_iters=total)


def assert_pure_getters(student, step):
    """The taps/interventions getters are pure queries: equal answers twice, no state change."""
    state = student.method_state()
    first = (student.student_taps(step), student.teacher_taps(0, step), list(student.student_interventions(step)),
             list(student.teacher_interventions(0, step)))
    second = (student.student_taps(step), student.teacher_taps(0, step), list(student.student_interventions(step)),
              list(student.teacher_interventions(0, step)))
    assert first == second and student.method_state() == state, student.name


# --------------------------------------------------------------------------- options
def test_options_are_validated():
    with pytest.raises(ValueError, match="max_t"):
        STUDENT_MODELS["continuation_kd"].options_class(continuation_kd_max_t=0.0)


# --------------------------------------------------------------------------- schedules
def test_annealing_phi_literal_schedule():
    # T_total = 14, T_max = 7: t = (14 - it) / 2, phi = 1 - (max(1, ceil(t)) - 1) / 7.
    phis = [annealing_phi(it, 14, 7.0) for it in range(15)]
    steps = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7]  # phi * 7
    assert phis == pytest.approx([k / 7 for k in steps], abs=1e-12)
    # Exact at segment boundaries: the original's float (1 - 6/7) * 7 = 1.0000000000000002 gave 6/7.
    assert annealing_phi(6, 7, 7.0) == 1.0
    assert annealing_phi(0, 0, 7.0) == pytest.approx(1 / 7)       # unknown T_total: the start
    assert annealing_phi(99, 10, 7.0) == 1.0                      # past the end: clamped
    with pytest.raises(ValueError, match="max_t"):
        annealing_phi(0, 10, 0.5)


def test_continuation_psi_literal_schedule():
    assert continuation_psi(0, 1000, 0.666, 1.333) == 0.0
    assert continuation_psi(333, 1000, 0.666, 1.333) == pytest.approx(333 / 1333, abs=1e-12)
    assert continuation_psi(666, 1000, 0.666, 1.333) == pytest.approx(666 / 1333, abs=1e-12)  # not yet > sep
    assert continuation_psi(667, 1000, 0.666, 1.333) == 1.0
    assert continuation_psi(40, 100, 0.9, 0.2) == 1.0                       # capped at 1
    with pytest.raises(ValueError, match="psi_denominator"):
        continuation_psi(0, 10, 0.5, 0.0)


def test_continuation_loss_literal():
    soft = torch.tensor([0.5, 2.0, 0.0], requires_grad=True)
    loss = continuation_loss(soft, torch.tensor(1.5), psi=0.25, phi=0.5, margin=2.0)   # hinge at 1.0
    assert loss.tolist() == pytest.approx([0.375, 1.875, 0.375], abs=1e-7)
    loss.sum().backward()
    assert soft.grad.tolist() == [0.0, 0.75, 0.0]                       # dropped samples get no gradient


# --------------------------------------------------------------------------- Annealing-KD
def test_annealing_kd_matches_the_annealed_mse():
    gen = torch.Generator().manual_seed(1)
    s, t = (torch.randn(B, C, generator=gen) * 3).requires_grad_(), torch.randn(B, C, generator=gen) * 3
    options = DistillOptions(distill_ft_soft=True, distill_ft_soft_mse=True, distill_ft_hard=True,
                             distill_hard_rate=0.5)
    student = build_student("annealing_kd", nn.Identity(), options, method_options={"annealing_kd_max_t": 7.0})
    loss, metrics = student.pre_loss(s, t, torch.tensor(2.0), DistillBatch("finetune"),
                                     at(10, 35))                         # t = 5, phi = 1 - 4/7 = 3/7
    assert loss.shape == (B,)
    close(loss.mean(), F.mse_loss(s, 3 / 7 * t) + 0.5 * 2.0, "ft MSE(z_s, phi z_t) + hard")
    assert metrics["annealing/phi"].item() == pytest.approx(3 / 7)
    # phi follows the step pre_loss receives, not one the getters saw.
    assert_pure_getters(student, at(0, 35))
    again, _ = student.pre_loss(s, t, torch.tensor(2.0), DistillBatch("finetune"), at(10, 35))
    assert torch.equal(again, loss)
    # Token level (pretraining): the Part-B mask, per sample the mean over its rows (masked ones included).
    inputs = token_inputs()
    options = DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True)
    student = build_student("annealing_kd", nn.Identity(), options)
    loss, _ = student.pre_loss(inputs["s"], inputs["t"], inputs["hard"], token_batch(inputs), at(0, 35))  # phi = 1/7
    expected = (ref_row_mse(inputs["s"], inputs["t"], 1 / 7) * inputs["loss_mask"]).mean(1)
    close(loss, expected, "pt masked MSE per sample")


def test_annealing_kd_literal_and_warning():
    student = build_student("annealing_kd", nn.Identity(), DistillOptions(
        distill_ft_soft=True, distill_ft_soft_mse=True), method_options={"annealing_kd_max_t": 2.0})
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    loss, _ = student.pre_loss(torch.zeros(1, 2), teacher, torch.tensor(0.0), DistillBatch("finetune"), at(0, 4))
    assert loss.item() == pytest.approx(0.1508686, abs=1e-7)          # ((0.5 ln 3)^2 + 0) / 2, phi = 1/2
    with pytest.warns(UserWarning, match="anneals only the MSE"):
        build_student("annealing_kd", nn.Identity(), DistillOptions(distill_ft_soft=True))


# --------------------------------------------------------------------------- Continuation-KD
CONTINUATION = {"continuation_kd_max_t": 10.0, "continuation_kd_margin": 1.0, "continuation_kd_psi_sep": 0.666,
                "continuation_kd_psi_denominator": 1.333}


def test_continuation_kd_matches_the_reference():
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(B, C, generator=gen) * 3
    noise = torch.randn(B, C, generator=gen) * torch.tensor([[0.1], [3.0], [1.0]])
    s = (0.4 * t + noise).requires_grad_()                                # row 0 close to phi * t
    options = DistillOptions(distill_ft_soft=True, distill_ft_soft_mse=True, distill_ft_hard=True,
                             distill_soft_rate=0.8)
    student = build_student("continuation_kd", nn.Identity(), options, method_options=CONTINUATION)
    phi, psi = 1 - (7 - 1) / 10, 300 / 1333                              # t = 7 at step 300 of 1000
    hard = torch.tensor(1.3)
    per_sample, metrics = student.pre_loss(s, t, hard, DistillBatch("finetune"), at(300, 1000))
    soft = 0.8 * ref_row_mse(s, t, phi)
    kept = (soft > 1.0 * phi).float()
    assert 0 < kept.sum() < B, "the case must keep some samples and drop others"
    close(per_sample, psi * hard + (1 - psi) * soft * kept, "per-sample loss")
    # A per-sample hard loss [B] counts for its own sample.
    hards = torch.tensor([1.3, 0.2, 2.5])
    per_hard, _ = student.pre_loss(s, t, hards, DistillBatch("finetune"), at(300, 1000))
    close(per_hard, psi * hards + (1 - psi) * soft * kept, "per-sample hard loss")
    assert metrics["continuation/psi"].item() == pytest.approx(psi)
    assert metrics["continuation/kept"].item() == pytest.approx(kept.mean().item())
    # phi and psi follow the step pre_loss receives, not one the getters saw.
    assert_pure_getters(student, at(999, 1000))
    again, _ = student.pre_loss(s, t, hard, DistillBatch("finetune"), at(300, 1000))
    assert torch.equal(again, per_sample)
    # After psi_sep only the hard loss remains.
    loss, _ = student.pre_loss(s, t, hard, DistillBatch("finetune"), at(700, 1000))
    close(loss, hard.expand(B), "hard only after psi_sep")


def test_continuation_kd_token_level():
    inputs = token_inputs()
    options = DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True, distill_pt_hard=True)
    student = build_student("continuation_kd", nn.Identity(), options, method_options=dict(
        CONTINUATION, continuation_kd_margin=4.0))
    phi, psi = annealing_phi(100, 1000, 10.0), 100 / 1333               # phi = 1/10 + ..., psi = 0.075
    loss, _ = student.pre_loss(inputs["s"], inputs["t"], inputs["hard"], token_batch(inputs), at(100, 1000))
    soft = (ref_row_mse(inputs["s"], inputs["t"], phi) * inputs["loss_mask"]).mean(1)
    kept = (soft > 4.0 * phi).float()
    assert kept.tolist() == [1.0, 0.0, 1.0]
    close(loss, psi * inputs["hard"] + (1 - psi) * soft * kept, "token-level per-sample hinge")


# --------------------------------------------------------------------------- MixBaseline
@dataclass(frozen=True)
class ProbeOptions:
    test_mix_probe_weight: float = 1.0
    mixbaseline_test_mix_probe_t: float = 3.0   # a per-component temperature, like --mixbaseline_tinybert_t


class Probe(GLMStudent):
    """Test component: taps `output`; inter = w * MSE(fit(h_s), h_t); pre = w * soft CE at its own
    temperature + hard (its own pre_loss), both per sample; counts the steps it began (its method state)."""
    name = "test_mix_probe"
    options_class = ProbeOptions

    def __init__(self, model, options, teachers=(), method_options=None):
        super().__init__(model, options, teachers, method_options)
        config = getattr(model, "config", None)
        self.fit = nn.Linear(config.hidden_size if config else H_S, teachers[0].hidden_size if teachers else H_T)
        self.calls = 0

    def begin_step(self, step):
        self.calls += 1

    def student_taps(self, step):
        return ["output"]

    def teacher_taps(self, t_no, step):
        return ["output"]

    def student_interventions(self, step):
        return {"layers.0.layernorm_output": lambda x: x}

    def inter_loss(self, s_out, t_out, batch, step, t_no=0):
        loss = self.method_options.test_mix_probe_weight * sample_mean(
            (self.fit(s_out.taps["output"]) - t_out.taps["output"]).pow(2))                # [B]
        return loss, {"inter/probe": loss.detach().mean()}

    def pre_loss(self, s_logits, t_logits, hard_loss, batch, step=StepInfo(), t_no=0, mse_t_w=1.0):
        rows = soft_loss("ce", s_logits, t_logits, vocab_parallel=batch.token_level,
                         temperature=self.options.distill_temperature)
        soft = self.method_options.test_mix_probe_weight * sample_mean(rows)                # [B]
        return soft + hard_loss, {"kd/soft": soft.detach().mean(), "kd/hard": hard_loss.detach().mean()}

    def method_state(self):
        return {"calls": self.calls}

    def load_method_state(self, state):
        self.calls = state.get("calls", 0)


@contextlib.contextmanager
def registered(*classes):
    for cls in classes:
        register_student(cls)
    try:
        yield
    finally:
        for cls in classes:
            STUDENT_MODELS.pop(cls.name)


def build_mix(options: DistillOptions, inputs, model=None, **values):
    student = build_student("mixbaseline", model or nn.Identity(), options, [TeacherInfo(4, H_T, 4)],
                            method_options=dict(test_mix_probe_weight=0.7, **values))
    fit = student.components["test_mix_probe"].fit if "test_mix_probe" in student.components else None
    if fit is not None and fit.weight.shape == inputs["fit_w"].shape:   # the H_S -> H_T probe of the unit tests
        fit.weight.data.copy_(inputs["fit_w"])
        fit.bias.data.copy_(inputs["fit_b"])
    return student


def mix_outputs(inputs, shard=lambda x: x):
    s_out = ModelOutput(shard(inputs["s"]).requires_grad_(), {"output": inputs["h_s"].clone().requires_grad_()})
    return s_out, ModelOutput(shard(inputs["t"]), {"output": inputs["h_t"]})


def test_mixbaseline_golden_finetune_and_pretrain():
    inputs = token_inputs()
    with registered(Probe):
        options = DistillOptions(distill_ft_soft=True, distill_pt_soft=True, distill_pt_hard=True,
                                 distill_temperature=2.0)
        mix = build_mix(options, inputs, mixbaseline_inter_bl="test_mix_probe",
                        mixbaseline_pre_bl_ft_soft="TEST_MIX_PROBE", mixbaseline_pre_bl_pt_soft="test_mix_probe,KD")
        assert list(mix.components) == ["test_mix_probe", "kd"]
        s_out, t_out = mix_outputs(inputs)
        s, t, hard = inputs["s"], inputs["t"], inputs["hard"]
        inter = 0.7 * (F.linear(inputs["h_s"], inputs["fit_w"], inputs["fit_b"]) - inputs["h_t"]).pow(2).mean()
        # Fine-tuning: the base KD term (soft CE at T=2, no hard) + the probe's (CE at its T=3, + the hard loss).
        batch = token_batch(inputs, "finetune")
        loss, metrics = AvgTeacher(AvgTeacherOptions(), options).compute(mix, s_out, hard, [t_out], batch, StepInfo())
        base = (ref_ce(s, t, 2.0) * inputs["loss_mask"]).mean()
        close(loss, base + 0.7 * ref_ce(s, t, 3.0).mean() + hard + inter, "ft: KD + probe pre + hard once + inter")
        assert {"kd/soft", "test_mix_probe/kd/soft", "test_mix_probe/kd/hard", "test_mix_probe/inter/probe"} <= set(
            metrics) and "kd/hard" not in metrics
        # Pretraining: only the pre_bl_pt_soft components; the hard loss goes to the last one (kd).
        loss, _ = AvgTeacher(AvgTeacherOptions(), options).compute(mix, s_out, hard, [t_out], token_batch(inputs),
                                                                   StepInfo())
        kd = 4.0 * (ref_kl(s, t, 2.0) * inputs["loss_mask"]).mean() + hard
        close(loss, 0.7 * ref_ce(s, t, 3.0).mean() + kd + inter, "pt: probe (no hard) + kd (with hard) + inter")
        # Per-sample vectors all the way through, with a scalar or a per-sample hard loss.
        expected = (ref_ce(s, t, 2.0) * inputs["loss_mask"]).mean(1) + 0.7 * ref_ce(s, t, 3.0).mean(1) + hard
        for hard_loss in (hard, hard.expand(B)):
            per_sample, _ = mix.pre_loss(s, t, hard_loss, batch)
            close(per_sample, expected, "per sample")


def test_mixbaseline_passes_the_step_to_its_components():
    # A scheduled component (Annealing-KD: phi at step 10 of 35 is 3/7) takes the step MixBaseline's pre_loss gets.
    inputs = token_inputs()
    options = DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True, distill_pt_hard=True)
    mix = build_student("mixbaseline", nn.Identity(), options,
                        method_options={"mixbaseline_pre_bl_pt_soft": "annealing_kd", "annealing_kd_max_t": 7.0})
    loss, metrics = mix.pre_loss(inputs["s"], inputs["t"], inputs["hard"], token_batch(inputs), at(10, 35))
    expected = (ref_row_mse(inputs["s"], inputs["t"], 3 / 7) * inputs["loss_mask"]).mean(1) + inputs["hard"]
    close(loss, expected, "annealed MSE at the given step + hard")
    assert metrics["annealing_kd/annealing/phi"].item() == pytest.approx(3 / 7)


def test_mixbaseline_requests_state_and_checkpoint():
    inputs = token_inputs()
    twin = type("Twin", (Probe,), {"name": "test_mix_twin"})
    with registered(Probe, twin):
        mix = build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="test_mix_probe,kd")
        step = StepInfo(iteration=4)
        mix.begin_step(step)
        assert mix.student_taps(step) == ["output"] and mix.teacher_taps(0, step) == ["output"]
        assert list(mix.student_interventions(step)) == ["layers.0.layernorm_output"]
        assert mix.method_state() == {"test_mix_probe": {"calls": 1}}
        assert_pure_getters(mix, step)
        # --mixbaseline_wo_inter: nothing requested, but the components still begin every step (schedules advance).
        quiet = build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="test_mix_probe", mixbaseline_wo_inter=True)
        quiet.begin_step(step)
        assert quiet.student_taps(step) == [] and quiet.student_interventions(step) == {}
        assert quiet.method_state() == {"test_mix_probe": {"calls": 1}}
        s_out, t_out = mix_outputs(inputs)
        assert quiet.inter_loss(s_out, t_out, token_batch(inputs), step)[0].tolist() == [0.0] * B
        # Two components intervening on the same tensor cannot be combined.
        clash = build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="test_mix_probe,test_mix_twin")
        with pytest.raises(ValueError, match="both intervene"):
            clash.student_interventions(step)
        # Method state round trip: a restored MixBaseline continues identically.
        fresh = build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="test_mix_probe,kd")
        fresh.load_method_state(mix.method_state())
        fresh.begin_step(step)
        mix.begin_step(step)
        assert fresh.method_state() == mix.method_state() == {"test_mix_probe": {"calls": 2}}
        with pytest.raises(ValueError, match="not components"):
            fresh.load_method_state({"tinybert": {}})
        # Checkpoint: the model once, as a plain model state dict; auxiliary layers under student.components.
        torch.manual_seed(0)
        glm = GLMModel(tiny_config())
        mix = build_mix(DistillOptions(), inputs, model=glm, mixbaseline_inter_bl="test_mix_probe")
        state = mix.state_dict()
        aux = {f"student.components.test_mix_probe.student.fit.{k}" for k in ("weight", "bias")}
        assert set(state) == set(glm.state_dict()) | aux
        assert {n for n, _ in mix.named_parameters()} == {f"model.{k}" for k in glm.state_dict()} | {
            "components.test_mix_probe.fit.weight", "components.test_mix_probe.fit.bias"}
        again = build_mix(DistillOptions(), token_inputs(seed=9), model=GLMModel(tiny_config()),
                          mixbaseline_inter_bl="test_mix_probe")
        again.load_state_dict(state)
        assert all(torch.equal(v, state[k]) for k, v in again.state_dict().items())


def test_mixbaseline_checkpointed_inter_loss_and_names():
    inputs = token_inputs()
    with registered(Probe):
        plain = build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="test_mix_probe")
        ckpt = build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="test_mix_probe",
                         mixbaseline_inter_checkpoint=True)
        results = []
        for mix in (plain, ckpt):
            s_out, t_out = mix_outputs(inputs)
            loss, _ = mix.inter_loss(s_out, t_out, token_batch(inputs), StepInfo())
            assert loss.shape == (B,)
            loss.mean().backward()
            results.append((loss.detach(), s_out.taps["output"].grad, mix.components["test_mix_probe"].fit.weight.grad))
        for plain_value, checkpointed in zip(*results):   # recomputation repeats the same fp32 ops
            close(checkpointed, plain_value, "activation-checkpointed component loss")
        assert resolve_component("KD") == ("kd", GLMStudent) and resolve_component("Probe")[0] == "test_mix_probe"
        with pytest.raises(KeyError, match="unknown MixBaseline component 'TinyBret'; valid: .*kd"):
            build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="TinyBret")
        with pytest.raises(ValueError, match="cannot contain itself"):
            build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="MixBaseline")
        with pytest.raises(ValueError, match="mixbaseline_tinybert_t"):
            MixBaselineOptions(mixbaseline_tinybert_t=0.0)
        with pytest.warns(UserWarning, match="without components"):
            build_mix(DistillOptions(), inputs)
        assert plain.supports_activation_checkpointing
        no_ckpt = type("NoCkpt", (Probe,), {"name": "test_mix_nockpt", "supports_activation_checkpointing": False})
        with registered(no_ckpt):
            mix = build_mix(DistillOptions(), inputs, mixbaseline_inter_bl="test_mix_probe,test_mix_nockpt")
            assert not mix.supports_activation_checkpointing


class Echo(nn.Module):
    def forward(self, x, taps=(), interventions=None):
        return ModelOutput(x, {})


class ForwardProbe(Probe):
    """A component with its own forward (as the original TinyBERT had): marks the output."""
    name = "test_mix_forward"

    def forward(self, *inputs, taps=(), interventions=None):
        out = self.model(*inputs, taps=taps, interventions=interventions)
        out.taps["marked_by"] = self.name
        return out


def test_mixbaseline_uses_a_components_forward():
    with registered(Probe, ForwardProbe, type("ForwardTwin", (ForwardProbe,), {"name": "test_mix_forward2"})):
        mix = build_student("mixbaseline", Echo(), DistillOptions(), [TeacherInfo(4, H_T, 4)],
                            method_options={"mixbaseline_inter_bl": "test_mix_probe,test_mix_forward"})
        assert mix(torch.ones(2)).taps == {"marked_by": "test_mix_forward"}
        assert [name for name, _ in mix.named_modules()] == [      # each module once; the model not nested
            "", "model", "components", "components.test_mix_probe", "components.test_mix_probe.fit",
            "components.test_mix_forward", "components.test_mix_forward.fit"]
        with pytest.raises(ValueError, match="override forward"):
            build_student("mixbaseline", Echo(), DistillOptions(), [TeacherInfo(4, H_T, 4)],
                          method_options={"mixbaseline_inter_bl": "test_mix_forward,test_mix_forward2"})


def test_fully_padded_rows_give_no_nan():
    inputs = token_inputs()
    poisoned = inputs["s"].clone()
    poisoned[1, :, 0], poisoned[1, :, 1] = float("inf"), float("nan")   # row 1 is fully padded
    hard = inputs["hard"]
    students = [
        build_student("annealing_kd", nn.Identity(), DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True)),
        build_student("continuation_kd", nn.Identity(), DistillOptions(
            distill_pt_soft=True, distill_pt_soft_mse=True, distill_pt_hard=True), method_options=CONTINUATION),
        build_student("mixbaseline", nn.Identity(), DistillOptions(distill_pt_soft=True), method_options={
            "mixbaseline_pre_bl_pt_soft": "kd"})]
    for student in students:
        s = poisoned.clone().requires_grad_()
        loss, _ = student.pre_loss(s, inputs["t"], hard, token_batch(inputs), at(3, 10))
        clean, _ = student.pre_loss(inputs["s"], inputs["t"], hard, token_batch(inputs), at(3, 10))
        close(loss, clean, f"{student.name}: the padded row adds 0")
        loss.mean().backward()
        assert torch.isfinite(s.grad).all() and s.grad[1].abs().sum() == 0, student.name


# --------------------------------------------------------------------------- the README mixtures
README_PT = dict(minilmv2_relation_heads=8, minilmv2_teacher_layer=4, distilbert_alpha_ce=5.0,
                 distilbert_alpha_mlm=2.0, distilbert_alpha_cos=1.0, distilbert_cos_mask_padding=True,
                 mixbaseline_inter_bl="TinyBERT,MiniLMv2,MiniLM,DistilBERT", mixbaseline_pre_bl_pt_soft="DistilBERT")


def _need(*names):
    missing = [n for n in names if n not in STUDENT_MODELS]
    if missing:
        pytest.skip(f"components not implemented yet: {missing}")


def test_readme_mixture_pt_is_the_sum_of_its_methods():
    _need("tinybert", "minilmv2", "minilm", "distilbert")
    torch.manual_seed(0)
    student_glm = GLMModel(tiny_config(num_layers=2, hidden_size=32, num_attention_heads=4))
    teacher_glm = GLMModel(tiny_config(num_layers=4, hidden_size=32, num_attention_heads=4)).eval()
    options, teachers = DistillOptions(distill_temperature=2.0), [TeacherInfo(4, 32, 4)]
    mix = build_student("mixbaseline", student_glm, options, teachers, README_PT)
    ids, position, sep, target, loss_mask = blank_infilling_batch()
    step = StepInfo(iteration=0, train_iters=10)
    mix.begin_step(step)
    s_out = mix(ids, position, sep, taps=mix.student_taps(step), interventions=mix.student_interventions(step))
    with torch.no_grad():
        t_out = teacher_glm(ids, position, sep, taps=mix.teacher_taps(0, step))
    hard = lm_loss(s_out.logits, target, loss_mask)
    batch = DistillBatch("pretrain", loss_mask=loss_mask, labels=target, position_ids=position, token_level=True)
    total, metrics = AvgTeacher(AvgTeacherOptions(), options).compute(mix, s_out, hard, [t_out], batch, step)
    expected = 0.0
    for name in ("tinybert", "minilmv2", "minilm", "distilbert"):   # each method alone, same weights
        alone = build_student(name, student_glm, options, teachers, README_PT)
        alone.load_state_dict({k.replace(f"components.{name}.student.", ""): v for k, v in mix.state_dict().items()
                               if k.startswith(f"student.components.{name}.") or not k.startswith("student.")})
        alone.begin_step(step)
        expected = expected + alone.inter_loss(s_out, t_out, batch, step)[0].mean()
    expected = expected + build_student("distilbert", student_glm, options, teachers, README_PT).pre_loss(
        s_out.logits, t_out.logits, hard, batch, step)[0].mean()
    close(total, expected, "pt mixture = sum of the methods' inter losses + DistilBERT's pre-loss")
    assert {"tinybert/inter/hidden", "distilbert/kd/hard"} <= set(metrics)


def test_readme_mixture_ft2_golden():
    """ft2: --mixbaseline_wo_inter --tinybert_wo_inter --distill_ft_soft --distill_ft_hard
    --distill_temperature=10 --mixbaseline_tinybert_t=1 --mixbaseline_pre_bl_ft_soft=TinyBERT:
    soft CE at T=10 (KD) + soft CE at T=1 (TinyBERT's pre-loss) + the hard loss once."""
    _need("tinybert")
    gen = torch.Generator().manual_seed(4)
    s, t, hard = (torch.randn(B, C, generator=gen) * 3).requires_grad_(), torch.randn(B, C, generator=gen) * 3, 0.9
    mix = build_student("mixbaseline", GLMModel(tiny_config(num_layers=2, hidden_size=32, num_attention_heads=4)),
                        DistillOptions(distill_ft_soft=True, distill_ft_hard=True, distill_temperature=10.0),
                        [TeacherInfo(4, 48, 4)], dict(mixbaseline_wo_inter=True, tinybert_wo_inter=True,
                                                      mixbaseline_tinybert_t=1.0, mixbaseline_pre_bl_ft_soft="TinyBERT"))
    mix.begin_step(StepInfo())
    assert mix.student_taps(StepInfo()) == []
    assert not any(n.startswith("components") for n, _ in mix.named_parameters())   # no fit_dense without inter
    loss, _ = mix.pre_loss(s, t, torch.tensor(hard), DistillBatch("finetune"))
    close(loss.mean(), ref_ce(s, t, 10.0).mean() + ref_ce(s, t, 1.0).mean() + hard, "ft2 golden")


# --------------------------------------------------------------------------- short runs
STEPS = 6


def _short_run(name, options, method_options, pinned_step=None, teacher_overrides=None):
    """STEPS trainer steps on one repeated batch (student: tiny_config(); teacher: its overrides).
    Returns the losses, the pinned-step loss before/after, and the first pass's gradients of the
    auxiliary parameters; asserts the teacher did not move."""
    overrides = teacher_overrides or {}
    state, specs = full_state()
    info = TeacherInfo(overrides.get("num_layers", 2), overrides.get("hidden_size", 52), 4)
    student = build_student(name, sharded_model(state, specs), options, [info], method_options)
    teacher = Teacher(sharded_model(*full_state(seed=5, **overrides), **overrides).eval(),
                      TeacherConfig(ArchConfig(), None), torch.float32)
    teacher_before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    batches = global_batches(1, 4)
    trainer = make_trainer(torch_engine(student, lr=3e-3), ListBatches(batches * STEPS, 4), STEPS, student=student,
                           combiner=AvgTeacher(AvgTeacherOptions(), options), teachers=[teacher], lr=3e-3)
    def measure():
        if pinned_step is None:
            return None
        with torch.no_grad():
            return float(trainer.forward_pass(batches[0], pinned_step)[0])

    before = measure()
    first, _ = trainer.forward_pass(batches[0], trainer._step_info(0))
    first.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if not n.startswith("model.")}
    student.zero_grad(set_to_none=True)
    losses = [float(trainer.micro_step(next(trainer.data))["loss"]) for _ in range(STEPS)]
    after = measure()
    assert all(torch.equal(v, teacher.module.state_dict()[k]) for k, v in teacher_before.items()), "teacher moved"
    return losses, (before, after), grads


def test_short_runs_decrease_the_loss():
    losses, _, _ = _short_run("annealing_kd", DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True), {})
    assert losses[-1] < losses[0], losses
    # Continuation-KD's objective moves with psi and phi (at step 0 the hinge may drop every
    # sample), so the same objective (pinned at step 3 of 6) is compared before and after.
    options = DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True, distill_pt_hard=True)
    _, (before, after), _ = _short_run("continuation_kd", options, dict(CONTINUATION, continuation_kd_margin=0.0),
                                       pinned_step=StepInfo(iteration=3, train_iters=STEPS))
    assert after < before, (before, after)
    # MixBaseline: kd's pre-loss + the probe's inter loss through its fit layer (width 52 -> 40).
    with registered(Probe):
        losses, _, grads = _short_run("mixbaseline", DistillOptions(distill_pt_soft=True, distill_temperature=2.0),
                                      dict(mixbaseline_inter_bl="test_mix_probe", mixbaseline_pre_bl_pt_soft="kd"),
                                      teacher_overrides=dict(num_layers=3, hidden_size=40))
    assert losses[-1] < losses[0], losses
    assert set(grads) == {"components.test_mix_probe.fit.weight", "components.test_mix_probe.fit.bias"}
    assert all(g.abs().sum() > 0 for g in grads.values()), "the fit layer gets no gradient"


# --------------------------------------------------------------------------- analysis
def test_analysis_pure_measures_literal():
    # 3/4 ln 3/2 + 1/4 ln 1/2 = 0.13081204; fp32 log-softmax rounding moves the 7th digit (~1e-7).
    assert softened_kl(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])).item() == pytest.approx(
        0.1308120, abs=2e-7)
    # X X^T / sqrt(2) for X = [[1, 0], [0, 2]]; 1/sqrt(2) is not exact in fp32 (1 ulp).
    close(self_relation(torch.tensor([[1.0, 0.0], [0.0, 2.0]])), torch.tensor([[1.0, 0.0], [0.0, 4.0]]) / math.sqrt(2))
    assert analysis_pairs(2, 4) == (((0, 0), (1, 2), (2, 4)), ((0, 1), (1, 3)))
    assert analysis_pairs(4, 2) == (((0, 0), (2, 1), (4, 2)), ((1, 0), (3, 1)))
    options = AnalysisOptions(distil_analysis_inter=True, distil_analysis_frcn="0,2")
    assert options.active(StepInfo(repeat_index=2)) and not options.active(StepInfo(repeat_index=1))
    assert not AnalysisOptions().active(StepInfo())
    with pytest.raises(ValueError, match="comma list of integers"):
        AnalysisOptions(distil_analysis_frcn="a")


def _analysis_models(student_overrides, teacher_overrides):
    """Student and teacher GLMs from seeded full states (sharded when MP > 1)."""
    return (sharded_model(*full_state(seed=3, **student_overrides), **student_overrides),
            sharded_model(*full_state(seed=4, **teacher_overrides), **teacher_overrides).eval())


ANALYSIS_ON = AnalysisOptions(distil_analysis_inter=True)


def _analyse(student_glm, teacher_glm, teacher_info, options=ANALYSIS_ON):
    student = GLMStudent(student_glm, DistillOptions(), [teacher_info])
    step = StepInfo()
    s_taps, (t_taps,) = analysis_taps(student, step, options)
    ids, position, sep, _, _ = blank_infilling_batch()
    s_out = student(ids, position, sep, taps=s_taps)
    with torch.no_grad():
        t_out = teacher_glm(ids, position, sep, taps=t_taps)
    return analysis_metrics(student, step, s_out, t_out, options), s_out, t_out


def test_analysis_metrics_match_plain_torch():
    student_glm, teacher_glm = _analysis_models(dict(hidden_size=32), dict(num_layers=4, hidden_size=48))
    metrics, s_out, t_out = _analyse(student_glm, teacher_glm, TeacherInfo(4, 48, 4))
    rel = lambda x: x @ x.transpose(-1, -2) / math.sqrt(x.size(-1))
    kl = lambda s, t, T=1.0: F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                                       reduction="none").sum(-1).mean()
    h_s, h_t = s_out.taps["layers.1.layernorm_output"], t_out.taps["layers.2.layernorm_output"]
    close(metrics["analysis_inter/hidden/s1_t2/rel_kl"], kl(rel(h_s), rel(h_t)), "hidden self-relation KL")
    close(metrics["analysis_inter/emb/s0_t0/rel_mse"], F.mse_loss(rel(s_out.taps["layers.0.layernorm_output"]),
                                                                   rel(t_out.taps["layers.0.layernorm_output"])), "emb")
    a_s, a_t = s_out.taps["layers.0.attention_scores"], t_out.taps["layers.1.attention_scores"]
    close(metrics["analysis_inter/att/s0_t1/kl_t5"], kl(a_s, a_t, 5.0), "attention KL_5")
    close(metrics["analysis_inter/att/s1_t3/mse"], F.mse_loss(s_out.taps["layers.1.attention_scores"],
                                                              t_out.taps["layers.3.attention_scores"]), "att MSE")
    q_s, q_t = s_out.taps["layers.1.query_layer"], t_out.taps["layers.3.query_layer"]
    close(metrics["analysis_inter/q/s1_t3/rel_mse"], F.mse_loss(rel(q_s), rel(q_t)), "per-head query relation")
    z_s, z_t = s_out.taps["logits_parallel"], t_out.taps["logits_parallel"]
    close(metrics["analysis_inter/logits/kl_t10"], kl(z_s, z_t, 10.0), "logits KL_10")
    # Different widths: no direct hidden or Q comparison, only the self-relations.
    assert "analysis_inter/hidden/s1_t2/mse" not in metrics and "analysis_inter/q/s0_t1/mse" not in metrics
    assert all(torch.isfinite(v) and not v.requires_grad for v in metrics.values())
    assert _analyse(student_glm, teacher_glm, TeacherInfo(4, 48, 4), AnalysisOptions())[0] == {}


# --------------------------------------------------------------------------- MP=2
def _shard_last(full, rank, world_size):
    return full.chunk(world_size, dim=-1)[rank].clone()


def _all_losses(inputs, shard):
    """(label, loss, student-logit gradient) of every method on token logits sharded by `shard`."""
    results = []
    batch = token_batch(inputs)
    cases = [
        ("annealing_kd", DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True), {}),
        ("continuation_kd", DistillOptions(distill_pt_soft=True, distill_pt_soft_mse=True, distill_pt_hard=True),
         dict(CONTINUATION, continuation_kd_margin=4.0)),
    ]
    for name, options, method_options in cases:
        s = shard(inputs["s"]).requires_grad_()
        student = build_student(name, nn.Identity(), options, method_options=method_options)
        loss, _ = student.pre_loss(s, shard(inputs["t"]), inputs["hard"], batch, at(100, 1000))   # [B]
        loss.sum().backward()
        results.append((name, loss.detach(), s.grad))
    with registered(Probe):
        options = DistillOptions(distill_pt_soft=True, distill_pt_hard=True, distill_temperature=2.0)
        mix = build_mix(options, inputs, mixbaseline_inter_bl="test_mix_probe",
                        mixbaseline_pre_bl_pt_soft="test_mix_probe,kd")
        s_out, t_out = mix_outputs(inputs, shard)
        loss, _ = AvgTeacher(AvgTeacherOptions(), options).compute(mix, s_out, inputs["hard"], [t_out], batch,
                                                                   StepInfo())
        loss.backward()
        results.append(("mixbaseline", loss.detach(), s_out.logits.grad))
    return results


ANALYSIS_SIZES = (dict(num_layers=2), dict(num_layers=3))   # equal widths and heads: every comparison exists


def _analysis_states():
    """Full (unsharded) student and teacher states, built at MP=1 in the test process."""
    return full_state(seed=3, **ANALYSIS_SIZES[0]), full_state(seed=4, **ANALYSIS_SIZES[1])


def _analysis_metrics_here(states):
    student_glm, teacher_glm = (sharded_model(*state, **sizes) for state, sizes in zip(states, ANALYSIS_SIZES))
    return _analyse(student_glm, teacher_glm.eval(), TeacherInfo(3, 52, 4))[0]


def _mp2_worker(rank, world_size, inputs, expected_losses, states, expected_metrics):
    for (label, loss, grad), (_, ref_loss, ref_grad) in zip(_all_losses(
            inputs, lambda full: _shard_last(full, rank, world_size)), expected_losses):
        assert_rel_close(loss, ref_loss, RTOL, f"{label}: loss")
        assert_rel_close(grad, _shard_last(ref_grad, rank, world_size), RTOL, f"{label}: grad")
    metrics = _analysis_metrics_here(states)
    assert set(metrics) == set(expected_metrics)
    for tag, value in metrics.items():
        # The sharded forward adds partial sums in another order (~1e-7 relative). The KLs at
        # high T of these near-uniform models are ~1e-7..1e-4, differences of log-probabilities
        # of size ln V ~ 4 whose fp32 rounding (~5e-7) they cannot beat: hence the absolute 1e-6.
        torch.testing.assert_close(value, expected_metrics[tag], rtol=1e-5, atol=1e-6, msg=tag)
    return True


@pytest.mark.slow
def test_losses_and_analysis_at_mp2_match_mp1():
    inputs = token_inputs()
    expected_losses = _all_losses(inputs, lambda full: full.clone())
    states = _analysis_states()
    expected_metrics = _analysis_metrics_here(states)
    assert any(tag.endswith("/q/s1_t2/mse") for tag in expected_metrics), "equal shapes compare directly"
    assert run_distributed(_mp2_worker, 2, inputs, expected_losses, states, expected_metrics) == [True, True]
