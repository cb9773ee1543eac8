"""The typed configuration of one run, built from the parsed command line.

`args` stops at the entry point: `RunConfig.from_namespace` turns the argparse namespace
into these frozen sections, and each component receives only its own section. Field names
are the original's flag names (dashes become underscores).
"""
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple

from distill.analysis import AnalysisOptions
from distill.distill_model import DistillOptions
from distill.random_data import RandomDataOptions
from model import GLMConfig
from model.vocab_map import map_vocab_rows

STAGES = ("pretrain", "finetune")


class ConfigError(ValueError):
    """A command line that cannot describe a valid run; the message names the flags."""


@dataclass(frozen=True)
class ArchConfig:
    """One model's architecture (the student's, or a teacher's)."""
    num_layers: int = 24
    hidden_size: int = 1024
    num_attention_heads: int = 16
    max_position_embeddings: int = 512
    inverted_bottleneck_mode: bool = False
    ib_hidden_size: int = 128
    ib_ffn_num: int = 4
    ib_word_emb: int = 0
    compress_word_emb: int = 0
    cross_layer_parameter_sharing: bool = False
    map_vocab_size: float = 0.0          # GLMD vocabulary compression: a fraction of the tokens, or a count
    unmap_vocab_output: bool = False

    def glm_config(self, vocab_size: int, model: "ModelOptions", checkpoint_activations: bool = False,
                   dropout: bool = True, output_predict: bool = True, num_tokens: Optional[int] = None) -> GLMConfig:
        """The GLMConfig of this architecture over a padded vocabulary of `vocab_size`;
        `num_tokens` (the tokenizer's size) resolves a fractional map_vocab_size."""
        map_rows = map_vocab_rows(self.map_vocab_size, vocab_size if num_tokens is None else num_tokens,
                                  vocab_size, model.make_vocab_size_divisible_by)
        if self.map_vocab_size and not map_rows:
            raise ConfigError(f"--map_vocab_size={self.map_vocab_size} keeps the whole padded vocabulary of "
                              f"{vocab_size}: give a smaller size, or none")
        return GLMConfig(
            map_vocab_size=map_rows, unmap_vocab_output=self.unmap_vocab_output,
            num_layers=self.num_layers, hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
            vocab_size=vocab_size, max_sequence_length=self.max_position_embeddings,
            embedding_dropout_prob=model.hidden_dropout if dropout else 0.0,
            attention_dropout_prob=model.attention_dropout if dropout else 0.0,
            output_dropout_prob=model.hidden_dropout if dropout else 0.0,
            layernorm_epsilon=model.layernorm_epsilon, attention_scale=model.attention_scale,
            block_position_encoding=not model.no_block_position, output_predict=output_predict,
            checkpoint_activations=checkpoint_activations, checkpoint_num_layers=model.checkpoint_num_layers,
            inverted_bottleneck_mode=self.inverted_bottleneck_mode, ib_hidden_size=self.ib_hidden_size,
            ib_ffn_num=self.ib_ffn_num, ib_word_emb=self.ib_word_emb, compress_word_emb=self.compress_word_emb,
            cross_layer_parameter_sharing=self.cross_layer_parameter_sharing)


@dataclass(frozen=True)
class ModelOptions:
    """Options shared by every model of the run (dropouts apply to the student only)."""
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layernorm_epsilon: float = 1e-5
    attention_scale: float = 1.0
    make_vocab_size_divisible_by: int = 128
    no_block_position: bool = False
    checkpoint_num_layers: int = 1


@dataclass(frozen=True)
class TeacherConfig:
    arch: ArchConfig
    load_pretrained: Optional[str]
    random_para: bool = False
    half_precision: bool = False     # --teacher_fp16: fp16 on GPU, bf16 on CPU
    disabled: bool = False           # --mt_disable_operation: the forward is not run
    flag_names: Mapping[str, str] = field(default_factory=dict)   # ArchConfig field -> the flag that set it


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_decay_style: str = "linear"
    lr_decay_iters: Optional[int] = None
    lr_decay_ratio: float = 0.1
    warmup: float = 0.01


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    train_iters: int = 0
    epochs: Optional[int] = None
    seed: int = 1234
    fp16: bool = False
    bf16: bool = False
    checkpoint_activations: bool = False
    deepspeed_activation_checkpointing: bool = False
    log_interval: int = 100
    eval_interval: int = 1000
    eval_iters: int = 100
    eval_epoch: int = 1
    eval_batch_size: Optional[int] = None
    save: Optional[str] = None
    experiment_name: Optional[str] = None
    save_interval: int = 5000
    save_epoch: int = 1
    load: Optional[str] = None
    load_pretrained: Optional[str] = None
    no_load_optim: bool = False
    no_load_rng: bool = False
    no_load_lr_scheduler: bool = False
    resume_dataloader: bool = False
    forward_repeat_num: int = 0
    ignore_first_backward_gard: bool = False
    custom_first_eval: bool = False
    custom_tmp_result: Optional[str] = None
    custom_no_save_checkpoint: bool = False
    ft_final_save: bool = False
    overwrite: bool = False
    summary_dir: str = ""
    custom_no_summary_writer: bool = False


@dataclass(frozen=True)
class DistributedConfig:
    deepspeed: bool = False
    deepspeed_config: Optional[str] = None
    zero_stage: int = 0
    cpu_offload: bool = False
    args_to_ds_config: bool = False
    model_parallel_size: int = 1
    distributed_backend: str = "nccl"


@dataclass(frozen=True)
class DataConfig:
    tokenizer_type: str = "BertWordPieceTokenizer"
    tokenizer_model_type: Optional[str] = None
    tokenizer_path: Optional[str] = None
    task_mask: bool = False
    block_mask_prob: float = 0.0
    seq_length: int = 512
    train_data: Tuple[str, ...] = ()
    valid_data: Tuple[str, ...] = ()
    test_data: Tuple[str, ...] = ()
    split: str = "1000,1,1"
    text_key: str = "text"
    block_lm: Mapping[str, Any] = field(default_factory=dict)   # BlockLMConfig fields


@dataclass(frozen=True)
class FinetuneConfig:
    task: Optional[str] = None
    data_dir: Optional[str] = None
    pattern_id: Optional[int] = None
    cloze_eval: bool = False
    loss_func: str = "cross_entropy"
    length_penalty: float = 0.0
    wsc_negative: bool = False
    fix_variable_num_choices: bool = False
    few_superglue: bool = False
    pool_token: str = "cls"


@dataclass(frozen=True)
class DistillConfig:
    """The distillation of the run, typed and validated at parse time: the generic options, the
    method's and the combiner's own options (instances of their `options_class`, None for a
    method without options), random-data disturbance and analysis."""
    student_model: Optional[str] = None
    multi_teacher_model: Optional[str] = None
    options: DistillOptions = field(default_factory=DistillOptions)
    method_options: Any = None
    combiner_options: Any = None
    student_truncate_tn: Optional[int] = None
    mt_has_loss: bool = False
    mt_has_grad: bool = False
    mt_model_load: Optional[str] = None                              # load the combiner's parameters from it
    random_data: RandomDataOptions = field(default_factory=RandomDataOptions)
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)

    @property
    def enabled(self) -> bool:
        return self.student_model is not None


@dataclass(frozen=True)
class VocabMapConfig:
    """Building the student's GLMD vocabulary map (its size is ArchConfig.map_vocab_size).

    build: build it (only when neither --load-pretrained nor --load gives one); teacher_no: the
    teacher whose word embeddings pick each dropped token's replacement (None: [UNK]); method:
    decoder, cosine or euclidean; table: the sorted-vocabulary TSV (None: looked up as
    .pytorch_pretrained_bert/<tokenizer-type>_<tokenizer-model-type>.txt, as the original)."""
    student_build_map_vocab: bool = False
    student_map_vocab_tn: Optional[int] = None
    student_map_vocab_method: str = "decoder"
    map_vocab_table: Optional[str] = None


HF_OBJECTIVES = ("auto", "causal", "masked")


@dataclass(frozen=True)
class HFConfig:
    """Hugging Face models (model/hf.py). student: the student's folder (weights, or only a
    config.json for a fresh student); teachers: one folder per teacher; student_layers: build
    the student from teacher 0's layers ("bottom:K", "stride:K" or a list "2,6,10"); objective:
    the LM objective (auto: masked for encoders, causal for decoders); mask_prob: masked LM's
    share of masked tokens."""
    student: Optional[str] = None
    teachers: Tuple[str, ...] = ()
    student_layers: Optional[str] = None
    objective: str = "auto"
    mask_prob: float = 0.15

    @property
    def enabled(self) -> bool:
        return bool(self.student or self.teachers or self.student_layers)

    @property
    def student_source(self) -> Optional[str]:
        """The folder the student's tokenizer (and, when layer-dropped, its layers) comes from."""
        return self.student or (self.teachers[0] if self.teachers else None)


@dataclass(frozen=True)
class RunConfig:
    stage: str
    arch: ArchConfig
    model: ModelOptions
    teachers: Tuple[TeacherConfig, ...]
    optim: OptimConfig
    train: TrainConfig
    distributed: DistributedConfig
    data: DataConfig
    finetune: FinetuneConfig
    distill: DistillConfig
    vocab_map: VocabMapConfig = field(default_factory=VocabMapConfig)
    hf: HFConfig = field(default_factory=HFConfig)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"unknown stage {self.stage!r}; valid: {STAGES}")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-friendly record of the resolved configuration (saved with checkpoints)."""
        def convert(value):
            if hasattr(value, "__dataclass_fields__"):
                return {f.name: convert(getattr(value, f.name)) for f in fields(value)}
            if isinstance(value, Mapping):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [convert(v) for v in value]
            return value
        return convert(self)
