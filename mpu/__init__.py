"""Megatron-style tensor (model) parallelism on torch.distributed (gloo on CPU, nccl on GPU).

The public API of Megatron-LM v1's `mpu`, plus the vocabulary-parallel soft-label losses and
divergences that distillation needs and the partition metadata that `change_mp.py` reads.
"""
from .cross_entropy import (vocab_parallel_cross_entropy, vocab_parallel_entropy, vocab_parallel_kl_div,
                            vocab_parallel_select, vocab_parallel_soft_cross_entropy, vocab_parallel_take)
from .data import broadcast_data
from .divergences import (Divergence, MixtureKL, TotalVariation, vocab_parallel_divergence, vocab_parallel_jsd,
                          vocab_parallel_reverse_kl, vocab_parallel_skew_kl, vocab_parallel_skew_reverse_kl,
                          vocab_parallel_total_variation)
from .grads import clip_grad_norm
from .initialize import (destroy_model_parallel, get_data_parallel_group, get_data_parallel_rank,
                         get_data_parallel_world_size, get_model_parallel_group, get_model_parallel_rank,
                         get_model_parallel_src_rank, get_model_parallel_world_size,
                         get_tensor_model_parallel_group, get_tensor_model_parallel_rank,
                         get_tensor_model_parallel_world_size, initialize_model_parallel,
                         model_parallel_is_initialized)
from .layers import (ColumnParallelLinear, LayerNorm, ParallelEmbedding, RowParallelLinear, VocabParallelEmbedding,
                     init_normal, scaled_init_normal)
from .mappings import (copy_to_model_parallel_region, gather_from_model_parallel_region,
                       reduce_from_model_parallel_region, scatter_to_model_parallel_region)
from .partition import (PartitionSpec, get_partition_spec, merge_tensors, partition_specs, set_partition_metadata,
                        shard_of, shard_state_dict, split_tensor)
from .random import checkpoint, get_cuda_rng_tracker, model_parallel_cuda_manual_seed
from .utils import VocabUtility, divide, pad_vocab_size, split_tensor_along_last_dim

__all__ = [name for name in dir() if not name.startswith("_")]
