"""Pretraining samples from a token store, sharded over data-parallel ranks, resumable.

``BlockSampleDataset`` cuts each document of a split into consecutive chunks of
``seq_length - 1`` tokens; sample i is ``[CLS] + chunk_i`` (a list of ids, at most
``seq_length`` long), the input ``BlockLMStrategy`` expects. (The original samples documents
with replacement, weighted by length, and starts near a sentence boundary; consecutive chunks
cover the same text deterministically.)

``DistributedSampleIterator`` walks an epoch-seeded permutation of the samples in global batches
of ``batch_size * world_size``; rank r takes the r-th slice of each global batch, so ranks see
disjoint samples. An epoch's last incomplete global batch is dropped. ``state_dict()`` /
``load_state_dict()`` save and restore the position exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from data_utils.blocklm import derive_seed
from data_utils.corpora import Corpus
from data_utils.indexed_dataset import IndexedTokens


class BlockSampleDataset:
    """Samples ``[CLS] + chunk`` from the documents ``document_indices`` of ``documents``."""

    def __init__(self, documents: IndexedTokens, document_indices: np.ndarray, seq_length: int,
                 cls_id: int):
        if seq_length < 2:
            raise ValueError(f"seq_length must be >= 2 ([CLS] + 1 token), got {seq_length}")
        self.documents = documents
        self.seq_length = seq_length
        self.cls_id = cls_id
        indices = np.asarray(document_indices, dtype=np.int64)
        chunk = seq_length - 1
        num_chunks = -(-documents.document_lengths()[indices] // chunk)  # ceil; 0 if empty
        self._document = np.repeat(indices, num_chunks)  # [num_samples]
        first_sample = np.cumsum(num_chunks) - num_chunks  # per document
        chunk_index = np.arange(len(self._document)) - np.repeat(first_sample, num_chunks)
        self._start = chunk_index * chunk  # [num_samples] token offset in its document

    def __len__(self) -> int:
        return len(self._document)

    def __getitem__(self, index: int) -> list[int]:
        tokens = self.documents[int(self._document[index])]
        start = int(self._start[index])
        return [self.cls_id] + tokens[start:start + self.seq_length - 1].tolist()


@dataclass(frozen=True)
class SampleBatch:
    """One rank's micro-batch: samples, the seed for its masks, and the global step."""
    samples: list[list[int]]
    seed: int
    step: int


class DistributedSampleIterator:
    """Endless iterator of ``SampleBatch`` for one data-parallel rank (see module docstring)."""

    def __init__(self, dataset: BlockSampleDataset, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 1234):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) < batch_size * world_size:
            raise ValueError(f"{len(dataset)} samples cannot fill one global batch of "
                             f"{batch_size} x {world_size} ranks")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self._epoch, self._position, self._step = 0, 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def __iter__(self) -> "DistributedSampleIterator":
        return self

    def __next__(self) -> SampleBatch:
        global_batch = self.batch_size * self.world_size
        if self._position + global_batch > len(self.dataset):
            self._epoch, self._position = self._epoch + 1, 0
            self._order = self._permutation(self._epoch)
        begin = self._position + self.rank * self.batch_size
        indices = self._order[begin:begin + self.batch_size]
        batch = SampleBatch([self.dataset[int(i)] for i in indices],
                            seed=derive_seed(self.seed, self._step, self.rank), step=self._step)
        self._position += global_batch
        self._step += 1
        return batch

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)

    def state_dict(self) -> dict[str, Any]:
        """The position: epoch, samples consumed in it (all ranks), global step."""
        return {"epoch": self._epoch, "position": self._position, "step": self._step,
                "seed": self.seed, "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``; the seed and the number of samples must match."""
        for key in ("seed", "num_samples"):
            mine = self.seed if key == "seed" else len(self.dataset)
            if state[key] != mine:
                raise ValueError(f"cannot resume: saved {key}={state[key]}, this iterator has "
                                 f"{mine} (a different seed or corpus)")
        self._epoch, self._position, self._step = state["epoch"], state["position"], state["step"]
        self._order = self._permutation(self._epoch)


def split_iterators(corpus: Corpus, seq_length: int, batch_size: int, cls_id: int,
                    rank: int = 0, world_size: int = 1,
                    seed: int = 1234) -> list[Optional[DistributedSampleIterator]]:
    """[train, valid, test] iterators over ``corpus.splits()``; None for a split too small to
    fill one global batch."""
    iterators: list[Optional[DistributedSampleIterator]] = []
    for split_index, indices in enumerate(corpus.splits()):
        dataset = BlockSampleDataset(corpus.documents, indices, seq_length, cls_id)
        if len(dataset) < batch_size * world_size:
            iterators.append(None)
        else:
            iterators.append(DistributedSampleIterator(
                dataset, batch_size, rank, world_size, seed=derive_seed(seed, split_index)))
    return iterators
