"""Task-agnostic stage: GLM blank-infilling pretraining, or distillation on it from teachers.

    python pretrain.py --train-data=corpus.txt --num-layers=6 ... [--student_model=kd --teacher_load_pretrained=...]
    deepspeed --num_gpus=N pretrain.py --deepspeed --deepspeed_config=config/config_block_tiny6.json ...
    torchrun --nproc_per_node=N pretrain.py ...

`python pretrain.py --help` lists every flag, grouped (one group per distillation method).
"""
import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main("pretrain", "pretrain.py"))
