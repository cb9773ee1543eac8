"""GLM cloze inputs: pattern parts, truncation and the Part A / Part B layout.

A pattern fills an example into ``parts_a`` and ``parts_b``: each part is a ``Seg`` (text,
shortenable or not) or ``MASK``. Each text part is tokenised on its own and the pieces are
concatenated. The layout of one row (``S = max_seq_length``):

* Part A = ``[CLS] tokens_a tokens_b [eos]``: position ids ``0..n-1``, block positions 0.
  ``sep = len(Part A)`` is the model's ``attention_mask`` scalar for the row.
* Part B = ``[sop] answer[:-1]`` where ``answer`` ends with ``[eop]`` (just ``[sop]`` for
  single-token cloze): position id = index of ``[MASK]`` in Part A, block positions ``1, 2, ...``;
  targets = ``answer`` and ``logit_mask`` = 1 on Part B.
* Padding to ``S`` with the eos (= pad) id, position 0, block position 0, target 0, mask 0.

Truncation: while the row is longer than ``S`` (``[CLS]``, ``[eos]``, Part B included), drop the
last token of the last non-empty shortenable part of the side (a or b) holding more shortenable
tokens; on a tie, side b (as in the original).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from data_utils.tokenization import GLMTokenizer


class _Mask:
    """The ``[MASK]`` slot of a pattern."""

    def __repr__(self) -> str:
        return "MASK"


MASK = _Mask()
MASK_TEXT = "[MASK]"


@dataclass(frozen=True)
class Seg:
    """A text part of a pattern; ``shortenable`` parts may lose tokens at their end."""
    text: str
    shortenable: bool = False


Part = Union[Seg, _Mask]


def shortenable(text: str) -> Seg:
    return Seg(text, True)


@dataclass(frozen=True)
class ClozeParts:
    """A filled pattern. ``answer`` is the text generated in Part B (multi-token cloze only)."""
    parts_a: tuple[Part, ...]
    parts_b: tuple[Part, ...] = ()
    answer: Optional[str] = None

    def __post_init__(self) -> None:
        for part in (*self.parts_a, *self.parts_b):
            if not isinstance(part, (Seg, _Mask)):
                raise TypeError(f"a pattern part must be Seg or MASK, got {part!r}")
        num_masks = sum(part is MASK for part in (*self.parts_a, *self.parts_b))
        if num_masks != 1:
            raise ValueError(f"a pattern needs exactly one MASK, got {num_masks}: {self}")


def parts(*items: Union[str, Part]) -> tuple[Part, ...]:
    """Pattern parts from strings (not shortenable), ``Seg`` s and ``MASK``."""
    return tuple(Seg(item) if isinstance(item, str) else item for item in items)


def render(filled: ClozeParts) -> tuple[str, str]:
    """The text of parts a and b, with the mask shown as ``[MASK]`` (for inspection and tests)."""
    def join(items: Sequence[Part]) -> str:
        return "".join(MASK_TEXT if item is MASK else item.text for item in items)
    return join(filled.parts_a), join(filled.parts_b)


# ---------------------------------------------------------------- token level

TokenParts = list[tuple[list[int], bool]]  # (token ids, shortenable) per part


def tokenize_parts(items: Sequence[Part], tokenizer: GLMTokenizer) -> TokenParts:
    """Tokenise each part on its own; ``MASK`` becomes ``[mask id]``."""
    mask_id = tokenizer.command.mask
    return [([mask_id], False) if item is MASK else (tokenizer.encode(item.text), item.shortenable)
            for item in items]


def _count(token_parts: TokenParts, only_shortenable: bool = False) -> int:
    return sum(len(ids) for ids, short in token_parts if short or not only_shortenable)


def _remove_last(token_parts: TokenParts) -> None:
    last = max(i for i, (ids, short) in enumerate(token_parts) if short and ids)
    ids, short = token_parts[last]
    token_parts[last] = (ids[:-1], short)


def truncate(parts_a: TokenParts, parts_b: TokenParts, num_fixed: int, max_length: int) -> int:
    """Shorten ``parts_a``/``parts_b`` in place until they and ``num_fixed`` tokens fit.

    ``num_fixed`` counts the tokens outside the parts (``[CLS]``, ``[eos]`` and Part B).
    Returns the number of tokens removed; raises if the non-shortenable tokens alone do not fit.
    """
    excess = _count(parts_a) + _count(parts_b) + num_fixed - max_length
    for _ in range(max(excess, 0)):
        short_a, short_b = _count(parts_a, True), _count(parts_b, True)
        if short_a == 0 and short_b == 0:
            raise ValueError(
                f"cannot fit the input into max_seq_length={max_length}: "
                f"{_count(parts_a) + _count(parts_b) + num_fixed} tokens remain and no "
                f"shortenable part has tokens left (the fixed parts and answer are too long)")
        _remove_last(parts_a if short_a > short_b else parts_b)
    return max(excess, 0)


@dataclass(frozen=True)
class ClozeRow:
    """One laid-out row; every array has length ``max_seq_length``."""
    ids: np.ndarray            # [S] int64
    position: np.ndarray       # [2, S] int64: positions, block positions
    target: np.ndarray         # [S] int64
    logit_mask: np.ndarray     # [S] int64
    sep: int                   # len(Part A)


def layout_row(tokens_a: list[int], tokens_b: list[int], answer_ids: Optional[list[int]],
               tokenizer: GLMTokenizer, max_seq_length: int) -> ClozeRow:
    """Lay out ``[CLS] a b [eos] | [sop] answer[:-1]`` and pad.

    ``answer_ids`` must end with ``[eop]``; ``None`` gives the single-token Part B ``[sop]``.
    """
    command = tokenizer.command
    part_a = [command.cls, *tokens_a, *tokens_b, command.eos]
    if part_a.count(command.mask) != 1:
        raise ValueError(f"Part A must hold exactly one [MASK] (id {command.mask}), found "
                         f"{part_a.count(command.mask)}; does the text contain '[MASK]'?")
    mask_position = part_a.index(command.mask)
    answer = [] if answer_ids is None else list(answer_ids)
    part_b = [command.sop, *answer[:-1]]
    targets = answer if answer_ids is not None else [0]
    length = len(part_a) + len(part_b)
    if length > max_seq_length:
        raise ValueError(f"row of {length} tokens exceeds max_seq_length={max_seq_length}; "
                         f"truncate the parts first")
    num_pad = max_seq_length - length
    ids = part_a + part_b + [command.eos] * num_pad
    positions = list(range(len(part_a))) + [mask_position] * len(part_b) + [0] * num_pad
    block_positions = [0] * len(part_a) + list(range(1, len(part_b) + 1)) + [0] * num_pad
    target = [0] * len(part_a) + targets + [0] * num_pad
    logit_mask = [0] * len(part_a) + [1] * len(part_b) + [0] * num_pad
    return ClozeRow(ids=np.array(ids, dtype=np.int64),
                    position=np.array([positions, block_positions], dtype=np.int64),
                    target=np.array(target, dtype=np.int64),
                    logit_mask=np.array(logit_mask, dtype=np.int64), sep=len(part_a))


def encode_answer(answer: str, tokenizer: GLMTokenizer) -> list[int]:
    """The Part-B targets of ``answer``: its tokens followed by ``[eop]``."""
    ids = tokenizer.encode(answer)
    if not ids:
        raise ValueError(f"answer {answer!r} encodes to no tokens")
    return ids + [tokenizer.command.eop]


def build_row(filled: ClozeParts, tokenizer: GLMTokenizer, max_seq_length: int,
              multi_token: bool) -> ClozeRow:
    """Tokenise, truncate and lay out one filled pattern."""
    if multi_token and filled.answer is None:
        raise ValueError("a multi-token cloze row needs an answer")
    answer_ids = encode_answer(filled.answer, tokenizer) if multi_token else None
    parts_a = tokenize_parts(filled.parts_a, tokenizer)
    parts_b = tokenize_parts(filled.parts_b, tokenizer)
    part_b_length = len(answer_ids) if answer_ids is not None else 1
    truncate(parts_a, parts_b, num_fixed=2 + part_b_length, max_length=max_seq_length)
    tokens_a = [i for ids, _ in parts_a for i in ids]
    tokens_b = [i for ids, _ in parts_b for i in ids]
    return layout_row(tokens_a, tokens_b, answer_ids, tokenizer, max_seq_length)


def verbalizer_ids(verbalizers: Sequence[str], tokenizer: GLMTokenizer) -> list[int]:
    """The single token id of each verbalizer; a verbalizer of several tokens raises."""
    ids = []
    for word in verbalizers:
        tokens = tokenizer.encode(word)
        if len(tokens) != 1:
            raise ValueError(f"verbalizer {word!r} must be a single token, got {tokens} "
                             f"with this tokenizer")
        ids.append(tokens[0])
    return ids


def single_token_sample(filled: ClozeParts, label_ids: Sequence[int], tokenizer: GLMTokenizer,
                        max_seq_length: int) -> dict:
    """``text`` [S], ``position`` [2,S], ``target`` [num_labels] (verbalizer ids),
    ``logit_mask`` [S] (1 at ``[sop]``), ``attention_mask`` = sep."""
    row = build_row(filled, tokenizer, max_seq_length, multi_token=False)
    return {"text": row.ids, "position": row.position,
            "target": np.array(label_ids, dtype=np.int64), "logit_mask": row.logit_mask,
            "attention_mask": np.int64(row.sep)}


def multi_token_sample(rows: Sequence[ClozeParts], tokenizer: GLMTokenizer,
                       max_seq_length: int) -> dict:
    """One row per choice: ``text`` [C,S], ``position`` [C,2,S], ``target`` [C,S],
    ``logit_mask`` [C,S], ``attention_mask`` [C]."""
    if not rows:
        raise ValueError("a multi-token sample needs at least one choice")
    built = [build_row(filled, tokenizer, max_seq_length, multi_token=True) for filled in rows]
    return {"text": np.stack([r.ids for r in built]),
            "position": np.stack([r.position for r in built]),
            "target": np.stack([r.target for r in built]),
            "logit_mask": np.stack([r.logit_mask for r in built]),
            "attention_mask": np.array([r.sep for r in built], dtype=np.int64)}


def generative_sample(filled: ClozeParts, tokenizer: GLMTokenizer, max_seq_length: int) -> dict:
    """LM-style row (WSC generative): ``text`` [S], ``position`` [2,S], ``target`` [S] and
    ``logit_mask`` [S] over Part B, ``attention_mask`` = sep."""
    row = build_row(filled, tokenizer, max_seq_length, multi_token=True)
    return {"text": row.ids, "position": row.position, "target": row.target,
            "logit_mask": row.logit_mask, "attention_mask": np.int64(row.sep)}


def classification_sample(text_a: str, text_b: Optional[str], tokenizer: GLMTokenizer,
                          max_seq_length: int) -> dict:
    """Plain (non-cloze) input ``[CLS] a [SEP] b [eos]`` (``[CLS] a [eos]`` without b).

    Position ids ``0..n-1``, block positions 0, padding with eos; the longer of a and b loses
    its last token until the row fits. ``attention_mask`` = sep = the unpadded length.
    """
    command = tokenizer.command
    tokens_a = tokenizer.encode(text_a)
    tokens_b = tokenizer.encode(text_b) if text_b is not None else None
    num_fixed = 2 + (tokens_b is not None)
    while len(tokens_a) + len(tokens_b or []) + num_fixed > max_seq_length:
        if tokens_b and len(tokens_b) >= len(tokens_a):
            tokens_b.pop()
        elif tokens_a:
            tokens_a.pop()
        else:
            raise ValueError(f"max_seq_length={max_seq_length} is too small for a "
                             f"classification input")
    ids = [command.cls, *tokens_a]
    if tokens_b is not None:
        ids += [command.sep, *tokens_b]
    ids.append(command.eos)
    sep, num_pad = len(ids), max_seq_length - len(ids)
    position = [list(range(sep)) + [0] * num_pad, [0] * max_seq_length]
    return {"text": np.array(ids + [command.eos] * num_pad, dtype=np.int64),
            "position": np.array(position, dtype=np.int64), "attention_mask": np.int64(sep)}
