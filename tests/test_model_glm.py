"""The GLM model at MP=1: an independent reference forward, taps, interventions, the
blank-infilling mask, activation checkpointing with dropout, architecture options, heads."""
import pytest
import torch
import torch.nn.functional as F

from glm_fixtures import blank_infilling_batch, reference_glm_logits, tiny_config
from model import (LAYER_TAPS, GLMConfig, GLMForMultiTokenCloze, GLMForSequenceClassification,
                   GLMForSingleTokenCloze, GLMModel, language_model_loss, preset)
from mpu import pad_vocab_size


def build(seed=0, **overrides) -> GLMModel:
    torch.manual_seed(seed)
    return GLMModel(tiny_config(**overrides))


def test_forward_matches_independent_reference():
    model = build()
    ids, position, sep, target, loss_mask = blank_infilling_batch()
    logits = model(ids, position, sep).logits
    expected = reference_glm_logits(model.state_dict(), model.config, ids, position, sep)
    # Same fp32 math in a different order (fused QKV split, -16384 vs -inf masking): 1e-5.
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    loss = language_model_loss(logits, target, loss_mask)
    expected_loss = (F.cross_entropy(expected.reshape(-1, 136), target.reshape(-1), reduction="none")
                     * loss_mask.reshape(-1)).sum() / loss_mask.sum()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)


def test_every_tap_exists_has_its_shape_and_carries_gradients():
    model = build()
    ids, position, sep, _, _ = blank_infilling_batch()
    names = model.tap_names()
    out = model(ids, position, sep, taps=names)
    assert set(out.taps) == set(names)
    b, s, h, heads, dh, v = 3, 11, 52, 4, 13, 136
    expected_shapes = {"words_embeddings": (b, s, h), "position_ids": (b, 2, s), "embeddings": (b, s, h),
                       "output": (b, s, h), "logits_parallel": (b, s, v)}
    per_layer = {"mixed_query_layer": (b, s, h), "query_layer": (b, heads, s, dh),
                 "attention_scores": (b, heads, s, s), "attention_probs": (b, heads, s, s),
                 "context_layer": (b, s, h), "ffn_output": (b, s, h), "tf_output": (b, s, h)}
    expected_shapes.update({f"layers.1.{k}": shape for k, shape in per_layer.items()})
    for name, shape in expected_shapes.items():
        assert tuple(out.taps[name].shape) == shape, name
    float_taps = {name: t for name, t in out.taps.items() if t.is_floating_point()}
    loss = sum(t.float().pow(2).mean() for t in float_taps.values())
    grads = torch.autograd.grad(loss, list(float_taps.values()))
    for name, grad in zip(float_taps, grads):
        assert grad is not None and grad.abs().sum() > 0, name
    # The tap is the tensor the forward used: logits equal the tapped logits.
    assert torch.equal(out.logits, out.taps["logits_parallel"])
    # Hidden-state convention: layer i's LayerNorm input is layer i-1's output.
    assert torch.equal(out.taps["layers.1.layernorm_input"], out.taps["layers.0.tf_output"])


def test_unknown_tap_or_intervention_raises_with_valid_names():
    model = build()
    ids, position, sep, _, _ = blank_infilling_batch()
    with pytest.raises(KeyError, match=r"layers\.1\.attention_probs.*Valid taps"):
        model(ids, position, sep, taps=["layers.1.attention_prob"])
    with pytest.raises(KeyError, match="unknown tap 'layers.2.output'"):
        model(ids, position, sep, taps=["layers.2.output"])  # only layers 0..1 exist
    with pytest.raises(KeyError, match="unknown intervention 'embedding'"):
        model(ids, position, sep, interventions={"embedding": lambda x: x})


def test_interventions_change_the_output_exactly_as_the_callable_says():
    model = build()
    ids, position, _, _, _ = blank_infilling_batch(seps=(5, 5, 5))
    sep = torch.tensor([5, 5, 5])  # identical layouts, so rows are interchangeable
    plain = model(ids, position, sep).logits
    # Swapping the residual stream between examples from layer 1 on swaps their outputs.
    flipped = model(ids, position, sep, interventions={"layers.1.layernorm_input": lambda h: h.flip(0)}).logits
    # Not bit-exact: a row's position in the batch can change the BLAS blocking of the matmuls
    # (seen on some CPUs: differences of 3e-8 on logits of size ~1); 1e-6 is far below any real change.
    torch.testing.assert_close(flipped, plain.flip(0), rtol=0, atol=1e-6)
    # An intervention on the logits is applied verbatim.
    shifted = model(ids, position, sep, interventions={"logits_parallel": lambda z: z + 3.0}).logits
    torch.testing.assert_close(shifted, plain + 3.0, rtol=0, atol=1e-6)
    # Rewriting input ids is the same as feeding the rewritten ids.
    remap = lambda t: (t * 7) % 136
    torch.testing.assert_close(model(ids, position, sep, interventions={"input_ids": remap}).logits,
                               model(remap(ids), position, sep).logits, rtol=0, atol=0)
    # Routing through another module list: run layer 1 and then layer 0.
    out = model(ids, position, sep, taps=["embeddings"],
                interventions={"layers": lambda layers: [layers[1], layers[0]]})
    from model.taps import NO_TAPS
    from model.transformer import build_attention_mask
    mask = build_attention_mask(sep, ids.size(1), ids.device)
    h = model.transformer.layers[1](out.taps["embeddings"], mask, NO_TAPS)
    h = model.transformer.final_layernorm(model.transformer.layers[0](h, mask, NO_TAPS))
    torch.testing.assert_close(out.logits, h @ model.word_embeddings.weight.T, rtol=1e-5, atol=1e-5)
    # An intervened tensor is what the tap records.
    out = model(ids, position, sep, taps=["layers.0.layernorm_output"],
                interventions={"layers.0.layernorm_output": torch.zeros_like})
    assert torch.count_nonzero(out.taps["layers.0.layernorm_output"]) == 0


def test_blank_infilling_mask_on_attention_probabilities():
    model = build()
    ids, position, sep, _, _ = blank_infilling_batch(seps=(3, 6, 9))
    seq = ids.size(1)
    probs = model(ids, position, sep, taps=[f"layers.{i}.attention_probs" for i in range(2)]).taps
    query = torch.arange(seq)[:, None]
    key = torch.arange(seq)[None, :]
    for row, sep_row in enumerate(sep.tolist()):
        allowed = (key < sep_row) | ((query >= sep_row) & (key <= query)) | ((query < sep_row) & (key < sep_row))
        for i in range(2):
            p = probs[f"layers.{i}.attention_probs"][row]         # [heads, S, S]
            assert torch.all(p[:, ~allowed] == 0), "a query attends to a key outside its mask"
            assert torch.all(p[:, allowed] > 0)
            # Part A never sees Part B; Part B position i sees Part A and Part B up to i.
            assert torch.all(p[:, :sep_row, sep_row:] == 0)
            for q in range(sep_row, seq):
                assert torch.all(p[:, q, :q + 1] > 0) and torch.all(p[:, q, q + 1:] == 0)


def test_checkpointed_forward_gives_the_same_dropout_masks_and_gradients():
    dropout = dict(embedding_dropout_prob=0.1, attention_dropout_prob=0.2, output_dropout_prob=0.1)
    ids, position, sep, target, loss_mask = blank_infilling_batch()
    results = []
    for checkpointing in (False, True):
        model = build(seed=3, checkpoint_activations=checkpointing, **dropout)
        model.train()
        torch.manual_seed(11)
        # layers.1.layernorm_input is the input of the second checkpointed chunk itself.
        out = model(ids, position, sep, taps=["layers.1.attention_probs", "layers.0.tf_output",
                                               "layers.1.layernorm_input"])
        loss = (language_model_loss(out.logits, target, loss_mask) + out.taps["layers.0.tf_output"].pow(2).mean()
                + out.taps["layers.1.layernorm_input"].pow(3).mean() + out.taps["layers.1.attention_probs"].mean())
        loss.backward()
        results.append((out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain_logits, plain_grads), (ckpt_logits, ckpt_grads) = results
    assert torch.equal(plain_logits, ckpt_logits)  # same masks: bitwise-equal forward
    for name in plain_grads:
        # Same ops and masks; only the order in which gradient contributions are summed into
        # shared parameters (tied embeddings) differs, so agreement is at fp32 rounding level.
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    # And dropout is really on: a different seed gives different logits.
    model = build(seed=3, checkpoint_activations=True, **dropout).train()
    torch.manual_seed(12)
    assert not torch.equal(model(ids, position, sep).logits, ckpt_logits)


@pytest.mark.parametrize("options", [
    dict(inverted_bottleneck_mode=True, ib_hidden_size=24, ib_ffn_num=3, ib_word_emb=8),
    dict(compress_word_emb=16, cross_layer_parameter_sharing=True),
    dict(block_position_encoding=False),
])
def test_architecture_options_train(options):
    model = build(**options)
    ids, position, sep, target, loss_mask = blank_infilling_batch()
    if not model.config.block_position_encoding:
        position = position[:, 0]
    out = model(ids, position, sep, taps=["layers.1.attention_scores", "layers.1.layernorm_output"])
    language_model_loss(out.logits, target, loss_mask).backward()
    assert all(p.grad is not None for p in model.parameters())
    keys = model.state_dict().keys()
    if options.get("cross_layer_parameter_sharing"):
        assert not any(k.startswith("transformer.layers.1.") for k in keys)   # one shared layer
        assert model.word_embeddings.weight.shape == (136, 16)
        assert "decompress_emb_mlp.weight" in keys
    if options.get("inverted_bottleneck_mode"):
        assert out.taps["layers.1.attention_scores"].shape == (3, 4, 11, 11)
        assert model.transformer.layers[0].attention.query_key_value.weight.shape == (3 * 24, 52)
        assert len(model.transformer.layers[0].ffns) == 2
        assert "trigram_emb_mlp.weight" in keys


def test_single_token_cloze_scores_the_verbalizers_at_sep():
    model = build()
    ids, position, sep, _, _ = blank_infilling_batch(seps=(4, 6, 9))
    verbalizers = torch.tensor([[5, 9], [5, 9], [17, 3]])
    logits = model(ids, position, sep).logits
    at_sep = logits[torch.arange(3), sep]                                      # [B, V]
    head = GLMForSingleTokenCloze(model)
    torch.testing.assert_close(head(ids, position, sep, verbalizers).logits, at_sep.gather(1, verbalizers))
    head = GLMForSingleTokenCloze(model, take_softmax=True)
    torch.testing.assert_close(head(ids, position, sep, verbalizers).logits,
                               at_sep.log_softmax(-1).gather(1, verbalizers))


def test_multi_token_cloze_sums_answer_log_probs_with_length_penalty():
    model = build()
    ids, position, sep, target, loss_mask = blank_infilling_batch(batch=4, seps=(4, 6, 5, 8))
    # Two questions with two candidates each: [B=2, C=2, S].
    as_choices = lambda t: t.reshape(2, 2, *t.shape[1:])
    head = GLMForMultiTokenCloze(model, length_penalty=1.0)
    out = head(as_choices(ids), as_choices(position), sep.reshape(2, 2), as_choices(target), as_choices(loss_mask),
               taps=["output"])
    log_probs = model(ids, position, sep).logits.log_softmax(-1).gather(-1, target[..., None]).squeeze(-1)
    expected = (log_probs * loss_mask).sum(1) / loss_mask.sum(1)
    torch.testing.assert_close(out.logits, expected.view(2, 2))
    assert set(out.taps) == {"output"} and out.taps["output"].shape == (4, 11, 52)


def test_sequence_classification_pools_the_requested_token():
    model = build(output_predict=False)
    ids, position, sep, _, _ = blank_infilling_batch()
    head = GLMForSequenceClassification(model, hidden_size=52, hidden_dropout=0.0, pool_token="pad", num_class=3)
    hidden = model(ids, position, sep).logits                                   # [B, S, H]
    pooled = hidden[torch.arange(3), sep - 1]
    expected = head.classifier(torch.tanh(head.pool_layer(pooled)))
    torch.testing.assert_close(head(ids, position, sep).logits, expected)
    with pytest.raises(ValueError, match="pool_token"):
        GLMForSequenceClassification(model, 52, 0.0, "mean")


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        GLMConfig(hidden_size=50, num_attention_heads=4)
    with pytest.raises(ValueError, match="model parallel size 3 does not divide num_attention_heads=4"):
        tiny_config().check_model_parallel_size(3)
    with pytest.raises(KeyError, match="valid presets"):
        preset("glm-huge")
    with pytest.raises(ValueError, match="unknown GLMConfig keys"):
        GLMConfig.from_dict({"num_layer": 2})
    assert pad_vocab_size(30524, 128, 1) == 30592 and pad_vocab_size(30524, 128, 2) == 30592
    base = preset("glm-base")
    assert (base.num_layers, base.hidden_size, base.num_attention_heads) == (12, 768, 12)
    # glm-base counts ~110M parameters: embeddings 30592*768 + 12 layers + positions.
    with torch.device("meta"):
        num_params = sum(p.numel() for p in GLMModel(base).parameters())
    assert 108e6 < num_params < 111e6
    assert len(LAYER_TAPS) == 15
