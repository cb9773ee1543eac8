"""Base class of the task processors: file names per split, strict record reading, labels."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from tasks.examples import (InputExample, Where, check_label, read_jsonl, require,
                            split_file)


class JsonlProcessor:
    """Reads one SuperGLUE JSONL file per split into ``InputExample`` s.

    Subclasses set ``labels`` (the label values; empty when the label is a choice index) and
    implement ``from_record``. ``few_superglue`` switches dev to ``dev32.jsonl`` and test to
    ``val.jsonl`` (the original's ``--few-superglue``).
    """
    labels: tuple = ()
    file_names = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}
    few_file_names = {"train": "train.jsonl", "dev": "dev32.jsonl", "test": "val.jsonl"}

    def __init__(self, few_superglue: bool = False, seed: int = 42):
        self.few_superglue = few_superglue
        self.seed = seed

    def path(self, data_dir: str | Path, split: str) -> Path:
        return split_file(data_dir, self.few_file_names if self.few_superglue else
                          self.file_names, split)

    def read(self, data_dir: str | Path, split: str) -> list[InputExample]:
        """All examples of ``split`` (``train``, ``dev`` or ``test``) under ``data_dir``."""
        examples: list[InputExample] = []
        for where, record in read_jsonl(self.path(data_dir, split)):
            examples.extend(self.from_record(record, split, where))
        return self.finish(examples, split)

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        raise NotImplementedError

    def finish(self, examples: list[InputExample], split: str) -> list[InputExample]:
        """Split-level post-processing (COPA mirrors its training set)."""
        return examples

    def read_label(self, record: dict, split: str, where: Where,
                   convert: Optional[dict] = None) -> Any:
        """The record's label, mapped through ``convert`` and checked against ``labels``.

        Required on train and dev; optional on test (None when absent).
        """
        if "label" not in record and split == "test":
            return None
        value = require(record, "label", where)
        if convert is not None:
            if not any(value == key and type(value) is type(key) for key in convert):
                raise where.error(f"unknown label {value!r}; valid labels: {list(convert)}")
            value = convert[value]
        return check_label(value, self.labels, where)


def label_index(labels: Sequence, example: InputExample) -> int:
    """Index of the example's label in ``labels``; -1 when the example is unlabelled."""
    if example.label is None:
        return -1
    return labels.index(example.label)


BOOL_TO_TEXT = {False: "false", True: "true"}
BOOL_TO_TITLE = {False: "False", True: "True"}
