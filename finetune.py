"""Task-specific stage: fine-tuning on a SuperGLUE/GLUE task, or distillation on it from
fine-tuned teachers, with evaluation on the dev set and the best checkpoint kept.

    python finetune.py --finetune --cloze-eval --task=RTE --data-dir=data/RTE --load-pretrained=ckpt ...
    deepspeed --num_gpus=N finetune.py --deepspeed --deepspeed_config=config/config_blocklm_tiny6.json ...

`python finetune.py --help` lists every flag, grouped (one group per distillation method).
"""
import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main("finetune", "finetune.py"))
