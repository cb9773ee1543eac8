"""auto_tune running for real on CPU: a tiny sweep of two tasks x two stages distilling from
teachers of a task_t_load registry (two tasks in parallel, one per "GPU set"), its JSON and
tables; failing runs retried a bounded number of times on fresh ports and reported; stuck runs
stopped; and checkpoints resharded for --model-parallel-size."""
import csv
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_fixtures import REPO_ROOT, write_rte, write_vocab
from glm_fixtures import tiny_config
from model import GLMConfig, GLMModel
from model.checkpoint import list_shards, model_states, read_tracker, save_model_shard
from tuning.cli import main
from tuning.runner import change_mp_convert, reshard_args

TINY = ["--tokenizer-path=vocab.txt", "--make-vocab-size-divisible-by=16", "--num-layers=2", "--hidden-size=32",
        "--num-attention-heads=4", "--max-position-embeddings=64", "--seq-length=32", "--epochs=1",
        "--custom_no_summary_writer", "--del_fp16", "--del_checkpoint_activations", "--launcher=python"]


def _checkpoint(path: Path, layers: int, hidden: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = GLMModel(GLMConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=4, vocab_size=64,
                               max_sequence_length=64))
    save_model_shard(path, "release", 0, model_states(model, 1, model.config.to_dict()))


def _write_cb(root: Path, seed: int = 1) -> None:
    """A CB-format task (SuperGLUE JSONL) in the tiny vocabulary: same animal, entailment; another
    animal, contradiction; a place, neutral."""
    rng = random.Random(seed)
    animals, places = ["cat", "dog", "bird", "fish"], ["house", "tree", "river", "garden"]
    labels = ["entailment", "contradiction", "neutral"]
    for split, count in (("train", 48), ("val", 18), ("test", 3)):
        rows = []
        for idx in range(count):
            animal, label = rng.choice(animals), labels[idx % 3]
            other = {"entailment": animal, "contradiction": rng.choice([a for a in animals if a != animal]),
                     "neutral": rng.choice(places)}[label]
            row = {"premise": f"the {animal} sees the {rng.choice(places)} .", "hypothesis": f"it was a {other} .",
                   "idx": idx}
            rows.append(json.dumps({**row, "label": label} if split != "test" else row))
        (root / "CB").mkdir(parents=True, exist_ok=True)
        (root / "CB" / f"{split}.jsonl").write_text("\n".join(rows) + "\n")


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """Tiny vocabulary, RTE and CB data, a student and per-task teachers in a registry."""
    write_vocab(tmp_path)
    write_rte(tmp_path / "data")
    _write_cb(tmp_path / "data")
    _checkpoint(tmp_path / "ckpt" / "student", 2, 32, seed=0)
    for seed, task in enumerate(("rte", "cb"), start=1):
        _checkpoint(tmp_path / "ckpt" / "teachers" / task, 2, 48, seed=seed)
    (tmp_path / "teachers.json").write_text(json.dumps({"tiny": {
        "comments": "2 x 48 teachers of the tiny tasks",
        "args": [["--teacher_load_pretrained", ["tiny"]], ["--teacher_num_layers", 2], ["--teacher_hidden_size", 48],
                 ["--teacher_num_attention_heads", 4], ["--teacher_max_position_embeddings", 64]],
        "tasks": {"rte": "teachers/rte", "cb": "teachers/cb"}}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # two runs at a time on two cores
    return tmp_path


@pytest.mark.slow
def test_a_tiny_two_task_two_stage_distillation_sweep(workspace):
    code = main(["--data_root=data", "--checkpoint_root=ckpt", "--model_path=student", "--task_t_load=tiny",
                 "--task_t_load_path=teachers.json", "--tasks=rte,cb", "--output_dir=tune", "--parallel_gpus=0;1",
                 *TINY, "--student_model=kd", "--distill_ft_soft", "--distill_ft_hard", "--distill_temperature=10",
                 "--again_1__distill_ft_hard", "--again_1__distill_temperature=1",
                 "--ds_optimizer__params__lr=1e-3;2e-3", "--ds_train_micro_batch_size_per_gpu=8"])
    assert code == 0
    records = json.loads((workspace / "tune/tune.json").read_text())
    assert [(r["auto_tune"]["task"], r["auto_tune"]["stage"], r["auto_tune"]["status"]) for r in records] == [
        ("rte", 0, "ok"), ("rte", 1, "ok"), ("cb", 0, "ok"), ("cb", 1, "ok")]
    for first, again in (records[:2], records[2:]):
        task = first["auto_tune"]["task"]
        base, second = shlex.split(first["*cmd"]), shlex.split(again["*cmd"])
        assert f"--teacher_load_pretrained=ckpt/teachers/{task}" in base and "--load-pretrained=ckpt/student" in base
        assert f"--load-pretrained={first['args']['save']}" in second   # stage 1 starts from stage 0's best
        assert "--distill_ft_hard" not in second and "--distill_temperature=1" in second
        assert "--custom_first_eval" in second and "--custom_first_eval" not in base
        assert read_tracker(again["args"]["save"]) == "best"
        for record in (first, again):
            best = record["auto_tune"]["best"]
            assert record["epoch"] == 1 and best["epoch"] in (0, 1) and record["auto_tune"]["attempts"] == 1
            assert set(best["metrics"]) == ({"accuracy"} if task == "rte" else {"accuracy", "f1-macro"})
    patched = json.loads((workspace / "tune/deepspeed_config/cb.json").read_text())
    assert patched["optimizer"]["params"]["lr"] == 2e-3 and patched["train_micro_batch_size_per_gpu"] == 8
    assert patched["fp16"]["enabled"] is False and "zero_optimization" not in patched
    markdown = (workspace / "tune/tune.md").read_text().splitlines()
    assert markdown[0] == "| method | stage | RTE accuracy | CB accuracy/f1-macro | mean |"
    assert [line.split(" | ")[:2] for line in markdown[2:]] == [["| kd", "0"], ["| kd", "1"]]
    rows = list(csv.reader((workspace / "tune/tune.csv").open()))
    assert rows[0] == ["method", "stage", "RTE accuracy", "CB accuracy", "CB f1-macro", "mean"] and len(rows) == 3
    cb = records[3]["auto_tune"]["best"]["metrics"]
    assert float(rows[2][5]) == pytest.approx((records[1]["auto_tune"]["best"]["metrics"]["accuracy"]
                                               + (cb["accuracy"] + cb["f1-macro"]) / 2) / 2, abs=1e-4)


def _fake_launcher(folder: Path, name: str, exit_code: int, sleep: float = 0.0) -> Path:
    """A stand-in for a launcher or script: records its command line, waits, exits."""
    path = folder / name
    path.write_text(f"#!{sys.executable}\nimport json, sys, time\n"
                    f"open({str(folder / 'calls.jsonl')!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n"
                    f"time.sleep({sleep})\nsys.exit({exit_code})\n")
    path.chmod(0o755)
    return path


def _calls(folder: Path):
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_failing_run_is_retried_on_fresh_ports_then_reported(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_launcher(bin_dir, "torchrun", exit_code=1)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    script = _fake_launcher(tmp_path, "train.py", exit_code=0)
    code = main(["--data_root=data", f"--py_file={script}", "--launcher=torchrun", "--tasks=rte,wic",
                 "--again_1__distill_ft_soft", f"--output_dir={tmp_path / 'tune'}", "--max_retries=2",
                 "--retry_wait=0", "--del_fp16"])
    assert code == 1
    calls = _calls(bin_dir)
    assert len(calls) == 6    # two tasks, three attempts each, no second stages
    ports = [next(a for a in call if a.startswith("--master_port=")) for call in calls]
    assert len(set(ports[:3])) == 3 and len(set(ports[3:])) == 3
    records = json.loads((tmp_path / "tune/tune.json").read_text())
    assert [(r["auto_tune"]["task"], r["auto_tune"]["stage"], r["auto_tune"]["status"], r["auto_tune"]["attempts"])
            for r in records] == [("rte", 0, "failed", 3), ("rte", 1, "skipped", 0), ("wic", 0, "failed", 3),
                                  ("wic", 1, "skipped", 0)]
    assert records[0]["auto_tune"]["error"] == "exit status 1" and "torchrun" in records[0]["*cmd"]
    assert "| failed | failed |" in (tmp_path / "tune/tune.md").read_text()
    assert "4 of 4 runs did not succeed" in capsys.readouterr().out


@pytest.mark.slow
def test_a_usage_error_is_not_retried_and_a_stuck_run_is_stopped(tmp_path):
    common = ["--data_root=data", "--launcher=python", "--tasks=rte", "--retry_wait=0", "--del_fp16"]
    usage = _fake_launcher(tmp_path, "usage.py", exit_code=2)
    assert main([*common, f"--py_file={usage}", f"--output_dir={tmp_path / 'a'}"]) == 1
    record = json.loads((tmp_path / "a/tune.json").read_text())[0]["auto_tune"]
    assert record["attempts"] == 1 and "not retried" in record["error"]
    stuck = _fake_launcher(tmp_path, "stuck.py", exit_code=0, sleep=60)
    start = time.monotonic()
    assert main([*common, f"--py_file={stuck}", "--run_timeout=1", "--max_retries=0",
                 f"--output_dir={tmp_path / 'b'}"]) == 1
    assert time.monotonic() - start < 30
    record = json.loads((tmp_path / "b/tune.json").read_text())[0]["auto_tune"]
    assert record["status"] == "failed" and record["attempts"] == 1


@pytest.mark.slow
def test_a_stopped_sweep_stops_its_runs(tmp_path):
    stuck = tmp_path / "stuck.py"
    stuck.write_text(f"import os, time\nopen({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n"
                     f"time.sleep(60)\n")
    sweep = subprocess.Popen([sys.executable, str(REPO_ROOT / "auto_tune.py"), "--data_root=data", "--launcher=python",
                              f"--py_file={stuck}", "--tasks=rte,cb", "--parallel_gpus=0;1",
                              f"--output_dir={tmp_path / 'tune'}"], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    run = int((tmp_path / "pid").read_text())
    sweep.send_signal(signal.SIGTERM)   # a scheduler ending the job
    assert sweep.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(run, 0)


def test_a_run_that_writes_no_results_fails(tmp_path):
    silent = _fake_launcher(tmp_path, "silent.py", exit_code=0)
    assert main(["--data_root=data", "--launcher=python", "--tasks=rte", f"--py_file={silent}", "--max_retries=0",
                 f"--output_dir={tmp_path / 'tune'}"]) == 1
    record = json.loads((tmp_path / "tune/tune.json").read_text())[0]["auto_tune"]
    assert record["error"].startswith("the run wrote no results to")


def test_checkpoints_are_resharded_for_the_model_parallel_size(tmp_path):
    torch.manual_seed(0)
    model = GLMModel(tiny_config())
    save_model_shard(tmp_path / "student", "release", 0, model_states(model, 1, model.config.to_dict()))
    student, missing = str(tmp_path / "student"), str(tmp_path / "later-stage")
    args = [("--load-pretrained", student), ("--model-parallel-size", "2"),
            ("--mt_load_pretrained", f"{student}:{missing}")]
    converted = reshard_args(args, change_mp_convert, print)
    assert converted == [("--load-pretrained", f"{student}_MP2"), ("--model-parallel-size", "2"),
                         ("--mt_load_pretrained", f"{student}_MP2:{missing}")]
    assert len(list_shards(Path(f"{student}_MP2") / "release")) == 2

    def refuse(path, mp):
        raise AssertionError(f"no conversion expected, got {path}")
    assert reshard_args(args, refuse, print) == converted              # an existing _MP2 is reused
    same = [("--load-pretrained", student), ("--model-parallel-size", "1")]
    assert reshard_args(same, change_mp_convert, print) == same         # an unchanged size is not an error
    back = [("--load-pretrained", f"{student}_MP2"), ("--model-parallel-size", "1")]
    assert reshard_args(back, refuse, print) == same                    # the MP=1 original exists
    unnamed = str(tmp_path / "already-mp2")
    Path(f"{student}_MP2").rename(unnamed)
    assert reshard_args([("--load-pretrained", unnamed), ("--model-parallel-size", "2")], change_mp_convert,
                        print) == [("--load-pretrained", unnamed), ("--model-parallel-size", "2")]
    merged = reshard_args([("--load-pretrained", unnamed), ("--model-parallel-size", "1")], change_mp_convert, print)
    assert merged[0][1].endswith("already-mp2_MP1") and len(list_shards(Path(merged[0][1]) / "release")) == 1
