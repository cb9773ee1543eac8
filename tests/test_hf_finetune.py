"""finetune.py with Hugging Face models: a BERT teacher fine-tuned on an RTE-format task with a
sequence-classification head (best checkpoint, predictions, results.json, the exported
folder), then distilled into a layer-dropped student; a Llama classifier (the decoder's
last-token scoring); and the refusals."""
import json
import re

import pytest
import torch

pytest.importorskip("transformers")
from cli_fixtures import write_rte  # noqa: E402
from hf_fixtures import bert_folder, llama_folder  # noqa: E402
from training.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-ft")
    rte = write_rte(root)
    bert, llama = bert_folder(root / "bert"), llama_folder(root / "llama")
    teacher_run = root / "runs"
    argv = [f"--hf_model={bert}", *task_flags(rte, teacher_run, "teacher", epochs=2)]
    assert main("finetune", "finetune.py", argv) == 0
    return {"rte": rte, "bert": bert, "llama": llama, "teacher": teacher_run / "teacher" / "hf_student", "root": root}


def task_flags(rte, save, name, epochs=1):
    return ["--task=RTE", f"--data-dir={rte}", "--seq-length=32", "--batch-size=8", f"--epochs={epochs}", "--lr=1e-3",
            f"--save={save}", f"--experiment-name={name}", "--custom_no_summary_writer", "--log-interval=4",
            "--seed=3"]


def test_fine_tuning_keeps_the_best_checkpoint_writes_predictions_and_exports(material):
    from transformers import AutoModelForSequenceClassification
    run = material["teacher"].parent
    results = json.loads((run / "results.json").read_text())
    assert set(results) >= {"max_score_dict", "best_epoch", "final"} and "accuracy" in results["final"]
    assert (run / "best").is_dir() and any((run / "predictions").iterdir())
    exported = AutoModelForSequenceClassification.from_pretrained(str(material["teacher"]), local_files_only=True)
    assert exported.config.num_labels == 2 and exported.config.architectures == ["BertForSequenceClassification"]
    best = torch.load(next((run / "best").glob("mp_rank_00_*.pt")), weights_only=True)["module"]
    for key, value in exported.state_dict().items():   # the export holds the best weights
        assert torch.equal(value, best["hf." + key]), key


@pytest.mark.parametrize("method", [["--student_model=kd", "--distill_ft_soft", "--distill_ft_hard"],
                                    ["--student_model=pkd", "--distill_ft_soft", "--distill_ft_hard", "--pkd_only_cls"],
                                    ["--student_model=tinybert"]])
def test_a_fine_tuned_teacher_distils_into_a_layer_dropped_student(material, tmp_path, method):
    argv = [f"--teacher_hf_model={material['teacher']}", "--hf_student_layers=bottom:2", *method,
            *task_flags(material["rte"], tmp_path, "student")]
    assert main("finetune", "finetune.py", argv) == 0
    records = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert any("accuracy" in r for r in records if r["split"] != "train")
    assert (tmp_path / "student" / "hf_student" / "model.safetensors").is_file()


def test_a_decoder_classifies_with_its_last_token(material, tmp_path):
    from transformers import AutoModelForSequenceClassification
    assert main("finetune", "finetune.py", [f"--hf_model={material['llama']}",
                                            *task_flags(material["rte"], tmp_path, "llama")]) == 0
    exported = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "llama" / "hf_student"),
                                                                  local_files_only=True)
    assert exported.config.model_type == "llama" and exported.config.pad_token_id is not None


@pytest.mark.parametrize("extra,code,message", [
    (["--teacher_hf_model={bert}", "--student_model=kd", "--distill_ft_soft", "--hf_student_layers=bottom:2"], 1,
     r"teacher 0 \(.*bert\) has no trained classification head \(BertForMaskedLM\): fine-tune it on the task "
     r"first"),
    (["--hf_model={bert}", "--cloze-eval"], 2, "--cloze-eval .* is GLM's"),
])
def test_refusals(material, tmp_path, capsys, extra, code, message):
    argv = [flag.format(bert=material["bert"]) for flag in extra]
    assert main("finetune", "finetune.py", [*argv, *task_flags(material["rte"], tmp_path, "bad")]) == code
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_a_multiple_choice_task_is_refused(material, tmp_path, capsys):
    argv = [f"--hf_model={material['bert']}", "--task=COPA", f"--data-dir={tmp_path}", f"--save={tmp_path}",
            "--seq-length=32"]
    assert main("finetune", "finetune.py", argv) == 2
    assert "--task=COPA: a multiple-choice task" in capsys.readouterr().err
