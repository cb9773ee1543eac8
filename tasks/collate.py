"""Batching of task samples: fixing or padding the number of choices, then stacking.

Padded choices repeat the first choice and get ``loss_mask`` 0 and ``choice_index`` -1; the
model masks them with -10000 before the loss.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# Keys whose leading dimension is the choice dimension in a multi-token sample.
CHOICE_KEYS = ("text", "position", "target", "logit_mask", "attention_mask", "loss_mask",
               "choice_index")
# Python values gathered into lists instead of tensors.
LIST_KEYS = ("uid", "idx")


def num_choices(sample: dict) -> int:
    """C of a multi-token sample (``text`` [C, S])."""
    if np.ndim(sample["text"]) != 2:
        raise ValueError(f"expected a multi-token sample with text [C, S], got shape "
                         f"{np.shape(sample['text'])}")
    return int(np.shape(sample["text"])[0])


def _select_rows(sample: dict, rows: Sequence[int]) -> dict:
    out = dict(sample)
    for key in CHOICE_KEYS:
        if key in sample:
            out[key] = np.asarray(sample[key])[list(rows)]
    return out


def pad_choices(sample: dict, target: int) -> dict:
    """Pad to ``target`` choices by repeating the first; padded rows get loss_mask 0."""
    count = num_choices(sample)
    if count > target:
        raise ValueError(f"cannot pad {count} choices down to {target}")
    out = _select_rows(sample, [*range(count), *[0] * (target - count)])
    loss_mask = np.asarray(sample.get("loss_mask", np.ones(count, dtype=np.int64)))
    out["loss_mask"] = np.concatenate([loss_mask, np.zeros(target - count, dtype=np.int64)])
    if "choice_index" in sample:
        out["choice_index"] = np.concatenate([np.asarray(sample["choice_index"]),
                                              np.full(target - count, -1, dtype=np.int64)])
    return out


def fit_choices(sample: dict, target: int, gold: int) -> dict:
    """Trim or pad to exactly ``target`` choices (``--fix_variable_num_choices``).

    Trimming keeps the first ``target`` choices; a gold choice (row ``gold``) that would be cut
    is moved to row 0, the others following in order, and ``label`` becomes 0. ``gold`` < 0
    (unlabelled) trims plainly.
    """
    count = num_choices(sample)
    if count <= target:
        return pad_choices(sample, target)
    if gold < target:
        return _select_rows(sample, range(target))
    out = _select_rows(sample, [gold, *range(target - 1)])
    out["label"] = 0
    return out


def collate(samples: Sequence[dict]) -> dict:
    """Stack samples into a batch of tensors (``uid``/``idx`` become lists).

    Multi-token samples with different numbers of choices are padded to the largest; this needs
    samples that carry ``loss_mask`` (variable-choice tasks do).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    keys = set(samples[0])
    for sample in samples[1:]:
        if set(sample) != keys:
            raise ValueError(f"samples with different keys: {sorted(keys)} vs {sorted(sample)}")
    if np.ndim(samples[0]["text"]) == 2:
        counts = {num_choices(sample) for sample in samples}
        if len(counts) > 1:
            if "loss_mask" not in keys:
                raise ValueError(f"choice counts {sorted(counts)} differ but the samples have "
                                 f"no loss_mask (not a variable-choice task)")
            samples = [pad_choices(sample, max(counts)) for sample in samples]
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = list(values) if key in LIST_KEYS else torch.from_numpy(np.stack(values))
    return batch
