"""Recipes of RAIL-KD, MGSKD, CKD, ALP-KD and Universal-KD in the seeds' README (000_*.txt,
002_*.txt: "Usage of existing methods"). Stages that are plain training (RAIL-KD's DistilBERT
pretraining, MGSKD's TinyBERT pretraining, CKD's PD pretraining, Universal-KD's second
fine-tuning) are another method's recipe or no distillation at all, so they are not listed."""
from method_recipes import Recipe

RECIPES = {
    "rail_kd": [
        Recipe("finetune", ("--student_model=rail_kd", "--distill_ft_soft", "--distill_soft_rate=0.3333",
                            "--distill_ft_hard", "--distill_hard_rate=0.3333", "--distill_temperature=10",
                            "--rail_kd_inter_rate=0.3333", "--rail_kd_layer_wise_alpha=1", "--rail_kd_u=128",
                            "--rail_kd_concatenated", "--rail_kd_epochs=1", "--rail_kd_show_hook_change")),
    ],
    "mgskd": [
        # k1 = k2 = 20 are kept: they are clamped to the sequence length, as in the original.
        # Widths 64 / 128: the default --mgskd_multi_heads=64 must divide both hidden sizes.
        Recipe("finetune", ("--student_model=mgskd", "--mgskd_weight_sample=4", "--mgskd_weight_token=1",
                            "--mgskd_weight_span=1", "--mgskd_sample_level_m=3", "--mgskd_triplet_k1=20",
                            "--mgskd_triplet_k2=20"),
               student=(2, 64, 4), teacher=(4, 128, 4)),
        Recipe("finetune", ("--student_model=mgskd", "--distill_ft_soft", "--distill_ft_soft_kl",
                            "--distill_temperature=1", "--mgskd_wo_inter")),
    ],
    "ckd": [
        Recipe("finetune", ("--student_model=ckd", "--ckd_window_size=21", "--ckd_wrdist_w=1", "--ckd_ltrdist_w=1",
                            "--ckd_wrangle_w=10", "--ckd_ltrangle_w=10", "--distill_ft_soft", "--distill_ft_hard",
                            "--distill_temperature=3", "--distill_soft_rate=0.9", "--distill_hard_rate=0.1")),
    ],
    "alp_kd": [
        # Equal widths: ALP-KD compares raw hidden states, and --student_truncate_tn=0 copies the
        # teacher's bottom layers into the student.
        Recipe("finetune", ("--student_model=alp_kd", "--alp_kd_lambda=0.2", "--distill_soft_rate=0.7",
                            "--distill_hard_rate=0.1", "--distill_temperature=20", "--student_truncate_tn=0",
                            "--distill_ft_soft", "--distill_ft_hard"),
               student=(2, 48, 4)),
    ],
    "universal_kd": [
        # Equal widths: --student_truncate_tn=0 copies the teacher's bottom layers into the student.
        Recipe("finetune", ("--student_model=universal_kd", "--distill_ft_soft", "--distill_ft_soft_kl",
                            "--distill_soft_rate=0.5", "--universal_kd_gamma=0.5", "--student_truncate_tn=0",
                            "--universal_kd_size=0"),
               student=(2, 48, 4)),
    ],
}
