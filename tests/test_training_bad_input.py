"""Bad input gets a clear message naming the culprit and a non-zero exit, and nothing good
is overwritten: missing or corrupt checkpoints, sizes that don't divide, a teacher with
another vocabulary, data that doesn't parse, a NaN loss, an existing run."""
import hashlib
import shutil
from pathlib import Path

import pytest

from cli_fixtures import pretrain_flags, pretrained_run, run_script
from model.checkpoint import TRACKER_FILENAME

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

TEACHER = ["--teacher_num_layers=2", "--teacher_hidden_size=32", "--teacher_num_attention_heads=4",
           "--teacher_max_position_embeddings=64"]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_input")
    return (folder, *pretrained_run(folder))


def test_missing_and_corrupt_checkpoints(trained, tmp_path):
    folder, vocab, corpus, good = trained
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "a", 2, f"--load={tmp_path / 'none'}"))
    assert done.returncode == 1 and "does not exist" in done.stderr
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    shard = broken / "2" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    before = _digest(broken)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "b", 2, f"--load-pretrained={broken}"))
    assert done.returncode == 1 and "mp_rank_00_model_states.pt (corrupt or truncated?)" in done.stderr
    assert _digest(broken) == before
    (broken / TRACKER_FILENAME).unlink()
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "c", 2, f"--load-pretrained={broken}"))
    assert done.returncode == 1 and "latest_checkpointed_iteration.txt is missing" in done.stderr


def test_sizes_that_do_not_divide(trained, tmp_path):
    folder, vocab, corpus, good = trained
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 2, "--model-parallel-size=3"))
    assert done.returncode == 2 and "--model-parallel-size=3 does not divide --num-attention-heads=4" in done.stderr
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 2, "--hidden-size=30"))
    assert done.returncode == 2 and "--hidden-size=30 is not divisible by --num-attention-heads=4" in done.stderr


def test_teacher_with_another_vocabulary(trained, tmp_path):
    folder, vocab, corpus, good = trained
    # The student pads the vocabulary to a multiple of 32 (64 rows... the teacher has 64 at 16): make it differ.
    flags = pretrain_flags(vocab, corpus, tmp_path, 2, "--student_model=kd", "--distill_pt_soft",
                           f"--teacher_load_pretrained={good}", *TEACHER, "--make-vocab-size-divisible-by=48")
    done = run_script("pretrain.py", flags)
    assert done.returncode == 1
    assert "teacher 0" in done.stderr and "gives vocab_size=96, but the checkpoint records vocab_size=64" in done.stderr


def test_data_that_does_not_parse(trained, tmp_path):
    folder, vocab, corpus, good = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the cat sees the dog ."}\n{"text": "unterminated\n')
    done = run_script("pretrain.py", pretrain_flags(vocab, bad, tmp_path / "x", 2, "--text-key=text"))
    assert done.returncode == 1 and "bad.jsonl:2" in done.stderr
    done = run_script("pretrain.py", pretrain_flags(vocab, tmp_path / "missing.txt", tmp_path / "y", 2))
    assert done.returncode == 1 and "missing.txt: no such file or folder" in done.stderr


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_checkpoint(trained, tmp_path):
    folder, vocab, corpus, good = trained
    flags = pretrain_flags(vocab, corpus, tmp_path, 6, "--save-interval=1", "--lr=1e30", "--warmup=0",
                           "--lr-decay-style=constant")
    done = run_script("pretrain.py", flags)
    assert done.returncode == 1
    assert "NonFiniteLossError: iteration" in done.stderr and "non-finite terms: hard=nan" in done.stderr
    tracker = tmp_path / "run" / TRACKER_FILENAME
    last_good = int(tracker.read_text())
    assert last_good >= 1 and (tmp_path / "run" / str(last_good) / "mp_rank_00_model_states.pt").is_file()
    assert not list((tmp_path / "run").glob(".*partial"))


def test_an_existing_run_is_not_overwritten(trained, tmp_path):
    folder, vocab, corpus, good = trained
    save = good.parent
    before = _digest(good)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, save, 2))
    assert done.returncode == 1 and "already holds a checkpoint (tag 2)" in done.stderr and "--overwrite" in done.stderr
    assert _digest(good) == before
