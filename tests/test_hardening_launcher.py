"""Killing the launcher (torchrun or deepspeed) outright stops its workers: each worker watches
the launcher processes above it and exits when one is gone."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_fixtures import REPO_ROOT, pretrain_flags, write_corpus, write_vocab
from training.launcher_watch import launcher_ancestors

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier


def _workers(marker: str, launcher_pids) -> list:
    """Processes running pretrain.py on `marker`'s folder, other than the launchers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in launcher_pids:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "pretrain.py" in command and marker in command and "deepspeed.launcher" not in command:
            found.append(int(entry.name))
    return found


def _wait(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _kill_launcher_and_expect_workers_to_stop(argv, save: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    workers = []
    try:
        started = _wait(lambda: (save / "run" / "metrics.jsonl").exists() or launcher.poll() is not None, 240)
        assert started and launcher.poll() is None, launcher.stderr.read().decode()[-3000:]
        workers = _workers(str(save), {launcher.pid})
        assert len(workers) >= 2, f"expected two workers, found {workers}"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert _wait(lambda: not _workers(str(save), {launcher.pid}), 30), "workers outlived their launcher"
    finally:
        for pid in _workers(str(save), {launcher.pid}):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launcher")
    return write_vocab(folder), write_corpus(folder)


def test_the_watch_finds_the_launcher_above_a_worker(tmp_path):
    """The parent's command line names torch.distributed.run: it is the launcher to watch."""
    script = tmp_path / "child.py"
    script.write_text("import time, sys\nsys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
                               sys.executable, str(script), "torch.distributed.run-lookalike"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline() == "ready\n"
        child = next(pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                     if str(script) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                     and pid != parent.pid)
        assert [pid for pid, _ in launcher_ancestors(child)] == [parent.pid]
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.slow
def test_killing_torchrun_stops_its_workers(material, tmp_path):
    vocab, corpus = material
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    argv = [*launcher, "--nproc_per_node=2", "pretrain.py",
            *pretrain_flags(vocab, corpus, tmp_path, 100000, "--distributed-backend=gloo")]
    _kill_launcher_and_expect_workers_to_stop(argv, tmp_path)


@pytest.mark.slow
def test_killing_the_deepspeed_launcher_stops_its_workers(material, tmp_path):
    vocab, corpus = material
    deepspeed = shutil.which("deepspeed")
    if deepspeed is None:
        pytest.skip("the deepspeed launcher is not installed")
    argv = [deepspeed, "--num_gpus=2", "pretrain.py",
            *pretrain_flags(vocab, corpus, tmp_path, 100000, "--deepspeed",
                            "--deepspeed_config=config/config_block_tiny_cpu.json")]
    _kill_launcher_and_expect_workers_to_stop(argv, tmp_path)
