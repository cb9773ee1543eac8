"""Fine-tuning Hugging Face models on a task (finetune.py with --hf_model / --teacher_hf_model /
--hf_student_layers): the task's examples encoded with the model folder's tokenizer for a
sequence-classification head, and the run (the GLM fine-tuning run's loop, evaluation every
epoch, best checkpoint, predictions, results.json and --custom_tmp_result, so auto_tune sweeps
HF runs too), ending with the best student exported as a folder
`AutoModelForSequenceClassification` loads.
"""
from typing import Any, Dict, List

import numpy as np

import mpu
from tasks import Task, TaskConfig
from tasks.examples import InputExample
from tasks.processor import label_index

from .config import ConfigError, RunConfig
from .data import EpochBatches
from .lr_schedule import build_lr_scheduler
from .metrics_log import MetricsLogger
from .stages import HFClassificationStage
from .trainer import LoopSettings, Trainer



class EncodedExamples:
    """A split's examples and their samples for HFClassificationStage: `text` and
    `attention_mask` [S] (the tokenizer's pair encoding, truncated and padded to S), `label`
    (the label index, a float for regression, -1 when unlabelled), `uid`, `idx`."""

    def __init__(self, task: Task, examples: List[InputExample], tokenizer, seq_length: int):
        self.examples = examples
        if tokenizer.pad_token is None:   # decoders' tokenizers often have none: pad with EOS (masked out)
            tokenizer.pad_token = tokenizer.eos_token
        encoded = tokenizer([e.text_a for e in examples], [e.text_b or "" for e in examples] if any(
            e.text_b for e in examples) else None, truncation=True, max_length=seq_length, padding="max_length")
        self.samples = [{"text": np.asarray(ids, dtype=np.int64), "attention_mask": np.asarray(mask, dtype=np.int64),
                         "label": _label(task, example), "uid": example.guid, "idx": example.idx}
                        for ids, mask, example in zip(encoded["input_ids"], encoded["attention_mask"], examples)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.samples[index]


def _label(task: Task, example: InputExample):
    if task.spec.regression:
        return np.float32(-1.0 if example.label is None else example.label)
    return -1 if example.label is None else label_index(task.labels, example)


def build_task(cfg: RunConfig) -> Task:
    ft = cfg.finetune
    if not ft.task or not ft.data_dir:
        raise ConfigError("fine-tuning needs --task and --data-dir")
    # cloze_eval=False: plain classification inputs, so the task never needs a GLM tokenizer.
    return Task(TaskConfig(ft.task, ft.data_dir, max_seq_length=cfg.data.seq_length, cloze_eval=False,
                           few_superglue=ft.few_superglue, seed=cfg.train.seed), tokenizer=None)


def run_hf_finetune(cfg: RunConfig, env, ctx, log, tokenizer, tokenizer_folder: str, ds_config: Dict[str, Any],
                    values: Dict[str, Any], batch_size: int) -> Dict[str, Any]:
    """Build the HF fine-tuning run and train; returns what `training.run.run` returns."""
    from .hf_run import _engine, build_hf_models, export_to, provenance_of, resume_and_train
    from .run import _finish_finetuning, _start_writing, _total_iters, finetune_evaluator, save_weights_fn
    task = build_task(cfg)
    stage = HFClassificationStage(task)
    train_set = EncodedExamples(task, task.read_examples("train"), tokenizer, cfg.data.seq_length)
    dev = EncodedExamples(task, task.read_examples("dev"), tokenizer, cfg.data.seq_length)
    try:
        train = EpochBatches(train_set, batch_size, mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size(),
                             cfg.train.seed, env.device)
    except ValueError as error:
        raise ConfigError(f"--task={cfg.finetune.task}: {error}") from None
    total_iters, iters_per_epoch = _total_iters(cfg, train, values)
    if total_iters <= 0:
        raise ConfigError("nothing to train: give --epochs (or --train-iters)")
    log(f"task {task.name}: {len(train_set)} training and {len(dev)} dev examples, {task.num_labels} labels; "
        f"{iters_per_epoch} iterations per epoch")
    student_module, student, combiner, teachers = build_hf_models(cfg, stage, env, log)
    module = student if student is not None else student_module
    engine, optimizer = _engine(cfg, module, env, student is not None, ds_config, values)
    lr_scheduler = build_lr_scheduler(optimizer, values["lr"], max(total_iters, 1), cfg.optim.lr_decay_iters,
                                      cfg.optim.warmup, cfg.optim.lr_decay_style, cfg.optim.lr_decay_ratio)
    evaluate = finetune_evaluator(stage, lambda *inputs: engine(*inputs), dev, cfg.train.eval_batch_size or batch_size,
                                  env.device)
    logger = MetricsLogger(ctx.save_dir, total_iters, enabled=env.is_main, open_now=False,
                           tensorboard=not cfg.train.custom_no_summary_writer, desc="finetune")
    settings = LoopSettings(
        total_iters=total_iters, gradient_accumulation_steps=values["gradient_accumulation_steps"],
        log_interval=cfg.train.log_interval, save_dir=ctx.save_dir, iters_per_epoch=iters_per_epoch,
        save_epoch=cfg.train.save_epoch, eval_epoch=cfg.train.eval_epoch, forward_repeat_num=cfg.train.forward_repeat_num,
        ignore_first_backward_gard=cfg.train.ignore_first_backward_gard, custom_first_eval=cfg.train.custom_first_eval,
        custom_tmp_result=cfg.train.custom_tmp_result, no_save=cfg.train.custom_no_save_checkpoint,
        seed=cfg.train.seed, mt_has_loss=cfg.distill.mt_has_loss)
    recorded = provenance_of(student_module, tokenizer_folder, tokenizer)
    trainer = Trainer(engine=engine, stage=stage, data=train, lr_scheduler=lr_scheduler, settings=settings,
                      logger=logger, student=student, combiner=combiner, teachers=teachers, evaluate=evaluate,
                      save_weights=save_weights_fn(ctx, engine.module, recorded),
                      client_extras={"run_config": cfg.to_dict(), **recorded})
    state = resume_and_train(cfg, ctx, env, trainer, logger, _start_writing, recorded, ds_config)
    result = {"iteration": state.iteration, "max_score_dict": state.max_score_dict, "best_score": state.best_score}
    if ctx.save_dir and not settings.no_save:
        result["test_results"] = _finish_finetuning(cfg, ctx, engine, stage, evaluate, state, env)
        if env.is_main:
            result["export"] = export_to(ctx, student_module, tokenizer_folder, tokenizer)
            log(f"exported the {'best ' if state.best_score is not None else ''}student to {result['export']} "
                f"(AutoModelForSequenceClassification)")
    return result
