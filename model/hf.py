"""Hugging Face transformers models with GLM's tap contract.

`HFTapModel` wraps any supported `transformers` model (BERT, RoBERTa, Llama, Qwen2, Mistral,
GPT-2: one row of module paths per family in `FAMILIES`) and gives it `GLMModel`'s forward:
`forward(input_ids, position_ids=None, attention_mask=None, taps=(), interventions=None) ->
ModelOutput`, with the same tap names, meanings and shapes (`model.taps.LAYER_TAPS`):

* hooks on the HF modules record (and let interventions replace) the tensors at each point;
  they act only while this model's forward runs, so an idle model pays one Python call per
  hooked module;
* one attention function, registered in transformers' `AttentionInterface` as "gkd_taps"
  together with a mask function of the same name (without it the model silently gets no
  mask), gives `query/key/value_layer` (post-RoPE, K/V expanded to every query head),
  `attention_scores` (pre-softmax, masked cells filled with -16384 as GLM does) and
  `attention_probs` (before dropout). A layer whose scores nobody asked for runs the fused
  `scaled_dot_product_attention`.

Family differences that change meaning (see also `hf-interop-design.md`): on post-LN BERT and
RoBERTa `layernorm_output` is the layer input itself (already normalised), so an intervention
there also changes the residual; on pre-LN models it is the input norm's output. `output` is
the final norm's output on pre-LN models and the last layer's output on BERT. The
`position_ids` tap is always GLM's [B, 2, S] layout (row 0: 0, 1, 2, ... over the non-pad
tokens, pads 0; row 1: zeros), so the non-pad helpers work on every family.
"""
import contextlib
from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .glm import GLMModel, ModelOutput
from .taps import INTERVENTION_ONLY, LAYER_TAPS, Intervention, Taps, check_names

ATTENTION_NAME = "gkd_taps"
MASKED_SCORE = -16384.0    # GLM's fill of masked attention scores (so score MSEs add 0 there)


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family, relative to `model.base_model` (model level)
    and to one layer (layer level). None: the point does not exist in this family."""
    layers: str                      # the ModuleList of layers
    words: str                       # word embedding
    embeddings: str                  # the embedding output ("pre:" = the input of that module)
    attention: str                   # the module the attention function receives
    query: Optional[str]             # separate projections (None: fused `qkv`)
    key: Optional[str]
    value: Optional[str]
    qkv: Optional[str]               # fused Q/K/V projection, split in 3 along the last dim
    out_proj: str                    # attention output projection (its input is the context)
    input_norm: Optional[str]        # None: post-LN (the layer input is already normalised)
    post_attention: str              # the norm before the FFN (BERT: LN(h + attn))
    ffn: str                         # FFN output before dropout and residual
    final_norm: Optional[str]        # None: `output` is the last layer's output
    post_ln: bool = False


FAMILIES: Dict[str, Family] = {
    "bert": Family(layers="encoder.layer", words="embeddings.word_embeddings", embeddings="embeddings.LayerNorm",
                   attention="attention.self", query="attention.self.query", key="attention.self.key",
                   value="attention.self.value", qkv=None, out_proj="attention.output.dense", input_norm=None,
                   post_attention="attention.output", ffn="output.dense", final_norm=None, post_ln=True),
    "llama": Family(layers="layers", words="embed_tokens", embeddings="embed_tokens", attention="self_attn",
                    query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", qkv=None,
                    out_proj="self_attn.o_proj", input_norm="input_layernorm",
                    post_attention="post_attention_layernorm", ffn="mlp", final_norm="norm"),
    "gpt2": Family(layers="h", words="wte", embeddings="pre:drop", attention="attn", query=None, key=None,
                   value=None, qkv="attn.c_attn", out_proj="attn.c_proj", input_norm="ln_1", post_attention="ln_2",
                   ffn="mlp.c_proj", final_norm="ln_f"),
}
MODEL_TYPES = {"bert": "bert", "roberta": "bert", "llama": "llama", "qwen2": "llama", "mistral": "llama",
               "gpt2": "gpt2"}


def family_of(model_type: str) -> Family:
    if model_type not in MODEL_TYPES:
        raise NotImplementedError(f"unsupported Hugging Face architecture {model_type!r}; supported model types: "
                                  f"{', '.join(sorted(MODEL_TYPES))}")
    return FAMILIES[MODEL_TYPES[model_type]]


@dataclass(frozen=True)
class TapConfig:
    """The sizes the methods read, with `GLMConfig`'s field names."""
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    layernorm_epsilon: float
    vocab_size: int
    output_predict: bool           # whether the model has an LM head (the `logits_parallel` tap)
    post_ln: bool


def _config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is not None:
        return default
    raise ValueError(f"{type(config).__name__} has none of {names}")


def tap_config_of_hf(hf_model: nn.Module) -> TapConfig:
    config = hf_model.config
    family = family_of(config.model_type)
    heads = _config_value(config, "num_attention_heads", "n_head")
    return TapConfig(
        model_type=config.model_type,
        num_layers=_config_value(config, "num_hidden_layers", "n_layer"),
        hidden_size=_config_value(config, "hidden_size", "n_embd"),
        num_attention_heads=heads,
        num_key_value_heads=_config_value(config, "num_key_value_heads", default=heads),
        layernorm_epsilon=float(_config_value(config, "layer_norm_eps", "rms_norm_eps", "layer_norm_epsilon")),
        vocab_size=config.vocab_size,
        output_predict=hf_model.get_output_embeddings() is not None,
        post_ln=family.post_ln)


# --------------------------------------------------------------------------- the attention function
def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, nkv, S, dh] -> [B, nkv * groups, S, dh]: each K/V head serves `groups` query heads."""
    if groups == 1:
        return states
    batch, heads, seq, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, seq, dim).reshape(batch, heads * groups, seq, dim)


def tapped_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                     **kwargs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """transformers attention function: q [B, nh, S, dh], k/v [B, nkv, S, dh], mask [B, 1, S, S]
    (bool, True = attend) -> (context [B, S, nh, dh], probabilities or None). Taps come from
    the scope that `HFTapModel` attached to `module` (none outside its forward)."""
    recorder = _recorder_of(module, getattr(module, "_gkd_layer", None))
    groups = query.size(1) // key.size(1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    if attention_mask is not None and attention_mask.dtype != torch.bool:     # an additive float mask
        attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    scale = scaling if scaling is not None else query.size(-1) ** -0.5
    dropout = dropout if module.training else 0.0
    if recorder is not None:
        query, key, value = recorder("query_layer", query), recorder("key_layer", key), recorder("value_layer", value)
    if recorder is None or not recorder.wants("attention_scores", "attention_probs"):
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                                 scale=scale)                  # [B, nh, S, dh]
        return context.transpose(1, 2).contiguous(), None
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale                 # [B, nh, S, S]
    if attention_mask is not None:
        scores = torch.where(attention_mask, scores, torch.full((), MASKED_SCORE, dtype=scores.dtype,
                                                                 device=scores.device))
    scores = recorder("attention_scores", scores)
    probs = recorder("attention_probs", torch.softmax(scores.float(), dim=-1).to(query.dtype))
    context = torch.matmul(F.dropout(probs, dropout, module.training), value)   # [B, nh, S, dh]
    return context.transpose(1, 2).contiguous(), probs


def tapped_mask(*args, **kwargs):
    """Mask function of "gkd_taps": sdpa's boolean [B, 1, Q, K] mask, never skipped (None)."""
    from transformers.masking_utils import sdpa_mask
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    kwargs.pop("dtype", None)
    return sdpa_mask(*args, **kwargs)


def register_attention() -> None:
    """Register "gkd_taps" (attention and mask function) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(ATTENTION_NAME, tapped_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, tapped_mask)


# --------------------------------------------------------------------------- the adapter
def _submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def _recorder_of(module: nn.Module, layer: Optional[int] = None) -> Optional[Taps]:
    """The recorder of the forward the HFTapModel owning `module` is running (scoped to
    `layers.{layer}`), or None when it is idle or records nothing."""
    owner = getattr(module, "_gkd_owner", None)
    recorder = owner._recorder if owner is not None else None
    if recorder is None or not recorder.active:
        return None
    return recorder if layer is None else recorder.scope(f"layers.{layer}")


def _replace_first(output, value):
    """A module's output with its first element (or itself) replaced by `value`."""
    if isinstance(output, tuple):
        return (value,) + output[1:]
    return value


def _first(output):
    return output[0] if isinstance(output, tuple) else output


class HFTapModel(nn.Module):
    """A transformers model (`self.hf`) with GLMModel's forward, taps and interventions.

    forward(input_ids [B, S], position_ids=None (or HF's [B, S]; GLM's [B, 2, S] is ignored),
    attention_mask=None ([B, S] padding mask, 1 = token; or a [B, 1, S, S] mask),
    taps=(names...), interventions={name: callable}) -> ModelOutput(logits, taps). `logits` is
    the HF output's logits (LM logits [B, S, V], or a head's task logits); `logits_parallel`
    is the LM logits (there is one model-parallel rank). The HF model sits under `hf`, so its
    state-dict keys are `hf.<HF key>`.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.family = family_of(hf_model.config.model_type)
        register_attention()
        hf_model.set_attn_implementation(ATTENTION_NAME)
        self.hf = hf_model
        self.tap_config = tap_config_of_hf(hf_model)
        self._recorder: Optional[Taps] = None
        self._install_hooks()

    # ------------------------------------------------------------------ names
    @property
    def config(self) -> TapConfig:
        return self.tap_config

    @property
    def base(self) -> nn.Module:
        return self.hf.base_model

    def layer_modules(self) -> nn.ModuleList:
        return _submodule(self.base, self.family.layers)

    def layer_sequence(self) -> List[nn.Module]:
        """The layer modules run in order (the list the `layers` intervention receives)."""
        return list(self.layer_modules())

    @staticmethod
    def frozen_layer(layer: nn.Module) -> "FrozenHFLayer":
        """`layer` made fit to run inside another model of its family without training (Theseus)."""
        return FrozenHFLayer(layer)

    def tap_names(self) -> List[str]:
        names = ["words_embeddings", "position_ids", "embeddings"]
        names += [f"layers.{i}.{tap}" for i in range(self.tap_config.num_layers) for tap in LAYER_TAPS]
        return names + ["output"] + (["logits_parallel"] if self.tap_config.output_predict else [])

    def intervention_names(self) -> List[str]:
        return list(INTERVENTION_ONLY) + [name for name in self.tap_names() if name != "position_ids"]

    def _tap_summary(self) -> str:
        last = self.tap_config.num_layers - 1
        model_level = "words_embeddings, position_ids, embeddings, output" + (
            ", logits_parallel" if self.tap_config.output_predict else "")
        return f"{model_level}, and layers.{{0..{last}}}.{{{', '.join(LAYER_TAPS)}}} ({self.tap_config.model_type})"

    def make_taps(self, taps: Collection[str] = (), interventions: Optional[Mapping[str, Intervention]] = None) -> Taps:
        if isinstance(taps, str):
            taps = [taps]
        check_names(taps, self.tap_names(), "tap", self._tap_summary())
        check_names(interventions or {}, self.intervention_names(), "intervention",
                    "input_ids, layers, and every tap name but position_ids: " + self._tap_summary())
        return Taps(taps, interventions)

    # ------------------------------------------------------------------ hooks
    def _own(self, module: nn.Module) -> nn.Module:
        """Mark `module` as this model's: its hooks find the active recorder through this plain
        attribute (not a submodule), which a deepcopy of the model maps to the copy."""
        object.__setattr__(module, "_gkd_owner", self)
        return module

    def _output_hook(self, module: nn.Module, *names: str) -> None:
        """Record (and let interventions replace) the module's output under `names`, in order."""
        def hook(module, _args, output):
            recorder = _recorder_of(module)
            if recorder is None:
                return None
            value = _first(output)
            for name in names:
                value = recorder(name, value)
            return _replace_first(output, value)
        self._own(module).register_forward_hook(hook)

    def _input_hook(self, module: nn.Module, *names: str) -> None:
        """Record (and let interventions replace) the module's first input under `names`."""
        def hook(module, args, kwargs):
            recorder = _recorder_of(module)
            if recorder is None:
                return None
            if args:
                value = args[0]
                for name in names:
                    value = recorder(name, value)
                return (value,) + tuple(args[1:]), kwargs
            value = kwargs["hidden_states"]
            for name in names:
                value = recorder(name, value)
            return args, {**kwargs, "hidden_states": value}
        self._own(module).register_forward_pre_hook(hook, with_kwargs=True)

    def _qkv_hook(self, module: nn.Module, prefix: str) -> None:
        """A fused Q/K/V projection: its output split in 3 along the last dim, each recorded."""
        def hook(module, _args, output):
            recorder = _recorder_of(module)
            if recorder is None:
                return None
            parts = output.chunk(3, dim=-1)                               # [B, S, 3A] -> 3 x [B, S, A]
            parts = [recorder(f"{prefix}mixed_{kind}_layer", part) for kind, part in zip(("query", "key", "value"),
                                                                                          parts)]
            return torch.cat(parts, dim=-1)
        self._own(module).register_forward_hook(hook)

    def _install_hooks(self) -> None:
        family, base, last = self.family, self.base, self.tap_config.num_layers - 1
        words = _submodule(base, family.words)
        if family.embeddings == family.words:
            self._output_hook(words, "words_embeddings", "embeddings")
        else:
            self._output_hook(words, "words_embeddings")
            if family.embeddings.startswith("pre:"):
                self._input_hook(_submodule(base, family.embeddings[4:]), "embeddings")
            else:
                self._output_hook(_submodule(base, family.embeddings), "embeddings")
        for index, layer in enumerate(self.layer_modules()):
            self._install_layer_hooks(index, layer, last_layer=index == last)
        if family.final_norm is not None:
            self._output_hook(_submodule(base, family.final_norm), "output")
        head = self.hf.get_output_embeddings()
        if head is not None:
            self._output_hook(head, "logits_parallel")

    def _install_layer_hooks(self, index: int, layer: nn.Module, last_layer: bool) -> None:
        family, prefix = self.family, f"layers.{index}."
        if family.input_norm is None:          # post-LN: the layer input is the normalised state
            self._input_hook(layer, prefix + "layernorm_input", prefix + "layernorm_output")
        else:
            self._input_hook(layer, prefix + "layernorm_input")
            self._output_hook(_submodule(layer, family.input_norm), prefix + "layernorm_output")
        if family.qkv is not None:
            self._qkv_hook(_submodule(layer, family.qkv), prefix)
        else:
            for kind, path in (("query", family.query), ("key", family.key), ("value", family.value)):
                self._output_hook(_submodule(layer, path), f"{prefix}mixed_{kind}_layer")
        out_proj = _submodule(layer, family.out_proj)
        self._input_hook(out_proj, prefix + "context_layer")
        self._output_hook(out_proj, prefix + "attention_output")
        self._output_hook(_submodule(layer, family.post_attention), prefix + "post_attention_layernorm")
        self._output_hook(_submodule(layer, family.ffn), prefix + "ffn_output")
        layer_names = [prefix + "tf_output"] + (["output"] if last_layer and family.final_norm is None else [])
        self._output_hook(layer, *layer_names)
        # The attention function finds this layer's scoped recorder through these attributes; a
        # teacher layer run inside a student keeps its own model's (inactive) recorder.
        object.__setattr__(self._own(_submodule(layer, family.attention)), "_gkd_layer", index)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None, attention_mask=None,
                taps: Collection[str] = (), interventions: Optional[Mapping[str, Intervention]] = None,
                **hf_inputs) -> ModelOutput:
        recorder = taps if isinstance(taps, Taps) else self.make_taps(taps, interventions)
        replace_ids = recorder.intervention("input_ids")
        if replace_ids is not None:
            input_ids = replace_ids(input_ids)
        padding = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        recorder("position_ids", glm_position_ids(input_ids, padding))
        hf_positions = position_ids if position_ids is not None and position_ids.dim() == 2 else None
        replace_layers = recorder.intervention("layers")
        hf_inputs.setdefault("use_cache", False)     # no generation here; a cache would also mix swapped layers
        self._recorder = recorder
        try:
            if replace_layers is None:
                output = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=hf_positions,
                                 **hf_inputs)
            else:
                with self._layers_replaced(replace_layers(list(self.layer_modules()))):
                    output = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=hf_positions,
                                     **hf_inputs)
        finally:
            self._recorder = None
        logits = output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state
        return ModelOutput(logits, recorder.captured)

    @contextlib.contextmanager
    def _layers_replaced(self, modules: List[nn.Module]):
        """Run the forward with `modules` as the layer list (Theseus). Decoders loop over
        `layers[:config.num_hidden_layers]` and Qwen2 reads `config.layer_types[i]`, so both
        follow the list for the duration."""
        parent_path, _, name = self.family.layers.rpartition(".")
        parent = _submodule(self.base, parent_path) if parent_path else self.base
        config, saved_layers = self.hf.config, parent._modules[name]
        saved = {key: getattr(config, key) for key in ("num_hidden_layers", "layer_types")
                 if getattr(config, key, None) is not None}
        parent._modules[name] = nn.ModuleList(modules)
        if "num_hidden_layers" in saved:
            config.num_hidden_layers = len(modules)
        if "layer_types" in saved:
            config.layer_types = [getattr(getattr(module, "self_attn", None), "layer_type", "full_attention")
                                  for module in modules]
        try:
            yield
        finally:
            parent._modules[name] = saved_layers
            for key, value in saved.items():
                setattr(config, key, value)


class FrozenHFLayer(nn.Module):
    """Runs a (teacher's) HF layer inside another model's forward with detached parameters
    (they never receive .grad) and in the layer's own dtype; gradients still flow through the
    hidden states. The layer is held outside the module tree, so it is neither saved nor
    optimised with the model that runs it; its own model's hooks stay inactive there."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        object.__setattr__(self, "layer", layer)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        params = {name: p.detach() for name, p in self.layer.named_parameters()}
        dtype = next(iter(params.values())).dtype
        output = torch.func.functional_call(self.layer, params, (hidden_states.to(dtype), *args), kwargs)
        return _replace_first(output, _first(output).to(hidden_states.dtype))


def glm_position_ids(input_ids: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """GLM's [B, 2, S] position layout for an HF batch: row 0 counts the tokens (0, 1, 2, ...)
    with pads at 0, row 1 is zeros. padding_mask: [B, S], 1 = token (None: no padding)."""
    if padding_mask is None:
        padding_mask = torch.ones_like(input_ids)
    tokens = padding_mask.long()
    positions = (tokens.cumsum(dim=1) - 1).clamp(min=0) * tokens                 # [B, S]
    return torch.stack([positions, torch.zeros_like(positions)], dim=1)         # [B, 2, S]


def tap_model_of(module: nn.Module):
    """The GLMModel or HFTapModel itself, or the one inside task heads and wrappers (`.model`)."""
    while not isinstance(module, (GLMModel, HFTapModel)):
        if not hasattr(module, "model"):
            raise TypeError(f"{type(module).__name__} holds no GLMModel or HFTapModel")
        module = module.model
    return module


def tap_config_of(module: nn.Module):
    """The sizes of a GLMModel (its GLMConfig) or an HFTapModel (its TapConfig), also inside
    task heads and wrappers: num_layers, hidden_size, num_attention_heads, layernorm_epsilon,
    output_predict."""
    return tap_model_of(module).config


__all__ = ["FAMILIES", "MODEL_TYPES", "Family", "FrozenHFLayer", "HFTapModel", "TapConfig", "family_of",
           "glm_position_ids", "register_attention", "tap_config_of", "tap_config_of_hf", "tap_model_of",
           "tapped_attention"]
