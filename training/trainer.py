"""The training loop: micro-steps with gradient accumulation, teachers and distillation
losses, forward repeats, evaluation, best-checkpoint selection, checkpoints and exact resume,
and the metrics every run reports.

One micro-step: the student forward with its taps and interventions, the hard
loss, each teacher's forward (no grad) with its taps, then the combiner's loss
(pre_loss + inter_loss per teacher). `--forward_repeat_num R` adds R more passes on the same
batch (`StepInfo.repeat_index` 1..R).
"""
import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist

import mpu
from distill.distill_model import StepInfo
from distill.analysis import AnalysisOptions, analysis_metrics, analysis_taps
from distill.random_data import RandomDataOptions, disturb_batch
from model.checkpoint import atomic_write_bytes

from .checkpointing import save_checkpoint, load_checkpoint
from .engine import rng_state, set_rng_state
from .metrics_log import MetricsLogger


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the term."""


@dataclass
class TrainState:
    iteration: int = 0                       # optimizer steps taken
    epoch: int = 0
    best_score: Optional[float] = None
    best_epoch: Optional[int] = None
    best_iteration: Optional[int] = None
    max_score_dict: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopSettings:
    total_iters: int
    gradient_accumulation_steps: int
    log_interval: int
    save_dir: Optional[str]
    save_interval: int = 0                   # optimizer steps between checkpoints (0: never)
    eval_interval: int = 0                   # pretraining: steps between evaluations (0: never)
    iters_per_epoch: int = 0                 # fine-tuning: evaluate (and maybe save) at epoch ends
    save_epoch: int = 0
    eval_epoch: int = 1
    forward_repeat_num: int = 0
    ignore_first_backward_gard: bool = False
    custom_first_eval: bool = False
    custom_tmp_result: Optional[str] = None
    no_save: bool = False
    seed: int = 1234
    mt_has_loss: bool = False
    save_rng: bool = True
    random_data: Optional[RandomDataOptions] = None
    analysis: Optional[AnalysisOptions] = None   # --distil_analysis_inter: measured on steps that log


class Trainer:
    """Runs a stage (pretraining or fine-tuning) for `settings.total_iters` optimizer steps.

    `data` yields micro-batches and has state_dict()/load_state_dict(); `evaluate()` returns a
    {metric: value} dict (first key = the selection metric) or None when there is nothing to
    evaluate.
    """

    def __init__(self, *, engine, stage, data, lr_scheduler, settings: LoopSettings, logger: MetricsLogger,
                 student=None, combiner=None, teachers: Sequence = (), evaluate: Optional[Callable] = None,
                 save_weights: Optional[Callable[[str], None]] = None, client_extras: Optional[Dict] = None):
        self.engine, self.stage, self.data, self.lr_scheduler = engine, stage, data, lr_scheduler
        self.settings, self.logger = settings, logger
        self.student, self.combiner, self.teachers = student, combiner, list(teachers)
        self.evaluate_fn, self.save_weights = evaluate, save_weights
        self.client_extras = dict(client_extras or {})
        self.state = TrainState()
        self._sums: Dict[str, float] = {}
        self._counts: Dict[str, int] = {}
        self._count = 0
        self._tokens = 0
        self._last_log_time = time.perf_counter()
        self._last_loss = float("nan")

    # ------------------------------------------------------------------ one micro-step
    def forward_pass(self, batch, step: StepInfo):
        """(loss, {term: value}) of one pass of the student (and teachers) over `batch`."""
        random_data = self.settings.random_data
        if random_data is not None and step.training and random_data.applies(step.repeat_index):
            generator = torch.Generator().manual_seed(self.settings.seed * 7919 + step.iteration * 131
                                                      + step.repeat_index)
            batch = disturb_batch(batch, random_data, generator)
        inputs = self.stage.model_inputs(batch)
        if self.student is None:
            output = self.engine(*inputs)
            loss, _ = self.stage.hard_loss(output, batch)
            return loss, {"loss": loss.detach(), "hard": loss.detach()}
        analysed = self._analysed(step)
        extra_student, extra_teachers = (analysis_taps(self.student, step, self.settings.analysis) if analysed
                                         else ([], [[] for _ in self.teachers]))
        self.student.begin_step(step)
        output = self.engine(*inputs, taps=_union(self.student.student_taps(step), self.student.base_taps("student"),
                                                  extra_student),
                             interventions=self.student.student_interventions(step))
        hard, hard_per_sample = self.stage.hard_loss(output, batch)
        teacher_outputs, teacher_hard = [], []
        for t_no, teacher in enumerate(self.teachers):
            if teacher.config.disabled:
                teacher_outputs.append(None)
                teacher_hard.append(None)
                continue
            method_taps = self.combiner.teacher_taps(t_no, self.student.teacher_taps(t_no, step))   # RL-KD: semantic
            t_out = teacher(*inputs, taps=_union(method_taps, self.student.base_taps("teacher"),
                                                 extra_teachers[t_no]),
                            interventions=self.student.teacher_interventions(t_no, step))
            teacher_outputs.append(t_out)
            teacher_hard.append(self.stage.hard_loss(t_out, batch) if self.settings.mt_has_loss else None)
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step.iteration * 31
                                                  + step.repeat_index)
        loss, metrics = self.combiner.compute(self.student, output, hard, teacher_outputs,
                                              self.stage.distill_batch(batch), step,
                                              t_hard_losses=teacher_hard, generator=generator,
                                              s_hard_per_sample=hard_per_sample)
        metrics = {name: value.detach() if torch.is_tensor(value) else value for name, value in metrics.items()}
        metrics.update(loss=loss.detach(), hard=hard.detach())
        if analysed:
            for t_no, t_out in enumerate(teacher_outputs):
                if t_out is not None:
                    metrics.update(analysis_metrics(self.student, step, output, t_out, self.settings.analysis, t_no))
        return loss, metrics

    def _analysed(self, step: StepInfo) -> bool:
        """Analysis runs on the passes it names, in the micro-steps of an optimizer step that logs."""
        options, interval = self.settings.analysis, self.settings.log_interval
        return (options is not None and step.training and options.active(step) and interval > 0
                and (step.iteration + 1) % interval == 0)

    def _step_info(self, repeat_index: int = 0, training: bool = True) -> StepInfo:
        return StepInfo(iteration=self.state.iteration, epoch=self.state.epoch, repeat_index=repeat_index,
                        train_iters=self.settings.total_iters, training=training)

    def micro_step(self, batch) -> Dict[str, float]:
        """Forward (with repeats), backward and (on the accumulation boundary) the optimizer step."""
        settings = self.settings
        with self.engine.micro_step():
            loss, metrics = self.forward_pass(batch, self._step_info(0))
            self._check_finite(loss, metrics)
            if settings.forward_repeat_num > 0:
                if settings.ignore_first_backward_gard:
                    self.engine.backward(loss)   # pass 0's gradients reach gradient hooks, then are dropped
                    loss = loss.new_zeros(())
                for repeat in range(1, settings.forward_repeat_num + 1):
                    repeat_loss, repeat_metrics = self.forward_pass(batch, self._step_info(repeat))
                    self._check_finite(repeat_loss, repeat_metrics)
                    loss = loss + repeat_loss
                    metrics.update({f"{k}_repeat{repeat}": v for k, v in repeat_metrics.items()})
                if settings.ignore_first_backward_gard:
                    self.engine.zero_grad()
            self.engine.backward(loss)
        stepped = self.engine.step()
        self._tokens += self.stage.num_tokens(batch)
        for name, value in metrics.items():   # per-name counts: some terms come only on some steps
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1
        self._count += 1
        if stepped:
            self.lr_scheduler.step()
            self.state.iteration += 1
        return metrics

    def _check_finite(self, loss: torch.Tensor, metrics: Dict[str, Any]) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss).all() else 1.0])
        if dist.is_initialized() and dist.get_world_size() > 1:   # every rank stops together
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() == 0.0:
            return
        terms = [f"{name}={float(value):g}" for name, value in metrics.items()
                 if name != "loss" and not math.isfinite(float(value))]
        where = ", ".join(terms) if terms else "on another rank"
        raise NonFiniteLossError(f"iteration {self.state.iteration} (epoch {self.state.epoch}): the loss is "
                                 f"{float(loss.detach()):g}; non-finite terms: {where}. No checkpoint was written "
                                 f"for this step.")

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainState:
        settings = self.settings
        self.engine.train()
        if settings.custom_first_eval and self.state.iteration == 0:
            self._evaluate_and_select()
        while self.state.iteration < settings.total_iters:
            iteration_before = self.state.iteration
            self.micro_step(next(self.data))
            if self.state.iteration == iteration_before:
                continue
            self._after_optimizer_step()
        self._flush_logs(force=True)
        return self.state

    def evaluate_only(self) -> TrainState:
        """Score the weights as they are, once, without training (finetune.py --epochs=0: the
        original's EPOCH_0 rows)."""
        self._evaluate_and_select()
        return self.state

    def _after_optimizer_step(self) -> None:
        settings, it = self.settings, self.state.iteration
        if settings.log_interval and it % settings.log_interval == 0:
            self._flush_logs()
        if self._count:
            self._last_loss = self._sums.get("loss", float("nan")) / self._count
        self.logger.progress(it, {"loss": self._last_loss, "lr": self.lr_scheduler.get_lr()})
        epoch_end = settings.iters_per_epoch and it % settings.iters_per_epoch == 0
        if epoch_end:
            self.state.epoch += 1
        if settings.eval_interval and it % settings.eval_interval == 0:
            self._evaluate_and_select()
        if epoch_end and settings.eval_epoch and self.state.epoch % settings.eval_epoch == 0:
            self._evaluate_and_select()
        periodic = settings.save_interval and it % settings.save_interval == 0
        per_epoch = epoch_end and settings.save_epoch and self.state.epoch % settings.save_epoch == 0
        if periodic or per_epoch or it == settings.total_iters:
            self.save(str(it))

    def _flush_logs(self, force: bool = False) -> None:
        if not self._count:
            return
        names = sorted(self._sums)
        values = torch.tensor([self._sums[n] for n in names] + [float(self._counts[n]) for n in names]
                              + [float(self._tokens)], dtype=torch.float64)
        if dist.is_initialized() and mpu.get_data_parallel_world_size() > 1:
            dist.all_reduce(values, group=mpu.get_data_parallel_group())
        tokens, counts = values[-1].item(), values[len(names):2 * len(names)]
        record = {name: values[i].item() / counts[i].item() for i, name in enumerate(names)}
        self._last_loss = record.get("loss", self._last_loss)
        elapsed = time.perf_counter() - self._last_log_time
        record.update(lr=self.lr_scheduler.get_lr(), tokens_per_second=tokens / max(elapsed, 1e-9),
                      memory_mb=_peak_memory_mb(), epoch=self.state.epoch)
        grad_norm = getattr(self.engine, "global_grad_norm", None)
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        self.logger.log(self.state.iteration, record)
        self._sums, self._counts, self._count, self._tokens = {}, {}, 0, 0
        self._last_log_time = time.perf_counter()

    # ------------------------------------------------------------------ evaluation
    def _evaluate_and_select(self) -> Optional[Dict[str, float]]:
        if self.evaluate_fn is None:
            return None
        self.engine.eval()
        scores = self.evaluate_fn()
        self.engine.train()
        if not scores:
            return None
        self.logger.log(self.state.iteration, scores, split="valid")
        self.logger.write_line(f"iteration {self.state.iteration} epoch {self.state.epoch}: "
                               + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        self._record_best(scores)
        return scores

    def _record_best(self, scores: Dict[str, float]) -> None:
        """Track each metric's best (auto_tune reads it) and save the best weights by the first metric."""
        state = self.state
        for name, value in scores.items():
            best = state.max_score_dict.get(name)
            if best is None or value > best["score_dict"][name]:
                state.max_score_dict[name] = {"epoch": state.epoch, "iteration": state.iteration,
                                              "score_dict": dict(scores)}
        selection = next(iter(scores.values()))
        if self.stage.name == "finetune" and (state.best_score is None or selection > state.best_score):
            state.best_score, state.best_epoch, state.best_iteration = selection, state.epoch, state.iteration
            if self.save_weights is not None and not self.settings.no_save:
                self.save_weights("best")
        if self.settings.custom_tmp_result and _is_rank0():
            payload = {"max_score_dict": state.max_score_dict, "epoch": state.epoch, "iteration": state.iteration,
                       "args": self.client_extras.get("run_config", {})}
            atomic_write_bytes(self.settings.custom_tmp_result, lambda f: f.write(json.dumps(payload).encode()))

    # ------------------------------------------------------------------ checkpoints
    def client_state(self) -> Dict[str, Any]:
        state = {"iteration": self.state.iteration, "train_state": asdict(self.state),
                 "data": self.data.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                 "method": self.student.method_state() if self.student is not None else {},
                 "combiner": self.combiner.combiner_state() if self.combiner is not None else {},
                 **self.client_extras}
        if self.settings.save_rng:
            state["rng"] = rng_state()
        return state

    def save(self, tag: str) -> None:
        if self.settings.no_save or not self.settings.save_dir:
            return
        self._flush_logs()
        save_checkpoint(self.engine, self.settings.save_dir, tag, self.client_state(),
                        is_writer=mpu.get_data_parallel_rank() == 0)

    def resume(self, load_dir: str, load_optimizer: bool = True, load_lr_scheduler: bool = True,
               load_rng: bool = True) -> None:
        client = load_checkpoint(self.engine, load_dir, load_optimizer=load_optimizer)
        self.state = TrainState(**client["train_state"])
        self.data.load_state_dict(client["data"])
        if load_lr_scheduler:
            self.lr_scheduler.load_state_dict(client["lr_scheduler"])
        if self.student is not None:
            self.student.load_method_state(client.get("method", {}))
        if self.combiner is not None:
            self.combiner.load_combiner_state(client.get("combiner", {}))
        if load_rng and "rng" in client:
            set_rng_state(client["rng"])
        self.logger.write_line(f"resumed from {load_dir} at iteration {self.state.iteration}")


def _union(*names_lists) -> list:
    return list(dict.fromkeys(name for names in names_lists for name in names))


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
