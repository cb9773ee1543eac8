"""The README is the user's manual: its Python examples run as written, and the
commands it shows are the ones CI and the other tests run."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CI_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"


def _blocks(language: str):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_examples_run(index):
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {})


def test_ci_runs_the_readme_test_command():
    test_command = next(block.strip() for block in _blocks("bash") if "pytest" in block)
    assert test_command in CI_SCRIPT.read_text()
