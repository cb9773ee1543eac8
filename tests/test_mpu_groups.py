"""Process groups, broadcast_data and clip_grad_norm on 4 gloo processes (MP=2 x DP=2)."""
import pytest
import torch
import torch.distributed as dist

import mpu
from dist_utils import run_distributed

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier


def _groups_worker(rank, world_size):
    assert mpu.model_parallel_is_initialized()
    assert mpu.get_model_parallel_world_size() == 2 and mpu.get_model_parallel_rank() == rank % 2
    assert mpu.get_model_parallel_src_rank() == (rank // 2) * 2
    assert mpu.get_data_parallel_world_size() == 2 and mpu.get_data_parallel_rank() == rank // 2
    members = torch.tensor([float(rank)])
    dist.all_reduce(members, group=mpu.get_model_parallel_group())
    assert members.item() == 2 * (rank // 2) * 2 + 1            # ranks {0,1} or {2,3}
    members = torch.tensor([float(rank)])
    dist.all_reduce(members, group=mpu.get_data_parallel_group())
    assert members.item() == 2 * (rank % 2) + 2                 # ranks {0,2} or {1,3}

    # broadcast_data: model-parallel rank 0 of each group holds the batch of its DP rank.
    dp_rank = rank // 2
    batch = {"text": torch.arange(6).view(2, 3) + 100 * dp_rank, "mask": torch.tensor([1, 0, 1, 1]) * dp_rank}
    received = mpu.broadcast_data(["text", "mask"], batch if rank % 2 == 0 else None, torch.int64)
    assert torch.equal(received["text"], batch["text"]) and torch.equal(received["mask"], batch["mask"])

    # clip_grad_norm counts each shard once and replicated parameters once.
    gen = torch.Generator().manual_seed(3)
    full_weight_grad, bias_grad = torch.randn(8, 5, generator=gen), torch.randn(5, generator=gen)
    layer = mpu.RowParallelLinear(8, 5)
    layer.weight.grad = mpu.shard_of(full_weight_grad.T.contiguous(), mpu.get_partition_spec(layer.weight),
                                     mpu.get_model_parallel_rank(), 2)
    layer.bias.grad = bias_grad.clone()
    expected = torch.sqrt(full_weight_grad.pow(2).sum() + bias_grad.pow(2).sum()).item()
    norm = mpu.clip_grad_norm(layer.parameters(), max_norm=0.5)
    assert abs(norm - expected) <= 1e-5 * expected
    torch.testing.assert_close(layer.bias.grad, bias_grad * 0.5 / (expected + 1e-6))
    return True


def test_groups_broadcast_and_grad_clipping_on_mp2_by_dp2():
    assert run_distributed(_groups_worker, 4, model_parallel_size=2) == [True] * 4
