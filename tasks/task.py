"""A configured task: read examples, encode them into samples, score predictions.

Sample layout (numpy; ``collate`` turns a list of samples into tensors):

* single-token cloze: ``text`` [S], ``position`` [2,S], ``target`` [num_labels] (verbalizer
  ids), ``logit_mask`` [S], ``attention_mask`` = sep;
* multi-token cloze: ``text``/``target``/``logit_mask`` [C,S], ``position`` [C,2,S],
  ``attention_mask`` [C]; variable-choice tasks (ReCoRD, WSC) add ``loss_mask`` [C] and
  ``choice_index`` [C] (the row's index in the example's choices, -1 for padding);
* generative (WSC): ``text``/``target``/``logit_mask`` [S], ``position`` [2,S], sep;
* plain classification (``cloze_eval=False``): ``text`` [S], ``position`` [2,S], sep;

plus ``label`` (int; float32 for STS-B; -1 when unlabelled), ``uid`` and ``idx``.

Predictions (``predict``, ``evaluate``, ``write_predictions``) are label indices, floats for
STS-B, and for ReCoRD indices into ``example.meta["candidates"]``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from data_utils.tokenization import GLMTokenizer
from tasks import cloze, metrics
from tasks.collate import fit_choices
from tasks.examples import InputExample
from tasks.processor import label_index
from tasks.registry import GENERATIVE, SINGLE_TOKEN, TaskConfig, get_task_spec


class Task:
    """``TaskConfig`` + tokenizer → examples, samples, predictions and metrics."""

    def __init__(self, config: TaskConfig, tokenizer: GLMTokenizer):
        self.config = config.resolved()
        self.spec = get_task_spec(self.config.task_name)
        self.tokenizer = tokenizer
        self.processor = self.spec.make_processor(self.config)
        self.labels: tuple = tuple(getattr(self.processor, "labels", ()))
        self.pvp = self.spec.pvp(self.config.pattern_id) if self.config.cloze_eval else None
        self.verbalizer_ids = None
        _warn_ineffective(self.config, self.spec)
        if self.spec.kind == SINGLE_TOKEN and self.pvp is not None:
            self.verbalizer_ids = cloze.verbalizer_ids(self.pvp.verbalizers(), tokenizer)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_labels(self) -> int:
        return 1 if self.spec.regression else len(self.labels)

    def read_examples(self, split: str) -> list[InputExample]:
        return self.processor.read(self.config.data_dir, split)

    def dataset(self, split: str) -> "TaskDataset":
        return TaskDataset(self, self.read_examples(split))

    # ------------------------------------------------------------ encoding
    def encode(self, example: InputExample) -> dict:
        """The sample of ``example`` (see the module docstring)."""
        length = self.config.max_seq_length
        if self.pvp is None:
            sample = cloze.classification_sample(example.text_a, example.text_b,
                                                 self.tokenizer, length)
        elif self.spec.kind == SINGLE_TOKEN:
            sample = cloze.single_token_sample(self.pvp.fill(example), self.verbalizer_ids,
                                               self.tokenizer, length)
        elif self.spec.kind == GENERATIVE:
            sample = cloze.generative_sample(self.pvp.fill_choices(example)[0], self.tokenizer,
                                             length)
        else:
            sample = cloze.multi_token_sample(self.pvp.fill_choices(example), self.tokenizer,
                                              length)
        sample.update(label=self._sample_label(example), uid=example.guid, idx=example.idx)
        if self.spec.max_choices:
            count = sample["text"].shape[0]
            sample["loss_mask"] = np.ones(count, dtype=np.int64)
            sample["choice_index"] = np.arange(count, dtype=np.int64)
            if self.config.fix_variable_num_choices:
                sample = fit_choices(sample, self.spec.max_choices, gold=self._gold_row(sample))
        return sample

    def _sample_label(self, example: InputExample) -> Any:
        if self.spec.regression:
            return np.float32(-1.0 if example.label is None else example.label)
        if self.name == "record":
            return -1 if example.label is None else example.label
        if self.name == "wsc" and example.guid.startswith("train-"):
            return 0  # training rows: the gold (span 1) is choice 0
        return label_index(self.labels, example)

    def _gold_row(self, sample: dict) -> int:
        """The row of the gold choice: the label for ReCoRD, always row 0 (span 1) for WSC."""
        return int(sample["label"]) if self.name == "record" else 0

    # ------------------------------------------------------------ predictions
    def predict(self, sample: dict, scores: Sequence[float]) -> Any:
        """Prediction from one sample's scores ([num_labels] or [C]; padded rows ignored)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.spec.regression:
            return float(scores.reshape(-1)[0])
        if "loss_mask" in sample:
            scores = np.where(np.asarray(sample["loss_mask"]) > 0, scores, -np.inf)
        choice = int(np.argmax(scores))
        if "choice_index" in sample:
            choice = int(np.asarray(sample["choice_index"])[choice])
        if self.name == "wsc":
            return self.labels.index("True") if choice == 0 else self.labels.index("False")
        return choice

    def predict_generative(self, sample: dict, argmax_ids: Sequence[int]) -> int:
        """WSC generative: "True" iff the greedy argmax equals the target at every Part-B
        position (teacher-forced, as the original). ``argmax_ids``: [S] model argmax per
        position, aligned with ``target``."""
        mask = np.asarray(sample["logit_mask"]) > 0
        same = np.array_equal(np.asarray(argmax_ids)[mask], np.asarray(sample["target"])[mask])
        return self.labels.index("True" if same else "False")

    def evaluate(self, predictions: Sequence, examples: Sequence[InputExample],
                 metric_names: Sequence[str] = ()) -> dict[str, float]:
        """Metrics (default: ``DEFAULT_METRICS[task]``) of ``predictions`` on ``examples``."""
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
        unknown = [name for name in metric_names if name not in _METRICS]
        if unknown:
            raise KeyError(f"unknown metrics {unknown}; valid: {sorted(_METRICS)}")
        return {name: _METRICS[name](self, list(predictions), list(examples))
                for name in (metric_names or self.spec.metrics)}

    def gold(self, examples: Sequence[InputExample]) -> list:
        """Gold label indices (floats for STS-B); an unlabelled example raises."""
        if any(example.label is None for example in examples):
            raise ValueError(f"{self.name}: cannot score unlabelled examples")
        if self.spec.regression:
            return [float(example.label) for example in examples]
        return [label_index(self.labels, example) for example in examples]

    def write_predictions(self, path: str | Path, examples: Sequence[InputExample],
                          predictions: Sequence) -> Path:
        from tasks.predictions import write_predictions
        return write_predictions(self, Path(path), examples, predictions)


def _record(task: Task, predictions: list, examples: list) -> tuple[float, float]:
    chosen = [example.meta["candidates"][p] for p, example in zip(predictions, examples)]
    return metrics.record_scores(chosen, [example.meta["answers"] for example in examples])


def _positive(task: Task) -> int:
    return task.labels.index(1 if 1 in task.labels else "1")


_METRICS = {
    "accuracy": lambda t, p, e: metrics.accuracy(p, t.gold(e)),
    "acc": lambda t, p, e: metrics.accuracy(p, t.gold(e)),
    "f1-macro": lambda t, p, e: metrics.f1_macro(p, t.gold(e)),
    "f1a": lambda t, p, e: metrics.f1_binary(p, t.gold(e), positive=_positive(t)),
    "f1": lambda t, p, e: metrics.f1_binary(p, t.gold(e), positive=_positive(t)),
    "em": lambda t, p, e: metrics.multirc_exact_match(
        p, t.gold(e), [(x.meta["passage_idx"], x.meta["question_idx"]) for x in e]),
    "EM": lambda t, p, e: _record(t, p, e)[0],
    "F1": lambda t, p, e: _record(t, p, e)[1],
    "matthews": lambda t, p, e: metrics.matthews_corrcoef(p, t.gold(e)),
    "pearson": lambda t, p, e: metrics.pearson(p, t.gold(e)),
    "spearman": lambda t, p, e: metrics.spearman(p, t.gold(e)),
}


def _warn_ineffective(config: TaskConfig, spec) -> None:
    if config.fix_variable_num_choices and not spec.max_choices:
        warnings.warn(f"fix_variable_num_choices has no effect on {spec.name!r}, whose number "
                      f"of choices is fixed", stacklevel=3)
    if not config.cloze_eval and config.pattern_id != spec.default_pattern_id:
        warnings.warn(f"pattern_id={config.pattern_id} has no effect without cloze_eval",
                      stacklevel=3)


class TaskDataset(torch.utils.data.Dataset):
    """Examples of one split, encoded on access."""

    def __init__(self, task: Task, examples: list[InputExample]):
        self.task, self.examples = task, examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.task.encode(self.examples[index])
