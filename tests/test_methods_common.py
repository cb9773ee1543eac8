"""Every method, every recipe stage of the seeds' README (tests/recipes_*.py), at tiny sizes:
a short run decreases the loss, the teachers do not move, auxiliary layers get gradients,
fully padded rows give no NaN, the student's checkpoint saves, reshards (change_mp) and
reloads exactly, and the recipe runs end to end through pretrain.py / finetune.py."""
import copy

import pytest
import torch

import mpu
from model.checkpoint import merge, split
from distill.distill_model import StepInfo
from cli_fixtures import run_script, write_corpus, write_rte, write_sorted_vocab, write_vocab
from method_recipes import all_recipes
from model.checkpoint import model_states
from tasks import Task, TaskConfig
from tasks.collate import collate
from training.arguments import parse_run_config
from training.engine import DistEnv, TorchTrainEngine, build_optimizer
from training.metrics_log import MetricsLogger
from training.run import build_models, build_run_tokenizer
from training.stages import FinetuneStage, PretrainStage
from training.trainer import LoopSettings, Trainer
from training_fixtures import ConstantLR

CASES = [pytest.param(name, recipe, id=f"{name}-{index}-{recipe.stage}")
         for name, recipes in sorted(all_recipes().items()) for index, recipe in enumerate(recipes)]
ENV = DistEnv(0, 1, 0, torch.device("cpu"), "gloo")
LR, STEPS = 1e-3, 16   # small steps: Adam's first update (~lr per weight) must not dominate a short run


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("methods")
    vocab = write_vocab(folder)
    return {"vocab": vocab, "corpus": write_corpus(folder), "rte": write_rte(folder), "folder": folder,
            "table": write_sorted_vocab(folder, vocab)}


def _arch(prefix_dash, sizes):
    layers, hidden, heads = sizes
    if prefix_dash:
        return [f"--num-layers={layers}", f"--hidden-size={hidden}", f"--num-attention-heads={heads}",
                "--max-position-embeddings=64"]
    return [f"--teacher_num_layers={layers}", f"--teacher_hidden_size={hidden}",
            f"--teacher_num_attention_heads={heads}", "--teacher_max_position_embeddings=64"]


def _argv(recipe, material):
    argv = [f"--tokenizer-path={material['vocab']}", "--make-vocab-size-divisible-by=16", "--seq-length=32",
            "--hidden-dropout=0", "--attention-dropout=0", "--seed=3", *_arch(True, recipe.student),
            *_arch(False, recipe.teacher), "--teacher_random_para", *recipe.flags, *recipe.extra,
            *recipe.teacher_extra]
    if recipe.stage == "finetune":
        argv += ["--task=RTE", f"--data-dir={material['rte']}", "--cloze-eval"]
    if "--student_build_map_vocab" in recipe.flags:
        argv += [f"--map_vocab_table={material['table']}"]
    return argv


def _build(recipe, material, truncate: bool = True):
    argv = _argv(recipe, material)
    if not truncate:   # start from a random student rather than the teacher's bottom layers
        argv = [flag for flag in argv if not flag.startswith("--student_truncate_tn")]
    config = parse_run_config(argv, recipe.stage, "test")
    tokenizer = build_run_tokenizer(config)
    vocab = mpu.pad_vocab_size(tokenizer.num_tokens, 16)
    if recipe.stage == "pretrain":
        stage = PretrainStage()
        gen = torch.Generator().manual_seed(0)
        text = torch.randint(5, tokenizer.num_tokens, (4, 20), generator=gen)
        position = torch.zeros(4, 2, 20, dtype=torch.long)
        position[:, 0, :12] = torch.arange(12)
        position[:, 0, 12:] = 11
        position[:, 1, 12:] = torch.arange(1, 9)
        batch = {"text": text, "position_id": position, "attention_mask": torch.full((4,), 12),
                 "target": torch.randint(5, tokenizer.num_tokens, (4, 20), generator=gen),
                 "loss_mask": (torch.arange(20) >= 12).float().expand(4, 20).clone()}
    else:
        task = Task(TaskConfig("RTE", str(material["rte"]), max_seq_length=32), tokenizer)
        stage = FinetuneStage(task, hidden_size=config.arch.hidden_size)
        batch = collate([task.dataset("train")[i] for i in range(4)])
    glm_config = config.arch.glm_config(vocab, config.model, num_tokens=tokenizer.num_tokens)
    student_module, student, combiner, teachers = build_models(config, stage, glm_config, vocab, ENV, tokenizer)
    return config, stage, batch, student, combiner, teachers


def _trainer(config, stage, batch, student, combiner, teachers, steps):
    class SameBatch:
        def __next__(self):
            return batch

        def state_dict(self):
            return {}

    engine = TorchTrainEngine(student, build_optimizer(student, LR, 0.0, (0.9, 0.999), 1e-8), ENV, 1, 1.0)
    settings = LoopSettings(total_iters=steps, gradient_accumulation_steps=1, log_interval=0, save_dir=None,
                            forward_repeat_num=config.train.forward_repeat_num,
                            ignore_first_backward_gard=config.train.ignore_first_backward_gard,
                            mt_has_loss=config.distill.mt_has_loss, seed=3)
    return Trainer(engine=engine, stage=stage, data=SameBatch(), lr_scheduler=ConstantLR(LR), settings=settings,
                   logger=MetricsLogger(None, steps, enabled=False), student=student, combiner=combiner,
                   teachers=teachers)


def _pinned_loss(recipe, material, student, method_state, teachers, steps, iteration):
    """The loss at `iteration` of the schedule, on a fresh copy of `student`'s weights with the
    given method state (the same one before and after training), against the same teachers."""
    config, stage, batch, probe, combiner, _ = _build(recipe, material, truncate=False)
    probe.load_state_dict(student.state_dict())
    probe.load_method_state(copy.deepcopy(method_state))
    probe.bind_teachers([t.module for t in teachers])
    trainer = _trainer(config, stage, batch, probe, combiner, teachers, steps)
    with torch.no_grad():
        loss, _ = trainer.forward_pass(batch, StepInfo(iteration=iteration, train_iters=steps))
    return float(loss)


def _auxiliary(student):
    return {name: p for name, p in student.named_parameters() if not name.startswith("model.") and p.requires_grad}


@pytest.mark.parametrize("name,recipe", CASES)
def test_a_short_run_decreases_the_loss_and_keeps_the_teacher(name, recipe, material):
    # A student truncated from the teacher starts near the minimum of layer-matching losses,
    # where any first Adam step (~lr on every weight) raises the loss; train a random one.
    config, stage, batch, student, combiner, teachers = _build(recipe, material, truncate=False)
    teacher_before = [copy.deepcopy(t.module.state_dict()) for t in teachers]
    trainer = _trainer(config, stage, batch, student, combiner, teachers, steps=STEPS)
    loss, _ = trainer.forward_pass(batch, trainer._step_info(0))
    loss.backward()
    if any(p.grad is None for p in _auxiliary(student).values()):   # RL-KD's agent learns from the previous step
        loss, _ = trainer.forward_pass(batch, trainer._step_info(0))
        loss.backward()
    for aux_name, param in _auxiliary(student).items():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{aux_name} gets no gradient"
    student.zero_grad(set_to_none=True)
    # Schedules (SID, MobileBERT, Annealing-/Continuation-KD, Theseus) change the objective with
    # the step, so the same objectives are measured before and after training (on a copy, so
    # that measuring does not advance the schedule): those of the first and of the last step.
    # Progressive methods (MobileBERT) work on the first step's layers first; Continuation-KD's
    # first objective can be empty (its hinge drops every sample): one of the two must decrease.
    pinned, state = (0, STEPS - 1), copy.deepcopy(student.method_state())
    before = [_pinned_loss(recipe, material, student, state, teachers, STEPS, it) for it in pinned]
    for _ in range(STEPS):
        trainer.micro_step(batch)
    after = [_pinned_loss(recipe, material, student, state, teachers, STEPS, it) for it in pinned]
    assert any(a < b for a, b in zip(after, before)), f"{name}: the loss did not decrease ({before} -> {after})"
    for before, teacher in zip(teacher_before, teachers):
        for key, value in teacher.module.state_dict().items():
            assert torch.equal(value, before[key]), f"teacher parameter {key} moved"


@pytest.mark.parametrize("name,recipe", CASES)
def test_fully_padded_rows_give_no_nan(name, recipe, material):
    config, stage, batch, student, combiner, teachers = _build(recipe, material)
    batch = dict(batch)
    if recipe.stage == "pretrain":
        batch["loss_mask"] = batch["loss_mask"].clone()
        batch["loss_mask"][1] = 0
        batch["position_id"] = batch["position_id"].clone()
        batch["position_id"][1] = 0
    else:
        batch["position"] = batch["position"].clone()
        batch["position"][1] = 0
    trainer = _trainer(config, stage, batch, student, combiner, teachers, steps=1)
    loss, metrics = trainer.forward_pass(batch, trainer._step_info(0))
    assert torch.isfinite(loss), metrics
    loss.backward()
    for param_name, param in student.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


@pytest.mark.parametrize("name,recipe", CASES)
def test_checkpoint_saves_reshards_and_reloads(name, recipe, material):
    config, stage, batch, student, combiner, teachers = _build(recipe, material)
    states = model_states(student, 1)
    if not config.arch.num_attention_heads % 2:
        shards = split(states, 2)
        merged = merge(shards)
        for key, value in states["module"].items():
            assert torch.equal(merged["module"][key], value), key
    _, _, _, again, _, _ = _build(recipe, material)
    again.load_state_dict(states["module"])   # strict: every auxiliary tensor has a home
    for key, value in again.state_dict().items():
        assert torch.equal(value, states["module"][key]), key
    assert again.method_state().keys() == student.method_state().keys()


@pytest.mark.slow
@pytest.mark.parametrize("name,recipe", CASES)
def test_recipe_runs_end_to_end(name, recipe, material, tmp_path):
    argv = [*_argv(recipe, material), f"--save={tmp_path}", "--experiment-name=run", "--batch-size=4",
            "--log-interval=1", "--custom_no_summary_writer"]
    if recipe.stage == "pretrain":
        argv += [f"--train-data={material['corpus']}", "--train-iters=3", "--split=90,10,0", "--bert-prob=1.0",
                 "--eval-interval=3", "--eval-iters=1"]
    else:
        argv += ["--epochs=1", "--train-iters=3"]
    done = run_script("pretrain.py" if recipe.stage == "pretrain" else "finetune.py", argv)
    assert done.returncode == 0, done.stderr[-3000:]
