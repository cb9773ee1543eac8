"""GLUE processors reading the official TSV files (with their official headers).

Columns are looked up by header name, so the MNLI dev files (with ``label1..label5``) and the
test files (without labels) need no special casing. CoLA's train and dev files have no header:
``source, label, original_label, sentence``. Labels stay strings (``"0"``/``"1"`` for the
binary tasks); STS-B's score is a float.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tasks.examples import (InputExample, Where, check_label, read_tsv, split_file, tsv_field)

BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
NLI3 = ("contradiction", "entailment", "neutral")
COLA_COLUMNS = ("source", "label", "original_label", "sentence")


@dataclass(frozen=True)
class GlueFormat:
    """Where a GLUE task keeps its fields. ``labels`` None means regression (STS-B)."""
    text_a: str
    text_b: Optional[str]
    label: str
    labels: Optional[tuple]
    id_column: str = "index"
    dev_file: str = "dev.tsv"
    test_file: str = "test.tsv"
    headerless_columns: Optional[tuple] = None  # train/dev files without a header (CoLA)


GLUE_FORMATS: dict[str, GlueFormat] = {
    "mnli": GlueFormat("sentence1", "sentence2", "gold_label", NLI3,
                       dev_file="dev_matched.tsv", test_file="test_matched.tsv"),
    "mnli-mm": GlueFormat("sentence1", "sentence2", "gold_label", NLI3,
                          dev_file="dev_mismatched.tsv", test_file="test_mismatched.tsv"),
    "qnli": GlueFormat("question", "sentence", "label", NLI2),
    "qqp": GlueFormat("question1", "question2", "is_duplicate", BINARY, id_column="id"),
    "glue-rte": GlueFormat("sentence1", "sentence2", "label", NLI2),
    "sst2": GlueFormat("sentence", None, "label", BINARY),
    "mrpc": GlueFormat("#1 String", "#2 String", "Quality", BINARY),
    "cola": GlueFormat("sentence", None, "label", BINARY, headerless_columns=COLA_COLUMNS),
    "sts-b": GlueFormat("sentence1", "sentence2", "score", None),
    "wnli": GlueFormat("sentence1", "sentence2", "label", BINARY),
}


class GlueProcessor:
    """Reads ``train.tsv``, the dev file and the test file of one GLUE task."""

    def __init__(self, task_name: str):
        if task_name not in GLUE_FORMATS:
            raise KeyError(f"unknown GLUE task {task_name!r}; valid: {sorted(GLUE_FORMATS)}")
        self.task_name = task_name
        self.format = GLUE_FORMATS[task_name]
        self.labels = self.format.labels or ()

    def path(self, data_dir: str | Path, split: str) -> Path:
        names = {"train": "train.tsv", "dev": self.format.dev_file, "test": self.format.test_file}
        return split_file(data_dir, names, split)

    def read(self, data_dir: str | Path, split: str) -> list[InputExample]:
        fmt = self.format
        columns = fmt.headerless_columns if split != "test" else None
        examples = []
        for number, (where, row) in enumerate(read_tsv(self.path(data_dir, split), columns)):
            idx = _row_id(row, fmt.id_column, number, where)
            examples.append(InputExample(
                guid=f"{split}-{idx}", text_a=tsv_field(row, fmt.text_a, where),
                text_b=tsv_field(row, fmt.text_b, where) if fmt.text_b else None,
                label=self._label(row, split, where), idx=idx))
        return examples

    def _label(self, row: dict[str, str], split: str, where: Where) -> Any:
        if split == "test" and self.format.label not in row:
            return None
        value = tsv_field(row, self.format.label, where)
        if self.format.labels is not None:
            return check_label(value, self.format.labels, where)
        try:
            return float(value)
        except ValueError:
            raise where.error(f"score {value!r} is not a number") from None


def _row_id(row: dict[str, str], column: str, number: int, where: Where) -> int:
    """The integer id in ``column``, or the 0-based row number when the file has no id."""
    if column not in row:
        return number
    if not row[column].isdigit():
        raise where.error(f"id column {column!r} holds {row[column]!r}, not an integer")
    return int(row[column])
