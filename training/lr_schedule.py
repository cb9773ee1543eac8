"""GLM's learning-rate schedule, `AnnealingLR`, reproduced exactly.

Linear warmup from 0 to `start_lr` over `warmup_iter` steps, then over `end_iter = num_iters -
warmup_iter` steps (with `r = decay_ratio`):

* linear:   lr = lr0 - lr0 * (1 - r) * (it - warmup_iter) / end_iter   (not clamped: it keeps
            falling past `num_iters`, as the original does)
* cosine:   lr = lr0 * r * ((cos(pi * min(1, (it - warmup_iter) / end_iter)) + 1) * (1/r - 1) / 2 + 1),
            which ends at lr0 * r and stays there
* constant, exponential: lr = lr0 (the original never implemented exponential decay)

`warmup_iter` may be fractional (`warmup * num_iters`); the arithmetic follows the original's
operation order (it stores `1/r`) so the values match it to the last bit.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["AnnealingLR", "DECAY_STYLES", "build_lr_scheduler"]

DECAY_STYLES = ("linear", "cosine", "exponential", "constant")


class AnnealingLR:
    """torch-scheduler-like: `step()`, `get_lr()`, `get_last_lr()`, `state_dict()`, `load_state_dict()`.

    `num_iters` is the whole schedule including warmup; `last_iter=-1` starts at iteration 0
    (lr 0 when there is a warmup). `step()` advances one iteration and sets the lr of every
    param group.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, start_lr: float, warmup_iter: float, num_iters: int,
                 decay_style: str, last_iter: int = -1, decay_ratio: float = 0.1):
        style = decay_style.lower() if isinstance(decay_style, str) else decay_style
        if style not in DECAY_STYLES:
            raise ValueError(f"unknown lr decay style {decay_style!r}; valid styles: {', '.join(DECAY_STYLES)}")
        if not 0 <= warmup_iter < num_iters:
            raise ValueError(f"warmup_iter must be in [0, num_iters) so that some decay remains, "
                             f"got warmup_iter={warmup_iter}, num_iters={num_iters}")
        if not decay_ratio > 0:
            raise ValueError(f"decay_ratio must be positive (the final lr is start_lr * decay_ratio), "
                             f"got {decay_ratio}")
        self.optimizer = optimizer
        self.start_lr = float(start_lr)
        self.warmup_iter = warmup_iter
        self.end_iter = num_iters - warmup_iter
        self.decay_style = style
        self.decay_ratio = decay_ratio
        self.iteration = last_iter + 1
        self.step(self.iteration)

    def get_lr(self) -> float:
        """The lr at the current iteration."""
        lr0, it, warmup = self.start_lr, self.iteration, self.warmup_iter
        if warmup > 0 and it <= warmup:
            return lr0 * it / warmup
        inverse_ratio = 1 / self.decay_ratio  # the original stores 1/r and computes with it
        if self.decay_style == "linear":   # clamped at the schedule's end (the original went on, below 0)
            return lr0 - lr0 * (1 - 1 / inverse_ratio) * min(1.0, (it - warmup) / self.end_iter)
        if self.decay_style == "cosine":
            progress = min(1.0, (it - warmup) / self.end_iter)
            return lr0 / inverse_ratio * ((math.cos(math.pi * progress) + 1) * (inverse_ratio - 1) / 2 + 1)
        return lr0  # constant; exponential was never implemented and keeps lr0

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, step_num: Optional[int] = None) -> None:
        """Go to iteration `step_num` (default: the next one) and set the lr of every param group."""
        self.iteration = self.iteration + 1 if step_num is None else step_num
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "start_lr": self.start_lr, "warmup_iter": self.warmup_iter,
                "end_iter": self.end_iter, "decay_style": self.decay_style, "decay_ratio": self.decay_ratio}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; also reads the original GLM format (keys warmup_iter,
        num_iters = the current iteration, end_iter, decay_style, decay_ratio = 1/r), of which
        the original restored only warmup_iter and the iteration."""
        if "iteration" in state:
            self.start_lr = state["start_lr"]
            self.end_iter = state["end_iter"]
            self.decay_style = state["decay_style"]
            self.decay_ratio = state["decay_ratio"]
            iteration = state["iteration"]
        else:
            iteration = state["num_iters"]
        self.warmup_iter = state["warmup_iter"]
        self.step(iteration)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr: float, train_iters: int, lr_decay_iters: Optional[int],
                       warmup_fraction: float, decay_style: str, decay_ratio: float,
                       gradient_accumulation_steps: int = 1, finetune: bool = False) -> AnnealingLR:
    """The original's `get_learning_rate_scheduler`: the schedule spans `lr_decay_iters or
    train_iters` steps (divided by GAS in fine-tuning, at least 1), of which `warmup_fraction`
    are warmup."""
    num_iters = lr_decay_iters or train_iters
    if finetune:
        num_iters = num_iters // gradient_accumulation_steps
    num_iters = max(1, num_iters)
    warmup_iter = warmup_fraction * num_iters
    return AnnealingLR(optimizer, start_lr=lr, warmup_iter=warmup_iter, num_iters=num_iters,
                       decay_style=decay_style, last_iter=-1, decay_ratio=decay_ratio)
