"""finetune.py end to end on a small RTE-format task: evaluation every epoch, the best weights
kept and pointed to, the scores file auto_tune reads, predictions in the submission format;
and weights loaded from a checkpoint of another model-parallel size."""
import json

import pytest
import torch

from model.checkpoint import change_mp
from cli_fixtures import REPO_ROOT, finetune_flags, run_script, write_rte, write_vocab
from glm_fixtures import tiny_config
from model import GLMModel
from model.checkpoint import model_states, read_tracker, save_model_shard
from training.checkpointing import load_model_weights


@pytest.mark.slow
def test_finetune_keeps_the_best_weights_and_writes_scores_and_predictions(tmp_path):
    vocab, data = write_vocab(tmp_path), write_rte(tmp_path)
    scores = tmp_path / "scores.json"
    flags = finetune_flags(vocab, data, tmp_path / "ft", "--epochs=2", "--experiment-name=rte",
                           "--custom_first_eval", f"--custom_tmp_result={scores}")
    done = run_script("finetune.py", flags)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "ft" / "rte"
    assert read_tracker(run) == "best" and (run / "best" / "mp_rank_00_model_states.pt").is_file()
    running = json.loads(scores.read_text())
    assert set(running["max_score_dict"]) == {"accuracy"} and running["epoch"] == 2
    best = running["max_score_dict"]["accuracy"]
    assert best["epoch"] in (0, 1, 2) and 0 <= best["score_dict"]["accuracy"] <= 100
    final = json.loads((run / "test_results.json").read_text())
    assert final["accuracy"] == best["score_dict"]["accuracy"]   # the reloaded best weights score the best
    lines = (run / "predictions" / "RTE.jsonl").read_text().splitlines()
    assert len(lines) == 24 and set(json.loads(lines[0])) == {"idx", "label"}
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "valid"]
    assert [record["step"] for record in valid] == [0, 8, 16]   # first eval, then every epoch


def test_weights_load_from_a_checkpoint_of_another_model_parallel_size(tmp_path):
    torch.manual_seed(3)
    source = GLMModel(tiny_config())
    save_model_shard(tmp_path / "mp1", "release", 0, model_states(source, 1, source.config.to_dict()))
    resharded = change_mp(tmp_path / "mp1", 2)
    target = GLMModel(tiny_config())
    report = load_model_weights(target, str(resharded))   # this process is MP=1: merged on the fly
    assert not report.missing and not report.unexpected
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.slow
def test_the_deepspeed_configs_micro_batch_sizes_the_data(tmp_path):
    """The JSON's train_micro_batch_size_per_gpu (4) wins over --batch-size=8, in the
    data too: 64 training examples make 16 steps per epoch, not 8."""
    vocab, data = write_vocab(tmp_path), write_rte(tmp_path)
    flags = finetune_flags(vocab, data, tmp_path / "ft", "--epochs=1", "--experiment-name=rte", "--custom_first_eval",
                           "--deepspeed", f"--deepspeed_config={REPO_ROOT / 'config' / 'config_block_tiny_cpu.json'}")
    done = run_script("finetune.py", flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--batch-size=8 is overridden" in done.stdout + done.stderr
    records = [json.loads(line) for line in (tmp_path / "ft" / "rte" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "valid"] == [0, 16]
