"""GLM's pre-LN transformer on model-parallel layers: attention, MLP, the (inverted-
bottleneck) layer, and the stack with 2-D positions, the blank-infilling mask and
activation checkpointing. Spec 9.1-9.2."""
import math
from typing import List, Union

import torch
import torch.nn.functional as F
from torch import nn

import mpu

from .config import GLMConfig
from .taps import NO_TAPS, Taps

# Masked attention scores hold this value: a power of two, exact in fp16, bf16 and fp32, so
# the `attention_scores` tap is identical across precisions, and exp() of it underflows to 0.
MASKED_SCORE = -16384.0


def build_attention_mask(attention_mask: Union[int, torch.Tensor], seq_length: int,
                         device: torch.device) -> torch.Tensor:
    """The blank-infilling mask as bool [B or 1, 1, S, S] (True: query i may attend key j).

    `attention_mask` is `sep` (an int, a 0-d or a [B] tensor): every position sees Part A
    (keys < sep) and Part B is causal (key j <= query i). A [B, 1, S, S] (or [B, S, S])
    0/1 or bool tensor is used as given.
    """
    if torch.is_tensor(attention_mask) and attention_mask.dim() >= 3:
        mask = attention_mask if attention_mask.dim() == 4 else attention_mask.unsqueeze(1)
        return mask.to(device=device, dtype=torch.bool)
    sep = torch.as_tensor(attention_mask, device=device).reshape(-1, 1, 1, 1)  # [B or 1, 1, 1, 1]
    positions = torch.arange(seq_length, device=device)
    causal = positions.view(1, 1, -1, 1) >= positions.view(1, 1, 1, -1)          # [1, 1, S, S]
    part_a = positions.view(1, 1, 1, -1) < sep                                   # [B, 1, 1, S]
    return causal | part_a


class ParallelSelfAttention(nn.Module):
    """Multi-head self-attention with heads split across model-parallel ranks.

    forward: hidden [B, S, H] -> [B, S, out_width] (after output dropout).
    """

    def __init__(self, config: GLMConfig, output_width: int, init_method, output_init_method):
        super().__init__()
        width = config.attention_width
        world_size = mpu.get_model_parallel_world_size()
        self.num_heads_per_partition = mpu.divide(config.num_attention_heads, world_size)
        self.head_dim = width // config.num_attention_heads
        self.attention_scale = config.attention_scale
        self.query_key_value = mpu.ColumnParallelLinear(config.hidden_size, 3 * width, stride=3,
                                                        gather_output=False, init_method=init_method)
        self.dense = mpu.RowParallelLinear(width, output_width, input_is_parallel=True,
                                           init_method=output_init_method)
        self.attention_dropout = nn.Dropout(config.attention_dropout_prob)
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # [B, S, nh/p * dh] -> [B, nh/p, S, dh]
        return x.view(batch, seq, self.num_heads_per_partition, self.head_dim).transpose(1, 2)

    def _dropout_probs(self, probs: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.attention_dropout.p > 0):
            return probs
        if mpu.get_model_parallel_world_size() == 1:
            return self.attention_dropout(probs)
        with mpu.get_cuda_rng_tracker().fork():  # heads differ per rank: a per-rank stream
            return self.attention_dropout(probs)

    def _explicit_attention(self, query, key, value, mask, taps: Taps) -> torch.Tensor:
        """Scores and probabilities materialised (they can be tapped or intervened on)."""
        scale = self.attention_scale
        scores = torch.matmul(query / math.sqrt(scale), key.transpose(-1, -2) / math.sqrt(self.head_dim * scale))
        if scale > 1.0:  # GLM's fp16 stabilisation: subtract the row max before re-scaling
            scores = (scores - scores.max(dim=-1, keepdim=True).values.detach()) * scale
        scores = taps("attention_scores", torch.where(mask, scores, scores.new_tensor(MASKED_SCORE)))
        probs = taps("attention_probs", torch.softmax(scores.float(), dim=-1).to(scores.dtype))
        return torch.matmul(self._dropout_probs(probs), value)

    def _fused_attention(self, query, key, value, mask) -> torch.Tensor:
        """The same attention through torch's fused kernel (flash/memory-efficient on GPUs)."""
        dropout = self.attention_dropout.p if self.training else 0.0
        if dropout > 0 and mpu.get_model_parallel_world_size() > 1:
            with mpu.get_cuda_rng_tracker().fork():
                return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, taps: Taps) -> torch.Tensor:
        mixed = self.query_key_value(hidden)                      # [B, S, 3A/p]
        query, key, value = mpu.split_tensor_along_last_dim(mixed, 3)
        query = self._split_heads(taps("mixed_query_layer", query))
        key = self._split_heads(taps("mixed_key_layer", key))
        value = self._split_heads(taps("mixed_value_layer", value))
        query, key, value = taps("query_layer", query), taps("key_layer", key), taps("value_layer", value)
        if self.attention_scale == 1.0 and not taps.wants("attention_scores", "attention_probs"):
            context = self._fused_attention(query, key, value, mask)
        else:
            context = self._explicit_attention(query, key, value, mask, taps)   # [B, nh/p, S, dh]
        batch, _, seq, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, seq, -1)  # [B, S, A/p]
        context = taps("context_layer", context)
        output = taps("attention_output", self.dense(context))
        return self.output_dropout(output)


class ParallelMLP(nn.Module):
    """width -> 4*width (column-parallel) -> GeLU -> width (row-parallel) -> dropout."""

    def __init__(self, config: GLMConfig, width: int, init_method, output_init_method):
        super().__init__()
        self.dense_h_to_4h = mpu.ColumnParallelLinear(width, 4 * width, gather_output=False, init_method=init_method)
        self.dense_4h_to_h = mpu.RowParallelLinear(4 * width, width, input_is_parallel=True,
                                                   init_method=output_init_method)
        self.dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, hidden: torch.Tensor, taps: Taps) -> torch.Tensor:
        output = self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(hidden), approximate="tanh"))
        return self.dropout(taps("ffn_output", output))


class ParallelTransformerLayer(nn.Module):
    """Pre-LN layer: h + Attn(LN(h)), then + MLP(LN(.)).

    Inverted-bottleneck mode (MobileBERT) works at the inner width ib: the
    residual enters through `ib_linear_in` (H -> ib), `ib_ffn_num` FFNs run at ib, and
    `ib_linear_out` (ib -> H) adds back onto the layer input.
    forward: hidden [B, S, H] -> [B, S, H].
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        init = mpu.init_normal(config.init_method_std)
        output_init = mpu.scaled_init_normal(config.init_method_std, config.num_layers)
        self.ib_mode = config.inverted_bottleneck_mode
        inner = config.ib_hidden_size if self.ib_mode else config.hidden_size
        eps = config.layernorm_epsilon
        self.input_layernorm = mpu.LayerNorm(config.hidden_size, eps=eps)
        self.attention = ParallelSelfAttention(config, inner, init, output_init)
        self.post_attention_layernorm = mpu.LayerNorm(inner, eps=eps)
        self.mlp = ParallelMLP(config, inner, init, output_init)
        if self.ib_mode:
            self.ib_linear_in = mpu.ColumnParallelLinear(config.hidden_size, inner, init_method=init)
            self.ffn_layernorms = nn.ModuleList(mpu.LayerNorm(inner, eps=eps) for _ in range(config.ib_ffn_num - 1))
            self.ffns = nn.ModuleList(ParallelMLP(config, inner, init, output_init)
                                      for _ in range(config.ib_ffn_num - 1))
            self.ib_linear_out_layernorm = mpu.LayerNorm(inner, eps=eps)
            self.ib_linear_out = mpu.ColumnParallelLinear(inner, config.hidden_size, init_method=output_init)
            self.ib_output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, taps: Taps) -> torch.Tensor:
        hidden = taps("layernorm_input", hidden)
        normed = taps("layernorm_output", self.input_layernorm(hidden))
        residual = self.ib_linear_in(hidden) if self.ib_mode else hidden
        inner = residual + self.attention(normed, mask, taps)
        inner = inner + self.mlp(taps("post_attention_layernorm", self.post_attention_layernorm(inner)), taps)
        if self.ib_mode:
            for layernorm, ffn in zip(self.ffn_layernorms, self.ffns):
                inner = inner + ffn(layernorm(inner), NO_TAPS)
            out = hidden + self.ib_output_dropout(self.ib_linear_out(self.ib_linear_out_layernorm(inner)))
        else:
            out = inner
        return taps("tf_output", out)


class GLMTransformer(nn.Module):
    """Position embeddings, the layer stack and the final LayerNorm.

    forward: word embeddings [B, S, H], position_ids [B, 2, S] (or [B, S] without block
    positions), attention_mask (sep or a full mask) -> final hidden states [B, S, H].
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.config = config
        init = mpu.init_normal(config.init_method_std)
        self.position_embeddings = nn.Embedding(config.max_sequence_length + 1, config.hidden_size)
        init(self.position_embeddings.weight)
        if config.block_position_encoding:
            self.block_position_embeddings = nn.Embedding(config.max_sequence_length + 1, config.hidden_size)
            init(self.block_position_embeddings.weight)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        num_modules = 1 if config.cross_layer_parameter_sharing else config.num_layers
        self.layers = nn.ModuleList(ParallelTransformerLayer(config) for _ in range(num_modules))
        self.final_layernorm = mpu.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def layer_sequence(self) -> List[nn.Module]:
        """The modules run in order (one module repeated under cross-layer sharing)."""
        if self.config.cross_layer_parameter_sharing:
            return [self.layers[0]] * self.config.num_layers
        return list(self.layers)

    def forward(self, words: torch.Tensor, position_ids: torch.Tensor, attention_mask, taps: Taps) -> torch.Tensor:
        if self.config.block_position_encoding:
            hidden = (words + self.position_embeddings(position_ids[:, 0])
                      + self.block_position_embeddings(position_ids[:, 1]))
        else:
            hidden = words + self.position_embeddings(position_ids)
        hidden = self.embedding_dropout(taps("embeddings", hidden))
        mask = build_attention_mask(attention_mask, hidden.size(1), hidden.device)
        layers = self.layer_sequence()
        replace_layers = taps.intervention("layers")
        if replace_layers is not None:
            layers = list(replace_layers(layers))
        checkpointing = self.config.checkpoint_activations and torch.is_grad_enabled()
        step = self.config.checkpoint_num_layers if checkpointing else len(layers)
        for start in range(0, len(layers), max(step, 1)):
            chunk = layers[start:start + step]
            if checkpointing:
                hidden = self._checkpointed_chunk(chunk, start, hidden, mask, taps)
            else:
                hidden = self._run_chunk(chunk, start, hidden, mask, taps)
        return taps("output", self.final_layernorm(hidden))

    @staticmethod
    def _run_chunk(chunk, start: int, hidden, mask, taps: Taps):
        for offset, layer in enumerate(chunk):
            hidden = layer(hidden, mask, taps.scope(f"layers.{start + offset}"))
        return hidden

    def _checkpointed_chunk(self, chunk, start: int, hidden, mask, taps: Taps):
        """Run `chunk` under activation checkpointing; captured taps leave the checkpoint as
        extra outputs so they keep their autograd graph."""
        names: List[str] = []

        def run(hidden_in, mask_in):
            local = taps.fresh()
            out = self._run_chunk(chunk, start, hidden_in, mask_in, local)
            names[:] = list(local.captured)
            return (out, *local.captured.values())

        outputs = mpu.checkpoint(run, hidden, mask)
        taps.captured.update(zip(names, outputs[1:]))
        return outputs[0]
