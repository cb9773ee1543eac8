"""The seeds' recipes of TinyBERT, MiniLMv2, MiniLM, DistilBERT and PKD ("Usage of existing
methods" in 000_*.txt / 002_*.txt), one Recipe per stage that uses the method (the plain
fine-tuning stages after MiniLMv2, MiniLM and DistilBERT pretraining are not distillation)."""
from method_recipes import Recipe

RECIPES = {
    "tinybert": [
        Recipe(stage="pretrain", flags=("--student_model=tinybert",)),
        Recipe(stage="finetune", flags=("--student_model=tinybert",)),
        Recipe(stage="finetune", flags=("--student_model=tinybert", "--distill_ft_soft", "--tinybert_wo_inter")),
    ],
    "minilmv2": [
        # Scaled down: 48 relation heads do not divide the tiny student's 32 columns (the recipe's
        # 48 suits 768-wide models); 16 divides 32 and 48, also across 2 model-parallel ranks.
        # Layer 12 is the base teacher's last layer; the tiny teacher's last is 4.
        Recipe(stage="pretrain", flags=("--student_model=minilmv2", "--minilmv2_relation_heads=16",
                                        "--minilmv2_teacher_layer=4")),
    ],
    "minilm": [
        Recipe(stage="pretrain", flags=("--student_model=minilm",)),   # head counts match (4 and 4)
    ],
    "distilbert": [
        # The cosine loss compares final hidden states: the student is as wide as the teacher.
        Recipe(stage="pretrain", student=(2, 48, 4),
               flags=("--student_model=distilbert", "--distill_temperature=2", "--distilbert_alpha_ce=5",
                      "--distilbert_alpha_mlm=2", "--distilbert_alpha_cos=1", "--distilbert_cos_mask_padding")),
    ],
    "pkd": [
        # 002_*.txt (000_*.txt omits --pkd_only_cls). The student is truncated from
        # the teacher (--student_truncate_tn=0) and matches its hidden states: same width and heads.
        Recipe(stage="finetune", student=(2, 48, 4),
               flags=("--student_model=pkd", "--distill_ft_soft", "--distill_ft_soft_kl", "--distill_ft_hard",
                      "--distill_temperature=10", "--pkd_normalized_patience", "--pkd_alpha=0.5", "--pkd_beta=100",
                      "--student_truncate_tn=0", "--pkd_wo_final", "--pkd_only_cls")),
    ],
}
