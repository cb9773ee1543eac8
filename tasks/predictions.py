"""Prediction files in the benchmark submission formats.

SuperGLUE: JSONL, one ``{"idx", "label"}`` per example with the label value (``"entailment"``,
``"true"``, ``"True"``, ``0``...); MultiRC nested per passage and question; ReCoRD the chosen
entity text. GLUE: TSV ``index<TAB>prediction`` with a header.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tasks.examples import InputExample

if TYPE_CHECKING:
    from tasks.task import Task


def submission_path(task: "Task", folder: str | Path) -> Path:
    """``folder/<official file name>`` (e.g. ``RTE.jsonl``, ``MNLI-mm.tsv``)."""
    return Path(folder) / task.spec.submission_file


def prediction_records(task: "Task", examples: Sequence[InputExample],
                       predictions: Sequence) -> list[dict]:
    """The SuperGLUE submission records of ``predictions``."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if task.name == "multirc":
        return _multirc_records(examples, predictions)
    if task.name == "record":
        return [{"idx": ex.idx, "label": ex.meta["candidates"][p]}
                for ex, p in zip(examples, predictions)]
    return [{"idx": ex.idx, "label": task.labels[p]} for ex, p in zip(examples, predictions)]


def _multirc_records(examples: Sequence[InputExample], predictions: Sequence) -> list[dict]:
    passages: dict[int, dict[int, list]] = {}
    for example, prediction in zip(examples, predictions):
        passage, question, answer = example.idx
        answers = passages.setdefault(passage, {}).setdefault(question, [])
        answers.append({"idx": answer, "label": int(prediction)})
    return [{"idx": passage, "passage": {"questions": [
        {"idx": question, "answers": answers} for question, answers in questions.items()]}}
        for passage, questions in passages.items()]


def write_predictions(task: "Task", path: Path, examples: Sequence[InputExample],
                      predictions: Sequence) -> Path:
    """Write ``predictions`` for ``examples`` to ``path`` in the task's submission format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if task.spec.benchmark == "glue":
        if len(examples) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
        lines = ["index\tprediction"]
        for example, prediction in zip(examples, predictions):
            value = f"{float(prediction):.3f}" if task.spec.regression else task.labels[prediction]
            lines.append(f"{example.idx}\t{value}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    records = prediction_records(task, examples, predictions)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path
