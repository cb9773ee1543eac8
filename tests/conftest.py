"""Shared pytest fixtures.

`shared_dir` points at the project's ``../shared`` folder (real SuperGLUE files, the
original's tables); tests that need it skip cleanly on a fresh clone without it.
Override the location with the ``GLMKD_SHARED_DIR`` environment variable.
"""
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _shared_dir() -> Path:
    return Path(os.environ.get("GLMKD_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_dir()
    if not path.is_dir():
        pytest.skip(f"{path} is absent (a fresh clone has no ../shared)")
    return path
