"""MP=2 and MP=4 (gloo, CPU processes) against unsharded references for every mpu mapping,
layer and vocabulary-parallel loss.

References are plain torch ops on full tensors, computed in the parent process; each
worker loads its slice of the same seeded full weights (`mpu.shard_of`) and compares its
outputs and every gradient. Sizes are odd multiples of 4 so shapes are never square and
always divide by 2 and 4.
"""
import pytest
import torch
import torch.nn.functional as F

import mpu
from dist_utils import assert_rel_close, run_distributed

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

# fp32 math on the same data; sharding only reorders sums over partitions (all-reduce),
# which changes results at the 1e-7 level, well inside the 1e-5 bound.
RTOL = 1e-5

IN, OUT, VOCAB, QKV = 13, 4 * 17, 4 * 13, 3 * 4 * 11  # QKV: fused output of stride 3


def _layer_reference(seed=1234):
    gen = torch.Generator().manual_seed(seed)
    ref = {
        "x": torch.randn(3, 5, IN, generator=gen),
        "x_wide": torch.randn(3, 5, OUT, generator=gen),
        "ids": torch.randint(0, VOCAB, (3, 5), generator=gen),
        "w_col": torch.randn(OUT, IN, generator=gen), "b_col": torch.randn(OUT, generator=gen),
        "w_qkv": torch.randn(QKV, IN, generator=gen), "b_qkv": torch.randn(QKV, generator=gen),
        "w_row": torch.randn(IN, OUT, generator=gen), "b_row": torch.randn(IN, generator=gen),
        "w_emb": torch.randn(VOCAB, IN, generator=gen),
        "w_pemb": torch.randn(VOCAB, OUT, generator=gen),
    }
    ref["upstream_out"] = torch.randn(3, 5, OUT, generator=gen)   # d loss / d output
    ref["upstream_qkv"] = torch.randn(3, 5, QKV, generator=gen)
    ref["upstream_in"] = torch.randn(3, 5, IN, generator=gen)

    def run(fn, upstream, *tensors):
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        out = fn(*leaves)
        grads = torch.autograd.grad((out * upstream).sum(), leaves)
        return out.detach(), grads

    ref["col"] = run(F.linear, ref["upstream_out"], ref["x"], ref["w_col"], ref["b_col"])
    ref["qkv"] = run(F.linear, ref["upstream_qkv"], ref["x"], ref["w_qkv"], ref["b_qkv"])
    ref["row"] = run(F.linear, ref["upstream_in"], ref["x_wide"], ref["w_row"], ref["b_row"])
    ref["emb"] = run(lambda w: F.embedding(ref["ids"], w), ref["upstream_in"], ref["w_emb"])
    ref["pemb"] = run(lambda w: F.embedding(ref["ids"], w), ref["upstream_out"], ref["w_pemb"])
    return ref


def _load(param, full, rank, world_size):
    with torch.no_grad():
        param.copy_(mpu.shard_of(full, mpu.get_partition_spec(param), rank, world_size))


def _check_linear(layer, ref, key, x, upstream, w_key, b_key, rank, world_size, sharded_input=False):
    _load(layer.weight, ref[w_key], rank, world_size)
    _load(layer.bias, ref[b_key], rank, world_size)
    x = x.clone().requires_grad_(True)
    out = layer(x)
    expected_out, (gx, gw, gb) = ref[key]
    if getattr(layer, "gather_output", True):
        assert_rel_close(out, expected_out, RTOL, f"{key} output")
    else:
        assert_rel_close(out, mpu.shard_of(expected_out, mpu.PartitionSpec(-1, layer.weight.partition_stride),
                                           rank, world_size), RTOL, f"{key} local output")
    out_grad = upstream if getattr(layer, "gather_output", True) else mpu.shard_of(
        upstream, mpu.PartitionSpec(-1, layer.weight.partition_stride), rank, world_size)
    (out * out_grad).sum().backward()
    expected_gx = mpu.shard_of(gx, mpu.PartitionSpec(-1), rank, world_size) if sharded_input else gx
    assert_rel_close(x.grad, expected_gx, RTOL, f"{key} input grad")
    assert_rel_close(layer.weight.grad, mpu.shard_of(gw, mpu.get_partition_spec(layer.weight), rank, world_size),
                     RTOL, f"{key} weight grad")
    assert_rel_close(layer.bias.grad, mpu.shard_of(gb, mpu.get_partition_spec(layer.bias), rank, world_size),
                     RTOL, f"{key} bias grad")


def _layers_worker(rank, world_size, ref):
    torch.manual_seed(0)
    _check_linear(mpu.ColumnParallelLinear(IN, OUT, gather_output=True), ref, "col", ref["x"],
                  ref["upstream_out"], "w_col", "b_col", rank, world_size)
    _check_linear(mpu.ColumnParallelLinear(IN, OUT, gather_output=False), ref, "col", ref["x"],
                  ref["upstream_out"], "w_col", "b_col", rank, world_size)
    _check_linear(mpu.ColumnParallelLinear(IN, QKV, gather_output=False, stride=3), ref, "qkv", ref["x"],
                  ref["upstream_qkv"], "w_qkv", "b_qkv", rank, world_size)
    _check_linear(mpu.RowParallelLinear(OUT, IN, input_is_parallel=False), ref, "row", ref["x_wide"],
                  ref["upstream_in"], "w_row", "b_row", rank, world_size)
    x_local = mpu.shard_of(ref["x_wide"], mpu.PartitionSpec(-1), rank, world_size)
    _check_linear(mpu.RowParallelLinear(OUT, IN, input_is_parallel=True), ref, "row", x_local,
                  ref["upstream_in"], "w_row", "b_row", rank, world_size, sharded_input=True)

    for layer, key, w_key, upstream in [(mpu.VocabParallelEmbedding(VOCAB, IN), "emb", "w_emb", "upstream_in"),
                                        (mpu.ParallelEmbedding(VOCAB, OUT), "pemb", "w_pemb", "upstream_out")]:
        _load(layer.weight, ref[w_key], rank, world_size)
        out = layer(ref["ids"])
        expected_out, (gw,) = ref[key]
        assert_rel_close(out, expected_out, RTOL, f"{key} output")
        (out * ref[upstream]).sum().backward()
        assert_rel_close(layer.weight.grad, mpu.shard_of(gw, mpu.get_partition_spec(layer.weight), rank, world_size),
                         RTOL, f"{key} weight grad")
    return True


def _init_worker(rank, world_size):
    """A layer built at MP=world_size holds exactly the slice of the same-seed full weight."""
    for build in [lambda: mpu.ColumnParallelLinear(IN, QKV, stride=3, keep_master_weight_for_test=True),
                  lambda: mpu.RowParallelLinear(OUT, IN, keep_master_weight_for_test=True),
                  lambda: mpu.ParallelEmbedding(VOCAB, OUT, keep_master_weight_for_test=True)]:
        torch.manual_seed(7)
        layer = build()
        expected = mpu.shard_of(layer.master_weight, mpu.get_partition_spec(layer.weight), rank, world_size)
        assert torch.equal(layer.weight.data, expected)
    torch.manual_seed(7)
    return mpu.VocabParallelEmbedding(VOCAB, IN).weight.detach()


def _mappings_worker(rank, world_size):
    gen = torch.Generator().manual_seed(5)
    full = torch.randn(3, 4 * world_size, generator=gen)         # identical on every rank
    per_rank = [torch.randn(3, 4, generator=gen) for _ in range(world_size)]
    upstream = [torch.randn(3, 4 * world_size, generator=gen) for _ in range(world_size)]
    mine = per_rank[rank].clone().requires_grad_(True)
    x = full.clone().requires_grad_(True)

    # copy_to: forward identity, backward sums the gradients of all ranks.
    out = mpu.copy_to_model_parallel_region(x)
    assert torch.equal(out, full)
    out.backward(upstream[rank])
    assert_rel_close(x.grad, sum(upstream), RTOL, "copy_to backward")

    # reduce_from: forward sum over ranks, backward identity.
    y = mine.clone().detach().requires_grad_(True)
    out = mpu.reduce_from_model_parallel_region(y)
    assert_rel_close(out, sum(per_rank), RTOL, "reduce_from forward")
    out.backward(upstream[rank][:, :4])
    assert torch.equal(y.grad, upstream[rank][:, :4])

    # scatter_to: forward this rank's slice, backward gathers the slices' gradients.
    x.grad = None
    out = mpu.scatter_to_model_parallel_region(x)
    assert torch.equal(out, full[:, 4 * rank:4 * (rank + 1)])
    out.backward(per_rank[rank])
    assert torch.equal(x.grad, torch.cat(per_rank, dim=-1))

    # gather_from: forward concatenation of the slices, backward this rank's slice.
    out = mpu.gather_from_model_parallel_region(mine)
    assert torch.equal(out, torch.cat(per_rank, dim=-1))
    out.backward(upstream[rank])
    assert torch.equal(mine.grad, upstream[rank][:, 4 * rank:4 * (rank + 1)])
    return True


def _loss_reference(seed=99):
    gen = torch.Generator().manual_seed(seed)
    ref = {"s": 3 * torch.randn(3, 5, VOCAB, generator=gen), "t": 3 * torch.randn(3, 5, VOCAB, generator=gen),
           "target": torch.randint(0, VOCAB, (3, 5), generator=gen),
           "mask": torch.rand(3, 5, generator=gen) > 0.3, "upstream": torch.rand(3, 5, generator=gen),
           "T": 2.5}

    def run(fn):
        s, t = ref["s"].clone().requires_grad_(True), ref["t"].clone().requires_grad_(True)
        loss = fn(s, t)
        gs, gt = torch.autograd.grad((loss * ref["upstream"]).sum(), [s, t], allow_unused=True)
        return loss.detach(), gs, gt

    T, mask = ref["T"], ref["mask"]
    kl = lambda s, t: F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="none").sum(-1)
    soft_ce = lambda s, t: -(F.softmax(t / T, -1) * F.log_softmax(s / T, -1)).sum(-1)
    ref["ce"] = run(lambda s, t: F.cross_entropy(s.reshape(-1, VOCAB), ref["target"].reshape(-1),
                                                 reduction="none").view(3, 5))
    ref["kl"] = run(lambda s, t: kl(s, t) * mask)
    ref["soft_ce"] = run(lambda s, t: soft_ce(s, t) * mask)
    ref["entropy"] = run(lambda s, t: -(F.softmax(s / T, -1) * F.log_softmax(s / T, -1)).sum(-1) * mask)
    return ref


def _losses_worker(rank, world_size, ref):
    vocab_shard = lambda full: mpu.shard_of(full, mpu.PartitionSpec(-1), rank, world_size)
    T, mask = ref["T"], ref["mask"]
    cases = {
        "ce": lambda s, t: mpu.vocab_parallel_cross_entropy(s, ref["target"]),
        "kl": lambda s, t: mpu.vocab_parallel_kl_div(s, t, temperature=T, mask=mask),
        "soft_ce": lambda s, t: mpu.vocab_parallel_soft_cross_entropy(s, t, temperature=T, mask=mask, chunk_size=4),
        "entropy": lambda s, t: mpu.vocab_parallel_entropy(s, temperature=T, mask=mask, chunk_size=7),
    }
    for name, fn in cases.items():
        s = vocab_shard(ref["s"]).requires_grad_(True)
        t = vocab_shard(ref["t"]).requires_grad_(True)
        loss = fn(s, t)
        expected_loss, expected_gs, expected_gt = ref[name]
        assert_rel_close(loss, expected_loss, RTOL, f"{name} loss")
        (loss * ref["upstream"]).sum().backward()
        assert_rel_close(s.grad, vocab_shard(expected_gs), RTOL, f"{name} student grad")
        if expected_gt is not None and name != "entropy":
            assert_rel_close(t.grad, vocab_shard(expected_gt), RTOL, f"{name} teacher grad")
    # Target selection across vocabulary shards.
    index = ref["target"][..., None].expand(3, 5, 2).clone()
    index[..., 1] = (index[..., 1] + VOCAB // 2) % VOCAB
    s = vocab_shard(ref["s"]).requires_grad_(True)
    picked = mpu.vocab_parallel_select(s, index)
    assert torch.equal(picked, ref["s"].gather(-1, index))
    return True


@pytest.fixture(scope="module")
def layer_reference():
    return _layer_reference()


@pytest.mark.parametrize("world_size", [2, 4])
def test_layers_match_unsharded_reference(layer_reference, world_size):
    assert run_distributed(_layers_worker, world_size, layer_reference) == [True] * world_size


@pytest.mark.parametrize("world_size", [2, 4])
def test_mappings_forward_and_backward(world_size):
    assert run_distributed(_mappings_worker, world_size) == [True] * world_size


@pytest.mark.parametrize("world_size", [2, 4])
def test_vocab_parallel_losses_match_full_vocabulary(world_size):
    assert run_distributed(_losses_worker, world_size, _loss_reference()) == [True] * world_size


def test_initialisation_is_independent_of_model_parallel_size():
    torch.manual_seed(7)
    full = mpu.VocabParallelEmbedding(VOCAB, IN).weight.detach()  # MP=1 in this process
    shards = run_distributed(_init_worker, 2)
    assert torch.equal(torch.cat(shards, dim=0), full)
