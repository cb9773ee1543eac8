"""A Hugging Face student under DeepSpeed ZeRO-2 on 2 CPU processes follows the single-process
run, and a run SIGKILLed after a checkpoint and resumed with --load reproduces the
uninterrupted one bit for bit."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from cli_fixtures import REPO_ROOT, run_script, write_corpus  # noqa: E402
from hf_fixtures import llama_folder  # noqa: E402
from model.checkpoint import TRACKER_FILENAME, load_model_shard  # noqa: E402

pytestmark = pytest.mark.slow   # subprocesses and the DeepSpeed launcher
STEPS = 12


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-zero")
    return llama_folder(root / "llama"), write_corpus(root, num_documents=200)


def flags(material, save: Path, steps: int = STEPS, batch_size: int = 8, *extra):
    teacher, corpus = material
    # Weight decay 0: DeepSpeed's Adam (L2) and the torch engine's AdamW (decoupled) then agree.
    return [f"--teacher_hf_model={teacher}", "--hf_student_layers=stride:2", "--student_model=kd",
            "--distill_pt_soft", "--distill_pt_hard", "--distill_temperature=2", f"--train-data={corpus}",
            "--seq-length=16", f"--batch-size={batch_size}", f"--train-iters={steps}", "--lr=1e-3",
            "--weight-decay=0", "--log-interval=1", "--split=100,0,0", f"--save={save}", "--experiment-name=run",
            "--custom_no_summary_writer", "--seed=7", *extra]


def losses(run: Path):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_zero2_on_two_processes_follows_the_single_process_run(material, tmp_path):
    single = run_script("pretrain.py", flags(material, tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-2000:]
    launcher = [shutil.which("deepspeed"), "--num_gpus=2", "--master_port=29661", "pretrain.py", "--deepspeed",
                "--deepspeed_config=config/config_block_tiny_cpu.json", "--zero_stage=2", "--args_to_ds_config"]
    # The same global batch: 2 ranks x 4 samples = 1 process x 8 (each rank reads its half).
    done = subprocess.run(launcher + flags(material, tmp_path / "zero2", STEPS, 4), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    expected, actual = losses(tmp_path / "single" / "run"), losses(tmp_path / "zero2" / "run")
    assert sorted(actual) == sorted(expected) == list(range(1, STEPS + 1))
    for step in expected:   # fp32 on both sides; reduction orders differ (2 ranks, ZeRO's flat buffers)
        assert actual[step] == pytest.approx(expected[step], rel=1e-4), (step, actual[step], expected[step])
    reference = load_model_shard(tmp_path / "single" / "run", 0)["module"]
    distributed = load_model_shard(tmp_path / "zero2" / "run", 0)["module"]
    for key, value in reference.items():
        # 12 Adam steps of lr 1e-3 on the same gradients up to summation order: relative 1e-3 of the weights
        torch.testing.assert_close(distributed[key].float(), value.float(), rtol=1e-3, atol=1e-5, msg=key)


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(material, tmp_path):
    straight = run_script("pretrain.py", flags(material, tmp_path / "straight", 30, 8, "--save-interval=30"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = flags(material, tmp_path / "killed", 30, 8, "--save-interval=4")
    process = subprocess.Popen([sys.executable, "pretrain.py", *killed], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    tracker = tmp_path / "killed" / "run" / TRACKER_FILENAME
    deadline = time.time() + 240
    while not tracker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert tracker.exists() and int(tracker.read_text()) < 30, "killed before its first checkpoint or after the end"
    resumed = run_script("pretrain.py", [*killed, f"--load={tmp_path / 'killed' / 'run'}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = load_model_shard(tmp_path / "straight" / "run", 0)["module"]
    actual = load_model_shard(tmp_path / "killed" / "run", 0)["module"]
    assert list(actual) == list(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), f"{key} differs after resume"
    straight_losses, resumed_losses = losses(tmp_path / "straight" / "run"), losses(tmp_path / "killed" / "run")
    assert all(resumed_losses[step] == straight_losses[step] for step in range(int(tracker.read_text()) + 1, 31))
