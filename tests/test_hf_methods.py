"""Every method recipe (tests/recipes_*.py) on Hugging Face models: an HF student distilled
from HF teacher(s) of the same family (BERT with masked LM, Llama with grouped-query attention
and causal LM), through the production trainer, combiners and stage. A short run decreases
the loss, the teachers do not move, and the student's state dict saves and strictly reloads."""
import copy

import pytest
import torch

pytest.importorskip("transformers")
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from distill.distill_model import StepInfo, TeacherInfo, build_student  # noqa: E402
from method_recipes import all_recipes  # noqa: E402
from model.hf import HFTapModel  # noqa: E402
from training.arguments import parse_run_config  # noqa: E402
from training.engine import DistEnv, TorchTrainEngine, build_optimizer  # noqa: E402
from training.metrics_log import MetricsLogger  # noqa: E402
from training.multi_teacher import build_combiner, method_teacher_infos  # noqa: E402
from training.stages import HFLanguageModelStage  # noqa: E402
from training.teachers import Teacher  # noqa: E402
from training.trainer import LoopSettings, Trainer  # noqa: E402
from training_fixtures import ConstantLR  # noqa: E402

ENV = DistEnv(0, 1, 0, torch.device("cpu"), "gloo")
V, SEQ, BATCH, LR, STEPS = 96, 16, 4, 1e-3, 8
MASK_ID = 3                                      # the masked-LM "[MASK]" of the tiny vocabulary
GLM_ONLY = ("--map_vocab_size",)                 # vocabulary compression needs GLM's embedding map
GLM_ARCH = ("--inverted_bottleneck_mode", "--ib_", "--teacher_inverted_bottleneck_mode", "--teacher_ib_")
FAST = (("kd", 0), ("tinybert", 0))              # the inner loop's share; the full suite runs every recipe
CASES = [pytest.param(family, name, recipe, id=f"{family}-{name}-{index}-{recipe.stage}",
                      marks=() if (name, index) in FAST else pytest.mark.slow)
         for family in ("bert", "llama")
         for name, recipes in sorted(all_recipes().items()) for index, recipe in enumerate(recipes)
         if not any(flag.startswith(GLM_ONLY) for flag in recipe.flags)]


def hf_model(family: str, layers: int, hidden: int, heads: int, seed: int):
    torch.manual_seed(seed)
    if family == "bert":
        return BertForMaskedLM(BertConfig(vocab_size=V, hidden_size=hidden, num_hidden_layers=layers,
                                          num_attention_heads=heads, intermediate_size=2 * hidden,
                                          max_position_embeddings=64, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0))
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=hidden, num_hidden_layers=layers,
                                        num_attention_heads=heads, num_key_value_heads=heads // 2,
                                        intermediate_size=2 * hidden, max_position_embeddings=64))


def lm_batch(family: str):
    """Random ids with one right-padded sample; masked-LM targets (BERT) or next tokens (Llama)."""
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(4, V, (BATCH, SEQ), generator=gen)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, 11:] = 0
    text = text * mask
    if family == "bert":
        chosen = (torch.rand(BATCH, SEQ, generator=gen) < 0.3) & mask.bool()
        chosen[:, 1] = True
        target = torch.where(chosen, text, torch.zeros_like(text))
        text = torch.where(chosen, torch.full_like(text, MASK_ID), text)
        loss_mask = chosen.float()
    else:
        target = torch.cat([text[:, 1:], torch.zeros(BATCH, 1, dtype=torch.long)], dim=1)   # the next token
        loss_mask = torch.cat([mask[:, 1:], torch.zeros(BATCH, 1, dtype=torch.long)], dim=1).float()
    return {"text": text, "attention_mask": mask, "target": target, "loss_mask": loss_mask}


def build(family: str, recipe):
    """The recipe's typed config, then HF student and teachers of its sizes in `family`."""
    arch = lambda prefix, sizes: [f"--{prefix}num{'-' if not prefix else '_'}layers={sizes[0]}",
                                  f"--{prefix}hidden{'-' if not prefix else '_'}size={sizes[1]}",
                                  f"--{prefix}num{'-' if not prefix else '_'}attention{'-' if not prefix else '_'}"
                                  f"heads={sizes[2]}"]
    extra = [flag for flag in (*recipe.extra, *recipe.teacher_extra) if not flag.startswith(GLM_ARCH)]
    argv = ["--seq-length=32", *arch("", recipe.student), *arch("teacher_", recipe.teacher), "--teacher_random_para",
            *recipe.flags, *extra]
    argv = [flag for flag in argv if not flag.startswith("--student_truncate_tn")]
    config = parse_run_config(argv, "pretrain", "test")
    stage = HFLanguageModelStage(recipe.stage)
    student_model = HFTapModel(hf_model(family, *recipe.student, seed=1))
    teachers = []
    for t_no, teacher_config in enumerate(config.teachers):
        arch_t = teacher_config.arch
        module = HFTapModel(hf_model(family, arch_t.num_layers, arch_t.hidden_size, arch_t.num_attention_heads,
                                     seed=10 + t_no)).eval()
        for param in module.parameters():
            param.requires_grad_(False)
        teachers.append(Teacher(module, teacher_config, torch.float32))
    infos = [TeacherInfo(t.module.config.num_layers, t.module.config.hidden_size, t.module.config.num_attention_heads,
                         t.module.config.num_key_value_heads) for t in teachers]
    student = build_student(config.distill.student_model, student_model, config.distill.options,
                            method_teacher_infos(config, infos), config.distill.method_options)
    student.bind_teachers([t.module for t in teachers])
    combiner = build_combiner(config, stage, student, V, log=lambda message: None)
    return config, stage, student, combiner, teachers


def trainer_for(config, stage, batch, student, combiner, teachers):
    class SameBatch:
        def __next__(self):
            return batch

        def state_dict(self):
            return {}

    engine = TorchTrainEngine(student, build_optimizer(student, LR, 0.0, (0.9, 0.999), 1e-8), ENV, 1, 1.0)
    settings = LoopSettings(total_iters=STEPS, gradient_accumulation_steps=1, log_interval=0, save_dir=None,
                            forward_repeat_num=config.train.forward_repeat_num,
                            ignore_first_backward_gard=config.train.ignore_first_backward_gard,
                            mt_has_loss=config.distill.mt_has_loss, seed=3)
    return Trainer(engine=engine, stage=stage, data=SameBatch(), lr_scheduler=ConstantLR(LR), settings=settings,
                   logger=MetricsLogger(None, STEPS, enabled=False), student=student, combiner=combiner,
                   teachers=teachers)


def pinned_losses(probe_parts, batch, student, state, teachers):
    """The losses at the first and the last iteration of the schedule on `probe` holding
    `student`'s weights and `state` (so that measuring neither trains nor advances the
    method's schedule)."""
    config, stage, probe, combiner = probe_parts
    losses = []
    for iteration in (0, STEPS - 1):
        probe.load_state_dict(student.state_dict())
        probe.load_method_state(copy.deepcopy(state))
        probe.bind_teachers([t.module for t in teachers])
        trainer = trainer_for(config, stage, batch, probe, combiner, teachers)
        with torch.no_grad():
            loss, _ = trainer.forward_pass(batch, StepInfo(iteration=iteration, train_iters=STEPS))
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("family,name,recipe", CASES)
def test_a_recipe_trains_an_hf_student(family, name, recipe):
    if (family, name) == ("llama", "minilmv2"):   # grouped-query attention: K/V are narrower than Q
        with pytest.raises(ValueError, match=r"minilmv2: 16 relation heads do not divide teacher 0's key/value "
                                             r"width 24 \(2 key/value heads of 4\)"):
            build(family, recipe)
        return
    config, stage, student, combiner, teachers = build(family, recipe)
    probe_config, probe_stage, probe, probe_combiner, _ = build(family, recipe)   # measures, then reloads
    probe_parts = (probe_config, probe_stage, probe, probe_combiner)
    batch = lm_batch(family)
    teacher_before = [copy.deepcopy(t.module.state_dict()) for t in teachers]
    trainer = trainer_for(config, stage, batch, student, combiner, teachers)
    state = copy.deepcopy(student.method_state())
    before = pinned_losses(probe_parts, batch, student, state, teachers)
    for _ in range(STEPS):
        trainer.micro_step(batch)
    after = pinned_losses(probe_parts, batch, student, state, teachers)
    assert all(torch.isfinite(torch.tensor(after))), after
    assert any(a < b for a, b in zip(after, before)), f"{name}: the loss did not decrease ({before} -> {after})"
    for saved, teacher in zip(teacher_before, teachers):
        for key, value in teacher.module.state_dict().items():
            assert torch.equal(value, saved[key]), f"teacher parameter {key} moved"
    # The student's checkpoint (HF weights under hf.*, auxiliary layers under student.*) reloads strictly.
    state_dict = student.state_dict()
    assert any(key.startswith("hf.") for key in state_dict)
    probe.load_state_dict(state_dict)
    for key, value in probe.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


def test_a_tap_the_architecture_cannot_give_is_a_build_time_error():
    """A base model has no LM head, so no `logits_parallel` for --distill_logits_parallel: the
    error names the method, the side and the architecture before any step."""
    from transformers import LlamaModel
    from distill.distill_model import DistillOptions
    from distill.multi_teacher_model import AvgTeacher, AvgTeacherOptions
    from training.config import ArchConfig, ConfigError, TeacherConfig
    from training.hf_run import check_method_taps
    base = hf_model("llama", 2, 32, 4, seed=1)
    headless = HFTapModel(LlamaModel(base.config))
    teacher = Teacher(HFTapModel(hf_model("llama", 4, 32, 4, seed=2)).eval(), TeacherConfig(ArchConfig(), "t"),
                      torch.float32)
    options = DistillOptions(distill_logits_parallel=True)
    for student_module, side in ((headless, "the student"), (HFTapModel(base), None)):
        student = build_student("kd", student_module, options, [TeacherInfo(4, 32, 4, 2)])
        if side is None:
            check_method_taps("kd", student, student_module, [teacher], AvgTeacher(AvgTeacherOptions(), options))
            continue
        with pytest.raises(ConfigError, match=r"--student_model=kd: the student \(llama, LlamaModel\) has no tap "
                                              r"'logits_parallel' \(no LM head\)"):
            check_method_taps("kd", student, student_module, [teacher], AvgTeacher(AvgTeacherOptions(), options))
