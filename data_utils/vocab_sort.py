"""The sorted-vocabulary table of GLMD vocabulary compression, the original's
``vocab_sort``: token frequencies of a corpus, protected tokens first.

Order of the table: every protected token (the tokenizer's command tokens, plus each token of
each verbalizer word of every single-token pattern in ``tasks.registry.TASKS``), by corpus count
descending; then every other token id in ``[0, num_tokens)`` by corpus count descending. Ties go
to the smaller id, so the same corpus and tokenizer always give the same file. A verbalizer word
is taken as written (``" Yes"``, which matters for BPE tokenizers), without its leading space and
lower-cased; a word of several tokens protects each of them.

The file is written with ``model.vocab_map.write_vocab_table`` (TSV header
``origin_no sort_id token number frequency``; a temporary file renamed over the target, so a
reader never sees half a table), only after the whole corpus was counted. An existing table is
never replaced silently: ``build_vocab_table`` refuses it (before counting) unless ``overwrite``.
Command line: ``python vocab_sort.py --train-data=FILE ... --output=PATH`` (or
``python -m data_utils.vocab_sort``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from data_utils.corpora import ENCODE_CHUNK, CorpusConfig, iter_documents, list_corpus_files
from data_utils.tokenization import GLMTokenizer
from model.vocab_map import write_vocab_table

NUM_TOP = 10  # tokens listed in the summary


class EmptyCorpusError(ValueError):
    """The corpus has no document (or no token) to count; the message names its sources."""


@dataclass(frozen=True)
class TokenCounts:
    """Corpus counts: ``counts`` [num_tokens] (int64) over ``num_documents`` documents."""
    counts: np.ndarray
    num_documents: int

    @property
    def num_counted(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class VocabSortSummary:
    """What ``build_vocab_table`` wrote."""
    output: Path
    num_documents: int
    num_counted: int                       # token occurrences in the corpus
    num_tokens: int                        # rows of the table (the tokenizer's num_tokens)
    num_protected: int                     # the protected prefix of the table
    num_unseen: int                        # ids that never occur in the corpus
    top_protected: tuple[tuple[str, int], ...]
    top: tuple[tuple[str, int], ...]       # the most frequent unprotected tokens

    def describe(self) -> str:
        def listing(pairs: tuple[tuple[str, int], ...]) -> str:
            return ", ".join(f"{token} ({count})" for token, count in pairs) or "-"
        return "\n".join([
            f"wrote {self.output}: {self.num_tokens} tokens, {self.num_protected} protected first",
            f"counted {self.num_counted} tokens in {self.num_documents} documents; "
            f"{self.num_unseen} tokens never occur",
            f"protected: {listing(self.top_protected)}",
            f"most frequent: {listing(self.top)}"])


def count_tokens(documents: Iterable[str], tokenizer: GLMTokenizer,
                 chunk_size: int = ENCODE_CHUNK) -> TokenCounts:
    """Occurrences of every token id in ``documents`` (encoded without special tokens)."""
    counts = np.zeros(tokenizer.num_tokens, dtype=np.int64)
    num_documents = 0
    chunk: list[str] = []

    def flush() -> None:
        ids = [i for encoded in tokenizer.encode_batch(chunk) for i in encoded]
        counts[:] += np.bincount(np.asarray(ids, dtype=np.int64), minlength=tokenizer.num_tokens)
        chunk.clear()

    for text in documents:
        chunk.append(text)
        num_documents += 1
        if len(chunk) == chunk_size:
            flush()
    if chunk:
        flush()
    return TokenCounts(counts, num_documents)


def verbalizer_words(task_specs: Optional[Mapping[str, object]] = None) -> list[str]:
    """Every verbalizer word of every single-token pattern of ``task_specs`` (``TaskSpec``s by
    name; default: all registered tasks), as written, stripped and lower-cased; sorted, without
    repeats."""
    from tasks.patterns import SingleTokenPVP
    from tasks.registry import TASKS
    words = set()
    for spec in (TASKS if task_specs is None else task_specs).values():
        pvp = spec.pvp
        if pvp is None or not issubclass(pvp, SingleTokenPVP):
            continue
        for table in pvp.verbalizer_table.values():
            for word in table.values():
                words.update({word, word.strip(), word.strip().lower()})
    return sorted(word for word in words if word)


def command_token_ids(tokenizer: GLMTokenizer) -> set[int]:
    """The ids of the tokenizer's command tokens (the optional ones only when present)."""
    values = dataclasses.astuple(tokenizer.command)
    return {int(i) for i in values if i is not None}


def protected_token_ids(tokenizer: GLMTokenizer, words: Iterable[str]) -> set[int]:
    """Command tokens plus every token of every word in ``words``."""
    protected = command_token_ids(tokenizer)
    for word in words:
        protected.update(tokenizer.encode(word))
    return protected


def sort_vocabulary(counts: np.ndarray, protected: Iterable[int]) -> np.ndarray:
    """[V] ids in table order: protected ids by count descending, then the others by count
    descending; ties by id ascending. ``counts``: [V]."""
    size = counts.shape[0]
    is_other = np.ones(size, dtype=np.int64)
    is_other[np.asarray(sorted(protected), dtype=np.int64)] = 0
    ids = np.arange(size)
    return np.lexsort((ids, -counts.astype(np.int64), is_other))   # last key sorts first


def table_token(tokenizer: GLMTokenizer, id: int) -> str:
    """The token string as the table shows it (no tab or line break can split a row)."""
    token = tokenizer.id_to_token(id)
    for character in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
        token = token.replace(character, " ")
    return token


def check_can_write(output: str | Path, overwrite: bool) -> None:
    """Raise FileExistsError (naming the file and ``--overwrite``) when ``output`` exists and
    ``overwrite`` is False."""
    if not overwrite and os.path.lexists(output):
        raise FileExistsError(f"the table {output} already exists; pass --overwrite to replace it")


def build_vocab_table(corpus: CorpusConfig, tokenizer: GLMTokenizer, output: str | Path,
                      progress: Optional[bool] = False, overwrite: bool = False) -> VocabSortSummary:
    """Count ``corpus`` with ``tokenizer`` and write the sorted-vocabulary table to ``output``.

    ``progress``: a tqdm bar over documents (None: only on a terminal). Raises
    FileExistsError when ``output`` exists and not ``overwrite`` (checked before counting),
    FileNotFoundError for a missing source, ``CorpusFormatError`` for a malformed one and
    ``EmptyCorpusError`` when there is nothing to count; nothing is written then.
    """
    from tqdm import tqdm
    check_can_write(output, overwrite)
    sources = [str(path) for path in list_corpus_files(corpus.paths)]
    documents = tqdm(iter_documents(corpus), desc="counting tokens", unit=" docs",
                     disable=None if progress is None else not progress)
    counted = count_tokens(documents, tokenizer)
    if counted.num_counted == 0:
        named = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more files" if len(sources) > 3 else "")
        raise EmptyCorpusError(f"the corpus {named} has no tokens to count "
                               f"({counted.num_documents} documents)")
    protected = protected_token_ids(tokenizer, verbalizer_words())
    order = sort_vocabulary(counted.counts, protected)
    tokens = [table_token(tokenizer, int(i)) for i in order]
    counts = [int(counted.counts[i]) for i in order]
    write_vocab_table(str(output), order.tolist(), tokens, counts)
    num_protected = len(protected)
    rows = list(zip(tokens, counts))
    return VocabSortSummary(
        output=Path(output), num_documents=counted.num_documents, num_counted=counted.num_counted,
        num_tokens=len(order), num_protected=num_protected,
        num_unseen=int((counted.counts == 0).sum()),
        top_protected=tuple(rows[:min(NUM_TOP, num_protected)]),
        top=tuple(rows[num_protected:num_protected + NUM_TOP]))


if __name__ == "__main__":   # `python -m data_utils.vocab_sort`: the top-level script's CLI
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "vocab_sort.py"), run_name="__main__")
