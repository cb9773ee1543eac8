"""The seeds' recipes of DIITO, SID, Theseus, LRC-BERT and MobileBERT ("Usage of existing
methods" in 000_*.txt / 002_*.txt), one Recipe per stage that uses the method (the plain
pretraining and fine-tuning stages around them are not distillation)."""
from method_recipes import Recipe

# Methods that match hidden states or attention maps one to one need the teacher's width and
# head count: a 4-layer teacher as wide as the default student (2, 32, 4).
SAME_WIDTH_TEACHER = (4, 32, 4)

RECIPES = {
    "diito": [
        # The cosine on the final hidden states needs equal widths. 002_*.txt adds "(w/o
        # --checkpoint-activations)": DIITO refuses activation checkpointing.
        Recipe(stage="pretrain", teacher=SAME_WIDTH_TEACHER,
               flags=("--student_model=diito", "--forward_repeat_num=1", "--diito_alignment=full",
                      "--diito_interchange_prop=0.3", "--diito_interchange_way=consecutive",
                      "--diito_interchange_max_token=-1", "--diito_alpha_mlm=0.25", "--diito_alpha_ce=0.25",
                      "--diito_alpha_causal_ce=0.25", "--diito_alpha_cos=0.25", "--diito_alpha_causal_cos=0",
                      "--distill_pt_soft", "--distill_pt_hard", "--distill_temperature=2")),
    ],
    "sid": [
        Recipe(stage="finetune", teacher=SAME_WIDTH_TEACHER,
               flags=("--student_model=sid", "--sid_accumulate_t=0", "--sid_lim_e=avg", "--distill_ft_soft",
                      "--distill_temperature=1")),
    ],
    "theseus": [
        # Teacher blocks replace student layers: equal widths (the student is truncated from it).
        Recipe(stage="finetune", teacher=SAME_WIDTH_TEACHER,
               flags=("--student_model=theseus", "--distill_ft_hard", "--student_truncate_tn=0",
                      "--theseus_replacing_rate=0.3", "--theseus_not_replaced_steps=0.66",
                      "--mt_disable_operation=1")),
    ],
    "lrc_bert": [
        # Stage 2 as in 000_*.txt; stage 3 as in 002_*.txt, which adds the data-parallel gather
        # (--lrc_bert_gather_dp --fix_variable_num_choices), so both variants run end to end.
        # s_fit_dense projects the student (32) to the teacher (48): the default sizes.
        Recipe(stage="finetune",
               flags=("--student_model=lrc_bert", "--lrc_bert_gard_perturb", "--ignore_first_backward_gard",
                      "--forward_repeat_num=1")),
        Recipe(stage="finetune",
               flags=("--student_model=lrc_bert", "--lrc_bert_alpha=1", "--distill_ft_soft", "--distill_ft_soft_kl",
                      "--distill_soft_rate=1", "--distill_ft_hard", "--distill_hard_rate=3",
                      "--distill_temperature=1.1", "--lrc_bert_gard_perturb", "--ignore_first_backward_gard",
                      "--forward_repeat_num=1", "--lrc_bert_gather_dp", "--fix_variable_num_choices")),
    ],
    "mobilebert": [
        # Stage 2 (a pretraining stage: 002_*.txt; 000_*.txt labels it
        # Prefix-finetune, but --distill_pt_hard only acts in pretraining). Scaled down with the
        # recipe's proportions: hidden 512 -> 32 (both), student IB 128 -> 16 with 4 FFNs,
        # teacher IB 1024 -> 64 with 1 FFN, trigram embedding 128 -> 8; 4 heads on both sides.
        Recipe(stage="pretrain", teacher=SAME_WIDTH_TEACHER,
               flags=("--student_model=mobilebert", "--mobilebert_kd_w=0.5", "--mobilebert_pkt_small_lr=0.1",
                      "--distill_pt_hard"),
               extra=("--inverted_bottleneck_mode", "--ib_hidden_size=16", "--ib_ffn_num=4", "--ib_word_emb=8"),
               teacher_extra=("--teacher_inverted_bottleneck_mode", "--teacher_ib_hidden_size=64",
                              "--teacher_ib_ffn_num=1", "--teacher_ib_word_emb=8")),
    ],
}
