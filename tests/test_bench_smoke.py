"""The benchmarks run (at toy sizes, so that they do not rot) and print their ratio rows; the
figures themselves come from full-size runs, never from tests."""
import subprocess
import sys

import pytest

from cli_fixtures import REPO_ROOT

pytestmark = pytest.mark.slow   # subprocesses


@pytest.mark.parametrize("models", ["glm", "hf"])
def test_kd_step_prints_its_ratios(models):
    if models == "hf":
        pytest.importorskip("transformers")
    done = subprocess.run([sys.executable, "bench/kd_step.py", f"--models={models}", "--steps=1", "--warmup=0",
                           "--batch=2", "--seq=16", "--vocab=64", "--heads=4", "--teacher-layers=2",
                           "--teacher-hidden=32", "--student-layers=1", "--student-hidden=32", "--device=cpu"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| glmkd / plain |")]
    assert len(rows) == 1 and all(float(cell) > 0 for cell in rows[0].strip("|").split("|")[1:]), done.stdout
