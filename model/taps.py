"""Named taps (capture intermediate tensors) and interventions (replace them) for a forward.

A forward is given the names it should capture and a {name: callable} of interventions.
Each tap point in the model calls `taps(name, tensor)`: the intervention for that name,
if any, replaces the tensor (the forward continues with the replacement), and a requested
name is recorded (after the intervention) with its autograd graph intact. Names are
dotted paths such as `layers.3.attention_scores`; modules receive a `scope`d view so they
only know their local names.
"""
import difflib
from typing import Callable, Dict, Iterable, Mapping, Optional

import torch

Intervention = Callable[[object], object]

# Tap points inside every transformer layer, in forward order. Shapes per model-parallel rank.
LAYER_TAPS = (
    "layernorm_input",           # [B, S, H]      hidden state entering the layer (residual stream)
    "layernorm_output",          # [B, S, H]      input LayerNorm output
    "mixed_query_layer",         # [B, S, A/p]    query projection before the head split
    "mixed_key_layer",           # [B, S, A/p]
    "mixed_value_layer",         # [B, S, A/p]
    "query_layer",               # [B, nh/p, S, dh]
    "key_layer",                 # [B, nh/p, S, dh]
    "value_layer",               # [B, nh/p, S, dh]
    "attention_scores",          # [B, nh/p, S, S] pre-softmax, masked
    "attention_probs",           # [B, nh/p, S, S] softmax, before dropout
    "context_layer",             # [B, S, A/p]    attention output before the output projection
    "attention_output",          # [B, S, H or ib] output projection, before dropout
    "post_attention_layernorm",  # [B, S, H or ib] LayerNorm before the FFN
    "ffn_output",                # [B, S, H or ib] FFN output, before dropout
    "tf_output",                 # [B, S, H]      layer output after the residuals
)
# Model-level tap points: "words_embeddings" [B,S,H], "position_ids" [B,2,S] or [B,S],
# "embeddings" [B,S,H] (word + position + block position, before dropout),
# "output" [B,S,H] (final LayerNorm), "logits_parallel" [B,S,V/p].
# Intervention-only points: "input_ids" (ids -> ids before the embedding) and
# "layers" (list of layer modules -> list of modules run in this forward).
INTERVENTION_ONLY = ("input_ids", "layers")


def check_names(names: Iterable[str], valid: Iterable[str], what: str, summary: str) -> None:
    """Raise KeyError for the first unknown name, with close matches and the valid names."""
    valid = set(valid)
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise KeyError(f"unknown {what} {name!r}.{hint} Valid {what}s: {summary}")


class Taps:
    """Requested names, interventions and the captured tensors of one forward."""

    def __init__(self, requested: Iterable[str] = (), interventions: Optional[Mapping[str, Intervention]] = None,
                 prefix: str = "", captured: Optional[Dict[str, torch.Tensor]] = None):
        self.requested = frozenset(requested)
        self.interventions = dict(interventions or {})
        self.prefix = prefix
        self.captured = {} if captured is None else captured
        self.active = bool(self.requested or self.interventions)

    def __call__(self, name: str, value):
        if not self.active:
            return value
        full_name = self.prefix + name
        intervention = self.interventions.get(full_name)
        if intervention is not None:
            value = intervention(value)
        if full_name in self.requested:
            self.captured[full_name] = value
        return value

    def wants(self, *names: str) -> bool:
        """Whether any of `names` (local to this scope) is requested or intervened on."""
        if not self.active:
            return False
        full_names = [self.prefix + name for name in names]
        return any(name in self.requested or name in self.interventions for name in full_names)

    def intervention(self, name: str) -> Optional[Intervention]:
        return self.interventions.get(self.prefix + name)

    def scope(self, name: str) -> "Taps":
        """A view for a submodule: names are prefixed with `name.`; captures go to the same dict."""
        if not self.active:
            return self
        return Taps(self.requested, self.interventions, f"{self.prefix}{name}.", self.captured)

    def fresh(self) -> "Taps":
        """Same requests and interventions, an empty capture dict (for checkpointed chunks)."""
        return Taps(self.requested, self.interventions, self.prefix, {})


NO_TAPS = Taps()
