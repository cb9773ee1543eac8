"""Schedules and losses of the logits-only methods, as small pure functions.

Annealing-KD's loss is the generic soft MSE with a scaled teacher, `distill.losses.mse(s, t,
teacher_weight=phi)`; what is specific to it is the schedule `annealing_phi`. Continuation-KD
adds a hard-loss weight `continuation_psi` and the per-sample hinge `continuation_loss`.
"""
import math
from fractions import Fraction

import torch


def _progress(iteration: int, total_iters: int) -> Fraction:
    """it / T_total as an exact fraction clamped to [0, 1]; 0 when T_total is unknown (<= 0)."""
    if total_iters <= 0:
        return Fraction(0)
    return min(max(Fraction(iteration, total_iters), Fraction(0)), Fraction(1))


def annealing_phi(iteration: int, total_iters: int, max_t: float) -> float:
    """Teacher-logit weight phi of Annealing-KD: t = (1 - it / T_total) * T_max and
    phi = 1 - (max(1, ceil(t)) - 1) / T_max, rising stepwise from 1/T_max (it = 0) to 1
    (last segment). Computed in exact arithmetic (the original's float t could exceed an
    integer by one ulp and lag a step behind at segment boundaries, e.g. it=6 of 7 with
    T_max=7 gave 6/7 instead of 1)."""
    if not (math.isfinite(max_t) and max_t >= 1.0):
        raise ValueError(f"max_t must be a finite number >= 1, got {max_t}")
    t = (1 - _progress(iteration, total_iters)) * Fraction(max_t)
    return 1.0 - (max(1, math.ceil(t)) - 1) / max_t


def continuation_psi(iteration: int, total_iters: int, psi_sep: float, psi_denominator: float) -> float:
    """Hard-loss weight psi of Continuation-KD: it / (psi_denominator * T_total), set to 1
    once it > psi_sep * T_total (only the hard loss from there on)."""
    if not (math.isfinite(psi_denominator) and psi_denominator > 0):
        raise ValueError(f"psi_denominator must be positive, got {psi_denominator}")
    progress = _progress(iteration, total_iters)
    if progress > Fraction(psi_sep):
        return 1.0
    return min(float(progress / Fraction(psi_denominator)), 1.0)


def continuation_loss(soft: torch.Tensor, hard: torch.Tensor, *, psi: float, phi: float,
                      margin: float) -> torch.Tensor:
    """Per-sample psi * hard + (1 - psi) * soft * [soft > margin * phi].

    soft: [B] per-sample soft losses; hard: [] or [B] hard losses -> [B] fp32. The hinge keeps
    the soft term only for samples whose soft loss exceeds margin * phi; the indicator is
    not differentiated (a constant 0/1 per sample). No NaN for finite inputs: fully padded
    samples have soft = 0, which the hinge drops for margin * phi >= 0.
    """
    soft, hard = soft.float(), hard.float()
    kept = (soft.detach() > margin * phi).to(soft.dtype)
    return psi * hard + (1.0 - psi) * soft * kept
