"""Resume exactness: N steps straight vs. a run SIGKILLed after a checkpoint and resumed
with --load to N: identical parameters (bit for bit, CPU fp32) and identical losses, for
plain pretraining and for KD. Also: a crash never leaves the tracker on a partial save."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_fixtures import REPO_ROOT, pretrain_flags, run_script, write_corpus, write_vocab
from model.checkpoint import TRACKER_FILENAME, load_model_shard

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

STEPS, SAVE_EVERY = 40, 5
TEACHER = ["--teacher_num_layers=2", "--teacher_hidden_size=32", "--teacher_num_attention_heads=4",
           "--teacher_max_position_embeddings=64"]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    vocab, corpus = write_vocab(folder), write_corpus(folder, num_documents=200)
    teacher = folder / "teacher"
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, teacher, 10, "--save-interval=10"))
    assert done.returncode == 0, done.stderr
    return folder, vocab, corpus, teacher / "run"


def _losses(save_dir: Path):
    """The last train loss logged for each step (a resumed run appends to the same file)."""
    losses = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            losses[record["step"]] = record["loss"]
    return losses


def _kill_after_first_checkpoint(flags, save_dir: Path) -> None:
    process = subprocess.Popen([sys.executable, "pretrain.py", *flags], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    tracker = save_dir / TRACKER_FILENAME
    deadline = time.time() + 240
    while not tracker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert tracker.exists(), "the run ended before its first checkpoint"
    assert int(tracker.read_text()) < STEPS, "the run finished before it could be killed"


@pytest.mark.parametrize("method", ["plain", "kd"])
def test_sigkill_and_resume_reproduce_the_uninterrupted_run(material, tmp_path, method):
    folder, vocab, corpus, teacher = material
    extra = [] if method == "plain" else ["--student_model=kd", "--distill_pt_soft", "--distill_pt_hard",
                                          "--distill_temperature=2", "--teacher_fp16",   # a bf16 teacher on CPU
                                          f"--teacher_load_pretrained={teacher}", *TEACHER]
    straight = pretrain_flags(vocab, corpus, tmp_path / "straight", STEPS, f"--save-interval={STEPS}", *extra)
    done = run_script("pretrain.py", straight)
    assert done.returncode == 0, done.stderr
    interrupted = pretrain_flags(vocab, corpus, tmp_path / "killed", STEPS, f"--save-interval={SAVE_EVERY}", *extra)
    _kill_after_first_checkpoint(interrupted, tmp_path / "killed" / "run")
    resumed_from = int((tmp_path / "killed" / "run" / TRACKER_FILENAME).read_text())
    done = run_script("pretrain.py", [*interrupted, f"--load={tmp_path / 'killed' / 'run'}"])
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and f"at iteration {resumed_from}" in done.stdout

    expected = load_model_shard(tmp_path / "straight" / "run", 0)["module"]
    actual = load_model_shard(tmp_path / "killed" / "run", 0)["module"]
    assert list(actual) == list(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), f"{key} differs after resume"
    straight_losses, resumed_losses = _losses(tmp_path / "straight" / "run"), _losses(tmp_path / "killed" / "run")
    for step in range(resumed_from + 1, STEPS + 1):
        assert resumed_losses[step] == straight_losses[step], f"loss at step {step} differs"
