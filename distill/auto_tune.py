"""The original's path, distill/auto_tune.py: the same as the top-level auto_tune.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuning.cli import run_from_command_line  # noqa: E402  (after the repository root is importable)

if __name__ == "__main__":
    sys.exit(run_from_command_line())
