"""Every command-line flag of the original GKD/GLMD, as data.

One `Flag` per flag, with the original spelling (typos included), type, default and a
one-sentence meaning. Flags are grouped: the generic groups (GLM's inherited argparse groups
plus GKD's "custom", "distill", "teacher" and "multi-teacher"), then one group per
distillation method named by its `--student_model` value and one per combiner named by its
`--multi_teacher_model` value, so `--help` lists each method's options and the config layer
can reject an option of one method given with another. `build_parser` turns the table into
an argparse parser.
"""
import argparse
import builtins
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from distill.options import OptionFlag, option_flags


@dataclass(frozen=True)
class Flag:
    name: str                      # as typed, e.g. "--num-layers" or "--distill_ft_soft"
    help: str                      # one sentence, never empty
    group: str
    type: Optional[builtins.type] = None   # int / float / str; None for boolean switches
    default: Any = None
    choices: Optional[tuple] = None
    action: str = "store"          # "store" or "store_true"
    nargs: Optional[str] = None    # "+" / "*" for GLM's whitespace-separated data lists


def _switch(name: str, help: str) -> Flag:
    return Flag(name, help, group="", action="store_true", default=False)


def _value(name: str, type_: builtins.type, default: Any, help: str, choices: Optional[tuple] = None,
           nargs: Optional[str] = None) -> Flag:
    return Flag(name, help, group="", type=type_, default=default, choices=choices, nargs=nargs)


def _group(group: str, *flags: Flag) -> Tuple[Flag, ...]:
    return tuple(replace(flag, group=group) for flag in flags)


GENERIC_GROUPS = ("model", "fp16", "train", "eval", "data", "block-lm", "finetune", "distributed",
                  "custom", "distill", "teacher", "multi-teacher", "hf")

TOKENIZER_TYPES = ("CharacterLevelTokenizer", "SentencePieceTokenizer", "BertWordPieceTokenizer",
                   "GPT2BPETokenizer", "ChineseSPTokenizer")

GENERIC_FLAGS: Tuple[Flag, ...] = (
    # ---- model (GLM architecture) -------------------------------------------------------------
    *_group(
        "model",
        _value("--num-layers", int, 24, "Number of transformer layers of the student."),
        _value("--hidden-size", int, 1024, "Transformer hidden size of the student."),
        _value("--num-attention-heads", int, 16, "Number of attention heads of the student."),
        _value("--max-position-embeddings", int, 512, "Maximum number of position embeddings."),
        _value("--intermediate-size", int, None, "FFN width; parsed but unused, the FFN is always 4 x hidden size."),
        _value("--hidden-dropout", float, 0.1, "Dropout probability of the hidden states."),
        _value("--attention-dropout", float, 0.1, "Dropout probability of the attention weights."),
        _value("--output-dropout", float, 0.1, "Dropout probability of the pooled output."),
        _value("--layernorm-epsilon", float, 1e-5, "LayerNorm epsilon."),
        _value("--make-vocab-size-divisible-by", int, 128, "Pad the vocabulary size to a multiple of this value."),
        _value("--vocab-size", int, 30522, "Vocabulary size; overwritten by the tokenizer's padded size."),
        _value("--attention-scale", float, 1.0, "Scale applied to the attention scores before softmax."),
        _switch("--transformer-xl", "Use Transformer-XL style recurrence memory."),
        _switch("--pretrained-bert", "Use a HF-style pretrained BERT instead of GLM (baselines)."),
        _switch("--encoder-decoder", "Use the encoder-decoder variant of the block-LM."),
        _switch("--deep-init", "Scale the initialisation of output projections by 1/sqrt(2N)."),
        _switch("--cpu-optimizer", "Run the optimizer on the CPU."),
        _switch("--cpu_torch_adam", "Use torch's Adam as the CPU optimizer."),
    ),
    # ---- fp16 (mixed precision) ---------------------------------------------------------------
    *_group(
        "fp16",
        _switch("--fp16", "Run the student in fp16 with loss scaling."),
        _switch("--bf16", "Run the student in bfloat16 (this project's addition: CPUs have no fp16)."),
        _switch("--fp32-embedding", "Keep the embedding in fp32 under --fp16."),
        _switch("--fp32-layernorm", "Keep LayerNorm in fp32 under --fp16."),
        _switch("--fp32-tokentypes", "Keep the token-type embedding in fp32 under --fp16."),
        _switch("--fp32-allreduce", "All-reduce gradients in fp32."),
        _value("--loss-scale", float, None, "Static loss scale; None means dynamic loss scaling."),
        _value("--loss-scale-window", float, 1000.0, "Window over which the dynamic loss scale is raised or lowered."),
        _value("--min-scale", float, 1.0, "Minimum dynamic loss scale."),
        _value("--hysteresis", int, 2, "Hysteresis of the dynamic loss scaler."),
    ),
    # ---- train (loop, schedule, checkpoints) --------------------------------------------------
    *_group(
        "train",
        _value("--experiment-name", str, "gpt-345M", "Name of the run, used for the save and summary directories."),
        _value("--batch-size", int, 4, "Micro-batch size per data-parallel rank (the DeepSpeed JSON overrides it)."),
        _value("--gradient-accumulation-steps", int, 1, "Number of micro-batches accumulated per optimizer step."),
        _value("--weight-decay", float, 0.01, "Weight decay (the DeepSpeed JSON overrides it)."),
        _switch("--checkpoint-activations", "Recompute activations in the backward pass to save memory."),
        _value("--checkpoint-num-layers", int, 1, "Number of layers per activation-checkpoint chunk."),
        _value("--epochs", int, None, "Number of fine-tuning epochs; zero means evaluation only."),
        _value("--clip-grad", float, 1.0, "Gradient-norm clipping threshold."),
        _value("--train-iters", int, 0, "Total number of training iterations (pretraining)."),
        _value("--label-smoothing", float, 0.0, "Label smoothing of the seq2seq loss."),
        _value("--log-interval", int, 100, "Iterations between log lines."),
        _value("--summary-dir", str, "", "Directory of the TensorBoard summaries."),
        _value("--seed", int, 1234, "Random seed."),
        _switch("--reset-position-ids", "Reset position ids after an end-of-document token."),
        _switch("--reset-attention-mask", "Reset the attention mask after an end-of-document token."),
        _value("--lr", float, 1e-4, "Peak learning rate (the DeepSpeed JSON overrides it)."),
        _value("--lr-decay-style", str, "linear", "Learning-rate decay after warmup.",
               choices=("constant", "linear", "cosine", "exponential")),
        _value("--lr-decay-iters", int, None, "Iterations to decay the learning rate over; None means --train-iters."),
        _value("--lr-decay-ratio", float, 0.1, "Final learning rate as a fraction of the peak."),
        _value("--warmup", float, 0.01, "Fraction of the decay iterations used for linear warmup."),
        _switch("--switch-linear", "Switch from cosine to linear decay."),
        _value("--save", str, None, "Directory to save checkpoints to."),
        _switch("--new-save-directory", "Save into a new directory named with a timestamp."),
        _value("--save-interval", int, 5000, "Iterations between checkpoints."),
        _value("--save-epoch", int, 1, "Fine-tuning epochs between checkpoints."),
        _switch("--no-save-optim", "Do not save the optimizer state."),
        _switch("--no-save-rng", "Do not save the RNG states."),
        _value("--load", str, None, "Checkpoint directory to resume from (model, optimizer, scheduler, RNG)."),
        _switch("--no-load-optim", "Do not load the optimizer state when resuming."),
        _switch("--no-load-rng", "Do not load the RNG states when resuming."),
        _switch("--no-load-lr-scheduler", "Do not load the learning-rate scheduler when resuming."),
        _switch("--no-deepspeed-load", "Load the checkpoint without DeepSpeed."),
        _switch("--finetune", "Fine-tuning run: do not load optimizer or RNG state and start at iteration 0."),
        _switch("--resume-dataloader", "Resume the data loader at the checkpoint's iteration."),
    ),
    # ---- eval (validation and text generation) ------------------------------------------------
    *_group(
        "eval",
        _value("--eval-batch-size", int, None, "Evaluation batch size; None means --batch-size."),
        _value("--eval-iters", int, 100, "Number of validation batches per evaluation."),
        _value("--eval-interval", int, 1000, "Iterations between validation-loss evaluations."),
        _value("--eval-epoch", int, 1, "Fine-tuning epochs between metric evaluations."),
        _value("--eval-seq-length", int, None, "Evaluation sequence length; None means --seq-length."),
        _value("--eval-max-preds-per-seq", int, None, "Maximum predictions per evaluation sequence."),
        _value("--overlapping-eval", int, 32, "Overlap of the sliding windows in zero-shot LM evaluation."),
        _value("--temperature", float, 1.0, "Sampling temperature of text generation."),
        _value("--top_p", float, 0.0, "Nucleus-sampling threshold of text generation; 0 disables it."),
        _value("--top_k", int, 0, "Top-k sampling of text generation; 0 disables it."),
        _value("--out-seq-length", int, 256, "Maximum generated length."),
        _value("--num-beams", int, 1, "Beam size of beam search."),
        _value("--length-penalty", float, 0.0, "Length penalty of beam search."),
        _value("--no-repeat-ngram-size", int, 0, "Forbid repeating n-grams of this size in generation; 0 disables it."),
        _value("--min-tgt-length", int, 0, "Minimum generated length."),
        _switch("--select-topk", "Select the top-k candidates in generation."),
        _value("--blank-maskratio", float, 0.1, "Mask ratio of the blank-infilling seq2seq task."),
    ),
    # ---- data (corpora, tokenizer, loaders) ---------------------------------------------------
    *_group(
        "data",
        _value("--train-data", str, None, "Training corpora names or files.", nargs="+"),
        _value("--valid-data", str, None, "Validation data files.", nargs="*"),
        _value("--test-data", str, None, "Test data files.", nargs="*"),
        _value("--data-dir", str, None, "Directory of the task's data files."),
        _value("--split", str, "1000,1,1", "Comma-separated train,valid,test proportions of the pretraining corpus."),
        _switch("--shuffle", "Shuffle the data deterministically by seed and epoch."),
        _switch("--filter-english", "Keep only English documents."),
        _value("--input-data-sizes-file", str, "sizes.txt", "File holding the shard sizes."),
        _value("--delim", str, ",", "Delimiter of csv data files."),
        _value("--text-key", str, "sentence", "Key of the text in json/csv data."),
        _value("--eval-text-key", str, None, "Key of the text in evaluation json/csv data."),
        _switch("--no-lazy-loader", "Read the whole corpus into memory instead of lazily."),
        _switch("--half-lazy-loader", "Lazy loader that keeps the index in memory."),
        _value("--loader-scatter", int, None, "Number of scatters for the data loaders."),
        _switch("--loose-json", "Data files hold one json object per line."),
        _switch("--presplit-sentences", "Documents hold newline-separated sentences."),
        _value("--num-workers", int, 2, "Data-loader worker processes."),
        _value("--tokenizer-type", str, "BertWordPieceTokenizer", "Tokenizer class.", choices=TOKENIZER_TYPES),
        _value("--tokenizer-model-type", str, None, "Tokenizer vocabulary, e.g. bert-base-uncased or gpt2."),
        _value("--tokenizer-path", str, None, "Vocabulary file or folder (vocab.txt, GPT-2 encoder.json + vocab.bpe folder, or a SentencePiece .model); default: the packaged bert-base-uncased / GPT-2 files when installed."),
        _switch("--fix-command-token", "Use the fixed command-token layout of ChineseSPTokenizer."),
        _switch("--no-pre-tokenize", "Tokenize lazily instead of before training."),
        _value("--cache-dir", str, None, "Cache directory of pretrained tokenizer downloads."),
        _switch("--use-tfrecords", "Load the data from BERT tfrecords."),
        _value("--seq-length", int, 512, "Maximum sequence length."),
        _value("--mem-length", int, 0, "Length of the Transformer-XL memory."),
        _value("--max-preds-per-seq", int, None, "Maximum predictions per sequence."),
        _value("--non-sentence-start", float, 0.0, "Probability of starting a sample mid-sentence."),
        _switch("--sample-one-document", "Take each sample from a single document."),
        _value("--load-splits", str, None, "File to load the split indices from."),
        _value("--save-splits", str, None, "File to save the split indices to."),
        _value("--save-test-data", str, None, "File to save the test data to."),
        _value("--multi-task-data", str, None, "Downstream task names for multi-task pretraining.", nargs="*"),
        _value("--multi-task-ratio", float, 0.0, "Fraction of multi-task batches in pretraining."),
        _value("--multi-seq-length", int, None, "Sequence length of the multi-task batches."),
        _value("--multi-batch-size", int, None, "Batch size of the multi-task batches."),
    ),
    # ---- block-lm (blank-infilling objective) -------------------------------------------------
    *_group(
        "block-lm",
        _switch("--block-lm", "Use the GLM blank-infilling (block-LM) objective."),
        _switch("--masked-lm", "Use a BERT-style masked-LM objective."),
        _value("--bert-prob", float, 0.5, "Probability of a BERT-style (short-span) sample."),
        _value("--gpt-infill-prob", float, 0.5, "Probability of GPT-style infilling among the long-span samples."),
        _value("--gpt-min-ratio", float, 0.5, "Minimum fraction of the text kept as context in GPT-style samples."),
        _value("--gap-sentence-prob", float, 0.0, "Probability of a sentence-level (gap-sentence) sample."),
        _value("--gap-sentence-ratio", float, 0.15, "Fraction of the text masked in gap-sentence samples."),
        _value("--avg-block-length", int, 3, "Poisson mean of the masked span lengths."),
        _value("--short-seq-prob", float, 0.0, "Probability of truncating a sample to a shorter length."),
        _value("--single-span-prob", float, 0.0, "Probability of masking a single span."),
        _switch("--task-mask", "Use distinct mask tokens ([gMASK], [sMASK]) for generation and blank filling."),
        _switch("--no-shuffle-block", "Do not shuffle the order of the masked spans."),
        _switch("--no-block-position", "Use absolute positions instead of 2D block positions."),
        _switch("--sentinel-token", "Use sentinel mask tokens instead of the 2D position encoding."),
        _value("--block-mask-prob", float, 0.0, "Probability of masking tokens inside Part B."),
        _value("--context-mask-ratio", float, 0.0, "Fraction of Part A tokens masked."),
        _switch("--random-position", "Start positions at a random offset to cover all position embeddings."),
    ),
    # ---- finetune (downstream tasks) ----------------------------------------------------------
    *_group(
        "finetune",
        _value("--task", str, None, "Task name, e.g. ReCoRD or RTE."),
        _value("--load-pretrained", str, None, "Checkpoint directory whose model weights initialise the student."),
        _value("--pool-token", str, "cls", "Token pooled for classification heads.", choices=("start", "pad", "cls")),
        _switch("--cloze-eval", "Evaluate as a cloze task through the PET patterns."),
        _switch("--multi-token", "Use multi-token cloze answers."),
        _value("--segment-length", int, 0, "Maximum segment length of cloze evaluation."),
        _value("--loss-func", str, "cross_entropy", "Task loss over the choice scores.",
               choices=("cross_entropy", "hinge", "generative", "mix")),
        _value("--block-lm-ratio", float, 0.0, "Weight of an auxiliary block-LM loss during fine-tuning."),
        _switch("--adapet", "Use the decoupled label loss of ADAPET."),
        _value("--pattern-id", int, 0, "Index of the PET pattern."),
        _switch("--fast-decode", "Fast decoding of multi-token cloze (incompatible with activation checkpointing)."),
        _switch("--few-superglue", "Use the few-shot SuperGLUE splits."),
        _switch("--eval-valid", "Also evaluate on the validation set."),
        _value("--validation-metric", str, None, "Metric that selects the best epoch; None means the first metric."),
        _switch("--unidirectional", "Use a left-to-right language model (zero-shot LM tasks)."),
        _value("--src-seq-length", int, None, "Source length of seq2seq tasks."),
        _value("--tgt-seq-length", int, None, "Target length of seq2seq tasks."),
        _value("--adam-beta1", float, 0.9, "Adam beta1."),
        _value("--adam-beta2", float, 0.999, "Adam beta2."),
        _value("--adam-eps", float, 1e-8, "Adam epsilon."),
        _value("--optimizer", str, "adam", "Optimizer.", choices=("adam", "adafactor")),
        _switch("--wsc-negative", "Train WSC with negative candidates (classification) instead of generatively."),
        _switch("--overwrite", "Overwrite the results of an existing run."),
        _switch("--no-validation", "Skip validation during fine-tuning."),
        _switch("--continuous-prompt", "Use continuous prompt tokens in the PET patterns."),
        _value("--num-prompt-tokens", int, 0, "Number of continuous prompt tokens."),
        _value("--prompt-func", str, "lstm", "Encoder of the continuous prompt.", choices=("lstm", "mlp", "none")),
        _switch("--freeze-transformer", "Freeze the transformer and train only the head or prompt."),
        _value("--tune-prefix-layers", int, None, "Train only the first N layers."),
        _value("--prefix-prompt", int, 0, "Number of prefix-prompt tokens."),
        _switch("--prompt-init", "Initialise the continuous prompt from word embeddings."),
    ),
    # ---- distributed (launcher, DeepSpeed, model parallelism) ---------------------------------
    *_group(
        "distributed",
        _switch("--deepspeed", "Train through the DeepSpeed engine."),
        _value("--deepspeed_config", str, None,
               "DeepSpeed JSON config; its batch size, lr and weight decay override the flags."),
        _switch("--deepspeed-activation-checkpointing", "Use DeepSpeed's activation checkpointing."),
        _value("--local_rank", int, None, "Local rank passed by the distributed launcher."),
        _value("--zero_stage", int, 0, "ZeRO stage written into the DeepSpeed config with --args_to_ds_config.",
               choices=(0, 1, 2, 3)),
        _switch("--cpu_offload", "Offload the ZeRO optimizer state to the CPU (written with --args_to_ds_config)."),
        _switch("--args_to_ds_config",
                "Write fp16, batch size, accumulation, ZeRO stage and offload into a copy of the DeepSpeed JSON."),
        _value("--model-parallel-size", int, 1, "Tensor model-parallel size (teachers are sharded the same way)."),
        _value("--distributed-backend", str, "nccl", "torch.distributed backend.", choices=("nccl", "gloo")),
        _value("--DDP-impl", str, "torch",
               "DistributedDataParallel implementation.", choices=("local", "torch", "none")),
    ),
    # ---- custom (GKD's training-loop and architecture additions) ------------------------------
    *_group(
        "custom",
        _value("--forward_repeat_num", int, 0,
               "Extra forward passes on the same batch whose losses are summed (DIITO, LRC-BERT, random data)."),
        _value("--forward_repeat_current_n", int, 0, "Index of the current forward pass; set automatically."),
        _switch("--ignore_first_backward_gard",
                "With extra forward passes, discard the gradients of pass 0 (LRC-BERT gradient perturbation)."),
        _switch("--custom_first_eval", "Evaluate on dev before the first fine-tuning epoch."),
        _switch("--custom_logits_paralle",
                "Whether the forward's logits are vocabulary-parallel token logits; set automatically."),
        _value("--custom_current_epoch", int, 0, "Current fine-tuning epoch; set automatically."),
        _switch("--custom_no_save_checkpoint", "Never write checkpoints or predictions."),
        _switch("--custom_no_summary_writer", "Do not create a TensorBoard writer or save the args."),
        _value("--custom_tmp_result", str, None, "JSON file where the evaluator writes the running best scores."),
        _value("--spare_port", int, None, "Port of the evaluation TCPStore; None picks a free port."),
        _switch("--ft_final_save",
                "Save the model at the end of fine-tuning, replacing the best checkpoint in the tracker."),
        _value("--save_interval_time", float, 0.0, "Also save every N hours when positive."),
        _switch("--fix_variable_num_choices",
                "Pad or trim multi-choice samples to the task's maximum number of choices."),
        _value("--current_gradient_accumulation_steps", int, 1,
               "Current micro-step within the accumulation; set automatically."),
        _switch("--single_step", "Whether each call is a single optimizer step; set automatically."),
        _value("--map_vocab_size", float, 0.0,
               "GLMD vocabulary compression: kept tokens, a fraction of the vocabulary when in (0,1); 0 disables it."),
        _switch("--unmap_vocab_output", "Output logits over the compressed vocabulary only."),
        _switch("--inverted_bottleneck_mode", "Use MobileBERT inverted-bottleneck layers."),
        _value("--ib_hidden_size", int, 128, "Inner width of the inverted-bottleneck layers."),
        _value("--ib_ffn_num", int, 4, "Number of stacked FFNs per inverted-bottleneck layer."),
        _value("--ib_word_emb", int, 0, "Width of the trigram word embedding; 0 disables it."),
        _value("--compress_word_emb", int, 0, "ALBERT factorised word-embedding width; 0 disables it."),
        _switch("--cross_layer_parameter_sharing", "ALBERT cross-layer parameter sharing."),
    ),
    # ---- distill (generic distillation flags) -------------------------------------------------
    *_group(
        "distill",
        _value("--student_model", str, None, "Distillation method; None means plain training without teachers."),
        _value("--student_truncate_tn", int, None,
               "Initialise the student from the bottom layers of teacher n; negative means None."),
        _switch("--student_build_map_vocab", "Build the vocabulary-compression map (pretraining only)."),
        _value("--student_map_vocab_tn", int, None,
               "Teacher whose embeddings pick replacement tokens; None maps dropped tokens to [UNK]."),
        _value("--student_map_vocab_method", str, "decoder", "Similarity that picks replacement tokens.",
               choices=("decoder", "cosine", "euclidean")),
        _value("--map_vocab_table", str, None,
               "Sorted-vocabulary table (TSV: origin_no sort_id token number frequency) for "
               "--student_build_map_vocab; default .pytorch_pretrained_bert/<tokenizer-type>_<model-type>.txt."),
        _switch("--enable_parallel_entropy",
                "With MP > 1, compute KL/CE/entropy without gathering the full vocabulary."),
        _switch("--distill_test_output", "Run the method's debug routine (Theseus)."),
        _switch("--distil_analysis_inter", "Log student/teacher similarity analyses of all intermediate layers."),
        _value("--distil_analysis_frcn", str, "0",
               "Comma list of forward-repeat indices analysed by --distil_analysis_inter."),
        _value("--distill_random_data", str, "", "Random-data disturbance: dual, replace, or empty for off.",
               choices=("", "dual", "replace")),
        _value("--distill_random_data_n", str, "0", "Comma list of forward-repeat indices whose inputs are disturbed."),
        _value("--distill_random_data_method", str, "shuffle",
               "How tokens are disturbed.", choices=("shuffle", "sample")),
    ),
    # ---- teacher (single teacher architecture) ------------------------------------------------
    *_group(
        "teacher",
        _value("--teacher_num_attention_heads", int, 16, "Attention heads of the teacher."),
        _value("--teacher_hidden_size", int, 1024, "Hidden size of the teacher."),
        _value("--teacher_num_layers", int, 24, "Number of layers of the teacher."),
        _value("--teacher_max_position_embeddings", int, 512,
               "Position embeddings of the teacher; raised to the student's if smaller."),
        _value("--teacher_load_pretrained", str, None, "Checkpoint directory of the teacher."),
        _switch("--teacher_fp16", "Run the teacher in half precision."),
        _switch("--teacher_inverted_bottleneck_mode", "The teacher uses inverted-bottleneck layers."),
        _value("--teacher_ib_hidden_size", int, 1024, "Inner inverted-bottleneck width of the teacher."),
        _value("--teacher_ib_ffn_num", int, 1, "Stacked FFNs per inverted-bottleneck layer of the teacher."),
        _value("--teacher_ib_word_emb", int, 0, "Trigram word-embedding width of the teacher; 0 disables it."),
        _value("--teacher_compress_word_emb", int, 0, "ALBERT word-embedding width of the teacher; 0 disables it."),
        _value("--teacher_map_vocab_size", float, 0.0,
               "Vocabulary-compression size of a compressed teacher; 0 disables it."),
        _switch("--teacher_cross_layer_parameter_sharing", "The teacher shares parameters across layers."),
        _switch("--teacher_random_para", "Use random teacher weights (for testing; a path must still be given)."),
    ),
    # ---- multi-teacher (teacher lists and generic combination flags) --------------------------
    *_group(
        "multi-teacher",
        _value("--mt_num_attention_heads", str, "", "Colon list of attention heads, one per teacher."),
        _value("--mt_hidden_size", str, "", "Colon list of hidden sizes, one per teacher."),
        _value("--mt_num_layers", str, "", "Colon list of layer counts, one per teacher."),
        _value("--mt_max_position_embeddings", str, "", "Colon list of position-embedding counts, one per teacher."),
        _value("--mt_load_pretrained", str, "", "Colon list of checkpoint directories, one per teacher."),
        _value("--mt_ib_hidden_size", str, "", "Colon list of inverted-bottleneck widths, one per teacher."),
        _value("--mt_ib_ffn_num", str, "", "Colon list of inverted-bottleneck FFN counts, one per teacher."),
        _value("--mt_ib_word_emb", str, "", "Colon list of trigram word-embedding widths, one per teacher."),
        _value("--mt_compress_word_emb", str, "", "Colon list of ALBERT word-embedding widths, one per teacher."),
        _value("--mt_map_vocab_size", str, "", "Colon list of vocabulary-compression sizes, one per teacher."),
        _value("--mt_disable_operation", str, "0",
               "Colon list (or one value for all): 1 skips that teacher's forward and uses a placeholder."),
        _value("--multi_teacher_model", str, None,
               "Teacher combiner: avg, tmkd, mt_bert, uncertainty, rl_kd or mixmt; None means avg."),
        _value("--mt_model_load", str, None, "Checkpoint to load the combiner's parameters from."),
        _switch("--mt_has_loss", "Compute each teacher's hard loss (needed by MT-BERT and RL-KD)."),
        _switch("--mt_has_grad", "Train the teachers as submodules of the student."),
        _switch("--student_use_empty_glm", "Replace the student GLM by a placeholder to train only the teachers."),
        _value("--mt_load_from_s", str, None, "Student checkpoint to load the teachers' weights from."),
    ),
    # ---- Hugging Face models --------------------------------------------------------------------
    *_group(
        "hf",
        _value("--hf_model", str, None,
               "Hugging Face student folder: weights and tokenizer, or only config.json for a fresh student."),
        _value("--teacher_hf_model", str, None, "Hugging Face teacher folder (weights, config.json, tokenizer)."),
        _value("--mt_hf_model", str, None, "Colon list of Hugging Face teacher folders, one per teacher."),
        _value("--hf_student_layers", str, None,
               "Build the student from teacher 0's layers: bottom:K, stride:K or a list such as 2,6,10."),
        _value("--hf_objective", str, "auto", "LM objective of Hugging Face models (auto: masked for encoders, "
               "causal for decoders).", choices=("auto", "causal", "masked")),
        _value("--hf_mask_prob", float, 0.15, "Share of masked tokens in masked-LM batches."),
    ),
)


def _option_flag(option: OptionFlag, group: str) -> Flag:
    if option.type is bool:
        if option.default is not False:
            raise TypeError(f"--{option.name}: a switch must default to False")
        return Flag(f"--{option.name}", option.help, group, action="store_true", default=False)
    return Flag(f"--{option.name}", option.help, group, type=option.type, default=option.default,
                choices=option.choices)


def method_groups(registry) -> Dict[str, List[Flag]]:
    """{group: flags} for the methods (or combiners) of `registry` that have options: the
    group is the registry name, the flags are the fields of its `options_class`, each starting
    with its prefix (`<name>_`, or the class's `flag_prefix`)."""
    groups = {}
    for cls in registry.classes():
        options = option_flags(cls.options_class)
        prefix = cls.flag_prefix or f"{cls.name}_"
        wrong = [option.name for option in options if not option.name.startswith(prefix)]
        if wrong:
            raise TypeError(f"{cls.__name__}: option(s) {wrong} do not start with its flag prefix {prefix!r}")
        if options:
            groups[cls.name] = [_option_flag(option, cls.name) for option in options]
    return groups


def flag_groups() -> Dict[str, List[Flag]]:
    """The flags of each group: the generic groups (the generic distillation options come from
    `DistillOptions`), then one group per method and one per combiner, from the registries."""
    from distill import MULTI_TEACHER_MODELS, STUDENT_MODELS, DistillOptions
    groups: Dict[str, List[Flag]] = {name: [] for name in GENERIC_GROUPS}
    choices = {"--student_model": STUDENT_MODELS.names(), "--multi_teacher_model": MULTI_TEACHER_MODELS.names()}
    for flag in GENERIC_FLAGS:
        if flag.name in choices:   # the registered names, at the time of the call
            flag = replace(flag, help=f"{flag.help} Choices: {', '.join(choices[flag.name])}.")
        groups[flag.group].append(flag)
    groups["distill"] += [_option_flag(option, "distill") for option in option_flags(DistillOptions)]
    return {**groups, **method_groups(STUDENT_MODELS), **method_groups(MULTI_TEACHER_MODELS)}


def all_flags() -> List[Flag]:
    """Every flag, at the time of the call (a method registered later adds its own)."""
    return [flag for flags in flag_groups().values() for flag in flags]


def student_method_groups() -> List[str]:
    from distill import STUDENT_MODELS
    return list(method_groups(STUDENT_MODELS))


def combiner_groups() -> List[str]:
    from distill import MULTI_TEACHER_MODELS
    return list(method_groups(MULTI_TEACHER_MODELS))


def _argparse_kwargs(flag: Flag) -> Dict[str, Any]:
    if flag.action == "store_true":
        return {"action": "store_true", "help": flag.help}
    kwargs = {"type": flag.type, "default": flag.default, "help": flag.help}
    if flag.choices is not None:
        kwargs["choices"] = flag.choices
    if flag.nargs is not None:
        kwargs["nargs"] = flag.nargs
    return kwargs


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one argument group per flag group; dests are argparse's default."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    for group_name, flags in flag_groups().items():
        group = parser.add_argument_group(group_name)
        for flag in flags:
            group.add_argument(flag.name, **_argparse_kwargs(flag))
    return parser
