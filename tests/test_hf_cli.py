"""pretrain.py with Hugging Face models: a layer-dropped Llama student distilled from its
teacher on a text corpus, a fresh BERT student from a config.json, checkpoints that resume
exactly, the student exported as a folder `AutoModelFor...` loads, and the bad inputs (each a
clear message and a non-zero exit before anything is built)."""
import json
import os
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from cli_fixtures import run_script, write_corpus  # noqa: E402
from hf_fixtures import bert_folder, llama_folder  # noqa: E402
from training.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    fresh = root / "bert-fresh"
    bert_folder(fresh, layers=2, weights=False, seed=1)   # config.json and tokenizer only
    return {"llama": llama_folder(root / "llama"), "bert": bert_folder(root / "bert"), "fresh": fresh,
            "corpus": write_corpus(root), "root": root}


def common(folders, save: Path, name: str, iters: int):
    return [f"--train-data={folders['corpus']}", "--seq-length=16", "--batch-size=4", f"--train-iters={iters}",
            "--log-interval=1", f"--save={save}", f"--experiment-name={name}", "--custom_no_summary_writer",
            "--lr=1e-3", "--lr-decay-iters=8", "--split=90,10,0", "--eval-interval=4", "--eval-iters=1", "--seed=5"]


LLAMA_KD = ["--hf_student_layers=stride:2", "--student_model=kd", "--distill_pt_soft", "--distill_pt_hard",
            "--distill_temperature=2"]


def checkpoint(folder: Path) -> dict:
    tag = (folder / "latest_checkpointed_iteration.txt").read_text().strip()
    return torch.load(folder / tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]


def test_a_layer_dropped_llama_student_distils_resumes_exactly_and_exports(folders, tmp_path):
    from transformers import AutoModelForCausalLM
    argv = [f"--teacher_hf_model={folders['llama']}", *LLAMA_KD]
    assert main("pretrain", "pretrain.py", [*argv, *common(folders, tmp_path, "whole", 8)]) == 0
    run = tmp_path / "whole"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert {"kd/soft", "kd/hard", "loss"} <= set(train[0]) and len(train) == 8
    assert any(r["split"] == "valid" and "ppl" in r for r in records)
    # Resume: 5 iterations, then the remaining 3 from the checkpoint, give the same weights (the
    # schedule decays over 8 iterations in every run).
    assert main("pretrain", "pretrain.py", [*argv, *common(folders, tmp_path, "parts", 5)]) == 0
    assert main("pretrain", "pretrain.py", [*argv, *common(folders, tmp_path, "parts", 8),
                                            f"--load={tmp_path / 'parts'}"]) == 0
    whole, parts = checkpoint(run), checkpoint(tmp_path / "parts")
    assert set(whole) == set(parts) and any(key.startswith("hf.model.layers.1.") for key in whole)
    for key, value in whole.items():
        assert torch.equal(value, parts[key]), key
    # The export is the trained student: AutoModelForCausalLM loads it with the checkpoint's weights.
    exported = AutoModelForCausalLM.from_pretrained(str(run / "hf_student"), local_files_only=True)
    assert exported.config.num_hidden_layers == 2
    for key, value in exported.state_dict().items():
        assert torch.equal(value, whole["hf." + key]), key
    assert (run / "hf_student" / "tokenizer.json").is_file()
    # export_hf.py writes the same folder from the checkpoint; an existing one needs --force.
    import export_hf
    assert export_hf.main([str(run), str(tmp_path / "again")]) == 0
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "again"), local_files_only=True)
    for key, value in again.state_dict().items():
        assert torch.equal(value, exported.state_dict()[key]), key
    assert export_hf.main([str(run), str(tmp_path / "again")]) == 1
    assert export_hf.main([str(run), str(tmp_path / "again"), "--force"]) == 0


@pytest.mark.slow
def test_export_hf_refuses_a_glm_checkpoint(tmp_path, capsys):
    import export_hf
    from cli_fixtures import pretrained_run
    _, _, run = pretrained_run(tmp_path)
    assert export_hf.main([str(run), str(tmp_path / "out")]) == 1
    assert "is not a Hugging Face student's checkpoint (model family 'glm')" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_fresh_bert_student_from_a_config_learns_from_its_teacher(folders, tmp_path):
    from transformers import AutoModelForMaskedLM
    argv = [f"--teacher_hf_model={folders['bert']}", f"--hf_model={folders['fresh']}", "--student_model=tinybert",
            *common(folders, tmp_path, "tiny", 12)]
    assert main("pretrain", "pretrain.py", argv) == 0
    records = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert sum(losses[-3:]) < sum(losses[:3]), losses                # TinyBERT's layer losses go down
    exported = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "tiny" / "hf_student"), local_files_only=True)
    assert exported.config.num_hidden_layers == 2


@pytest.mark.parametrize("combiner", ["avg", "uncertainty", "mt_bert"])
def test_two_hf_teachers_of_different_sizes_with_a_combiner(folders, tmp_path, combiner):
    wide = folders["root"] / "llama-wide"
    if not wide.exists():
        llama_folder(wide, layers=3, hidden=48, heads=4, seed=3)
    argv = [f"--mt_hf_model={folders['llama']}:{wide}", "--hf_student_layers=stride:2", "--student_model=kd",
            "--distill_pt_soft", "--distill_pt_hard", f"--multi_teacher_model={combiner}",
            *(["--mt_has_loss"] if combiner == "mt_bert" else []), *common(folders, tmp_path, combiner, 3)]
    assert main("pretrain", "pretrain.py", argv) == 0
    records = [json.loads(line) for line in (tmp_path / combiner / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 3 and all(key in train[0] for key in ("kd/soft_t0", "kd/soft_t1")), train[0]


@pytest.mark.parametrize("extra,message", [
    (["--teacher_hf_model={root}/nothing", "--hf_student_layers=bottom:2"], "--teacher_hf_model=.*nothing: no such folder"),
    (["--teacher_hf_model={root}", "--hf_student_layers=bottom:2"], "is not a Hugging Face model folder: it has no "
                                                                     "config.json"),
    (["--teacher_hf_model={opt}", "--hf_student_layers=bottom:2"], "unsupported Hugging Face architecture 'opt'; "
                                                                    "supported model types: bert, gpt2, llama"),
    (["--teacher_hf_model={llama}", "--hf_student_layers=stride:9"], "--hf_student_layers=stride:9: .*4-layer"),
    (["--teacher_hf_model={llama}", "--hf_student_layers=bottom:2", "--model-parallel-size=2"],
     "Hugging Face models run data parallel only"),
    (["--teacher_hf_model={llama}", "--hf_student_layers=bottom:2", "--map_vocab_size=0.5"],
     "--map_vocab_size is a GLM-only architecture option"),
    (["--teacher_hf_model={llama}", "--hf_student_layers=bottom:2", "--checkpoint-activations"],
     "silently wrong gradients"),
    (["--teacher_hf_model={llama}"], "Hugging Face teachers need a Hugging Face student"),
])
def test_bad_input_fails_at_parse_time(folders, tmp_path, capsys, extra, message):
    opt = folders["root"] / "opt"
    opt.mkdir(exist_ok=True)
    (opt / "config.json").write_text(json.dumps({"model_type": "opt"}))
    argv = [flag.format(root=folders["root"], opt=opt, llama=folders["llama"]) for flag in extra]
    assert main("pretrain", "pretrain.py", [*argv, "--student_model=kd", "--distill_pt_soft",
                                            *common(folders, tmp_path, "bad", 2)]) == 2
    assert re.search(message, capsys.readouterr().err), capsys.readouterr().err
    assert not (tmp_path / "bad").exists()                          # nothing was written


def test_a_teacher_with_another_vocabulary_is_refused_before_training(folders, tmp_path, capsys):
    argv = [f"--teacher_hf_model={folders['llama']}", f"--hf_model={folders['fresh']}", "--student_model=kd",
            "--distill_pt_soft", *common(folders, tmp_path, "mismatch", 2)]
    assert main("pretrain", "pretrain.py", argv) == 1
    err = capsys.readouterr().err
    assert "teacher 0" in err and "different vocabularies: 47 against 45 tokens; the first difference is id 0: " \
                                  "'[PAD]' against '<unk>'" in err, err
    assert not (tmp_path / "mismatch" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_the_command_line_runs_as_a_subprocess(folders, tmp_path):
    argv = [f"--teacher_hf_model={folders['llama']}", *LLAMA_KD, *common(folders, tmp_path, "cli", 3)]
    done = run_script("pretrain.py", argv, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cli" / "hf_student" / "model.safetensors").is_file()
