"""Recipes of the base class (KD, PD) in the seeds' README."""
from method_recipes import Recipe

RECIPES = {
    "kd": [
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_ft_hard", "--distill_temperature=10")),
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_temperature=1")),   # PD, stage 2
        Recipe("pretrain", ("--student_model=kd", "--distill_pt_soft", "--distill_pt_hard", "--distill_temperature=2")),
        # Random-data disturbance, the seeds' example (a no-op as written: pass 1 never runs
        # without repeats) and the effective form with one repeat.
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_ft_hard", "--distill_temperature=10",
                            "--distill_random_data=replace", "--distill_random_data_n=1", "--forward_repeat_num=0",
                            "--distill_random_data_method=sample")),
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_temperature=10",
                            "--distill_random_data=dual", "--distill_random_data_n=1", "--forward_repeat_num=1",
                            "--distill_random_data_method=shuffle")),
    ],
}
