"""GLMD's recipes in the seeds' README (001_*.txt, 002_*.txt): "GLMD-vc" (no vocabulary
compression): pt and ft1 distil the all-position logits at T=15 with padding masked; ft2 is the
soft CE on the task logits. "GLMD+al": the same with vocabulary compression and ALBERT word
embeddings (pt: logits over the kept rows only; ft1 here in the default mode, logits over every
id, KL over the kept ones; the fine-tuning stages build their map because the tests start them
from a fresh student rather than the pt checkpoint). And the base-class logits term of the
"old LogitsDistil" recipe."""
from method_recipes import Recipe

VOCAB_COMPRESSION = ("--map_vocab_size=0.5", "--distill_logit_mask_map", "--student_build_map_vocab",
                     "--student_map_vocab_tn=0", "--student_map_vocab_method=decoder", "--compress_word_emb=16")

RECIPES = {
    "logitsdistil": [
        Recipe("pretrain", ("--student_model=logitsdistil", "--distill_temperature=15", "--logitsdistil_mask_pad")),
        Recipe("finetune", ("--student_model=logitsdistil", "--distill_temperature=15", "--logitsdistil_mask_pad")),
        Recipe("finetune", ("--student_model=logitsdistil", "--distill_ft_soft", "--logitsdistil_wo_inter")),
        Recipe("pretrain", ("--student_model=logitsdistil", "--distill_temperature=15", *VOCAB_COMPRESSION,
                            "--unmap_vocab_output", "--logitsdistil_mask_pad")),
        Recipe("finetune", ("--student_model=logitsdistil", "--distill_temperature=15", *VOCAB_COMPRESSION,
                            "--logitsdistil_mask_pad", "--logitsdistil_teacher_input_ids_map")),
    ],
    "kd": [
        Recipe("finetune", ("--student_model=kd", "--distill_logits_parallel", "--distill_temperature=15",
                            "--distill_logit_mask_pad")),
    ],
}
