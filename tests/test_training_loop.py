"""The training loop in one process: gradient accumulation, forward repeats, the student's
initialisation from a teacher, crash-safe saving, and the metrics every run reports."""
import json

import pytest
import torch

from distill.distill_model import DistillOptions, TeacherInfo, build_student
from distill.multi_teacher_model import AvgTeacherOptions, build_multi_teacher
from dist_utils import assert_rel_close
from glm_fixtures import tiny_config
from model import GLMModel
from model.checkpoint import read_tracker
from training import checkpointing
from training.config import ArchConfig, TeacherConfig
from training.metrics_log import MetricsLogger
from training.teachers import Teacher, truncate_teacher_as_student
from training_fixtures import ListBatches, full_state, global_batches, make_trainer, sharded_model, torch_engine


def _losses(trainer, steps):
    losses = []
    for _ in range(steps):
        before, seen = trainer.state.iteration, []
        while trainer.state.iteration == before:
            seen.append(float(trainer.micro_step(next(trainer.data))["loss"]))
        losses.append(sum(seen) / len(seen))
    return losses


def test_gradient_accumulation_equals_the_larger_batch():
    state, specs = full_state()
    batches = global_batches(3, 4)
    whole = make_trainer(torch_engine(sharded_model(state, specs)), ListBatches(batches, 4), 3)
    accumulated = make_trainer(torch_engine(sharded_model(state, specs), gas=2),
                               ListBatches(batches, 2, micro_per_step=2), 3, gas=2)
    expected, actual = _losses(whole, 3), _losses(accumulated, 3)
    # Same rows, same mean (equal loss tokens per micro-batch); only summation order differs.
    assert actual == pytest.approx(expected, rel=1e-5)
    # AdamW's first steps are ~lr * sign(grad): fp32 noise on near-zero gradients moves single
    # entries by ~1e-6, so all parameters together are compared relative to the largest one.
    flat = lambda trainer: torch.cat([p.detach().flatten() for p in trainer.engine.module.parameters()])
    assert_rel_close(flat(accumulated), flat(whole), 1e-5, "parameters after accumulation")


def _kd_trainer(forward_repeat_num):
    state, specs = full_state()
    options = DistillOptions(distill_pt_soft=True, distill_pt_hard=True, distill_temperature=2.0)
    student = build_student("kd", sharded_model(state, specs), options, [TeacherInfo(2, 52, 4)])
    teacher_model = sharded_model(*full_state(seed=5)).eval()
    teacher = Teacher(teacher_model, TeacherConfig(ArchConfig(), None), torch.float32)
    trainer = make_trainer(torch_engine(student), ListBatches(global_batches(1, 4), 4), 1, student=student,
                           combiner=build_multi_teacher(None, AvgTeacherOptions(), options), teachers=[teacher])
    trainer.settings.forward_repeat_num = forward_repeat_num
    return trainer


def test_forward_repeats_add_one_pass_each():
    single, repeated = _kd_trainer(0), _kd_trainer(1)
    single_metrics = single.micro_step(next(single.data))
    repeated_metrics = repeated.micro_step(next(repeated.data))
    # Without dropout the repeat is the same pass: every term appears again with a suffix.
    assert float(repeated_metrics["loss_repeat1"]) == pytest.approx(float(single_metrics["loss"]), rel=1e-6)
    assert {"kd/soft", "kd/hard", "hard"} <= set(single_metrics)


def test_student_initialised_from_the_teachers_bottom_layers():
    torch.manual_seed(0)
    teacher = GLMModel(tiny_config(num_layers=3, hidden_size=64, num_attention_heads=4))
    student = GLMModel(tiny_config(num_layers=2, hidden_size=52, num_attention_heads=4))
    untouched = student.transformer.layers[1].mlp.dense_h_to_4h.weight.detach().clone()
    copied = truncate_teacher_as_student(student, teacher)
    assert copied == len(student.state_dict())
    t, s = teacher.state_dict(), student.state_dict()
    # Layer i from teacher layer i; different widths: the leading block of every dimension.
    assert torch.equal(s["transformer.layers.1.mlp.dense_h_to_4h.weight"],
                       t["transformer.layers.1.mlp.dense_h_to_4h.weight"][:208, :52])
    assert torch.equal(s["word_embeddings.weight"], t["word_embeddings.weight"][:, :52])
    assert not torch.equal(s["transformer.layers.1.mlp.dense_h_to_4h.weight"], untouched)


def test_a_failed_save_keeps_the_tracker_on_the_last_good_checkpoint(tmp_path, monkeypatch):
    state, specs = full_state()
    trainer = make_trainer(torch_engine(sharded_model(state, specs)), ListBatches(global_batches(2, 4), 4), 2,
                           save_dir=str(tmp_path))
    trainer.micro_step(next(trainer.data))
    trainer.save("1")
    assert read_tracker(tmp_path) == "1"

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing, "atomic_torch_save", broken_write)
    trainer.micro_step(next(trainer.data))
    with pytest.raises(OSError, match="disk full"):
        trainer.save("2")
    assert read_tracker(tmp_path) == "1" and not (tmp_path / "2").exists()
    assert (tmp_path / "1" / "mp_rank_00_model_states.pt").is_file()


def test_metrics_file_has_every_term(tmp_path):
    trainer = _kd_trainer(0)
    trainer.logger = MetricsLogger(str(tmp_path), 1, enabled=True, tensorboard=True)
    trainer.settings.log_interval = 1
    trainer.train()
    trainer.logger.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss", "hard", "kd/soft", "kd/hard", "lr", "grad_norm", "tokens_per_second", "memory_mb"} <= set(record)
    assert list((tmp_path / "tensorboard").iterdir()), "no TensorBoard event file"
