"""A run whose student and teachers are Hugging Face models: language-modelling distillation
on a text/JSONL corpus (pretrain.py with --hf_model / --teacher_hf_model / --mt_hf_model /
--hf_student_layers). The engine, optimizer, LR schedule, trainer, checkpoints, resume,
metrics and progress bar are the GLM run's; what differs is built here: the models (offline
from their folders), the tokenizer (the student's folder), the batches (`data_utils.hf_lm`)
and, at the end, the student exported as a folder `AutoModelFor...from_pretrained` loads
(`<save>/hf_student`).
"""
import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

import mpu
from data_utils.hf_lm import LMBatches, corpus_blocks, special_ids
from distill.distill_model import TeacherInfo, build_student
from model.hf_init import export_student, layer_dropped_student

from . import engine as engines
from .config import ConfigError, RunConfig
from .hf_models import (check_classifier, check_tokenizers, gguf_file, load_hf_model, load_tokenizer, objective_of,
                        read_hf_config)
from .lr_schedule import build_lr_scheduler
from .metrics_log import MetricsLogger
from .multi_teacher import build_combiner, method_teacher_infos
from .stages import HFLanguageModelStage
from .teachers import Teacher, teacher_dtype
from .trainer import LoopSettings, Trainer

EXPORT_FOLDER = "hf_student"


def _teachers(cfg: RunConfig, objective: str, env, log, num_labels: Optional[int] = None) -> List[Teacher]:
    teachers = []
    for t_no, teacher_cfg in enumerate(cfg.teachers):
        dtype = teacher_dtype(teacher_cfg.half_precision, env.device)
        if num_labels is not None:
            check_classifier(read_hf_config(teacher_cfg.load_pretrained, f"teacher {t_no}"),
                             teacher_cfg.load_pretrained, num_labels, f"teacher {t_no}")
        module = load_hf_model(teacher_cfg.load_pretrained, objective, dtype, num_labels).to(env.device).eval()
        for param in module.parameters():
            param.requires_grad_(False)
        log(f"[teacher {t_no}] {teacher_cfg.load_pretrained}: {module.config.model_type}, "
            f"{module.config.num_layers} layers, {sum(p.numel() for p in module.parameters()):,} parameters")
        teachers.append(Teacher(module, teacher_cfg, dtype))
    return teachers


def _student(cfg: RunConfig, objective: str, teachers: List[Teacher], log, num_labels: Optional[int] = None):
    hf = cfg.hf
    if hf.student_layers is not None:
        from .arguments import student_layer_spec
        source = teachers[0].module
        keep = student_layer_spec(hf.student_layers, source.config.num_layers)
        engines.set_random_seed(cfg.train.seed)
        student = layer_dropped_student(source.hf.float(), keep)
        source.hf.to(teachers[0].dtype)
        student.train()
        for param in student.parameters():
            param.requires_grad_(True)
        log(f"student: teacher 0's layers {keep} ({len(keep)} of {source.config.num_layers}), width kept")
        from model.hf import HFTapModel
        return HFTapModel(student)
    engines.set_random_seed(cfg.train.seed)
    module = load_hf_model(hf.student, objective, num_labels=num_labels)
    log(f"student: {hf.student} ({module.config.model_type}, {module.config.num_layers} layers)")
    return module


def build_hf_models(cfg: RunConfig, stage, env, log):
    """(student module, method wrapper or None, combiner or None, teachers)."""
    num_labels = stage.task.num_labels if cfg.stage == "finetune" else None
    objective = "classification" if num_labels is not None else objective_of(
        read_hf_config(cfg.hf.student_source, "the student"), cfg.hf.objective)
    teachers = (_teachers(cfg, objective, env, log, num_labels) if cfg.distill.enabled or cfg.hf.student_layers
                else [])
    student_module = _student(cfg, objective, teachers, log, num_labels)
    student = combiner = None
    if cfg.distill.enabled:
        infos = [TeacherInfo(t.module.config.num_layers, t.module.config.hidden_size,
                             t.module.config.num_attention_heads, t.module.config.num_key_value_heads)
                 for t in teachers]
        try:
            student = build_student(cfg.distill.student_model, student_module, cfg.distill.options,
                                    method_teacher_infos(cfg, infos), method_options=cfg.distill.method_options)
        except (ValueError, NotImplementedError) as error:
            raise ConfigError(f"--student_model={cfg.distill.student_model} on Hugging Face models: {error}") from None
        student.bind_teachers([teacher.module for teacher in teachers])
        combiner = build_combiner(cfg, stage, student, student_module.config.vocab_size, log=log)
        check_method_taps(cfg.distill.student_model, student, student_module, teachers, combiner)
    return student_module, student, combiner, teachers


def check_method_taps(method: str, student, student_module, teachers: List[Teacher], combiner) -> None:
    """Every tap the method (and the combiner) asks of each model at the first step exists in
    that model: a ConfigError naming the method, the side and the architecture otherwise."""
    from distill.distill_model import StepInfo
    step = StepInfo(train_iters=1)
    probe = copy.deepcopy(student.method_state())
    student.begin_step(step)
    sides = [("the student", student_module, list(student.student_taps(step)) + student.base_taps("student"))]
    for t_no, teacher in enumerate(teachers):
        if not teacher.config.disabled:
            taps = combiner.teacher_taps(t_no, student.teacher_taps(t_no, step)) + student.base_taps("teacher")
            sides.append((f"teacher {t_no}", teacher.module, taps))
    student.load_method_state(probe)   # the first training step draws again, as without this check
    for side, model, taps in sides:
        missing = sorted(set(taps) - set(model.tap_names()))
        if missing:
            raise ConfigError(f"--student_model={method}: {side} ({model.config.model_type}, "
                              f"{type(model.hf).__name__}) has no tap {missing[0]!r}"
                              + (" (no LM head)" if missing[0] == "logits_parallel" else ""))


def build_hf_data(cfg: RunConfig, tokenizer, objective: str, env, batch_size: int):
    """(training batches, validation batches) of the corpus."""
    if not cfg.data.train_data:
        raise ConfigError("pretraining needs --train-data (a text or JSONL file, or a folder of them)")
    for path in cfg.data.train_data:
        if not Path(path).exists():
            raise ConfigError(f"--train-data={path}: no such file or folder")
    ids = special_ids(tokenizer, objective)
    block = cfg.data.seq_length - (2 if objective == "masked" else 0)   # masked LM adds [CLS] ... [SEP]
    train, valid, _ = corpus_blocks(cfg.data.train_data, tokenizer, block, cfg.data.split, cfg.train.seed,
                                    ids.separator, text_key=cfg.data.text_key)
    make = lambda blocks, seed: LMBatches(blocks, objective, ids, batch_size, mpu.get_data_parallel_rank(),
                                          mpu.get_data_parallel_world_size(), seed, env.device, cfg.hf.mask_prob)
    try:
        train_batches = make(train, cfg.train.seed)
    except ValueError as error:
        raise ConfigError(f"{', '.join(cfg.data.train_data)}: the training split is too small ({error})") from None
    valid_batches = []
    if valid.size(0) >= batch_size * mpu.get_data_parallel_world_size():
        valid_batches = make(valid, cfg.train.seed + 1).take(cfg.train.eval_iters)
    return train_batches, valid_batches


def run_hf(cfg: RunConfig, env, ctx, log, start_writing, ds_config: Dict[str, Any], values: Dict[str, Any],
           batch_size: int) -> Dict[str, Any]:
    """Build the HF run and train; returns what `training.run.run` returns."""
    tokenizer_folder = cfg.hf.student_source
    if cfg.hf.student is not None and cfg.hf.teachers:
        check_tokenizers(cfg.hf.student, list(cfg.hf.teachers))
    tokenizer = load_tokenizer(tokenizer_folder, "the student's tokenizer")
    if cfg.stage == "finetune":
        from .hf_tasks import run_hf_finetune
        return run_hf_finetune(cfg, env, ctx, log, tokenizer, tokenizer_folder, ds_config, values, batch_size)
    objective = objective_of(read_hf_config(tokenizer_folder, "the student"), cfg.hf.objective)
    log(f"tokenizer: {tokenizer_folder} ({len(tokenizer)} tokens); objective: {objective} LM")
    stage = HFLanguageModelStage("pretrain")
    train_data, valid = build_hf_data(cfg, tokenizer, objective, env, batch_size)
    total_iters = cfg.train.train_iters
    if not total_iters:
        raise ConfigError("nothing to train: give --train-iters")
    student_module, student, combiner, teachers = build_hf_models(cfg, stage, env, log)
    module = student if student is not None else student_module
    engine, optimizer = _engine(cfg, module, env, student is not None, ds_config, values)
    lr_scheduler = build_lr_scheduler(optimizer, values["lr"], max(total_iters, 1), cfg.optim.lr_decay_iters,
                                      cfg.optim.warmup, cfg.optim.lr_decay_style, cfg.optim.lr_decay_ratio)
    forward = lambda *inputs: engine(*inputs)
    evaluate = (lambda: stage.evaluate(forward, valid)) if valid else None
    logger = MetricsLogger(ctx.save_dir, total_iters, enabled=env.is_main, open_now=False,
                           tensorboard=not cfg.train.custom_no_summary_writer, desc="pretrain")
    settings = LoopSettings(
        total_iters=total_iters, gradient_accumulation_steps=values["gradient_accumulation_steps"],
        log_interval=cfg.train.log_interval, save_dir=ctx.save_dir, save_interval=cfg.train.save_interval,
        eval_interval=cfg.train.eval_interval, forward_repeat_num=cfg.train.forward_repeat_num,
        ignore_first_backward_gard=cfg.train.ignore_first_backward_gard, custom_first_eval=cfg.train.custom_first_eval,
        custom_tmp_result=cfg.train.custom_tmp_result, no_save=cfg.train.custom_no_save_checkpoint,
        seed=cfg.train.seed, mt_has_loss=cfg.distill.mt_has_loss)
    recorded = provenance_of(student_module, tokenizer_folder, tokenizer)
    trainer = Trainer(engine=engine, stage=stage, data=train_data, lr_scheduler=lr_scheduler, settings=settings,
                      logger=logger, student=student, combiner=combiner, teachers=teachers, evaluate=evaluate,
                      client_extras={"run_config": cfg.to_dict(), **recorded})
    state = resume_and_train(cfg, ctx, env, trainer, logger, start_writing, recorded, ds_config)
    result = {"iteration": state.iteration, "max_score_dict": state.max_score_dict, "best_score": state.best_score}
    if ctx.save_dir and env.is_main and not cfg.train.custom_no_save_checkpoint:
        result["export"] = export_to(ctx, student_module, tokenizer_folder, tokenizer)
        log(f"exported the student to {result['export']} "
            f"(AutoModelFor{'MaskedLM' if objective == 'masked' else 'CausalLM'})")
    return result


def provenance_of(student_module, tokenizer_folder: str, tokenizer) -> Dict[str, Any]:
    """What every checkpoint of an HF run carries beside its weights (export_hf.py reads it)."""
    return {"model_config": student_module.hf.config.to_dict(), "model_family": "hf",
            "tokenizer": {"folder": str(tokenizer_folder), "num_tokens": len(tokenizer)}}


def resume_and_train(cfg: RunConfig, ctx, env, trainer: Trainer, logger, start_writing, recorded: Dict[str, Any],
                     ds_config: Dict[str, Any]):
    """--load, then the run folder's first writes (every check has passed), then train: the state."""
    if cfg.train.load:
        trainer.resume(cfg.train.load, load_optimizer=not cfg.train.no_load_optim,
                       load_lr_scheduler=not cfg.train.no_load_lr_scheduler, load_rng=not cfg.train.no_load_rng)
    start_writing(cfg, ctx, env, {"run": cfg.to_dict(), "model": recorded["model_config"], "deepspeed": ds_config})
    logger.open(initial_step=trainer.state.iteration)
    try:
        return trainer.train()
    finally:
        logger.close()


def export_to(ctx, student_module, tokenizer_folder: str, tokenizer) -> str:
    """The student written to <save>/hf_student with its tokenizer: a folder's files copied, or
    (a GGUF file has none) the loaded tokenizer's save_pretrained."""
    folder = Path(ctx.save_dir) / EXPORT_FOLDER
    source = {"tokenizer": tokenizer} if gguf_file(tokenizer_folder) else {"tokenizer_dir": tokenizer_folder}
    export_student(student_module, folder, overwrite=True, **source)
    return str(folder)


def _engine(cfg: RunConfig, module, env, find_unused: bool, ds_config: Dict[str, Any], values: Dict[str, Any]):
    from .run import build_engine
    return build_engine(cfg, module, env, find_unused=find_unused, ds_config=ds_config, values=values)
