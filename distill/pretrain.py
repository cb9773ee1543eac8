"""The original GKD's path of pretrain.py (`deepspeed distill/pretrain.py ...`, as its recipes and
auto_tune's --py_file write it): the same entry point as the repository root's pretrain.py."""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])   # the repository root, not distill/
    from training.cli import main
    sys.exit(main("pretrain", "pretrain.py"))
