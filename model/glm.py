"""GLMModel: Du et al. 2022, "GLM: General Language Model Pretraining with Autoregressive
Blank Infilling" (spec 9.1), on model-parallel layers, with named taps and interventions."""
from dataclasses import dataclass, field
from typing import Collection, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

import mpu

from .config import GLMConfig
from .taps import INTERVENTION_ONLY, LAYER_TAPS, Intervention, Taps, check_names
from .transformer import GLMTransformer


@dataclass
class ModelOutput:
    """logits: [B, S, V/p] vocabulary-parallel (or [B, S, V] gathered, or hidden states
    [B, S, H] when the config's output_predict is False; task heads put their scores here);
    taps: the requested tensors by name."""
    logits: torch.Tensor
    taps: Dict[str, torch.Tensor] = field(default_factory=dict)


class GLMModel(nn.Module):
    """Word embeddings (vocabulary-parallel, optionally factorised or trigram), the GLM
    transformer, and output logits tied to the word embeddings.

    forward(input_ids [B, S], position_ids [B, 2, S], attention_mask (sep: int or [B], or a
    [B, 1, S, S] mask), taps=(names...), interventions={name: callable}) -> ModelOutput.
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        config.check_model_parallel_size(mpu.get_model_parallel_world_size())
        self.config = config
        init = mpu.init_normal(config.init_method_std)
        self.word_embeddings = mpu.VocabParallelEmbedding(config.vocab_size, config.word_embedding_width,
                                                          init_method=init)
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

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, S] -> word embeddings [B, S, H]."""
        words = self.word_embeddings(input_ids)
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
        logits = F.linear(mpu.copy_to_model_parallel_region(hidden), self.word_embeddings.weight)  # [B, S, V/p]
        logits = recorder("logits_parallel", logits)
        if not self.config.parallel_output:
            logits = mpu.gather_from_model_parallel_region(logits)
        return ModelOutput(logits, recorder.captured)


def glm_config_of(module: nn.Module) -> GLMConfig:
    """The GLMConfig of a GLMModel, or of the GLMModel inside task heads and wrappers (`.model`)."""
    while not isinstance(getattr(module, "config", None), GLMConfig):
        if not hasattr(module, "model"):
            raise TypeError(f"{type(module).__name__} holds no GLMModel")
        module = module.model
    return module.config


def language_model_loss(logits_parallel: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """sum(CE * loss_mask) / sum(loss_mask) over vocabulary-parallel logits [B, S, V/p]; 0 if nothing is masked in."""
    losses = mpu.vocab_parallel_cross_entropy(logits_parallel, target)  # [B, S]
    loss_mask = loss_mask.float()
    return (losses * loss_mask).sum() / loss_mask.sum().clamp(min=1.0)
