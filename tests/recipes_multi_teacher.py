"""Multi-teacher recipes of the seeds' README (GLMKD's, 002_*.txt: TMKD, MT-BERT, Uncertainty,
RL-KD), with teachers of different widths from the `--mt_*` lists. DGKD and TAKD are chains of
runs: the README's commands run them (tests/test_readme.py).

TMKD's `--distill_hard_rate=1/teacher_num` is written out (0.5 for two teachers); RL-KD's second
stage has "one more base teacher" at index 0, its semantic model. The GKD README's variants
(000_*.txt: `--distill_only_mask_pad`, `--rl_kd_only_mask_pad`, ...) are parsed and run in
tests/test_multi_teacher_training.py.
"""
from method_recipes import Recipe

TWO = ("--mt_num_layers=2:3", "--mt_hidden_size=48:64", "--mt_num_attention_heads=4:4")
THREE = ("--mt_num_layers=2:2:3", "--mt_hidden_size=40:48:64", "--mt_num_attention_heads=4:4:4")

RECIPES = {
    "tmkd": [
        Recipe("pretrain", ("--student_model=kd", "--distill_pt_soft", "--distill_pt_soft_mse",
                            "--multi_teacher_model=tmkd", "--student_truncate_tn=0"), teacher_extra=TWO),
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_ft_soft_mse", "--distill_ft_hard",
                            "--distill_hard_rate=0.5", "--multi_teacher_model=tmkd"), teacher_extra=TWO),
    ],
    "mt_bert": [
        Recipe("finetune", ("--student_model=pkd", "--distill_ft_soft", "--distill_temperature=1", "--pkd_alpha=1",
                            "--pkd_beta=1", "--student_truncate_tn=0", "--multi_teacher_model=mt_bert",
                            "--mt_has_loss", "--mt_bert_fit_teacher"), teacher_extra=TWO),
    ],
    "uncertainty": [
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_temperature=1",
                            "--distill_ft_soft_kl", "--distill_soft_rate=0.5", "--distill_hard_rate=0.5",
                            "--student_truncate_tn=0", "--multi_teacher_model=uncertainty", "--uncertainty_hard"),
               teacher_extra=TWO),
    ],
    "rl_kd": [
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_temperature=10",
                            "--student_truncate_tn=0", "--multi_teacher_model=rl_kd", "--rl_kd_only_avg",
                            "--rl_kd_alpha=0.5", "--rl_kd_semantic_model_dim=768"), teacher_extra=TWO),
        Recipe("finetune", ("--student_model=kd", "--distill_ft_soft", "--distill_temperature=10",
                            "--multi_teacher_model=rl_kd", "--rl_kd_reward=1", "--rl_kd_semantic_model=0",
                            "--mt_has_loss", "--rl_kd_alpha=0.5", "--fix_variable_num_choices"), teacher_extra=THREE),
    ],
}
