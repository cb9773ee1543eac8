"""Base classes of the PET pattern-verbalizer pairs (PVPs) and their text helpers.

A single-token PVP fills an example into one ``ClozeParts`` and names one verbalizer word per
label. A multi-token PVP fills one ``ClozeParts`` per choice, each carrying its ``answer``.
"""
from __future__ import annotations

import string
from typing import Any, Mapping, Sequence

from tasks.cloze import ClozeParts
from tasks.examples import InputExample


def remove_final_punc(text: str) -> str:
    """``text`` without trailing ASCII punctuation."""
    return text.rstrip(string.punctuation)


def lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:]


class _PVP:
    pattern_ids: tuple[int, ...] = (0,)

    def __init__(self, pattern_id: int):
        if pattern_id not in self.pattern_ids:
            raise ValueError(f"{type(self).__name__} has no pattern id {pattern_id}; "
                             f"available: {list(self.pattern_ids)}")
        self.pattern_id = pattern_id


class SingleTokenPVP(_PVP):
    """Subclasses set ``labels`` and ``verbalizer_table`` and implement ``fill``.

    ``verbalizer_table`` maps a pattern id (or ``None`` for "every other id") to a
    ``{label: word}`` dict.
    """
    labels: tuple = ()
    verbalizer_table: Mapping[Any, Mapping[Any, str]] = {}

    def fill(self, example: InputExample) -> ClozeParts:
        raise NotImplementedError

    def verbalizers(self) -> list[str]:
        """One verbalizer word per label, in label order."""
        table = self.verbalizer_table.get(self.pattern_id, self.verbalizer_table.get(None))
        if table is None or set(table) != set(self.labels):
            raise ValueError(f"{type(self).__name__} pattern {self.pattern_id}: verbalizers "
                             f"{table} do not cover the labels {self.labels}")
        return [table[label] for label in self.labels]


class MultiTokenPVP(_PVP):
    """Subclasses implement ``fill_choices`` (one ``ClozeParts`` per choice, with answers)."""

    def fill_choices(self, example: InputExample) -> list[ClozeParts]:
        raise NotImplementedError

    def answers(self, example: InputExample) -> Sequence[str]:
        return [filled.answer for filled in self.fill_choices(example)]
