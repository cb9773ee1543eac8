"""GLMD's recipe in the seeds' README (001_*.txt, 002_*.txt; also the stages of "GLMD-vc"),
without vocabulary compression (--map_vocab_size and the map flags are not built yet): pt and
ft1 distil the all-position logits at T=15 with padding masked; ft2 is the soft CE on the task
logits."""
from method_recipes import Recipe

RECIPES = {
    "logitsdistil": [
        Recipe("pretrain", ("--student_model=logitsdistil", "--distill_temperature=15", "--logitsdistil_mask_pad")),
        Recipe("finetune", ("--student_model=logitsdistil", "--distill_temperature=15", "--logitsdistil_mask_pad")),
        Recipe("finetune", ("--student_model=logitsdistil", "--distill_ft_soft", "--logitsdistil_wo_inter")),
    ],
}
