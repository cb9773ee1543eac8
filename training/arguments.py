"""Command line -> RunConfig: the only place that sees argparse's namespace.

Every flag of the original parses with its meaning (training/flags.py). On top of argparse:
an unknown flag is an error suggesting the closest valid ones; a method that is not built
(yet) is an error listing the ones that are; an option of one method given with another
method is an error; the `--mt_*` colon lists are expanded into one TeacherConfig per
teacher; and a flag that is given but has no effect in this implementation
gets a one-time warning.
"""
import difflib
import math
import sys
import warnings
from dataclasses import fields, replace
from typing import Any, Dict, List, Optional, Sequence, Set

from distill.analysis import AnalysisOptions
from distill.distill_model import STUDENT_MODELS, DistillOptions, method_options_for
from distill.multi_teacher_model import MULTI_TEACHER_MODELS
from distill.options import option_flags
from distill.random_data import RandomDataOptions

from .config import (ArchConfig, ConfigError, DataConfig, DistillConfig, DistributedConfig, FinetuneConfig,
                     HFConfig, ModelOptions, OptimConfig, RunConfig, TeacherConfig, TrainConfig, VocabMapConfig)
from .flags import all_flags, build_parser, combiner_groups, student_method_groups

# The original's method names that this implementation does not build (ERDistill's flags were
# removed from the original's own parser): they parse to a clear "not implemented" error.
ORIGINAL_UNBUILT_METHODS = ("erdistill",)
_MT_FIELDS = {"num_attention_heads": int, "hidden_size": int, "num_layers": int, "max_position_embeddings": int,
              "load_pretrained": str, "ib_hidden_size": int, "ib_ffn_num": int, "ib_word_emb": int,
              "compress_word_emb": int, "map_vocab_size": float}
# Flags whose value only matters to the original's machinery (launchers, apex, data loaders):
# accepted silently because the recipes users paste always carry them.
_HARMLESS = {"deepspeed", "deepspeed_config", "local_rank", "distributed_backend", "finetune", "block_lm",
             "no_lazy_loader", "num_workers", "overwrite", "save_interval", "save_epoch", "eval_iters",
             "eval_interval", "log_interval", "experiment_name", "save", "fp32_allreduce", "DDP_impl",
             "deepspeed_activation_checkpointing", "eval_batch_size", "eval_epoch", "load_pretrained", "seed",
             "resume_dataloader", "spare_port", "tokenizer_model_type",
             "tokenizer_type", "cloze_eval", "summary_dir"}


def _flag_names() -> Dict[str, str]:
    """{"--flag-name": dest} for every flag."""
    return {flag.name: flag.name.lstrip("-").replace("-", "_") for flag in all_flags()}


def _group_of_dest() -> Dict[str, str]:
    return {flag.name.lstrip("-").replace("-", "_"): flag.group for flag in all_flags()}


def explicit_dests(argv: Sequence[str]) -> Set[str]:
    names = _flag_names()
    return {names[token.split("=", 1)[0]] for token in argv
            if token.startswith("--") and token.split("=", 1)[0] in names}


def _unknown_flag_error(unknown: List[str]) -> ConfigError:
    names = list(_flag_names())
    messages = []
    for token in unknown:
        name = token.split("=", 1)[0]
        if not name.startswith("-"):
            messages.append(f"unexpected value {token!r}")
            continue
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        messages.append(f"unknown flag {name}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return ConfigError("; ".join(messages))


def _check_methods(values: Dict[str, Any], explicit: Set[str]) -> None:
    """The method and combiner exist, and every method option given belongs to them."""
    student, combiner = values["student_model"], values["multi_teacher_model"] or None
    if student is not None and student not in STUDENT_MODELS:
        if student in ORIGINAL_UNBUILT_METHODS:
            raise ConfigError(f"--student_model={student} is not implemented yet; implemented methods: "
                              f"{STUDENT_MODELS.names()}")
        raise ConfigError(f"unknown --student_model={student!r}; valid: {STUDENT_MODELS.names()}")
    if combiner not in MULTI_TEACHER_MODELS:
        raise ConfigError(f"unknown --multi_teacher_model={combiner!r}; valid: {MULTI_TEACHER_MODELS.names()}")
    groups, students, combiners = _group_of_dest(), student_method_groups(), combiner_groups()
    student_cls, combiner_cls = STUDENT_MODELS.get(student), MULTI_TEACHER_MODELS[combiner]
    allowed = {*(students if getattr(student_cls, "composes_others", False) else [student]),
               *(combiners if combiner_cls.composes_others else [combiner_cls.name])}
    for dest in sorted(explicit):
        group = groups[dest]
        if group in students and group not in allowed:
            raise ConfigError(f"--{dest} is an option of --student_model={group}, but this run uses "
                              f"--student_model={student}")
        if group in combiners and group not in allowed:
            raise ConfigError(f"--{dest} is an option of --multi_teacher_model={group}, but this run uses "
                              f"--multi_teacher_model={combiner or 'avg (the default)'}")


def _typed_options(build, what: str):
    """Build an options dataclass (its __post_init__ validates), naming the flag group on error."""
    try:
        return build()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{what}: {error}") from None


def _split_list(flag: str, text: str, cast) -> List[Any]:
    try:
        return [cast(item) for item in str(text).split(":")]
    except ValueError as error:
        raise ConfigError(f"--{flag}={text}: {error}") from None


def build_teachers(values: Dict[str, Any], used: Set[str]) -> tuple:
    """One TeacherConfig per teacher: the `--mt_*` lists, filled from `--teacher_*`."""
    lists = {}
    for name, cast in _MT_FIELDS.items():
        used.update({f"mt_{name}", f"teacher_{name}"})
        text = values.get(f"mt_{name}")
        lists[name] = _split_list(f"mt_{name}", text, cast) if text not in (None, "") else []
    from_mt_lists = {name for name, items in lists.items() if items}
    count = max(len(items) for items in lists.values())
    if count == 0:
        if values.get("teacher_load_pretrained") is None and not values.get("teacher_random_para"):
            return ()
        count = 1
    for name, items in lists.items():
        if not items:
            items[:] = [values.get(f"teacher_{name}")] * count
        elif len(items) == 1:
            items[:] = items * count
        elif len(items) != count:
            raise ConfigError(f"--mt_{name} lists {len(items)} teachers, other --mt_* flags list {count}")
    disable = _split_list("mt_disable_operation", values.get("mt_disable_operation") or "0", int)
    if len(disable) == 1:
        disable = disable * count
    elif len(disable) != count:
        raise ConfigError(f"--mt_disable_operation lists {len(disable)} values for {count} teachers")
    used.update({"mt_disable_operation", "teacher_fp16", "teacher_random_para", "teacher_inverted_bottleneck_mode",
                 "teacher_cross_layer_parameter_sharing"})
    teachers = []
    for i in range(count):
        arch = ArchConfig(
            num_layers=lists["num_layers"][i], hidden_size=lists["hidden_size"][i],
            num_attention_heads=lists["num_attention_heads"][i],
            max_position_embeddings=lists["max_position_embeddings"][i],
            inverted_bottleneck_mode=bool(values.get("teacher_inverted_bottleneck_mode")),
            ib_hidden_size=lists["ib_hidden_size"][i], ib_ffn_num=lists["ib_ffn_num"][i],
            ib_word_emb=lists["ib_word_emb"][i] or 0, compress_word_emb=lists["compress_word_emb"][i] or 0,
            cross_layer_parameter_sharing=bool(values.get("teacher_cross_layer_parameter_sharing")),
            map_vocab_size=lists["map_vocab_size"][i] or 0.0)
        path = lists["load_pretrained"][i]
        if not path and not values.get("teacher_random_para"):
            raise ConfigError(f"teacher {i} has no checkpoint: give --teacher_load_pretrained or --mt_load_pretrained")
        flag_names = {name: f"--mt_{name} (teacher {i})" if name in from_mt_lists else f"--teacher_{name}"
                      for name in ("num_layers", "hidden_size", "num_attention_heads")}
        teachers.append(TeacherConfig(arch, path or None, random_para=bool(values.get("teacher_random_para")),
                                      half_precision=bool(values.get("teacher_fp16")), disabled=bool(disable[i]),
                                      flag_names=flag_names))
    return tuple(teachers)


def _method_options(values: "_Reader", student: Optional[str], combiner: Optional[str]):
    """(DistillOptions, the method's typed options, the combiner's), built and validated now;
    a composed method or combiner (MixBaseline, MixMT) reads every component's flags."""
    distill = _typed_options(lambda: DistillOptions(**values.pick(DistillOptions)), "the distillation options")
    classes = [cls for registry in (STUDENT_MODELS, MULTI_TEACHER_MODELS) for cls in registry.classes()]
    values.used |= {option.name for cls in classes for option in option_flags(cls.options_class)} & set(values)
    method = None
    if student is not None:
        method = _typed_options(lambda: method_options_for(STUDENT_MODELS[student], values),
                                f"--student_model={student}")
    combiner_cls = MULTI_TEACHER_MODELS[combiner]
    combined = _typed_options(lambda: combiner_cls.options_from_flags(values),
                              f"--multi_teacher_model={combiner or 'avg'}")
    return distill, method, combined


class _Reader(dict):
    """The namespace as a dict that remembers which entries were read."""

    def __init__(self, values):
        super().__init__(values)
        self.used: Set[str] = set()

    def pick(self, cls) -> Dict[str, Any]:
        names = {f.name for f in fields(cls)} & set(self)
        self.used |= names
        return {name: self[name] for name in names}


def _block_lm(values: _Reader) -> Dict[str, Any]:
    names = ("bert_prob", "gap_sentence_prob", "gpt_infill_prob", "gpt_min_ratio", "gap_sentence_ratio",
             "avg_block_length", "short_seq_prob", "block_mask_prob", "task_mask", "no_shuffle_block")
    values.used.update(names + ("seq_length",))
    return {**{name: values[name] for name in names}, "max_seq_length": values["seq_length"]}


def student_layer_spec(text: str, teacher_layers: int) -> List[int]:
    """--hf_student_layers: "bottom:K", "stride:K" or a list "2,6,10" -> the kept teacher layers."""
    from model.hf_init import keep_layers
    name, _, count = text.partition(":")
    try:
        if name.strip() in ("bottom", "stride"):
            if not count.strip().isdigit():
                raise ValueError(f"{name} needs the student's layer count, e.g. {name}:6")
            return keep_layers(name, teacher_layers, int(count))
        return keep_layers(text, teacher_layers)
    except ValueError as error:
        raise ConfigError(f"--hf_student_layers={text}: {error}") from None


def _hf_models(values: "_Reader", stage: str):
    """(HFConfig, the student's ArchConfig, the teachers) of a run with Hugging Face models, read
    from the folders' config.json now; (HFConfig(), None, None) without them."""
    from .hf_models import arch_of, read_hf_config
    names = ("hf_model", "teacher_hf_model", "mt_hf_model", "hf_student_layers", "hf_objective", "hf_mask_prob")
    values.used.update(names)
    listed = values.get("mt_hf_model")
    teachers = tuple(listed.split(":")) if listed else ((values["teacher_hf_model"],) if values.get(
        "teacher_hf_model") else ())
    hf = HFConfig(student=values.get("hf_model"), teachers=teachers, student_layers=values.get("hf_student_layers"),
                  objective=values.get("hf_objective") or "auto", mask_prob=values.get("hf_mask_prob", 0.15))
    if not hf.enabled:
        return hf, None, None
    glm_teachers = [flag for flag in ("teacher_load_pretrained", "mt_load_pretrained") if values.get(flag)]
    if glm_teachers and teachers:
        raise ConfigError(f"--{glm_teachers[0]} (a GLM teacher) with Hugging Face teachers: mixing GLM and HF "
                          f"teachers is not supported yet")
    if not 0.0 < hf.mask_prob < 1.0:
        raise ConfigError(f"--hf_mask_prob={hf.mask_prob} must lie in (0, 1)")
    teacher_configs = [read_hf_config(folder, f"teacher {t_no} (--mt_hf_model)" if listed else "--teacher_hf_model")
                       for t_no, folder in enumerate(teachers)]
    if hf.student_layers is not None:
        if hf.student is not None:
            raise ConfigError("--hf_student_layers builds the student from teacher 0's layers; --hf_model names "
                              "another student: give one of them")
        if not teacher_configs:
            raise ConfigError("--hf_student_layers needs a teacher (--teacher_hf_model) to take the layers from")
        source = teacher_configs[0]
        keep = student_layer_spec(hf.student_layers, arch_of(source).num_layers)
        student_arch = arch_of(source, num_layers=len(keep))
    elif hf.student is not None:
        student_arch = arch_of(read_hf_config(hf.student, "--hf_model"))
    else:
        raise ConfigError("Hugging Face teachers need a Hugging Face student: give --hf_model (a folder) or "
                          "--hf_student_layers (layers of teacher 0)")
    disable = _split_list("mt_disable_operation", values.get("mt_disable_operation") or "0", int)
    disable = disable * len(teachers) if len(disable) == 1 else disable
    if len(disable) != len(teachers):
        raise ConfigError(f"--mt_disable_operation lists {len(disable)} values for {len(teachers)} teachers")
    built = tuple(TeacherConfig(arch_of(config), folder, half_precision=bool(values.get("teacher_fp16")),
                                disabled=bool(disable[t_no]),
                                flag_names={name: f"the config.json of {folder}"
                                            for name in ("num_layers", "hidden_size", "num_attention_heads")})
                  for t_no, (config, folder) in enumerate(zip(teacher_configs, teachers)))
    return hf, student_arch, built


def _check_hf(config: RunConfig) -> None:
    """What Hugging Face models cannot do here, before anything is built."""
    if not config.hf.enabled:
        return
    if config.distributed.model_parallel_size > 1:
        raise ConfigError(f"--model-parallel-size={config.distributed.model_parallel_size}: Hugging Face models run "
                          f"data parallel only (model parallelism is GLM's)")
    glm_only = [flag for flag, on in (("--map_vocab_size", config.arch.map_vocab_size),
                                      ("--inverted_bottleneck_mode", config.arch.inverted_bottleneck_mode),
                                      ("--compress_word_emb", config.arch.compress_word_emb),
                                      ("--ib_word_emb", config.arch.ib_word_emb),
                                      ("--cross_layer_parameter_sharing", config.arch.cross_layer_parameter_sharing),
                                      ("--student_build_map_vocab", config.vocab_map.student_build_map_vocab)) if on]
    if glm_only:
        raise ConfigError(f"{glm_only[0]} is a GLM-only architecture option; the student is a Hugging Face model")
    if config.train.checkpoint_activations:
        raise ConfigError("--checkpoint-activations with a Hugging Face student is not supported: a recomputed layer "
                          "would not re-apply the method's interventions (silently wrong gradients)")
    if config.distill.student_truncate_tn is not None:
        raise ConfigError("--student_truncate_tn copies GLM layers; for a Hugging Face student use "
                          "--hf_student_layers")
    if config.train.load_pretrained:
        raise ConfigError("--load-pretrained loads GLM weights; a Hugging Face student's weights come from --hf_model")
    if config.stage == "finetune":
        from tasks.registry import SINGLE_TOKEN, get_task_spec
        if config.finetune.cloze_eval:
            raise ConfigError("--cloze-eval (PET cloze patterns) is GLM's; Hugging Face models fine-tune with a "
                              "sequence-classification head: drop --cloze-eval")
        try:
            spec = get_task_spec(config.finetune.task or "")
        except KeyError as error:
            raise ConfigError(str(error)) from None
        if spec.kind != SINGLE_TOKEN:
            raise ConfigError(f"--task={config.finetune.task}: a multiple-choice task; Hugging Face models fine-tune "
                              f"single-label classification and regression tasks (GLUE, and SuperGLUE's but COPA, "
                              f"ReCoRD and WSC) for now")


def build_run_config(values: Dict[str, Any], stage: str, explicit: Set[str]) -> RunConfig:
    values = _Reader(values)
    _check_methods(values, explicit)
    student = values["student_model"]
    combiner = values["multi_teacher_model"] or None
    hf, hf_arch, hf_teachers = _hf_models(values, stage)
    teachers = hf_teachers if hf_teachers is not None else build_teachers(values, values.used)
    if student is not None and not teachers:
        raise ConfigError(f"--student_model={student} needs a teacher: give --teacher_load_pretrained (or the "
                          f"--mt_* lists)")
    truncate = values.get("student_truncate_tn")
    if truncate is not None and truncate < 0:
        truncate = None
    if truncate is not None and not 0 <= truncate < len(teachers):
        raise ConfigError(f"--student_truncate_tn={truncate} but there are {len(teachers)} teachers")
    values.used.update({"student_model", "multi_teacher_model", "student_truncate_tn", "mt_has_loss", "mt_has_grad",
                        "distill_random_data", "distill_random_data_n", "distill_random_data_method"})
    if values.get("distill_random_data") and student is None:
        raise ConfigError("--distill_random_data disturbs distillation inputs: it needs --student_model")
    vocab_map = VocabMapConfig(**values.pick(VocabMapConfig))
    if vocab_map.student_map_vocab_tn is not None and vocab_map.student_map_vocab_tn < 0:
        vocab_map = replace(vocab_map, student_map_vocab_tn=None)
    options, method_options, combiner_options = _method_options(values, student, combiner)
    random_data = _typed_options(lambda: RandomDataOptions.from_flags(
        values["distill_random_data"] or "", values["distill_random_data_n"], values["distill_random_data_method"]),
        "--distill_random_data")
    distill = DistillConfig(student_model=student, multi_teacher_model=combiner, options=options,
                            method_options=method_options, combiner_options=combiner_options,
                            student_truncate_tn=truncate, mt_has_loss=bool(values["mt_has_loss"]),
                            mt_has_grad=bool(values["mt_has_grad"]),
                            mt_model_load=values.pick(DistillConfig).get("mt_model_load"), random_data=random_data,
                            analysis=_typed_options(lambda: AnalysisOptions(**values.pick(AnalysisOptions)),
                                                    "--distil_analysis_frcn"))
    if distill.mt_has_grad:
        raise ConfigError("--mt_has_grad (training the teachers jointly) is not implemented yet")
    data = DataConfig(**{**values.pick(DataConfig), "train_data": tuple(values["train_data"] or ()),
                         "valid_data": tuple(values["valid_data"] or ()), "test_data": tuple(values["test_data"] or ()),
                         "block_lm": _block_lm(values)})
    arch = ArchConfig(**values.pick(ArchConfig))
    if hf_arch is not None:   # the sizes are the HF student's; GLM-only options stay for _check_hf to refuse
        arch = replace(arch, num_layers=hf_arch.num_layers, hidden_size=hf_arch.hidden_size,
                       num_attention_heads=hf_arch.num_attention_heads,
                       max_position_embeddings=hf_arch.max_position_embeddings)
    config = RunConfig(
        stage=stage, arch=arch, model=ModelOptions(**values.pick(ModelOptions)),
        teachers=teachers, optim=OptimConfig(**values.pick(OptimConfig)), train=TrainConfig(**values.pick(TrainConfig)),
        distributed=DistributedConfig(**values.pick(DistributedConfig)), data=data,
        finetune=FinetuneConfig(**values.pick(FinetuneConfig)), distill=distill, vocab_map=vocab_map, hf=hf)
    _check_hf(config)
    _validate(config)
    ignored = sorted((explicit - values.used - _HARMLESS) | (explicit & _no_effect_options()))
    if ignored:
        warnings.warn("these flags have no effect in this implementation: "
                      + ", ".join(f"--{dest}" for dest in ignored), stacklevel=2)
    return config


def _no_effect_options() -> Set[str]:
    """Method options kept for the original's command lines that change nothing here."""
    classes = [cls for registry in (STUDENT_MODELS, MULTI_TEACHER_MODELS) for cls in registry.classes()]
    return {option.name for cls in classes for option in option_flags(cls.options_class) if option.no_effect}


def _validate_sizes(config: RunConfig) -> None:
    """Counts and sizes that must be positive, and the sequence that must fit the positions."""
    train, data = config.train, config.data
    positive = [("--model-parallel-size", config.distributed.model_parallel_size), ("--batch-size", train.batch_size),
                ("--gradient-accumulation-steps", train.gradient_accumulation_steps),
                ("--seq-length", data.seq_length), ("--max-position-embeddings", config.arch.max_position_embeddings),
                ("--num-layers", config.arch.num_layers), ("--hidden-size", config.arch.hidden_size),
                ("--num-attention-heads", config.arch.num_attention_heads),
                ("--make-vocab-size-divisible-by", config.model.make_vocab_size_divisible_by)]
    for flag, value in positive:
        if value is None or value < 1:
            raise ConfigError(f"{flag}={value} must be at least 1")
    optim, model = config.optim, config.model
    not_negative = [("--train-iters", train.train_iters), ("--epochs", train.epochs), ("--lr", optim.lr),
                    ("--weight-decay", optim.weight_decay), ("--clip-grad", optim.clip_grad),
                    ("--log-interval", train.log_interval), ("--eval-interval", train.eval_interval),
                    ("--eval-iters", train.eval_iters), ("--save-interval", train.save_interval),
                    ("--save-epoch", train.save_epoch), ("--eval-epoch", train.eval_epoch)]
    for flag, value in not_negative:
        if value is not None and not value >= 0:
            raise ConfigError(f"{flag}={value} must not be negative")
    fractions = [("--warmup", optim.warmup, 1.0), ("--hidden-dropout", model.hidden_dropout, 0.999),
                 ("--attention-dropout", model.attention_dropout, 0.999)]
    for flag, value, high in fractions:
        if not 0.0 <= value <= high:
            raise ConfigError(f"{flag}={value} must lie in [0, {1 if high == 1.0 else 1})")

    if data.seq_length > config.arch.max_position_embeddings:
        raise ConfigError(f"--seq-length={data.seq_length} is longer than --max-position-embeddings="
                          f"{config.arch.max_position_embeddings}: the positions of a sequence must fit the table")


def _validate(config: RunConfig) -> None:
    train = config.train
    _validate_sizes(config)
    if train.load and train.load_pretrained:
        raise ConfigError(f"--load={train.load} resumes a run with its own weights; --load-pretrained="
                          f"{train.load_pretrained} would start from other weights: give one of them")
    if train.fp16 and train.bf16:
        raise ConfigError("--fp16 and --bf16 are exclusive")
    if train.ignore_first_backward_gard and (config.train.forward_repeat_num < 1 or train.gradient_accumulation_steps != 1):
        raise ConfigError("--ignore_first_backward_gard needs --forward_repeat_num >= 1 and "
                          "--gradient-accumulation-steps=1")
    if config.arch.hidden_size % config.arch.num_attention_heads:
        raise ConfigError(f"--hidden-size={config.arch.hidden_size} is not divisible by "
                          f"--num-attention-heads={config.arch.num_attention_heads}")
    if config.arch.num_attention_heads % config.distributed.model_parallel_size:
        raise ConfigError(f"--model-parallel-size={config.distributed.model_parallel_size} does not divide "
                          f"--num-attention-heads={config.arch.num_attention_heads}")
    for i, teacher in enumerate(config.teachers):
        if teacher.arch.num_attention_heads % config.distributed.model_parallel_size:
            raise ConfigError(f"--model-parallel-size={config.distributed.model_parallel_size} does not divide the "
                              f"{teacher.arch.num_attention_heads} attention heads of teacher {i}")
    _validate_vocab_map(config)
    divergence = config.distill.options.distill_logit_loss
    if divergence != "fkl" and getattr(config.distill.method_options, "logitsdistil_mse", False):
        raise ConfigError(f"--distill_logit_loss={divergence} and --logitsdistil_mse conflict: the divergence "
                          f"replaces GLMD's KL, not its MSE variant")
    if config.stage == "finetune" and not config.finetune.task:
        raise ConfigError("finetune.py needs --task")


def _validate_vocab_map(config: RunConfig) -> None:
    """GLMD vocabulary compression: sizes and the flags that need it."""
    sizes = [("--map_vocab_size", config.arch.map_vocab_size)] + [
        (f"the map_vocab_size of teacher {i}", t.arch.map_vocab_size) for i, t in enumerate(config.teachers)]
    for what, size in sizes:
        if not (math.isfinite(size) and size >= 0):
            raise ConfigError(f"{what} must be a non-negative number, got {size}")
    compressed = config.arch.map_vocab_size > 0
    vocab_map, options = config.vocab_map, config.distill.options
    needs_map = [("--unmap_vocab_output", config.arch.unmap_vocab_output),
                 ("--student_build_map_vocab", vocab_map.student_build_map_vocab)]
    for flag, given in needs_map:
        if given and not compressed:
            raise ConfigError(f"{flag} needs vocabulary compression: give --map_vocab_size")
    teacher_no = vocab_map.student_map_vocab_tn
    if vocab_map.student_build_map_vocab and teacher_no is not None and not 0 <= teacher_no < len(config.teachers):
        raise ConfigError(f"--student_map_vocab_tn={teacher_no} but there are {len(config.teachers)} teachers")
    if options.distill_logit_mask_map and not compressed:
        warnings.warn("--distill_logit_mask_map has no effect without --map_vocab_size", stacklevel=3)
    if getattr(config.distill.method_options, "logitsdistil_teacher_input_ids_map", False) and not compressed:
        raise ConfigError("--logitsdistil_teacher_input_ids_map needs vocabulary compression: give --map_vocab_size")


def parse_run_config(argv: Optional[Sequence[str]], stage: str, prog: str) -> RunConfig:
    """Parse `argv` (default: sys.argv[1:]) into a RunConfig; errors raise ConfigError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog, f"{stage} a GLM, optionally distilling it from teachers")
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise _unknown_flag_error(unknown)
    return build_run_config(vars(namespace), stage, explicit_dests(argv))


def build_help(stage: str, prog: str) -> str:
    return build_parser(prog, f"{stage} a GLM, optionally distilling it from teachers").format_help()
