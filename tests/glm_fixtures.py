"""Tiny GLMs, batches and an independent plain-torch GLM forward for the model tests."""
import math

import torch
import torch.nn.functional as F

from model import GLMConfig

NO_DROPOUT = dict(embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0)


def tiny_config(**overrides) -> GLMConfig:
    """2 layers, odd widths: 4 heads of 13 dims (hidden 52), vocabulary 4 * 17 * 2 (MP 1, 2, 4)."""
    values = dict(num_layers=2, hidden_size=52, num_attention_heads=4, vocab_size=136, max_sequence_length=32,
                  **NO_DROPOUT)
    values.update(overrides)
    return GLMConfig(**values)


def blank_infilling_batch(seed: int = 0, batch: int = 3, seq: int = 11, vocab: int = 136, seps=(4, 6, 11)):
    """Part A of length sep (positions 0..sep-1, block 0) and Part B spans after it."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=gen)
    position = torch.zeros(batch, 2, seq, dtype=torch.long)
    for row, sep in enumerate(seps):
        position[row, 0, :sep] = torch.arange(sep)
        num_b = seq - sep
        position[row, 0, sep:] = max(sep - 1, 0)            # Part B carries its mask's position
        position[row, 1, sep:] = torch.arange(1, num_b + 1)  # block positions 1..len
    sep = torch.tensor(seps)
    target = torch.randint(0, vocab, (batch, seq), generator=gen)
    loss_mask = (torch.arange(seq)[None, :] >= sep[:, None]).float()
    return ids, position, sep, target, loss_mask


def reference_glm_logits(state: dict, config: GLMConfig, ids, position, sep) -> torch.Tensor:
    """GLM forward written independently of model/ with plain torch ops on a full state dict."""
    batch, seq = ids.shape
    hidden_size, heads = config.hidden_size, config.num_attention_heads
    head_dim = hidden_size // heads
    eps = config.layernorm_epsilon
    ln = lambda x, prefix: F.layer_norm(x, (x.size(-1),), state[prefix + ".weight"], state[prefix + ".bias"], eps)
    lin = lambda x, prefix: x @ state[prefix + ".weight"].T + state[prefix + ".bias"]
    h = (state["word_embeddings.weight"][ids] + state["transformer.position_embeddings.weight"][position[:, 0]]
         + state["transformer.block_position_embeddings.weight"][position[:, 1]])
    i = torch.arange(seq)
    allowed = (i[None, :, None] >= i[None, None, :]) | (i[None, None, :] < sep[:, None, None])  # [B, S(query), S(key)]
    for layer in range(config.num_layers):
        p = f"transformer.layers.{layer}."
        x = ln(h, p + "input_layernorm")
        q, k, v = lin(x, p + "attention.query_key_value").split(hidden_size, dim=-1)
        q, k, v = (t.reshape(batch, seq, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~allowed[:, None], float("-inf"))
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, hidden_size)
        h = h + lin(context, p + "attention.dense")
        x = ln(h, p + "post_attention_layernorm")
        h = h + lin(F.gelu(lin(x, p + "mlp.dense_h_to_4h"), approximate="tanh"), p + "mlp.dense_4h_to_h")
    h = ln(h, "transformer.final_layernorm")
    return h @ state["word_embeddings.weight"].T
