"""Single-process checks of mpu: literal golden values of the vocabulary-parallel losses,
masks with non-finite rows, partition split/merge, the RNG tracker and checkpointing."""
import math

import pytest
import torch
import torch.nn.functional as F

import mpu


def test_losses_on_a_hand_computed_example():
    # Student logits [0, 0] (p_s = 1/2, 1/2); teacher logits [0, ln 3] (p_t = 1/4, 3/4).
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)       # 0.130812...
    assert mpu.vocab_parallel_kl_div(student, teacher).item() == pytest.approx(kl, abs=1e-7)
    assert mpu.vocab_parallel_soft_cross_entropy(student, teacher).item() == pytest.approx(math.log(2), abs=1e-7)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))           # 0.562335...
    assert mpu.vocab_parallel_entropy(teacher).item() == pytest.approx(entropy, abs=1e-7)
    # Cross entropy of target 1 under the teacher logits: -log(3/4).
    assert mpu.vocab_parallel_cross_entropy(teacher, torch.tensor([1])).item() == pytest.approx(math.log(4 / 3), abs=1e-7)
    # Temperature 2 on logits [0, 2 ln 3] is the same as T=1 on [0, ln 3].
    assert mpu.vocab_parallel_entropy(2 * teacher, temperature=2.0).item() == pytest.approx(entropy, abs=1e-7)


def test_losses_and_gradients_match_torch_at_mp1():
    gen = torch.Generator().manual_seed(0)
    s = (4 * torch.randn(2, 3, 29, generator=gen)).requires_grad_(True)
    t = (4 * torch.randn(2, 3, 29, generator=gen)).requires_grad_(True)
    T = 3.0
    ours = mpu.vocab_parallel_kl_div(s, t, temperature=T, chunk_size=2)
    theirs = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="none").sum(-1)
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(torch.autograd.grad(ours.sum(), [s, t]), torch.autograd.grad(theirs.sum(), [s, t])):
        torch.testing.assert_close(a, b)


def test_masked_tokens_give_zero_loss_and_gradient_even_when_not_finite():
    s = torch.randn(3, 7).requires_grad_(True)
    t = torch.randn(3, 7)
    mask = torch.tensor([True, False, True])
    for loss_fn in (mpu.vocab_parallel_kl_div, mpu.vocab_parallel_soft_cross_entropy):
        s_bad, t_bad = s.clone(), t.clone()
        s_bad[1] = float("-inf")   # a fully padded row: no finite logit at all
        t_bad[1] = float("nan")
        loss = loss_fn(s_bad, t_bad, mask=mask)
        assert torch.isfinite(loss).all() and loss[1] == 0
        grad, = torch.autograd.grad(loss.sum(), s)
        assert torch.isfinite(grad).all() and torch.all(grad[1] == 0)
        clean = loss_fn(s, t, mask=mask)
        torch.testing.assert_close(loss, clean)
    with pytest.raises(ValueError, match="mask shape"):
        mpu.vocab_parallel_kl_div(s, t, mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in shape"):
        mpu.vocab_parallel_kl_div(s, t[:, :5])


def test_half_precision_inputs_are_computed_in_fp32():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 50, generator=gen), torch.randn(4, 50, generator=gen)
    full = mpu.vocab_parallel_kl_div(s, t)
    half = mpu.vocab_parallel_kl_div(s.bfloat16(), t.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.05, atol=5e-3)  # bf16 inputs carry ~3 significant digits


def test_split_and_merge_are_inverse_for_every_layout():
    gen = torch.Generator().manual_seed(2)
    full = torch.randn(24, 40, generator=gen)
    for spec in [mpu.PartitionSpec(0), mpu.PartitionSpec(1), mpu.PartitionSpec(0, 3), mpu.PartitionSpec(1, 2), None]:
        for world_size in (1, 2, 4):
            shards = mpu.split_tensor(full, spec, world_size)
            assert torch.equal(mpu.merge_tensors(shards, spec), full)
    with pytest.raises(ValueError, match="does not divide into 5 partitions"):
        mpu.split_tensor(full, mpu.PartitionSpec(0), 5)
    with pytest.warns(UserWarning, match="replicated tensor differs"):
        mpu.merge_tensors([full, full + 1e-7], None)


def test_layers_record_their_partition_metadata():
    specs = mpu.partition_specs(torch.nn.ModuleDict({
        "col": mpu.ColumnParallelLinear(4, 6, stride=3), "row": mpu.RowParallelLinear(6, 4),
        "emb": mpu.VocabParallelEmbedding(8, 4), "pemb": mpu.ParallelEmbedding(8, 4), "plain": torch.nn.Linear(2, 2)}))
    assert specs == {"col.weight": {"dim": 0, "stride": 3}, "col.bias": {"dim": 0, "stride": 3},
                     "row.weight": {"dim": 1, "stride": 1}, "emb.weight": {"dim": 0, "stride": 1},
                     "pemb.weight": {"dim": 1, "stride": 1}}


def test_rng_tracker_forks_a_separate_stream_and_restores_the_default():
    tracker = mpu.get_cuda_rng_tracker()
    mpu.model_parallel_cuda_manual_seed(123)
    expected_default = torch.rand(3)
    mpu.model_parallel_cuda_manual_seed(123)
    with tracker.fork():
        forked = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_default)       # the default stream was not advanced
    torch.manual_seed(123 + 2718)
    assert torch.equal(forked, torch.rand(3))                 # MP rank 0's stream: seed + 2718
    states = tracker.get_states()
    with tracker.fork():
        first = torch.rand(2)
    tracker.set_states(states)
    with tracker.fork():
        assert torch.equal(torch.rand(2), first)
    with pytest.raises(ValueError, match="already exists"):
        tracker.add("model-parallel-rng", 5)
    with pytest.raises(KeyError, match="not tracked"):
        with tracker.fork("nope"):
            pass


def test_checkpoint_recomputes_with_the_forward_rng_state():
    weight = torch.randn(5, 5, requires_grad=True)

    def noisy(x):
        with mpu.get_cuda_rng_tracker().fork():
            x = F.dropout(x @ weight, p=0.5, training=True)
        return F.dropout(x, p=0.5, training=True), x.sum()

    grads = []
    for use_checkpoint in (False, True):
        mpu.model_parallel_cuda_manual_seed(7)
        x = torch.randn(4, 5, requires_grad=True)
        out, total = mpu.checkpoint(noisy, x) if use_checkpoint else noisy(x)
        (out.pow(2).sum() + total).backward()
        grads.append((out.detach(), x.grad, weight.grad.clone()))
        weight.grad = None
    for plain, ckpt in zip(*grads):
        assert torch.equal(plain, ckpt)


def test_clip_grad_norm_matches_torch_at_mp1():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    for p in params:
        p.grad = torch.randn_like(p)
    expected = [p.grad.clone() for p in params]
    copies = [torch.nn.Parameter(p.data.clone()) for p in params]
    for copy, g in zip(copies, expected):
        copy.grad = g.clone()
    reference_norm = torch.nn.utils.clip_grad_norm_(copies, 1.0)   # torch's own clipping as the reference
    assert mpu.clip_grad_norm(params, 1.0) == pytest.approx(reference_norm.item(), rel=1e-6)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g / (reference_norm + 1e-6))
