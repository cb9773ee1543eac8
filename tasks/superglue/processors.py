"""SuperGLUE processors for the classification tasks: RTE, CB, AX-b, AX-g, BoolQ, WiC, COPA,
MultiRC. ReCoRD and WSC are in ``record_wsc.py``.

All text passes through ``punctuation_standardization``. Labels are required on train and dev
and optional on test.
"""
from __future__ import annotations

from pathlib import Path

from tasks.examples import (InputExample, Where, punctuation_standardization, require,
                            split_file)
from tasks.processor import BOOL_TO_TEXT, JsonlProcessor


def _text(record: dict, key: str, where: Where) -> str:
    return punctuation_standardization(require(record, key, where, str))


def _idx(record: dict, where: Where) -> int:
    return require(record, "idx", where, int)


class RteProcessor(JsonlProcessor):
    """``premise`` → text_a, ``hypothesis`` → text_b."""
    labels = ("entailment", "not_entailment")
    text_a_key, text_b_key = "premise", "hypothesis"

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        idx = _idx(record, where)
        return [InputExample(guid=f"{split}-{idx}", text_a=_text(record, self.text_a_key, where),
                             text_b=_text(record, self.text_b_key, where),
                             label=self.read_label(record, split, where), idx=idx)]


class CbProcessor(RteProcessor):
    labels = ("entailment", "contradiction", "neutral")


class _DiagnosticProcessor(RteProcessor):
    """AX-b / AX-g: a single labelled file, read as the test split (no train or dev)."""
    file_name = ""

    def path(self, data_dir: str | Path, split: str) -> Path:
        return split_file(data_dir, {"test": self.file_name}, split)


class AxbProcessor(_DiagnosticProcessor):
    """AX-b (broad-coverage diagnostic): ``sentence1``/``sentence2``, file ``AX-b.jsonl``."""
    text_a_key, text_b_key = "sentence1", "sentence2"
    file_name = "AX-b.jsonl"


class AxgProcessor(_DiagnosticProcessor):
    """AX-g (Winogender diagnostic): ``premise``/``hypothesis``, file ``AX-g.jsonl``."""
    file_name = "AX-g.jsonl"


class BoolQProcessor(JsonlProcessor):
    """``passage`` → text_a, ``question`` → text_b; the boolean label becomes false/true."""
    labels = ("false", "true")

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        idx = _idx(record, where)
        return [InputExample(guid=f"{split}-{idx}", text_a=_text(record, "passage", where),
                             text_b=_text(record, "question", where),
                             label=self.read_label(record, split, where, BOOL_TO_TEXT), idx=idx)]


class WicProcessor(JsonlProcessor):
    """``sentence1``/``sentence2`` → text_a/text_b, ``word`` → meta; boolean label →
    false/true."""
    labels = ("false", "true")

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        idx = _idx(record, where)
        return [InputExample(guid=f"{split}-{idx}", text_a=_text(record, "sentence1", where),
                             text_b=_text(record, "sentence2", where),
                             label=self.read_label(record, split, where, BOOL_TO_TEXT),
                             meta={"word": _text(record, "word", where)}, idx=idx)]


class CopaProcessor(JsonlProcessor):
    """``premise`` → text_a; ``choice1``, ``choice2``, ``question`` → meta; label 0/1.

    The training set is mirrored: each example is followed (after all originals) by a copy
    with the choices swapped and the label flipped, guid suffixed with ``m``.
    """
    labels = (0, 1)

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        idx = _idx(record, where)
        question = require(record, "question", where, str)
        if question not in ("cause", "effect"):
            raise where.error(f"unknown question {question!r}; valid: ['cause', 'effect']")
        meta = {"choice1": _text(record, "choice1", where),
                "choice2": _text(record, "choice2", where), "question": question}
        return [InputExample(guid=f"{split}-{idx}", text_a=_text(record, "premise", where),
                             label=self.read_label(record, split, where), meta=meta, idx=idx)]

    def finish(self, examples: list[InputExample], split: str) -> list[InputExample]:
        if split != "train":
            return examples
        mirrored = [InputExample(guid=ex.guid + "m", text_a=ex.text_a, label=1 - ex.label,
                                 meta={"choice1": ex.meta["choice2"],
                                       "choice2": ex.meta["choice1"],
                                       "question": ex.meta["question"]}, idx=ex.idx)
                    for ex in examples]
        return examples + mirrored


class MultiRcProcessor(JsonlProcessor):
    """One binary example per (passage, question, answer option).

    text_a = passage text, text_b = question, meta = answer text and the three ids;
    ``idx`` = ``[passage idx, question idx, answer idx]``.
    """
    labels = (0, 1)

    def from_record(self, record: dict, split: str, where: Where) -> list[InputExample]:
        passage_idx = _idx(record, where)
        passage = require(record, "passage", where, dict)
        text = _text(passage, "text", where)
        examples = []
        for question in require(passage, "questions", where, list):
            question = _as_dict(question, "passage.questions[]", where)
            question_idx = _idx(question, where)
            question_text = _text(question, "question", where)
            for answer in require(question, "answers", where, list):
                answer = _as_dict(answer, "answers[]", where)
                answer_idx = _idx(answer, where)
                meta = {"passage_idx": passage_idx, "question_idx": question_idx,
                        "answer_idx": answer_idx, "answer": _text(answer, "text", where)}
                examples.append(InputExample(
                    guid=f"{split}-p{passage_idx}-q{question_idx}-a{answer_idx}", text_a=text,
                    text_b=question_text, label=self.read_label(answer, split, where),
                    meta=meta, idx=[passage_idx, question_idx, answer_idx]))
        return examples


def _as_dict(value: object, what: str, where: Where) -> dict:
    if not isinstance(value, dict):
        raise where.error(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
