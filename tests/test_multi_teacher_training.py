"""Multi-teacher runs through the real builders and entry points: one teacher under `avg` is
exactly the single-teacher loss; the GKD README's variants of the multi-teacher recipes train;
an RL-KD run resumed from the middle reproduces the uninterrupted one (agent, its previous
state and action included); --mt_model_load really loads the combiner, or says why not.
(The GLMKD README's recipes run end to end in test_methods_common.py, TAKD and DGKD chains in
test_readme.py.)"""
import json
import shutil
from pathlib import Path

import pytest
import torch

import mpu
from cli_fixtures import pretrain_flags, run_script, write_corpus, write_rte, write_vocab
from distill.distill_model import StepInfo
from model.checkpoint import CheckpointError, atomic_torch_save, load_model_shard, shard_filename, write_tracker
from tasks import Task, TaskConfig
from tasks.collate import collate
from training.arguments import parse_run_config
from training.engine import DistEnv, TorchTrainEngine, build_optimizer, set_random_seed
from training.metrics_log import MetricsLogger
from training.run import build_models, build_run_tokenizer
from training.stages import FinetuneStage, PretrainStage
from training.trainer import LoopSettings, Trainer
from training_fixtures import ConstantLR, global_batches

ENV = DistEnv(0, 1, 0, torch.device("cpu"), "gloo")
STUDENT = ["--num-layers=2", "--hidden-size=32", "--num-attention-heads=4", "--max-position-embeddings=64"]
TWO = ["--mt_num_layers=2:3", "--mt_hidden_size=48:64", "--mt_num_attention_heads=4:4",
       "--mt_max_position_embeddings=64:64", "--teacher_random_para"]
THREE = ["--mt_num_layers=2:2:3", "--mt_hidden_size=40:48:64", "--mt_num_attention_heads=4:4:4",
         "--mt_max_position_embeddings=64:64:64", "--teacher_random_para"]
RL_KD = ["--student_model=kd", "--distill_pt_soft", "--distill_temperature=2", "--multi_teacher_model=rl_kd",
         "--rl_kd_semantic_model=0", "--mt_has_loss", "--rl_kd_alpha=0.5", *THREE]
STEPS, MIDDLE = 8, 4


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_teacher")
    return {"vocab": write_vocab(folder), "corpus": write_corpus(folder), "rte": write_rte(folder), "folder": folder}


def build(material, stage, *flags):
    """(config, stage, one batch, student, combiner, teachers), as a run builds them."""
    argv = [f"--tokenizer-path={material['vocab']}", "--make-vocab-size-divisible-by=16", "--seq-length=32",
            "--hidden-dropout=0", "--attention-dropout=0", "--seed=3", *STUDENT, *flags]
    if stage == "finetune":
        argv += ["--task=RTE", f"--data-dir={material['rte']}", "--cloze-eval"]
    config = parse_run_config(argv, stage, "test")
    set_random_seed(config.train.seed)   # as run() does first: random teachers are then the same in every build
    tokenizer = build_run_tokenizer(config)
    vocab = mpu.pad_vocab_size(tokenizer.num_tokens, 16)
    if stage == "finetune":
        task = Task(TaskConfig("RTE", str(material["rte"]), max_seq_length=32), tokenizer)
        run_stage, batch = FinetuneStage(task, hidden_size=32), collate([task.dataset("train")[i] for i in range(4)])
    else:
        run_stage, batch = PretrainStage(), global_batches(1, 4, seq=12, vocab=tokenizer.num_tokens)[0]
    models = build_models(config, run_stage, config.arch.glm_config(vocab, config.model), vocab, ENV)
    return (config, run_stage, batch, *models[1:])


def trainer_for(config, stage, batch, student, combiner, teachers):
    class SameBatch:
        def __next__(self):
            return batch

        def state_dict(self):
            return {}
    engine = TorchTrainEngine(student, build_optimizer(student, 1e-3, 0.0, (0.9, 0.999), 1e-8), ENV, 1, 1.0)
    settings = LoopSettings(total_iters=2, gradient_accumulation_steps=1, log_interval=0, save_dir=None,
                            mt_has_loss=config.distill.mt_has_loss, seed=3)
    return Trainer(engine=engine, stage=stage, data=SameBatch(), lr_scheduler=ConstantLR(1e-3), settings=settings,
                   logger=MetricsLogger(None, 2, enabled=False), student=student, combiner=combiner,
                   teachers=teachers)


def test_avg_with_one_teacher_is_exactly_the_single_teacher_loss(material):
    method = ["--student_model=kd", "--distill_ft_soft", "--distill_ft_hard", "--distill_temperature=10"]
    single = build(material, "finetune", *method, "--teacher_num_layers=3", "--teacher_hidden_size=48",
                   "--teacher_num_attention_heads=4", "--teacher_max_position_embeddings=64", "--teacher_random_para")
    listed = build(material, "finetune", *method, "--mt_num_layers=3", "--mt_hidden_size=48",
                   "--mt_num_attention_heads=4", "--mt_max_position_embeddings=64", "--teacher_random_para",
                   "--multi_teacher_model=avg")
    config, stage, batch, student, _, teachers = single
    inputs = stage.model_inputs(batch)
    with torch.no_grad():
        s_out, t_out = student(*inputs), teachers[0](*inputs)
        hard, _ = stage.hard_loss(s_out, batch)
        pre, _ = student.pre_loss(s_out.logits, t_out.logits, hard, stage.distill_batch(batch))
        inter, _ = student.inter_loss(s_out, t_out, stage.distill_batch(batch), StepInfo())
        losses = [trainer_for(*models).forward_pass(batch, StepInfo())[0] for models in (single, listed)]
    expected = (pre + inter).mean()                  # per-sample [B] terms, reduced by AvgTeacher's mean
    assert pre.mean() > 0 and torch.equal(losses[0], expected) and torch.equal(losses[1], expected)


# The GKD README's forms of the recipes (seeds' 000_*.txt); GLMKD's are in recipes_multi_teacher.py.
GKD_VARIANTS = [
    ("pretrain", ["--student_model=kd", "--distill_pt_soft", "--distill_pt_soft_mse", "--distill_only_mask_pad",
                  "--multi_teacher_model=tmkd", "--student_truncate_tn=0", *TWO]),
    ("finetune", ["--student_model=kd", "--distill_ft_soft", "--distill_ft_soft_mse", "--distill_only_mask_pad",
                  "--distill_ft_hard", "--distill_hard_rate=0.5", "--multi_teacher_model=tmkd", *TWO]),
    ("finetune", ["--student_model=kd", "--distill_ft_soft", "--distill_temperature=1", "--distill_ft_soft_kl",
                  "--distill_only_mask_pad", "--student_truncate_tn=0", "--multi_teacher_model=uncertainty",
                  "--uncertainty_only_mask_pad", "--uncertainty_hard", *TWO]),
    ("finetune", ["--student_model=kd", "--distill_ft_soft", "--distill_temperature=10", "--student_truncate_tn=0",
                  "--multi_teacher_model=rl_kd", "--rl_kd_only_mask_pad", "--rl_kd_only_avg", "--rl_kd_alpha=0.5",
                  *TWO]),
    ("finetune", ["--student_model=kd", "--distill_ft_soft", "--distill_temperature=10", "--multi_teacher_model=rl_kd",
                  "--rl_kd_only_mask_pad", "--rl_kd_reward=1", "--rl_kd_semantic_model=0", "--mt_has_loss",
                  "--rl_kd_alpha=0.5", *THREE]),
    # Not a seed recipe: MixMT of MT-BERT (projecting the hidden states PKD matches) and RL-KD, which hands
    # PKD the teachers' own hidden states: they must have the student's width.
    ("pretrain", ["--student_model=pkd", *RL_KD[1:3], "--multi_teacher_model=mixmt", "--mixmt_model=MT_BERT,RL_KD",
                  *RL_KD[4:-len(THREE)], *THREE, "--mt_hidden_size=32", "--rl_kd_only_mask_pad",
                  "--mt_bert_fit_teacher"]),
]


@pytest.mark.parametrize("stage,flags", GKD_VARIANTS, ids=lambda v: v if isinstance(v, str) else "")
def test_gkd_readme_variants_train(material, stage, flags):
    config, run_stage, batch, student, combiner, teachers = build(material, stage, *flags)
    trainer = trainer_for(config, run_stage, batch, student, combiner, teachers)
    assert student.multi_teacher_model is combiner
    before = {k: v.clone() for k, v in student.named_parameters()}
    for _ in range(2):   # RL-KD's agent learns from the previous step
        metrics = trainer.micro_step(batch)
        assert all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values()), metrics
    trained = {k for k, p in student.named_parameters() if p.requires_grad}
    changed = {k for k, p in student.named_parameters() if not torch.equal(p, before[k])}
    assert trained == changed, f"trained but unchanged: {sorted(trained - changed)}"


# --------------------------------------------------------------------------- RL-KD resume and --mt_model_load
def _train_losses(save_dir: Path):
    records = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            records[record["step"]] = record
    return records


@pytest.fixture(scope="module")
def rl_kd_run(material):
    """An uninterrupted RL-KD pretraining run of STEPS steps, checkpointed at MIDDLE and STEPS."""
    save = material["folder"] / "straight"
    done = run_script("pretrain.py", pretrain_flags(material["vocab"], material["corpus"], save, STEPS,
                                                    f"--save-interval={MIDDLE}", *RL_KD))
    assert done.returncode == 0, done.stderr[-3000:]
    return save / "run"


@pytest.mark.slow
def test_rl_kd_resumed_in_the_middle_reproduces_the_uninterrupted_run(material, rl_kd_run, tmp_path):
    resumed = tmp_path / "resumed" / "run"
    shutil.copytree(rl_kd_run, resumed)
    shutil.rmtree(resumed / str(STEPS))
    write_tracker(resumed, MIDDLE)
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    (resumed / "metrics.jsonl").write_text("".join(line + "\n" for line in lines
                                                   if json.loads(line)["step"] <= MIDDLE))
    flags = pretrain_flags(material["vocab"], material["corpus"], tmp_path / "resumed", STEPS,
                           f"--save-interval={MIDDLE}", *RL_KD, f"--load={resumed}")
    done = run_script("pretrain.py", flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at iteration {MIDDLE}" in done.stdout
    straight, again = _train_losses(rl_kd_run), _train_losses(resumed)
    assert "rl_kd/policy" in again[MIDDLE + 1], "the first resumed step learns from the saved state and action"
    for step in range(MIDDLE + 1, STEPS + 1):
        assert again[step]["loss"] == straight[step]["loss"], f"loss at step {step}"
        assert again[step]["rl_kd/policy"] == straight[step]["rl_kd/policy"], f"policy term at step {step}"
    expected, actual = load_model_shard(rl_kd_run, 0)["module"], load_model_shard(resumed, 0)["module"]
    assert list(actual) == list(expected) and any(k.startswith("student.multi_teacher_model.") for k in actual)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), f"{key} differs after resume"


def test_mt_model_load_really_loads_the_combiner(material, rl_kd_run, tmp_path):
    saved = load_model_shard(rl_kd_run, 0)
    prefix = "student.multi_teacher_model."
    _, _, _, student, combiner, _ = build(material, "pretrain", *RL_KD, f"--mt_model_load={rl_kd_run}")
    for key, value in combiner.state_dict().items():
        assert torch.equal(value, saved["module"][prefix + key]), key
    _, _, _, _, fresh, _ = build(material, "pretrain", *RL_KD)
    assert not all(torch.equal(v, fresh.state_dict()[k]) for k, v in combiner.state_dict().items())
    # A checkpoint without combiner parameters, and a combiner of other shapes, are errors.
    bare = tmp_path / "bare"
    atomic_torch_save({**saved, "module": {k: v for k, v in saved["module"].items() if not k.startswith(prefix)}},
                      bare / "1" / shard_filename(0))
    write_tracker(bare, 1)
    with pytest.raises(CheckpointError, match="holds no combiner parameters"):
        build(material, "pretrain", *RL_KD, f"--mt_model_load={bare}")
    other = [f if not f.startswith("--mt_hidden_size") else "--mt_hidden_size=32:48:64" for f in RL_KD]
    with pytest.raises(CheckpointError, match="agent_semantic_mt_loss.weight has shape"):
        build(material, "pretrain", *other, f"--mt_model_load={rl_kd_run}")
