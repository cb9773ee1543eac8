"""Vocabulary compression (GLMD-vc): the student keeps the M most frequent tokens
(protected ones first) in its word-embedding table, and every dropped token is replaced by a
kept one.

The sorted-vocabulary table is a TSV with the header `origin_no sort_id token number frequency`:
row r holds sort_id[r], the original id at sorted position r, and origin_no[r], the sorted
position of original id r (so origin_no is the inverse permutation of sort_id). Ids beyond the
table (the vocabulary padding) keep their own position.

A map is three [V] tensors (`VocabMap`), V being the padded vocabulary size:
    origin_id_to_target_pos   original id -> student row (a dropped id -> its replacement's row)
    origin_id_mask_map        True where the id is kept
    target_pos_to_origin_id   student row j < M -> its original id; entry j >= M -> the
                              replacement id of the dropped token at sorted position j
"""
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from data_utils.text_files import read_lines

TABLE_HEADER = ("origin_no", "sort_id", "token", "number", "frequency")
SIMILARITY_METHODS = ("decoder", "cosine", "euclidean")
NO_MAP = -1   # the value of every map entry before a map is built or loaded


class VocabTableError(ValueError):
    """A sorted-vocabulary table that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class VocabTable:
    """A sorted-vocabulary table: sort_id [K] (original id at each sorted position), the token
    strings and their corpus counts in sorted order."""
    sort_id: Tensor
    tokens: Tuple[str, ...]
    counts: Tuple[int, ...]

    def __len__(self) -> int:
        return self.sort_id.numel()


def read_vocab_table(path: str) -> VocabTable:
    """Read and check a sorted-vocabulary table (e.g. the original's
    BertWordPieceTokenizer_bert-base-uncased.txt)."""
    path = str(path)
    if not Path(path).is_file():
        raise VocabTableError(f"{path}: no such vocabulary table "
                              f"(build one with `python vocab_sort.py --train-data=CORPUS ...`)")
    lines = read_lines(path, VocabTableError)  # not UTF-8 / binary: path:line and byte offset
    if not any(line.strip() for line in lines):
        raise VocabTableError(f"{path} is empty: expected the header {' '.join(TABLE_HEADER)} "
                              f"(tab-separated) and one row per token")
    if tuple(lines[0].rstrip("\r").split("\t")) != TABLE_HEADER:
        raise VocabTableError(f"{path}:1: the header must be {' '.join(TABLE_HEADER)} (tab-separated), "
                              f"got {lines[0][:80]!r}")
    origin_no, sort_id, tokens, counts = [], [], [], []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) != len(TABLE_HEADER):
            raise VocabTableError(f"{path}:{line_no}: expected {len(TABLE_HEADER)} tab-separated fields, "
                                  f"got {len(parts)}: {line[:80]!r}")
        try:
            origin_no.append(int(parts[0]))
            sort_id.append(int(parts[1]))
            counts.append(int(parts[3]))
        except ValueError:
            raise VocabTableError(f"{path}:{line_no}: origin_no, sort_id and number must be integers: "
                                  f"{line[:80]!r}") from None
        tokens.append(parts[2])
    size = len(sort_id)
    if size == 0:
        raise VocabTableError(f"{path}: the table has no rows")
    sort_tensor, origin_tensor = torch.tensor(sort_id), torch.tensor(origin_no)
    for name, values in (("sort_id", sort_tensor), ("origin_no", origin_tensor)):
        if not torch.equal(values.sort().values, torch.arange(size)):
            raise VocabTableError(f"{path}: the {name} column is not a permutation of 0..{size - 1}")
    if not torch.equal(origin_tensor[sort_tensor], torch.arange(size)):
        raise VocabTableError(f"{path}: origin_no is not the inverse of sort_id "
                              f"(origin_no[sort_id[r]] must be r for every row r)")
    return VocabTable(sort_tensor, tuple(tokens), tuple(counts))


def write_vocab_table(path: str, sort_id: Sequence[int], tokens: Sequence[str], counts: Sequence[int]) -> None:
    """Write a sorted-vocabulary table atomically. sort_id[r]: the original id at sorted
    position r; tokens and counts in sorted order (the same order as sort_id)."""
    size = len(sort_id)
    if not (len(tokens) == len(counts) == size):
        raise ValueError(f"sort_id ({size}), tokens ({len(tokens)}) and counts ({len(counts)}) differ in length")
    order = torch.as_tensor(list(sort_id))
    if not torch.equal(order.sort().values, torch.arange(size)):
        raise ValueError(f"sort_id is not a permutation of 0..{size - 1}")
    origin_no = torch.empty_like(order)
    origin_no[order] = torch.arange(size)
    total = max(sum(counts), 1)
    rows = ["\t".join(TABLE_HEADER)]
    for r in range(size):
        token = tokens[r].replace("\t", " ").replace("\n", " ")
        rows.append(f"{int(origin_no[r])}\t{int(order[r])}\t{token}\t{int(counts[r])}\t{counts[r] / total:.3e}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text("\n".join(rows) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def sorted_order(sort_id: Tensor, vocab_size: int) -> Tensor:
    """[V] original id at each sorted position: the table's order, then the ids beyond the
    table (vocabulary padding) at their own positions."""
    size = sort_id.numel()
    if size > vocab_size:
        raise VocabTableError(f"the vocabulary table has {size} rows but the model's vocabulary has only "
                              f"{vocab_size} (a table of another tokenizer?)")
    return torch.cat([sort_id.long(), torch.arange(size, vocab_size)])


def map_vocab_rows(map_vocab_size: float, num_tokens: int, padded_vocab_size: int, multiple: int) -> int:
    """The student's embedding rows M for --map_vocab_size: a value in (0, 1) is a fraction of
    the tokenizer's `num_tokens`, otherwise a count; rounded up to a multiple of `multiple`
    (--make-vocab-size-divisible-by). 0 means no compression (also when M >= the padded size)."""
    if map_vocab_size < 0:
        raise ValueError(f"--map_vocab_size must not be negative, got {map_vocab_size}")
    if map_vocab_size == 0:
        return 0
    count = math.ceil(map_vocab_size * num_tokens if map_vocab_size < 1 else map_vocab_size)
    rows = -(-count // multiple) * multiple
    return 0 if rows >= padded_vocab_size else rows


@dataclass(frozen=True)
class VocabMap:
    """The three [V] map tensors (see the module docstring)."""
    origin_id_to_target_pos: Tensor
    origin_id_mask_map: Tensor
    target_pos_to_origin_id: Tensor

    @property
    def kept_rows(self) -> int:
        return int(self.origin_id_mask_map.sum())

    @property
    def kept_ids(self) -> Tensor:
        """[M] the original id of each student row."""
        return self.target_pos_to_origin_id[:self.kept_rows]

    def problems(self) -> Optional[str]:
        """None for a consistent map, else what is wrong with it."""
        to_pos, mask, to_id = self.origin_id_to_target_pos, self.origin_id_mask_map, self.target_pos_to_origin_id
        size = to_pos.numel()
        if not (mask.numel() == to_id.numel() == size):
            return f"the map tensors differ in length ({size}, {mask.numel()}, {to_id.numel()})"
        if bool((to_pos == NO_MAP).all()):
            return "no map has been built or loaded"
        rows = self.kept_rows
        if not (0 < rows < size):
            return f"it keeps {rows} of {size} ids"
        if bool((to_pos < 0).any() | (to_pos >= rows).any()):
            return f"origin_id_to_target_pos has entries outside [0, {rows})"
        if bool((to_id < 0).any() | (to_id >= size).any()):
            return f"target_pos_to_origin_id has entries outside [0, {size})"
        kept = self.kept_ids
        if not (bool(mask[kept].all()) and torch.equal(to_pos[kept], torch.arange(rows, device=to_pos.device))):
            return "the kept ids and their rows do not match (origin_id_to_target_pos[target_pos_to_origin_id[j]] != j)"
        if not bool(mask[to_id[rows:]].all()):
            return "a replacement id is itself dropped"
        return None


def replacement_ids(embeddings: Tensor, kept_ids: Tensor, dropped_ids: Tensor, method: str = "decoder",
                    chunk_size: int = 1024) -> Tensor:
    """For each dropped id, the kept id whose embedding is most similar to its own.

    embeddings: [V, H] (a teacher's word embeddings); kept_ids: [M]; dropped_ids: [D] -> [D].
    decoder: dot product; cosine: cosine similarity; euclidean: negative squared distance.
    Ties go to the earliest kept id in `kept_ids` (the most frequent). Chunks of `chunk_size`
    dropped ids bound the [chunk, M] similarity matrix."""
    if method not in SIMILARITY_METHODS:
        raise ValueError(f"unknown vocabulary-map method {method!r}; valid: {SIMILARITY_METHODS}")
    table = embeddings.detach().float()
    kept = table[kept_ids]                                                   # [M, H]
    if method == "cosine":
        kept = torch.nn.functional.normalize(kept, dim=-1)
    kept_sq = kept.pow(2).sum(-1)                                            # [M]
    picks = []
    for start in range(0, dropped_ids.numel(), chunk_size):
        query = table[dropped_ids[start:start + chunk_size]]                # [c, H]
        if method == "cosine":
            query = torch.nn.functional.normalize(query, dim=-1)
        scores = query @ kept.t()                                            # [c, M]
        if method == "euclidean":   # -|q - k|^2 = 2 q.k - |k|^2 - |q|^2; |q|^2 is constant per row
            scores = 2 * scores - kept_sq
        picks.append(kept_ids[scores.argmax(dim=-1)])
    return torch.cat(picks) if picks else dropped_ids.new_empty(0)


def build_vocab_map(order: Tensor, kept_rows: int, embeddings: Optional[Tensor] = None, method: str = "decoder",
                    unk_id: Optional[int] = None) -> VocabMap:
    """The map keeping the first `kept_rows` ids of `order` ([V], from `sorted_order`).

    A dropped id is replaced by the most similar kept id under `embeddings` ([V, H]) and
    `method`, or by `unk_id` when no embeddings are given (which must then be kept)."""
    size = order.numel()
    if not 0 < kept_rows < size:
        raise ValueError(f"the map must keep between 1 and {size - 1} ids, got {kept_rows}")
    order = order.long()
    kept, dropped = order[:kept_rows], order[kept_rows:]
    position = torch.empty_like(order)
    position[order] = torch.arange(size)                                    # original id -> sorted position
    if embeddings is not None:
        if embeddings.size(0) < size:
            raise ValueError(f"the embeddings have {embeddings.size(0)} rows for a vocabulary of {size}")
        replacements = replacement_ids(embeddings[:size], kept, dropped, method)
    else:
        if unk_id is None or not 0 <= unk_id < size or position[unk_id] >= kept_rows:
            raise ValueError(f"without embeddings every dropped id maps to [UNK] (id {unk_id}), which must be "
                             f"among the {kept_rows} kept ids")
        replacements = torch.full_like(dropped, unk_id)
    to_pos = position.clone()
    to_pos[dropped] = position[replacements]
    mask = torch.zeros(size, dtype=torch.bool)
    mask[kept] = True
    to_id = torch.cat([kept, replacements])
    return VocabMap(to_pos, mask, to_id)
