"""Task examples and the strict readers for the official JSONL (SuperGLUE) and TSV (GLUE) files.

Bad data never disappears silently: a malformed line, a missing field or a row with the wrong
number of columns raises ``DataFormatError`` naming the file and the (1-based) line; so does a
line that is not UTF-8 (with its byte offset) or a binary file. An unknown label raises
``DataFormatError`` listing the valid labels.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from data_utils.text_files import iter_lines, read_lines

_PUNCTUATION_MAP = {"\u201c": '"', "\u201d": '"', "\u2019": "'", "\u2018": "'", "\u2013": "-"}


class DataFormatError(ValueError):
    """A task file is malformed; the message starts with ``file:line``."""


@dataclass
class InputExample:
    """One task example.

    ``label`` is a value of the processor's label list (a string or int), a float for STS-B,
    or None when the split is unlabelled. ``meta`` holds task-specific fields (choices, spans,
    MultiRC ids, ReCoRD candidates and gold answers). ``idx`` is the id written to prediction
    files (an int, or ``[passage, question, answer]`` for MultiRC).
    """
    guid: str
    text_a: str
    text_b: Optional[str] = None
    label: Any = None
    meta: dict = field(default_factory=dict)
    idx: Any = None


@dataclass(frozen=True)
class Where:
    """A position in a data file, used to build error messages."""
    path: Path
    line: int

    def error(self, message: str) -> DataFormatError:
        return DataFormatError(f"{self.path}:{self.line}: {message}")


def punctuation_standardization(text: str) -> str:
    """Replace curly quotes and the en dash with their ASCII forms (the original's rule)."""
    for key, value in _PUNCTUATION_MAP.items():
        text = text.replace(key, value)
    return text


def split_file(data_dir: str | Path, file_names: dict[str, str], split: str) -> Path:
    """The file of ``split`` inside ``data_dir``; an unknown split or a missing file raises."""
    if split not in file_names:
        raise ValueError(f"unknown split {split!r}; valid: {sorted(file_names)}")
    path = Path(data_dir) / file_names[split]
    if not path.is_file():
        raise FileNotFoundError(f"{split} file not found: {path}")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[Where, dict]]:
    """Yield ``(where, record)`` for each line; every line must be a JSON object.

    Trailing blank lines are allowed (a final newline or none); a blank line followed by more
    data is an error.
    """
    lines = read_lines(path, DataFormatError)
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        where = Where(path, number)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise where.error(f"malformed JSON line ({error.msg})") from None
        if not isinstance(record, dict):
            raise where.error(f"expected a JSON object, got {type(record).__name__}")
        yield where, record


def require(record: dict, key: str, where: Where, kind: type | tuple = object) -> Any:
    """``record[key]``, raising (with file and line) when it is missing or of the wrong type."""
    if key not in record:
        raise where.error(f"missing field {key!r} (present: {sorted(record)})")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise where.error(f"field {key!r} has type {type(value).__name__}, expected {kind}")
    return value


def check_label(value: Any, labels: Sequence, where: Where) -> Any:
    """``value`` if it is one of ``labels``, else an error listing the valid labels."""
    if value not in labels or isinstance(value, bool) != isinstance(labels[0], bool):
        raise where.error(f"unknown label {value!r}; valid labels: {list(labels)}")
    return value


def read_tsv(path: Path, columns: Optional[Sequence[str]] = None
             ) -> Iterator[tuple[Where, dict[str, str]]]:
    """Yield ``(where, row)`` with rows keyed by column name.

    ``columns=None`` takes the names from the header line; otherwise the file has no header and
    ``columns`` names its fields. Every row must have exactly as many fields as columns. Fields
    are split on tabs only (no quoting), as the GLUE files need.
    """
    lines = iter_lines(path, DataFormatError)  # strips a BOM (MRPC has one)
    reader = csv.reader((text for _, text in lines), delimiter="\t", quoting=csv.QUOTE_NONE)
    start = 1
    if columns is None:
        header = next(reader, None)
        if header is None:
            raise Where(path, 1).error("empty file, expected a header line")
        columns, start = header, 2
    for number, row in enumerate(reader, start=start):
        where = Where(path, number)
        if len(row) != len(columns):
            raise where.error(f"expected {len(columns)} tab-separated fields "
                              f"({list(columns)}), got {len(row)}")
        yield where, dict(zip(columns, row))


def tsv_field(row: dict[str, str], column: str, where: Where) -> str:
    """``row[column]``; a column absent from the file's header raises with file and line."""
    if column not in row:
        raise where.error(f"missing column {column!r} (columns: {list(row)})")
    return row[column]
