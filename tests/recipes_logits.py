"""Recipes of Annealing-KD, Continuation-KD and MixBaseline in the seeds' README (000_*.txt,
002_*.txt). The stages without a method ("[Prefix-pretrain]" = PD pretraining, plain
"[Prefix-finetune]") are plain training and not listed."""
from method_recipes import Recipe

# MixBaseline's pt/ft1 mixture at the tiny sizes: DistilBERT's cosine needs equal widths, so
# the teacher is (4, 32, 4) like the student's width; --minilmv2_teacher_layer=12 is scaled to
# the tiny teacher's last layer (4) and --minilmv2_relation_heads=48 to 8 (it must divide both
# hidden sizes, 32, and the model-parallel size).
_MIX_SCALED = ("--minilmv2_relation_heads=8", "--minilmv2_teacher_layer=4")
_MIX_COMMON = ("--student_model=mixbaseline", "--distill_temperature=2", *_MIX_SCALED,
               "--distilbert_alpha_ce=5", "--distilbert_alpha_mlm=2", "--distilbert_alpha_cos=1",
               "--distilbert_cos_mask_padding", "--mixbaseline_inter_bl=TinyBERT,MiniLMv2,MiniLM,DistilBERT")

RECIPES = {
    "annealing_kd": [
        Recipe("finetune", ("--student_model=annealing_kd", "--annealing_kd_max_t=7", "--distill_ft_soft",
                            "--distill_ft_soft_mse")),
    ],
    "continuation_kd": [
        Recipe("finetune", ("--student_model=continuation_kd", "--continuation_kd_max_t=10",
                            "--continuation_kd_margin=1", "--continuation_kd_psi_sep=0.666",
                            "--continuation_kd_psi_denominator=1.333", "--distill_ft_soft", "--distill_ft_soft_mse",
                            "--distill_ft_hard")),
    ],
    "mixbaseline": [
        Recipe("pretrain", (*_MIX_COMMON, "--mixbaseline_pre_bl_pt_soft=DistilBERT"), teacher=(4, 32, 4)),
        Recipe("finetune", (*_MIX_COMMON, "--mixbaseline_pre_bl_ft_soft=DistilBERT"), teacher=(4, 32, 4)),
        Recipe("finetune", ("--student_model=mixbaseline", "--mixbaseline_wo_inter", "--tinybert_wo_inter",
                            "--distill_ft_soft", "--distill_ft_hard", "--distill_temperature=10",
                            "--mixbaseline_tinybert_t=1", "--mixbaseline_pre_bl_ft_soft=TinyBERT")),
    ],
}
