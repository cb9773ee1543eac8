"""Pre-tokenised documents stored as a memory-mapped token array plus document offsets.

A store is a folder holding

* ``tokens.bin``: all token ids back to back (``uint16`` when the vocabulary fits, else
  ``int32``), read with ``numpy.memmap`` so a corpus larger than RAM works;
* ``offsets.npy``: int64 [num_documents + 1]; document i is ``tokens[offsets[i]:offsets[i+1]]``;
* ``meta.json``: dtype, counts and the caller's metadata (e.g. the cache key).

``write_indexed_tokens`` streams documents to a temporary folder next to the target and renames
it into place, so a reader never sees a half-written store.
"""
from __future__ import annotations

import array
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned/signed dtype that holds ids < ``vocab_size``."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def write_indexed_tokens(directory: str | Path, documents: Iterable[Sequence[int]],
                         vocab_size: int, meta: dict[str, Any] | None = None) -> Path:
    """Write ``documents`` (token-id lists) to the store ``directory`` atomically.

    The store is built in a temporary sibling folder, then renamed to ``directory``. If another
    process finished the same store first, that one is kept. Returns ``directory``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        offsets = array.array("q", [0])  # 8 bytes per document
        with open(tmp / "tokens.bin", "wb") as out:
            for document in documents:
                ids = np.asarray(document, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                    raise ValueError(f"token id outside [0, {vocab_size}) in document "
                                     f"{len(offsets) - 1}")
                out.write(ids.astype(dtype).tobytes())
                offsets.append(offsets[-1] + ids.size)
        np.save(tmp / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
        info = {"format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab_size,
                "num_documents": len(offsets) - 1, "num_tokens": offsets[-1], **(meta or {})}
        (tmp / "meta.json").write_text(json.dumps(info, indent=1, sort_keys=True))
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


class IndexedTokens:
    """Read-only view of a store: ``store[i]`` is document i as a numpy array (memory-mapped)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no token store at {self.directory} (missing meta.json)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.directory}: format version {self.meta.get('format_version')}"
                             f", expected {FORMAT_VERSION}; delete it to rebuild")
        self.offsets: np.ndarray = np.load(self.directory / "offsets.npy", mmap_mode="r")
        num_tokens = int(self.offsets[-1])
        dtype = np.dtype(self.meta["dtype"])
        # np.memmap cannot map an empty file; an empty corpus gets an empty array
        self.tokens: np.ndarray = (np.memmap(self.directory / "tokens.bin", dtype=dtype, mode="r")
                                   if num_tokens else np.zeros(0, dtype=dtype))
        if self.tokens.size != num_tokens:
            raise ValueError(f"{self.directory}: tokens.bin holds {self.tokens.size} tokens, "
                             f"offsets say {num_tokens}; delete the folder to rebuild")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        """Tokens of document ``index``: [length] (a memory-mapped slice)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} out of range for {len(self)} documents")
        index %= len(self)
        return self.tokens[self.offsets[index]:self.offsets[index + 1]]

    def document_lengths(self) -> np.ndarray:
        """[num_documents] int64."""
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])
