"""Resumable, data-parallel-sharded micro-batch streams for the two stages.

Every model-parallel rank of a group builds the same stream (the order depends only on the
seed and the data-parallel rank), so no batch needs broadcasting.
"""
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from data_utils.blocklm import BlockLMStrategy
from data_utils.samples import DistributedSampleIterator
from tasks.collate import collate


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class PretrainBatches:
    """Blank-infilling batches from a sample iterator (its position is the stream's state)."""

    def __init__(self, samples: DistributedSampleIterator, strategy: BlockLMStrategy, device: torch.device):
        self.samples, self.strategy, self.device = samples, strategy, device

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        batch = next(self.samples)
        return to_device(self.strategy(batch.samples, batch.seed), self.device)

    def take(self, count: int) -> List[Dict[str, torch.Tensor]]:
        return [next(self) for _ in range(count)]

    def state_dict(self) -> Dict[str, Any]:
        return self.samples.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.samples.load_state_dict(state)


class EpochBatches:
    """Task samples in epochs: a seeded shuffle per epoch, global batches of
    batch_size x dp_world_size of which this rank takes its slice; the last incomplete global
    batch of an epoch is dropped. State: (epoch, batch position)."""

    def __init__(self, dataset, batch_size: int, dp_rank: int, dp_world_size: int, seed: int, device: torch.device):
        if len(dataset) < batch_size * dp_world_size:
            raise ValueError(f"{len(dataset)} training examples cannot fill one batch of {batch_size} x "
                             f"{dp_world_size} data-parallel ranks")
        self.dataset, self.batch_size = dataset, batch_size
        self.dp_rank, self.dp_world_size, self.seed, self.device = dp_rank, dp_world_size, seed, device
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // (self.batch_size * self.dp_world_size)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, Any]:
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        begin = (self.position * self.dp_world_size + self.dp_rank) * self.batch_size
        self.position += 1
        return to_device(collate([self.dataset[int(i)] for i in order[begin:begin + self.batch_size]]), self.device)

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "num_examples": len(self.dataset)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["num_examples"] != len(self.dataset):
            raise ValueError(f"cannot resume: the checkpoint saw {state['num_examples']} training examples, "
                             f"this data has {len(self.dataset)}")
        self.epoch, self.position = state["epoch"], state["position"]


def eval_shards(num_examples: int, batch_size: int, dp_rank: int, dp_world_size: int) -> List[Sequence[int]]:
    """This rank's example indices for evaluation (every example once across ranks), in batches."""
    mine = list(range(dp_rank, num_examples, dp_world_size))
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
