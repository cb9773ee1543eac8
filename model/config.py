"""The GLM architecture as a typed, validated config, and the size presets."""
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping


@dataclass(frozen=True)
class GLMConfig:
    """Hyper-parameters of a `GLMModel` (names follow the original's flags).

    `vocab_size` is the padded size the embedding table is built with; use
    `mpu.pad_vocab_size` to derive it from a tokenizer's size.
    """
    num_layers: int = 12
    hidden_size: int = 768
    num_attention_heads: int = 12
    vocab_size: int = 30592
    max_sequence_length: int = 512
    embedding_dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    output_dropout_prob: float = 0.1
    layernorm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    attention_scale: float = 1.0
    block_position_encoding: bool = True       # 2-D positions (GLM); False: one position table
    parallel_output: bool = True               # keep logits vocabulary-parallel
    output_predict: bool = True                # False: return the final hidden states
    checkpoint_activations: bool = False
    checkpoint_num_layers: int = 1
    # MobileBERT inverted bottleneck
    inverted_bottleneck_mode: bool = False
    ib_hidden_size: int = 128
    ib_ffn_num: int = 4
    ib_word_emb: int = 0                       # >0: trigram input embedding of this width
    # ALBERT
    compress_word_emb: int = 0                 # >0: factorised word embeddings of this width
    cross_layer_parameter_sharing: bool = False
    # GLMD vocabulary compression
    map_vocab_size: int = 0                    # >0: the word-embedding table keeps this many rows
    unmap_vocab_output: bool = False           # logits over the kept rows only (else over all V ids)

    def __post_init__(self):
        positive = ["num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_sequence_length",
                    "checkpoint_num_layers", "ib_ffn_num"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"GLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ["embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GLMConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.attention_width % self.num_attention_heads != 0:
            raise ValueError(f"attention width {self.attention_width} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if not 0 <= self.map_vocab_size < self.vocab_size:
            raise ValueError(f"map_vocab_size={self.map_vocab_size} must lie in [0, vocab_size={self.vocab_size})")
        if self.unmap_vocab_output and not self.map_vocab_size:
            raise ValueError("unmap_vocab_output needs vocabulary compression (map_vocab_size > 0)")
        if self.ib_word_emb > self.hidden_size:
            raise ValueError(f"ib_word_emb={self.ib_word_emb} exceeds hidden_size={self.hidden_size}")

    @property
    def attention_width(self) -> int:
        """Width of Q/K/V: the inner width in inverted-bottleneck layers, else hidden_size."""
        return self.ib_hidden_size if self.inverted_bottleneck_mode else self.hidden_size

    @property
    def word_embedding_width(self) -> int:
        return self.compress_word_emb or self.hidden_size

    @property
    def embedding_rows(self) -> int:
        """Rows of the word-embedding table: the kept vocabulary under compression, else V."""
        return self.map_vocab_size or self.vocab_size

    def check_model_parallel_size(self, model_parallel_size: int) -> None:
        """Raise unless heads, widths and vocabulary divide among `model_parallel_size` ranks."""
        for what, size in [("num_attention_heads", self.num_attention_heads),
                           ("vocab_size", self.vocab_size), ("attention width", self.attention_width),
                           ("map_vocab_size", self.map_vocab_size)]:
            if size % model_parallel_size != 0:
                raise ValueError(f"model parallel size {model_parallel_size} does not divide {what}={size}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GLMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GLMConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes) -> "GLMConfig":
        return replace(self, **changes)


BERT_VOCAB = 30592    # bert-base-uncased 30522 + [sop], [eop], padded to 128
GPT2_VOCAB = 50304    # GPT-2 50257 + command tokens, padded to 128

# Size presets. Tiny ones are for tests and the README demo.
PRESETS: Dict[str, Dict[str, Any]] = {
    "glm-base": dict(num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=BERT_VOCAB),
    "glm-large": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, vocab_size=BERT_VOCAB),
    "glm-2b": dict(num_layers=36, hidden_size=2048, num_attention_heads=32, vocab_size=GPT2_VOCAB,
                   max_sequence_length=1024),
    "glm-10b": dict(num_layers=48, hidden_size=4096, num_attention_heads=64, vocab_size=GPT2_VOCAB,
                    max_sequence_length=1024),
    "glm-tiny6": dict(num_layers=6, hidden_size=768, num_attention_heads=12, vocab_size=BERT_VOCAB),
    "glm-ta": dict(num_layers=18, hidden_size=896, num_attention_heads=14, vocab_size=BERT_VOCAB),
    "ibglm-large": dict(num_layers=24, hidden_size=512, num_attention_heads=4, vocab_size=BERT_VOCAB,
                        inverted_bottleneck_mode=True, ib_hidden_size=1024, ib_ffn_num=1, ib_word_emb=128),
    "mobilebert": dict(num_layers=24, hidden_size=512, num_attention_heads=4, vocab_size=BERT_VOCAB,
                       inverted_bottleneck_mode=True, ib_hidden_size=128, ib_ffn_num=4, ib_word_emb=128),
    "alglm-base": dict(num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=BERT_VOCAB,
                       compress_word_emb=128, cross_layer_parameter_sharing=True),
    "glm-tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=512, max_sequence_length=128),
    "glm-mini": dict(num_layers=4, hidden_size=128, num_attention_heads=4, vocab_size=1024, max_sequence_length=256),
}


def preset(name: str, **overrides) -> GLMConfig:
    """A `GLMConfig` from a named preset, with optional field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
    return GLMConfig(**{**PRESETS[name], **overrides})
