"""Fine-tune or distil over several SuperGLUE/GLUE tasks and stages, and report a table
(the original's distill/auto_tune.py).

    python auto_tune.py --model=block_tiny6 --model_path=checkpoints/student --task_t_load=base \
        --tasks=rte,cb --student_model=kd --distill_ft_soft --again_1__distill_ft_soft --test
    python auto_tune.py --show_tune runs/auto_tune/tune_<time>/tune.json

`python auto_tune.py --help` lists auto_tune's own flags; every other flag goes to each run.
"""
import sys

from tuning.cli import run_from_command_line

if __name__ == "__main__":
    sys.exit(run_from_command_line())
