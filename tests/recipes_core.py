"""Recipes of the base class (KD, PD) in the seeds' README."""
from method_recipes import Recipe

RECIPES = {
    "kd": [
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_ft_hard", "--distill_temperature=10")),
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_temperature=1")),   # PD, stage 2
        Recipe("pretrain", ("--student_model=kd", "--distill_pt_soft", "--distill_pt_hard", "--distill_temperature=2")),
    ],
}
