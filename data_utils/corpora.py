"""Raw corpora -> a cached, pre-tokenised token store, and the train/valid/test split.

Sources are plain-text files (one document per non-empty line, or per blank-line-separated
paragraph with ``plain_text_unit="paragraph"``), JSONL files (one JSON object per line, the
document under ``text_key``), or folders of such files (searched recursively, sorted by path).
Suffixes: ``.jsonl``/``.json`` are JSONL, ``.txt``/``.text`` plain text.

``build_corpus`` tokenises the documents once into an ``IndexedTokens`` store inside
``cache_dir`` (default: a ``.glm_cache`` folder next to the first source). The store's name
holds a key over the tokenizer's fingerprint, each source file's path, size and mtime, and the
reading options, so a changed tokenizer or file builds a new store; an unchanged one is reused.
When that folder cannot be written (a read-only data folder), the store goes under the per-user
``$XDG_CACHE_HOME/glmkd/corpora`` (default ``~/.cache/glmkd/corpora``) and ``Corpus.note`` says so.

Sources are read strictly: a line that is not UTF-8, or a binary file, raises
``CorpusFormatError`` naming ``path:line`` and the byte offset before any token is cached.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

import numpy as np

from data_utils.indexed_dataset import FORMAT_VERSION, IndexedTokens, write_indexed_tokens
from data_utils.text_files import iter_lines
from data_utils.tokenization import GLMTokenizer

JSONL_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt", ".text")
ENCODE_CHUNK = 256  # documents tokenised per batch


class CorpusFormatError(ValueError):
    """A malformed source file; the message names the file and line."""


class CorpusCacheError(ValueError):
    """No writable folder for the token cache; the message names the folders and the fix.
    A ValueError, so the entry points report it as a run-time error."""


@dataclass(frozen=True)
class CorpusConfig:
    """Where a corpus comes from and how it is read and split."""
    paths: tuple[str, ...]  # files and/or folders
    text_key: str = "text"  # JSONL field holding the document
    plain_text_unit: Literal["line", "paragraph"] = "line"
    split: str = "949,50,1"  # --split: weights of train, valid, test documents
    split_seed: int = 1234  # the document shuffle before splitting
    cache_dir: Optional[str] = None  # default: <first source's folder>/.glm_cache

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, Path)):
            object.__setattr__(self, "paths", (str(self.paths),))
        if not self.paths:
            raise ValueError("CorpusConfig.paths is empty")
        if self.plain_text_unit not in ("line", "paragraph"):
            raise ValueError(f"plain_text_unit must be 'line' or 'paragraph', "
                             f"got {self.plain_text_unit!r}")
        parse_split(self.split)


def parse_split(split: str) -> list[float]:
    """``"949,50,1"`` -> normalised weights [0.949, 0.05, 0.001]; 1-3 non-negative numbers."""
    try:
        weights = [float(part) for part in split.replace("/", ",").split(",")]
    except ValueError:
        raise ValueError(f"split {split!r} must be comma-separated numbers, e.g. '949,50,1'")
    if not 1 <= len(weights) <= 3 or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"split {split!r} needs 1-3 non-negative weights with a positive sum")
    weights += [0.0] * (3 - len(weights))
    return [w / sum(weights) for w in weights]


def split_documents(num_documents: int, split: str, seed: int) -> list[np.ndarray]:
    """Deterministic [train, valid, test] document indices: a seeded shuffle cut by weights."""
    weights = parse_split(split)
    order = np.random.default_rng(seed).permutation(num_documents)
    bounds = np.round(np.cumsum([0.0] + weights) * num_documents).astype(np.int64)
    return [np.sort(order[bounds[i]:bounds[i + 1]]) for i in range(3)]


def list_corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    """Source files: files as given, folders searched recursively (sorted; hidden skipped)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix in JSONL_SUFFIXES + TEXT_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise FileNotFoundError(f"no {JSONL_SUFFIXES + TEXT_SUFFIXES} files in {path}")
            files.extend(found)
        else:
            raise FileNotFoundError(f"corpus path not found: {path}")
    return files


def iter_jsonl_documents(path: Path, text_key: str) -> Iterator[str]:
    """The ``text_key`` field of each JSON line; a bad line raises naming ``path:line``."""
    for number, line in iter_lines(path, CorpusFormatError):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusFormatError(f"{path}:{number}: malformed JSON ({error.msg})") from None
        if not isinstance(record, dict) or text_key not in record:
            raise CorpusFormatError(f"{path}:{number}: no text key {text_key!r} in the record")
        if not isinstance(record[text_key], str):
            raise CorpusFormatError(f"{path}:{number}: {text_key!r} is "
                                    f"{type(record[text_key]).__name__}, not a string")
        yield record[text_key]


def iter_text_documents(path: Path, unit: str) -> Iterator[str]:
    """Non-empty lines (``unit="line"``) or blank-line-separated paragraphs of ``path``."""
    paragraph: list[str] = []
    for _, line in iter_lines(path, CorpusFormatError):
        if unit == "line":
            if line.strip():
                yield line
        elif line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def iter_documents(config: CorpusConfig) -> Iterator[str]:
    """All documents of the corpus, in file order."""
    for path in list_corpus_files(config.paths):
        if path.suffix in JSONL_SUFFIXES:
            yield from iter_jsonl_documents(path, config.text_key)
        else:
            yield from iter_text_documents(path, config.plain_text_unit)


def corpus_cache_key(config: CorpusConfig, tokenizer: GLMTokenizer) -> str:
    """16 hex digits over the tokenizer, the source files (path, size, mtime) and read options."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
             for p in list_corpus_files(config.paths)]
    parts = (FORMAT_VERSION, tokenizer.fingerprint, files, config.text_key, config.plain_text_unit)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def corpus_cache_dir(config: CorpusConfig, tokenizer: GLMTokenizer) -> Path:
    """The store folder this corpus and tokenizer map to, before any fallback."""
    first = Path(config.paths[0])
    root = Path(config.cache_dir) if config.cache_dir else (
        (first if first.is_dir() else first.parent) / ".glm_cache")
    return root / f"{first.stem or 'corpus'}-{corpus_cache_key(config, tokenizer)}"


def user_cache_root() -> Path:
    """The per-user fallback root: ``$XDG_CACHE_HOME/glmkd/corpora`` (``~/.cache/...``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glmkd" / "corpora"


def _writable(path: Path) -> bool:
    """Whether ``path`` can be created or written: its nearest existing ancestor is a writable
    folder (``os.access`` also says no on a read-only file system)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    return False


def _usable(directory: Path) -> bool:
    """A store folder holds a built store already, or can be written."""
    return (directory / "meta.json").is_file() or _writable(directory)


def resolve_cache_dir(config: CorpusConfig, tokenizer: GLMTokenizer) -> tuple[Path, Optional[str]]:
    """(store folder, note). The default folder when it holds the store or can be written; else,
    unless ``cache_dir`` was given, the same store name under ``user_cache_root()`` with a
    one-line note saying so. Neither usable: ``CorpusCacheError`` naming both folders."""
    directory = corpus_cache_dir(config, tokenizer)
    if _usable(directory):
        return directory, None
    if config.cache_dir:
        raise CorpusCacheError(f"the corpus token cache folder {directory.parent} is not writable: "
                               f"make it writable or pass a writable cache_dir")
    fallback = user_cache_root() / directory.name
    if _usable(fallback):
        return fallback, (f"{directory.parent} is not writable; the corpus token cache is in "
                          f"{fallback} instead")
    raise CorpusCacheError(
        f"no writable folder for the corpus token cache: neither {directory.parent} (next to the "
        f"corpus) nor {fallback.parent} (per user) can be written; make one of them writable, "
        f"or set XDG_CACHE_HOME to a writable folder (the cache goes to $XDG_CACHE_HOME/glmkd/corpora)")


@dataclass(frozen=True)
class Corpus:
    """A built corpus: the token store, its folder, whether it came from the cache, and a note
    when the folder is not the default one (print it: ``note: {corpus.note}``)."""
    config: CorpusConfig
    documents: IndexedTokens
    directory: Path
    cache_hit: bool
    note: Optional[str] = None  # one line for the caller to print, e.g. the cache fell back

    def splits(self) -> list[np.ndarray]:
        """[train, valid, test] document indices by ``config.split``/``split_seed``."""
        return split_documents(len(self.documents), self.config.split, self.config.split_seed)


def _encode_documents(config: CorpusConfig, tokenizer: GLMTokenizer) -> Iterator[list[int]]:
    chunk: list[str] = []
    for text in iter_documents(config):
        chunk.append(text)
        if len(chunk) == ENCODE_CHUNK:
            yield from tokenizer.encode_batch(chunk)
            chunk = []
    if chunk:
        yield from tokenizer.encode_batch(chunk)


def build_corpus(config: CorpusConfig, tokenizer: GLMTokenizer) -> Corpus:
    """Tokenise the corpus into its cache folder, or reuse the folder when it exists.

    In a multi-process run, call this on one rank first (then a barrier) so the others hit
    the cache; concurrent builds are safe but wasteful.
    """
    directory, note = resolve_cache_dir(config, tokenizer)
    if (directory / "meta.json").is_file():
        return Corpus(config, IndexedTokens(directory), directory, cache_hit=True, note=note)
    meta = {"tokenizer": tokenizer.fingerprint, "sources": [str(p) for p in config.paths],
            "text_key": config.text_key, "plain_text_unit": config.plain_text_unit}
    write_indexed_tokens(directory, _encode_documents(config, tokenizer),
                         vocab_size=tokenizer.num_tokens, meta=meta)
    return Corpus(config, IndexedTokens(directory), directory, cache_hit=False, note=note)
