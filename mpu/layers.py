"""Model-parallel layers (Megatron-LM v1 names and signatures).

Every layer initialises the *full* ("master") weight on the CPU from the default
generator and keeps this rank's slice, so a model built at MP=2 holds exactly the slices
of the same model built at MP=1 from the same seed. At MP=1 `ColumnParallelLinear` and
`RowParallelLinear` are numerically `nn.Linear`, and `VocabParallelEmbedding` is
`nn.Embedding`.
"""
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .initialize import get_model_parallel_rank, get_model_parallel_world_size
from .mappings import (copy_to_model_parallel_region, gather_from_model_parallel_region,
                       reduce_from_model_parallel_region, scatter_to_model_parallel_region)
from .partition import set_partition_metadata
from .utils import VocabUtility, divide

InitMethod = Callable[[torch.Tensor], object]

# apex's FusedLayerNorm in the original; torch's fused kernel does the same job.
LayerNorm = nn.LayerNorm


def init_normal(std: float) -> InitMethod:
    """N(0, std) initialiser."""
    return lambda tensor: nn.init.normal_(tensor, mean=0.0, std=std)


def scaled_init_normal(std: float, num_layers: int) -> InitMethod:
    """N(0, std / sqrt(2 * num_layers)): GLM's init for residual output projections."""
    return init_normal(std / math.sqrt(2.0 * num_layers))


def _initialize_affine_weight(weight: nn.Parameter, full_shape, partition_dim: int, init_method: InitMethod,
                              stride: int = 1, return_master_weight: bool = False) -> Optional[torch.Tensor]:
    """Fill `weight` with this rank's slice of a full weight initialised by `init_method`."""
    set_partition_metadata(weight, partition_dim, stride)
    world_size = get_model_parallel_world_size()
    master = torch.empty(full_shape, dtype=torch.float32, requires_grad=False)
    init_method(master)
    # [full] -> world_size * stride chunks; this rank takes chunks rank, rank + world_size, ...
    chunk = divide(divide(full_shape[partition_dim], world_size), stride)
    chunks = torch.split(master, chunk, dim=partition_dim)
    mine = torch.cat(chunks[get_model_parallel_rank()::world_size], dim=partition_dim)
    with torch.no_grad():
        weight.copy_(mine)
    return master if return_master_weight else None


class VocabParallelEmbedding(nn.Module):
    """Embedding sharded along the vocabulary: rank r holds rows [r*V/p, (r+1)*V/p).

    forward: ids [*] -> embeddings [*, embedding_dim] (all-reduced over the group).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, init_method: InitMethod = nn.init.xavier_normal_):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        world_size = get_model_parallel_world_size()
        self.vocab_start_index, self.vocab_end_index = VocabUtility.vocab_range_from_global_vocab_size(
            num_embeddings, get_model_parallel_rank(), world_size)
        self.num_embeddings_per_partition = self.vocab_end_index - self.vocab_start_index
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim))
        _initialize_affine_weight(self.weight, (num_embeddings, embedding_dim), 0, init_method)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if get_model_parallel_world_size() == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start_index) | (input_ids >= self.vocab_end_index)
        local_ids = (input_ids - self.vocab_start_index).masked_fill(outside, 0)
        local = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_model_parallel_region(local)


class ParallelEmbedding(nn.Module):
    """Embedding sharded along the embedding dimension: rank r holds columns r*E/p...

    forward: ids [*] -> embeddings [*, embedding_dim] (all-gathered over the group).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, init_method: InitMethod = nn.init.xavier_normal_,
                 keep_master_weight_for_test: bool = False):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.embedding_dim_per_partition = divide(embedding_dim, get_model_parallel_world_size())
        self.weight = nn.Parameter(torch.empty(num_embeddings, self.embedding_dim_per_partition))
        self.master_weight = _initialize_affine_weight(self.weight, (num_embeddings, embedding_dim), 1, init_method,
                                                       return_master_weight=keep_master_weight_for_test)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Each rank's weight slice produces its own columns; no reduction of its gradient.
        return gather_from_model_parallel_region(F.embedding(input_ids, self.weight))


class ColumnParallelLinear(nn.Module):
    """Y = XA + b with A sharded along its output columns: A = [A_1, ..., A_p].

    forward: X [*, input_size] -> Y [*, output_size] if gather_output else [*, output_size/p].
    `stride` > 1 keeps `stride` interleaved blocks per shard (fused QKV: stride 3).
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = True, gather_output: bool = True,
                 init_method: InitMethod = nn.init.xavier_normal_, stride: int = 1,
                 keep_master_weight_for_test: bool = False):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.gather_output = gather_output
        self.output_size_per_partition = divide(output_size, get_model_parallel_world_size())
        self.weight = nn.Parameter(torch.empty(self.output_size_per_partition, input_size))
        self.master_weight = _initialize_affine_weight(self.weight, (output_size, input_size), 0, init_method,
                                                       stride, return_master_weight=keep_master_weight_for_test)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.output_size_per_partition))
            set_partition_metadata(self.bias, 0, stride)
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        output_parallel = F.linear(copy_to_model_parallel_region(input_), self.weight, self.bias)
        return gather_from_model_parallel_region(output_parallel) if self.gather_output else output_parallel


class RowParallelLinear(nn.Module):
    """Y = XA + b with A sharded along its input rows: A = [A_1; ...; A_p], X = [X_1, ..., X_p].

    forward: X [*, input_size/p] if input_is_parallel else [*, input_size] -> Y [*, output_size]
    (all-reduced; the bias is replicated and added once after the reduction).
    """

    def __init__(self, input_size: int, output_size: int, bias: bool = True, input_is_parallel: bool = False,
                 init_method: InitMethod = nn.init.xavier_normal_, stride: int = 1,
                 keep_master_weight_for_test: bool = False):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.input_is_parallel = input_is_parallel
        self.input_size_per_partition = divide(input_size, get_model_parallel_world_size())
        self.weight = nn.Parameter(torch.empty(output_size, self.input_size_per_partition))
        self.master_weight = _initialize_affine_weight(self.weight, (output_size, input_size), 1, init_method,
                                                       stride, return_master_weight=keep_master_weight_for_test)
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_size))
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        input_parallel = input_ if self.input_is_parallel else scatter_to_model_parallel_region(input_)
        output = reduce_from_model_parallel_region(F.linear(input_parallel, self.weight))
        return output + self.bias if self.bias is not None else output
