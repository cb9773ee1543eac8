"""GLMModel: Du et al. 2022, "GLM: General Language Model Pretraining with Autoregressive
Blank Infilling", on model-parallel layers, with named taps and interventions."""
from dataclasses import dataclass, field
from typing import Collection, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

import mpu

from .config import GLMConfig
from .taps import INTERVENTION_ONLY, LAYER_TAPS, Intervention, Taps, check_names
from .transformer import GLMTransformer
from .vocab_map import NO_MAP, VocabMap

MAP_BUFFERS = ("origin_id_to_target_pos", "origin_id_mask_map", "target_pos_to_origin_id")


@dataclass
class ModelOutput:
    """logits: [B, S, V/p] vocabulary-parallel (or [B, S, V] gathered, or hidden states
    [B, S, H] when the config's output_predict is False; task heads put their scores here);
    taps: the requested tensors by name; column_map: set when the logit columns are the rows of
    a compressed vocabulary (unmap_vocab_output), not the original ids (see `to_columns`)."""
    logits: torch.Tensor
    taps: Dict[str, torch.Tensor] = field(default_factory=dict)
    column_map: Optional[VocabMap] = None

    def to_columns(self, ids: torch.Tensor) -> torch.Tensor:
        """Original token ids (e.g. LM targets) -> logit columns."""
        return ids if self.column_map is None else self.column_map.origin_id_to_target_pos[ids]

    def to_ids(self, columns: torch.Tensor) -> torch.Tensor:
        """Logit columns (e.g. an argmax) -> original token ids."""
        return columns if self.column_map is None else self.column_map.target_pos_to_origin_id[columns]


class GLMModel(nn.Module):
    """Word embeddings (vocabulary-parallel, optionally factorised or trigram), the GLM
    transformer, and output logits tied to the word embeddings.

    forward(input_ids [B, S], position_ids [B, 2, S], attention_mask (sep: int or [B], or a
    [B, 1, S, S] mask), taps=(names...), interventions={name: callable}) -> ModelOutput.

    Vocabulary compression (config.map_vocab_size = M > 0): the word-embedding
    table has M rows and the three map tensors are buffers (saved with the weights, replicated
    on every model-parallel rank; see `model.vocab_map`). Input ids are original ids, mapped to
    rows before the lookup. The logits cover the V original ids (a dropped id gets its
    replacement's logit), or with unmap_vocab_output the M rows; then targets must be mapped
    with `map_output_ids`.
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        config.check_model_parallel_size(mpu.get_model_parallel_world_size())
        self.config = config
        init = mpu.init_normal(config.init_method_std)
        self.word_embeddings = mpu.VocabParallelEmbedding(config.embedding_rows, config.word_embedding_width,
                                                          init_method=init)
        if config.map_vocab_size:
            for name in MAP_BUFFERS:
                dtype = torch.bool if name == "origin_id_mask_map" else torch.long
                self.register_buffer(name, torch.full((config.vocab_size,), NO_MAP).to(dtype))
        if config.compress_word_emb:
            self.compress_emb_mlp = mpu.ColumnParallelLinear(config.compress_word_emb, config.hidden_size,
                                                             init_method=init)
            self.decompress_emb_mlp = mpu.ColumnParallelLinear(config.hidden_size, config.compress_word_emb,
                                                               init_method=init)
        if config.ib_word_emb:
            self.trigram_emb_mlp = mpu.ColumnParallelLinear(3 * config.ib_word_emb, config.hidden_size,
                                                            init_method=init)
        self.transformer = GLMTransformer(config)

    # ------------------------------------------------------------------ tap names
    def tap_names(self) -> List[str]:
        """Every name a forward can capture."""
        names = ["words_embeddings", "position_ids", "embeddings"]
        names += [f"layers.{i}.{tap}" for i in range(self.config.num_layers) for tap in LAYER_TAPS]
        names += ["output"] + (["logits_parallel"] if self.config.output_predict else [])
        return names

    def intervention_names(self) -> List[str]:
        return list(INTERVENTION_ONLY) + self.tap_names()

    def _tap_summary(self) -> str:
        last = self.config.num_layers - 1
        model_level = "words_embeddings, position_ids, embeddings, output" + (
            ", logits_parallel" if self.config.output_predict else "")
        return f"{model_level}, and layers.{{0..{last}}}.{{{', '.join(LAYER_TAPS)}}}"

    def make_taps(self, taps: Collection[str] = (), interventions: Optional[Mapping[str, Intervention]] = None) -> Taps:
        """Validate names and build the recorder of one forward."""
        if isinstance(taps, str):
            taps = [taps]
        check_names(taps, self.tap_names(), "tap", self._tap_summary())
        check_names(interventions or {}, self.intervention_names(), "intervention",
                    "input_ids, layers, and every tap name: " + self._tap_summary())
        return Taps(taps, interventions)

    # ------------------------------------------------------------------ vocabulary compression
    @property
    def vocab_map(self) -> Optional[VocabMap]:
        """The vocabulary map (None without compression)."""
        if not self.config.map_vocab_size:
            return None
        return VocabMap(*(getattr(self, name) for name in MAP_BUFFERS))

    def set_vocab_map(self, vocab_map: VocabMap) -> None:
        """Install a built map; it must keep exactly config.map_vocab_size ids of config.vocab_size."""
        if not self.config.map_vocab_size:
            raise ValueError("this model has no vocabulary compression (map_vocab_size=0)")
        problem = vocab_map.problems()
        if problem is None and (vocab_map.origin_id_mask_map.numel(), vocab_map.kept_rows) != (
                self.config.vocab_size, self.config.map_vocab_size):
            problem = (f"it keeps {vocab_map.kept_rows} of {vocab_map.origin_id_mask_map.numel()} ids, the model "
                       f"{self.config.map_vocab_size} of {self.config.vocab_size}")
        if problem is not None:
            raise ValueError(f"unusable vocabulary map: {problem}")
        for name in MAP_BUFFERS:
            getattr(self, name).copy_(getattr(vocab_map, name))

    def vocab_map_problem(self) -> Optional[str]:
        """None when the model can run (no compression, or a consistent map), else why not."""
        vocab_map = self.vocab_map
        if vocab_map is None:
            return None
        problem = vocab_map.problems()
        if problem is None and vocab_map.kept_rows != self.config.map_vocab_size:
            problem = (f"the map keeps {vocab_map.kept_rows} ids, the embedding table has "
                       f"{self.config.map_vocab_size} rows")
        return problem

    def map_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Original ids -> rows of the word-embedding table."""
        if not self.config.map_vocab_size:
            return input_ids
        return self.origin_id_to_target_pos[input_ids]

    def map_output_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Original ids -> logit columns (rows with unmap_vocab_output; unchanged otherwise)."""
        return self.origin_id_to_target_pos[ids] if self.config.unmap_vocab_output else ids

    def replace_dropped_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Original ids with every dropped id replaced by the kept id the student reads instead
        (--logitsdistil_teacher_input_ids_map)."""
        if not self.config.map_vocab_size:
            return input_ids
        return self.target_pos_to_origin_id[self.origin_id_to_target_pos[input_ids]]

    def output_weight(self) -> torch.Tensor:
        """This rank's rows of the output embedding: [V/p, E], or [M/p, E] with unmap_vocab_output.

        Under compression without unmap, column v of the logits uses row origin_id_to_target_pos[v],
        which may live on another rank: the (small) [M, E] table is gathered, and its gradient
        summed over the ranks and split back (copy_to after gather_from)."""
        weight = self.word_embeddings.weight
        if not self.config.map_vocab_size or self.config.unmap_vocab_output:
            return weight
        table = mpu.copy_to_model_parallel_region(mpu.gather_from_model_parallel_region(weight.t())).t()  # [M, E]
        per_rank = self.config.vocab_size // mpu.get_model_parallel_world_size()
        start = mpu.get_model_parallel_rank() * per_rank
        return table[self.origin_id_to_target_pos[start:start + per_rank]]                                # [V/p, E]

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, S] (original ids) -> word embeddings [B, S, H]."""
        words = self.word_embeddings(self.map_input_ids(input_ids))
        if self.config.compress_word_emb:
            words = self.compress_emb_mlp(words)
        if self.config.ib_word_emb:
            words = self._trigram(words)
        return words

    def _trigram(self, words: torch.Tensor) -> torch.Tensor:
        """MobileBERT trigram input: [next, current, previous] first-E slices -> Linear(3E -> H)."""
        current = words[..., :self.config.ib_word_emb]                    # [B, S, E]
        following = F.pad(current[:, 1:], (0, 0, 0, 1))                  # token i+1, zeros past the end
        preceding = F.pad(current[:, :-1], (0, 0, 1, 0))                  # token i-1, zeros before the start
        return self.trigram_emb_mlp(torch.cat([following, current, preceding], dim=-1))

    # ------------------------------------------------------------------ layers (Theseus)
    def layer_sequence(self) -> List[nn.Module]:
        """The layer modules run in order (the list the `layers` intervention receives)."""
        return self.transformer.layer_sequence()

    @staticmethod
    def frozen_layer(layer: nn.Module) -> "FrozenGLMLayer":
        """`layer` made fit to run inside another GLM's forward without training (Theseus)."""
        return FrozenGLMLayer(layer)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask,
                taps: Collection[str] = (), interventions: Optional[Mapping[str, Intervention]] = None) -> ModelOutput:
        recorder = taps if isinstance(taps, Taps) else self.make_taps(taps, interventions)
        replace_ids = recorder.intervention("input_ids")
        if replace_ids is not None:
            input_ids = replace_ids(input_ids)
        words = recorder("words_embeddings", self.embed(input_ids))
        position_ids = recorder("position_ids", position_ids)
        hidden = self.transformer(words, position_ids, attention_mask, recorder)
        if not self.config.output_predict:
            return ModelOutput(hidden, recorder.captured)
        if self.config.compress_word_emb:
            hidden = self.decompress_emb_mlp(hidden)
        logits = F.linear(mpu.copy_to_model_parallel_region(hidden), self.output_weight())   # [B, S, V/p or M/p]
        logits = recorder("logits_parallel", logits)
        if not self.config.parallel_output:
            logits = mpu.gather_from_model_parallel_region(logits)
        return ModelOutput(logits, recorder.captured, self.vocab_map if self.config.unmap_vocab_output else None)


class FrozenGLMLayer:
    """Runs a (teacher's) GLM layer inside another model's forward with detached parameters
    (they never receive .grad) and in the layer's own dtype; gradients still flow through the
    hidden states. Held outside every module tree (not a Module)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, taps) -> torch.Tensor:
        params = {name: p.detach() for name, p in self.layer.named_parameters()}
        dtype = next(iter(params.values())).dtype
        out = torch.func.functional_call(self.layer, params, (hidden.to(dtype), mask, taps))
        return out.to(hidden.dtype)


def glm_model_of(module: nn.Module) -> "GLMModel":
    """The GLMModel itself, or the one inside task heads and wrappers (`.model`)."""
    while not isinstance(module, GLMModel):
        if not hasattr(module, "model"):
            raise TypeError(f"{type(module).__name__} holds no GLMModel")
        module = module.model
    return module


def glm_config_of(module: nn.Module) -> GLMConfig:
    """The GLMConfig of a GLMModel, or of the GLMModel inside task heads and wrappers (`.model`)."""
    return glm_model_of(module).config
