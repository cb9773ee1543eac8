"""A 2-layer GLM at MP=2 and MP=4 (gloo, CPU processes) against the same model at MP=1:
logits, loss, every gradient, one optimizer step, the taps (head-partitioned ones are
slices of the MP=1 taps), the cloze heads, and dropout under activation checkpointing.
All ranks start from one seeded unsharded model that is split with its partition specs."""
import pytest
import torch

import mpu
from dist_utils import assert_rel_close, run_distributed
from glm_fixtures import blank_infilling_batch, tiny_config
from model import GLMForMultiTokenCloze, GLMModel
from training.stages import PretrainStage

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

# fp32 throughout; sharding only changes the order of the partial sums that the all-reduces
# add up (errors ~1e-7), so the bound of 1e-5 relative holds with a wide margin.
RTOL = 1e-5
TAPS = ["embeddings", "layers.0.layernorm_output", "layers.1.mixed_query_layer", "layers.1.key_layer",
        "layers.1.attention_scores", "layers.1.attention_probs", "layers.1.context_layer", "layers.1.ffn_output",
        "output", "logits_parallel"]
# How each tap is laid out across model-parallel ranks (None: replicated).
TAP_SPECS = {"layers.1.mixed_query_layer": mpu.PartitionSpec(-1), "layers.1.key_layer": mpu.PartitionSpec(1),
             "layers.1.attention_scores": mpu.PartitionSpec(1), "layers.1.attention_probs": mpu.PartitionSpec(1),
             "layers.1.context_layer": mpu.PartitionSpec(-1), "logits_parallel": mpu.PartitionSpec(-1)}


def _optimizer(model):
    # SGD rather than Adam: Adam's first step is ~lr * sign(grad), which turns fp32 noise in
    # near-zero gradients into lr-sized differences; SGD keeps the step linear in the gradient.
    return torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.01)


def _forward_loss(model, batch, taps=()):
    ids, position, sep, target, loss_mask = batch
    out = model(ids, position, sep, taps=taps)
    return out, PretrainStage().hard_loss(out, {"target": target, "loss_mask": loss_mask})[0]


def _reference():
    torch.manual_seed(2024)
    model = GLMModel(tiny_config())
    full_state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = blank_infilling_batch(seed=1)
    ids, position, sep, target, loss_mask = batch
    pairs = lambda t: t.reshape(1, 3, *t.shape[1:])
    cloze = GLMForMultiTokenCloze(model, length_penalty=1.0)
    scores = cloze(pairs(ids), pairs(position), sep.reshape(1, 3), pairs(target), pairs(loss_mask)).logits.detach()
    out, loss = _forward_loss(model, batch, TAPS)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    _optimizer(model).step()
    stepped = {k: v.clone() for k, v in model.state_dict().items()}
    return dict(state=full_state, specs=mpu.partition_specs(model), batch=batch, loss=loss.detach(),
                taps={k: v.detach() for k, v in out.taps.items()}, grads=grads, stepped=stepped, cloze=scores)


def _sharded_model(ref, rank, world_size, **overrides):
    model = GLMModel(tiny_config(**overrides))
    model.load_state_dict(mpu.shard_state_dict(ref["state"], ref["specs"], rank, world_size))
    return model


def _glm_worker(rank, world_size, ref):
    model = _sharded_model(ref, rank, world_size)
    shard = lambda full, key: mpu.shard_of(full, mpu.PartitionSpec(**ref["specs"][key]) if key in ref["specs"]
                                           else None, rank, world_size)
    out, loss = _forward_loss(model, ref["batch"], TAPS)
    assert_rel_close(loss, ref["loss"], RTOL, "loss")
    for name in TAPS:
        expected = mpu.shard_of(ref["taps"][name], TAP_SPECS.get(name), rank, world_size)
        assert_rel_close(out.taps[name], expected, RTOL, f"tap {name}")
    # Every tap exists at this MP size and carries gradients.
    every = model(*ref["batch"][:3], taps=model.tap_names()).taps
    assert set(every) == set(model.tap_names())
    floats = [t for t in every.values() if t.is_floating_point()]
    tap_grads = torch.autograd.grad(sum(t.pow(2).mean() for t in floats), floats)
    assert all(g is not None and g.abs().sum() > 0 for g in tap_grads), "a tap carries no gradient"
    assert every["layers.0.attention_probs"].shape[1] == 4 // world_size  # heads are partitioned
    loss.backward()
    for name, param in model.named_parameters():
        assert_rel_close(param.grad, shard(ref["grads"][name], name), RTOL, f"grad {name}")
    _optimizer(model).step()
    for name, value in model.state_dict().items():
        assert_rel_close(value, shard(ref["stepped"][name], name), RTOL, f"after one step: {name}")

    # The multi-token cloze head over vocabulary-parallel logits.
    model = _sharded_model(ref, rank, world_size)
    ids, position, sep, target, loss_mask = ref["batch"]
    pairs = lambda t: t.reshape(1, 3, *t.shape[1:])
    scores = GLMForMultiTokenCloze(model, length_penalty=1.0)(pairs(ids), pairs(position), sep.reshape(1, 3),
                                                              pairs(target), pairs(loss_mask)).logits
    assert_rel_close(scores, ref["cloze"], RTOL, "cloze scores")

    # Dropout under activation checkpointing replays the same masks (RNG tracker + default generator).
    dropout = dict(embedding_dropout_prob=0.1, attention_dropout_prob=0.3, output_dropout_prob=0.1)
    results = []
    for checkpointing in (False, True):
        model = _sharded_model(ref, rank, world_size, checkpoint_activations=checkpointing, **dropout).train()
        mpu.model_parallel_cuda_manual_seed(77)
        out, loss = _forward_loss(model, ref["batch"])
        loss.backward()
        results.append((out.logits.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0]), "checkpointed forward used different dropout masks"
    for plain, ckpt in zip(results[0][1], results[1][1]):
        assert_rel_close(ckpt, plain, RTOL, "checkpointed grad")
    return True


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.mark.parametrize("world_size", [2, 4])
def test_glm_at_model_parallel_size_matches_mp1(reference, world_size):
    assert run_distributed(_glm_worker, world_size, reference) == [True] * world_size
