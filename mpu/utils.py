"""Small helpers shared by the mpu modules (Megatron-LM v1 names)."""
import math
from typing import List, Tuple

import torch


def ensure_divisibility(numerator: int, denominator: int) -> None:
    if numerator % denominator != 0:
        raise ValueError(f"{numerator} is not divisible by {denominator}")


def divide(numerator: int, denominator: int) -> int:
    """numerator / denominator, raising when it does not divide exactly."""
    ensure_divisibility(numerator, denominator)
    return numerator // denominator


def pad_vocab_size(num_tokens: int, divisible_by: int = 128, model_parallel_size: int = 1) -> int:
    """Round `num_tokens` up to a multiple of lcm(divisible_by, model_parallel_size), so the
    vocabulary splits evenly across model-parallel ranks. As in GLM (and unlike Megatron's
    divisible_by * mp), the size does not change with the model-parallel size whenever that
    divides divisible_by (128 by default), so checkpoints move between MP sizes: bert-base-uncased
    is 30592 rows at MP 1, 2, 4, ..., 128."""
    if divisible_by < 1 or model_parallel_size < 1:
        raise ValueError(f"divisible_by ({divisible_by}) and model_parallel_size ({model_parallel_size}) must be >= 1")
    multiple = math.lcm(divisible_by, model_parallel_size)
    return -(-num_tokens // multiple) * multiple


def split_tensor_along_last_dim(tensor: torch.Tensor, num_partitions: int,
                                contiguous_split_chunks: bool = False) -> List[torch.Tensor]:
    last_dim_size = divide(tensor.size(-1), num_partitions)
    chunks = torch.split(tensor, last_dim_size, dim=-1)
    if contiguous_split_chunks:
        return [chunk.contiguous() for chunk in chunks]
    return list(chunks)


class VocabUtility:
    """The [first, last) vocabulary range owned by a rank of a vocab-parallel layer."""

    @staticmethod
    def vocab_range_from_per_partition_vocab_size(per_partition_vocab_size: int, rank: int,
                                                  world_size: int) -> Tuple[int, int]:
        first = rank * per_partition_vocab_size
        return first, first + per_partition_vocab_size

    @staticmethod
    def vocab_range_from_global_vocab_size(global_vocab_size: int, rank: int,
                                           world_size: int) -> Tuple[int, int]:
        per_partition = divide(global_vocab_size, world_size)
        return VocabUtility.vocab_range_from_per_partition_vocab_size(per_partition, rank, world_size)
