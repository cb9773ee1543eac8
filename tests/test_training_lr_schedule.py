"""AnnealingLR against hand-computed values and a transcription of the original."""
import io
import math

import pytest
import torch

from training.lr_schedule import AnnealingLR, build_lr_scheduler

# Golden values below are decimal hand computations; the schedule computes through 1/r and
# float division, so they agree to rounding only (rel 1e-12 is ~1e4 ulp of slack, far below any
# real formula error, which would be >= 1e-3 relative at these points).
REL = 1e-12


def _optimizer(num_groups: int = 1) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(num_groups)]
    return torch.optim.SGD(groups, lr=123.0)


def _lr_at(scheduler: AnnealingLR, iteration: int) -> float:
    scheduler.step(iteration)
    return scheduler.optimizer.param_groups[0]["lr"]


def _schedule(style: str, decay_ratio: float = 0.1) -> AnnealingLR:
    """lr0 = 2.0, 100 iterations, 10 of warmup: end_iter = 90."""
    return AnnealingLR(_optimizer(), start_lr=2.0, warmup_iter=10, num_iters=100, decay_style=style,
                       decay_ratio=decay_ratio)


@pytest.mark.parametrize("style", ["linear", "cosine", "constant", "exponential"])
def test_warmup_is_linear_from_zero(style):
    scheduler = _schedule(style)
    assert scheduler.optimizer.param_groups[0]["lr"] == 0.0  # constructed at iteration 0
    assert _lr_at(scheduler, 1) == pytest.approx(0.2, rel=REL)
    assert _lr_at(scheduler, 5) == pytest.approx(1.0, rel=REL)
    assert _lr_at(scheduler, 10) == pytest.approx(2.0, rel=REL)


def test_linear_decay_hand_values():
    scheduler = _schedule("linear")
    # lr = lr0 - lr0 * (1 - r) * (it - 10) / 90
    assert _lr_at(scheduler, 55) == pytest.approx(2.0 - 2.0 * 0.9 * 0.5, rel=REL)  # 1.1
    assert _lr_at(scheduler, 40) == pytest.approx(2.0 - 2.0 * 0.9 / 3, rel=REL)  # 1.4
    assert _lr_at(scheduler, 100) == pytest.approx(0.2, rel=REL)  # lr0 * r at the end
    # Past num_iters the lr stays at lr0 * r (the original kept falling, to -0.7 here).
    assert _lr_at(scheduler, 145) == pytest.approx(0.2, rel=REL)


def test_cosine_decay_hand_values():
    scheduler = _schedule("cosine")
    # lr = lr0 * r * ((cos(pi * p) + 1) * (1/r - 1) / 2 + 1), p = min(1, (it - 10) / 90)
    assert _lr_at(scheduler, 55) == pytest.approx(2.0 * 0.1 * (1 * 9 / 2 + 1), rel=REL)  # p = 1/2: 1.1
    assert _lr_at(scheduler, 40) == pytest.approx(2.0 * 0.1 * (1.5 * 9 / 2 + 1), rel=REL)  # p = 1/3: 1.55
    assert _lr_at(scheduler, 100) == pytest.approx(0.2, rel=REL)
    assert _lr_at(scheduler, 250) == pytest.approx(0.2, rel=REL)  # clamped after num_iters


@pytest.mark.parametrize("style", ["constant", "exponential"])
def test_constant_and_exponential_keep_start_lr(style):
    scheduler = _schedule(style)
    assert [_lr_at(scheduler, it) for it in (10, 11, 55, 100, 1000)] == [2.0] * 5


def test_no_warmup_starts_at_start_lr():
    scheduler = AnnealingLR(_optimizer(), 0.5, warmup_iter=0, num_iters=10, decay_style="linear", decay_ratio=0.5)
    assert scheduler.optimizer.param_groups[0]["lr"] == 0.5
    assert _lr_at(scheduler, 5) == pytest.approx(0.5 - 0.5 * 0.5 * 0.5, rel=REL)


class _OriginalAnnealingLR:
    """The original's arithmetic, transcribed from GLM's learning_rates.py: the
    caller passes num_iters - warmup_iter as the decay length and the ratio is stored inverted."""

    def __init__(self, start_lr, warmup_iter, decay_iters, decay_style, decay_ratio):
        self.start_lr, self.warmup_iter, self.end_iter = start_lr, warmup_iter, decay_iters
        self.decay_style, self.decay_ratio = decay_style, 1 / decay_ratio

    def lr(self, num_iters):
        if self.warmup_iter > 0 and num_iters <= self.warmup_iter:
            return float(self.start_lr) * num_iters / self.warmup_iter
        if self.decay_style == "linear":
            decay_step_ratio = (num_iters - self.warmup_iter) / self.end_iter
            return self.start_lr - self.start_lr * (1 - 1 / self.decay_ratio) * decay_step_ratio
        if self.decay_style == "cosine":
            decay_step_ratio = min(1.0, (num_iters - self.warmup_iter) / self.end_iter)
            return self.start_lr / self.decay_ratio * (
                (math.cos(math.pi * decay_step_ratio) + 1) * (self.decay_ratio - 1) / 2 + 1)
        return self.start_lr


@pytest.mark.parametrize("style,decay_ratio,warmup", [("cosine", 0.05, 0.05), ("linear", 0.1, 0.1),
                                                      ("linear", 0.3, 0.0), ("cosine", 0.7, 0.13)])
def test_matches_the_original_bit_for_bit(style, decay_ratio, warmup):
    num_iters, lr = 1000, 4e-4
    scheduler = build_lr_scheduler(_optimizer(), lr, num_iters, None, warmup, style, decay_ratio)
    original = _OriginalAnnealingLR(lr, warmup * num_iters, num_iters - warmup * num_iters, style, decay_ratio)
    ours = [scheduler.get_lr()]
    for _ in range(1200):
        scheduler.step()
        ours.append(scheduler.get_lr())
    # Exact within the schedule (same operations in the same order); past its end linear decay
    # is clamped at lr0 * r where the original went on falling.
    assert ours[:num_iters + 1] == [original.lr(it) for it in range(num_iters + 1)]
    assert all(value == pytest.approx(lr * decay_ratio) for value in ours[num_iters:])


def test_pretraining_recipe_end_values():
    """The original's pretraining recipe: cosine, lr_decay_iters 120000 of train_iters 150000,
    ratio 0.05, warmup 0.05."""
    scheduler = build_lr_scheduler(_optimizer(), 4e-4, 150000, 120000, 0.05, "cosine", 0.05)
    assert scheduler.warmup_iter == pytest.approx(6000, rel=REL)
    assert scheduler.end_iter == pytest.approx(114000, rel=REL)
    assert _lr_at(scheduler, 6000) == pytest.approx(4e-4, rel=REL)
    assert _lr_at(scheduler, 120000) == pytest.approx(2e-5, rel=REL)
    assert _lr_at(scheduler, 150000) == pytest.approx(2e-5, rel=REL)


def test_finetune_divides_the_schedule_by_gradient_accumulation():
    scheduler = build_lr_scheduler(_optimizer(), 1e-5, 1000, None, 0.1, "linear", 0.1,
                                   gradient_accumulation_steps=4, finetune=True)
    # num_iters = 1000 // 4 = 250; warmup 25; end_iter 225
    assert (scheduler.warmup_iter, scheduler.end_iter) == (25.0, 225.0)
    assert _lr_at(scheduler, 25) == pytest.approx(1e-5, rel=REL)
    assert _lr_at(scheduler, 250) == pytest.approx(1e-6, rel=REL)
    pretrain = build_lr_scheduler(_optimizer(), 1e-5, 1000, None, 0.1, "linear", 0.1, gradient_accumulation_steps=4)
    assert (pretrain.warmup_iter, pretrain.end_iter) == (100.0, 900.0)  # not divided outside fine-tuning
    tiny = build_lr_scheduler(_optimizer(), 1e-5, 2, None, 0.0, "linear", 0.1, gradient_accumulation_steps=4,
                              finetune=True)
    assert tiny.end_iter == 1  # at least one iteration


def test_every_param_group_gets_the_lr():
    scheduler = AnnealingLR(_optimizer(3), 1.0, warmup_iter=4, num_iters=8, decay_style="cosine")
    scheduler.step()
    assert [g["lr"] for g in scheduler.optimizer.param_groups] == [0.25, 0.25, 0.25]
    assert scheduler.get_last_lr() == [0.25, 0.25, 0.25]


def test_state_dict_round_trip_continues_identically():
    first = build_lr_scheduler(_optimizer(), 3e-4, 200, None, 0.1, "cosine", 0.1)
    for _ in range(37):
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    # Built from different flags: the checkpoint's schedule is what continues.
    resumed = build_lr_scheduler(_optimizer(), 1.0, 50, None, 0.0, "linear", 0.5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state_dict() == first.state_dict()
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
    a, b = [], []
    for _ in range(300):
        first.step()
        resumed.step()
        a.append(first.optimizer.param_groups[0]["lr"])
        b.append(resumed.optimizer.param_groups[0]["lr"])
    assert a == b
    assert len(set(a)) > 100  # the continuation really moves (warmup done, cosine decaying)


def test_loads_the_original_state_dict_format():
    """GLM saved {warmup_iter, num_iters (the current iteration), decay_style, end_iter,
    decay_ratio (inverted)} and restored only warmup_iter and the iteration."""
    scheduler = build_lr_scheduler(_optimizer(), 2.0, 100, None, 0.1, "linear", 0.1)
    scheduler.load_state_dict({"warmup_iter": 10.0, "num_iters": 55, "decay_style": "linear", "end_iter": 90.0,
                               "decay_ratio": 10.0})
    assert scheduler.iteration == 55
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(1.1, rel=REL)


def test_unknown_style_raises_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown lr decay style 'noam'.*linear, cosine, exponential, constant"):
        AnnealingLR(_optimizer(), 1.0, 0, 10, "noam")


def test_bad_schedules_raise():
    with pytest.raises(ValueError, match="warmup_iter must be in"):
        AnnealingLR(_optimizer(), 1.0, warmup_iter=10, num_iters=10, decay_style="linear")
    with pytest.raises(ValueError, match="decay_ratio must be positive"):
        AnnealingLR(_optimizer(), 1.0, 0, 10, "cosine", decay_ratio=0.0)
