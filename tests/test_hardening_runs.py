"""No run writes over another, one process writes a run folder at a time, a run is validated
before it writes anything, and resumes that cannot work say why; bad configurations are named
at parse time; out of disk space is one clear line with the last checkpoint intact."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_fixtures import REPO_ROOT, finetune_flags, pretrain_flags, pretrained_run, run_script, write_rte
from model.checkpoint import TRACKER_FILENAME, load_file
from test_hardening_checkpoints import digest

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    return (folder, *pretrained_run(folder))


def _copy(run: Path, target: Path) -> Path:
    import shutil
    shutil.copytree(run, target)
    return target


def _train_lines(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


# --------------------------------------------------------------------------- never over another run
def test_loading_another_run_does_not_permit_writing_over_this_one(material, tmp_path):
    folder, vocab, corpus, good = material
    other = _copy(good, tmp_path / "other" / "run")
    before = digest(other)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "other", 4, f"--load={good}"))
    assert done.returncode == 1, done.stderr
    assert "already holds a checkpoint (tag 2) (--load=" in done.stderr and "resumes another folder" in done.stderr
    assert digest(other) == before


def test_no_save_checkpoint_does_not_permit_writing_over_a_run(material, tmp_path):
    folder, vocab, corpus, good = material
    other = _copy(good, tmp_path / "other" / "run")
    before = digest(other)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "other", 2,
                                                    "--custom_no_save_checkpoint"))
    assert done.returncode == 1 and "already holds a checkpoint (tag 2)" in done.stderr, done.stderr
    assert digest(other) == before


def test_a_run_without_checkpoints_is_a_run_too(material, tmp_path):
    folder, vocab, corpus, good = material
    run = tmp_path / "x" / "run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "x", 2))
    assert done.returncode == 1 and "already holds the files of another run" in done.stderr, done.stderr
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "split": "train", "loss": 1.0}\n'


def test_overwrite_replaces_the_run_instead_of_appending_to_it(material, tmp_path):
    folder, vocab, corpus, good = material
    save = tmp_path / "o"
    _copy(good, save / "run")
    (save / "run" / "notes.txt").write_text("mine")   # not the run's: kept
    assert len(_train_lines(save / "run")) == 2
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, save, 3, "--overwrite", "--save-interval=3"))
    assert done.returncode == 0, done.stderr
    assert [line["step"] for line in _train_lines(save / "run")] == [1, 2, 3]
    assert (save / "run" / TRACKER_FILENAME).read_text().strip() == "3"
    assert not (save / "run" / "2").exists() and (save / "run" / "notes.txt").read_text() == "mine"


def test_overwrite_with_load_of_the_same_folder_is_refused(material, tmp_path):
    folder, vocab, corpus, good = material
    run = _copy(good, tmp_path / "s" / "run")
    before = digest(run)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "s", 4, f"--load={run}", "--overwrite"))
    assert done.returncode == 1 and "would delete the checkpoint it resumes" in done.stderr, done.stderr
    assert digest(run) == before


# --------------------------------------------------------------------------- one writer per folder
def _start(flags) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "pretrain.py", *flags], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_process_on_the_same_folder_is_refused_and_a_stale_lock_is_taken_over(material, tmp_path):
    folder, vocab, corpus, good = material
    flags = pretrain_flags(vocab, corpus, tmp_path, 100000, "--log-interval=1")
    first = _start(flags)
    try:
        _wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists(), first)   # training: the lock is held
        second = run_script("pretrain.py", flags + ["--overwrite"])
        assert second.returncode == 1, second.stderr
        assert f"is being written by another run (pid {first.pid} on" in second.stderr
        assert first.poll() is None, "the refused run disturbed the first"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    lock = tmp_path / ".run.lock"
    assert lock.exists() and str(first.pid) in lock.read_text()   # left behind by the killed run
    third = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 2, "--overwrite"))
    assert third.returncode == 0, third.stderr
    assert f"took over the lock of a run that is no longer running (pid {first.pid}" in third.stdout
    assert not lock.exists()


# --------------------------------------------------------------------------- validated before written
def test_a_resume_that_fails_validation_leaves_the_folder_byte_identical(material, tmp_path):
    folder, vocab, corpus, good = material
    run = _copy(good, tmp_path / "r" / "run")
    before = digest(run)
    wrong = pretrain_flags(vocab, corpus, tmp_path / "r", 4, f"--load={run}", "--num-layers=3")
    done = run_script("pretrain.py", wrong)
    assert done.returncode == 1 and "--num-layers gives num_layers=3, but the checkpoint records num_layers=2" \
        in done.stderr, done.stderr
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "r", 2, f"--load={run}"))
    assert done.returncode == 1, done.stderr
    assert "nothing to do: --load=" in done.stderr and "resumes at iteration 2 and the run ends at iteration 2" \
        in done.stderr
    assert digest(run) == before
    assert not (tmp_path / "r" / ".run.lock").exists()


def test_load_of_a_finished_finetuning_run_says_why_it_cannot_resume(material, tmp_path):
    folder, vocab, corpus, good = material
    data = write_rte(tmp_path, num_train=16, num_dev=8)
    done = run_script("finetune.py", finetune_flags(vocab, data, tmp_path, "--experiment-name=ft", "--epochs=1",
                                                    f"--load-pretrained={good}"))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "ft"
    assert (run / TRACKER_FILENAME).read_text().strip() == "best"
    before = digest(run)
    done = run_script("finetune.py", finetune_flags(vocab, data, tmp_path, "--experiment-name=ft", "--epochs=2",
                                                    f"--load={run}"))
    assert done.returncode == 1 and "KeyError" not in done.stderr, done.stderr
    assert "tag 'best', which holds weights only" in done.stderr and f"--load-pretrained={run}" in done.stderr
    assert digest(run) == before


def test_finetune_with_zero_epochs_evaluates_only(material, tmp_path):
    folder, vocab, corpus, good = material
    data = write_rte(tmp_path, num_train=16, num_dev=8)
    scores = tmp_path / "scores.json"
    done = run_script("finetune.py", finetune_flags(vocab, data, tmp_path, "--experiment-name=e0", "--epochs=0",
                                                    f"--load-pretrained={good}", f"--custom_tmp_result={scores}"))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "e0"
    results = json.loads((run / "results.json").read_text())
    assert set(results["final"]) == {"accuracy"} and results["max_score_dict"]["accuracy"]["epoch"] == 0
    assert json.loads(scores.read_text())["max_score_dict"]["accuracy"]["score_dict"] == results["final"]
    assert (run / "predictions").is_dir()
    assert not (run / TRACKER_FILENAME).exists() and not _train_lines(run)   # nothing trained, nothing saved


# --------------------------------------------------------------------------- named at parse time
@pytest.mark.parametrize("extra, message", [
    (["--seq-length=128"], "--seq-length=128 is longer than --max-position-embeddings=64"),
    (["--model-parallel-size=0"], "--model-parallel-size=0 must be at least 1"),
    (["--batch-size=0"], "--batch-size=0 must be at least 1"),
    (["--train-iters=-3"], "--train-iters=-3 must not be negative"),
    (["--load=a", "--load-pretrained=b"], "--load=a resumes a run with its own weights; --load-pretrained=b"),
    (["--lr=-1"], "--lr=-1.0 must not be negative"),
    (["--log-interval=-1"], "--log-interval=-1 must not be negative"),
    (["--hidden-dropout=1.5"], "--hidden-dropout=1.5 must lie in [0, 1)"),
    (["--student_model=kd", "--teacher_load_pretrained=t", "--distill_temperature=0"],
     "distill_temperature must be a positive finite number, got 0.0"),
])
def test_configuration_errors_are_named_at_parse_time(material, tmp_path, extra, message):
    folder, vocab, corpus, good = material
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 2, *extra))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())


def test_a_missing_deepspeed_config_is_named_before_deepspeed_starts(material, tmp_path):
    folder, vocab, corpus, good = material
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 2, "--deepspeed",
                                                    f"--deepspeed_config={tmp_path / 'none.json'}"))
    assert done.returncode == 1 and f"--deepspeed_config={tmp_path / 'none.json'}: no such file" in done.stderr
    assert "DeepSpeed" not in done.stdout and not any(tmp_path.iterdir())


def test_a_save_folder_that_is_a_file_is_named(material, tmp_path):
    folder, vocab, corpus, good = material
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, blocker, 2))
    assert done.returncode == 1 and f"{blocker} is a file, not a folder" in done.stderr, done.stderr
    assert blocker.read_text() == "not a folder"


def test_an_unwritable_save_folder_is_named(material, tmp_path, monkeypatch):
    """Root ignores permission bits, so the check (os.access) is made to answer no."""
    from training import preflight
    from training.config import ConfigError
    from training.arguments import parse_run_config
    folder, vocab, corpus, good = material
    cfg = parse_run_config(pretrain_flags(vocab, corpus, tmp_path / "ro", 2), "pretrain", "pretrain.py")
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="cannot be written"):
        preflight.check_run_folder(cfg, str(tmp_path / "ro" / "run"))


# --------------------------------------------------------------------------- out of disk space
def test_out_of_disk_space_is_one_line_and_keeps_the_last_checkpoint(material, tmp_path, monkeypatch, capsys):
    """The disk fills up while the checkpoint of iteration 2 is flushed (fsync reports ENOSPC,
    as delayed allocation does on a full disk)."""
    from training.cli import main
    folder, vocab, corpus, good = material
    real_fsync = os.fsync

    def fsync(fd):
        if ".2.partial" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main("pretrain", "pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 3, "--save-interval=1")) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert "out of disk space while writing checkpoint 2" in lines[0]
    assert "the last good checkpoint (tag 1) is intact" in lines[0] and f"--load={tmp_path / 'run'}" in lines[0]
    run = tmp_path / "run"
    assert (run / TRACKER_FILENAME).read_text().strip() == "1"
    assert "module" in load_file(run / "1" / "mp_rank_00_model_states.pt")
    assert not list(run.glob(".*partial")) and not (run / "2").exists()


# --------------------------------------------------------------------------- the error line
def test_error_lines_start_on_their_own_line_after_the_progress_bar(material, tmp_path):
    folder, vocab, corpus, good = material
    flags = pretrain_flags(vocab, corpus, tmp_path, 6, "--lr=1e30", "--warmup=0", "--lr-decay-style=constant")
    done = run_script("pretrain.py", flags)
    assert done.returncode == 1
    assert "pretrain:" in done.stderr   # the bar was drawn
    assert any(line.startswith("pretrain.py: error: NonFiniteLossError") for line in done.stderr.split("\n")), \
        done.stderr


def test_a_resume_that_does_not_fit_the_model_is_one_line_and_changes_nothing(material, tmp_path):
    """TinyBERT adds a projection per teacher: a plain run's checkpoint has none to resume."""
    folder, vocab, corpus, good = material
    run = _copy(good, tmp_path / "t" / "run")
    before = digest(run)
    flags = pretrain_flags(vocab, corpus, tmp_path / "t", 4, f"--load={run}", "--student_model=tinybert",
                           f"--teacher_load_pretrained={good}", "--teacher_num_layers=2", "--teacher_hidden_size=32",
                           "--teacher_num_attention_heads=4", "--teacher_max_position_embeddings=64")
    done = run_script("pretrain.py", flags)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    error = [line for line in done.stderr.split("\n") if line.startswith("pretrain.py: error: CheckpointError")]
    assert len(error) == 1 and "does not fit the run built from these flags" in error[0], done.stderr
    assert "fit_dense_0" in error[0]
    assert digest(run) == before
