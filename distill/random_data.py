"""Random-data disturbance for robust distillation: on chosen forward-repeat
passes the token ids of a batch are shuffled or resampled; labels, masks and positions stay.

`replace` trains on the disturbed tokens; `dual` appends them to the batch (every other
tensor duplicated). The hard loss on disturbed tokens means little, so this is meant for
soft-only objectives. Never applied at evaluation.
"""
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch

MODES = ("dual", "replace")
METHODS = ("shuffle", "sample")


@dataclass(frozen=True)
class RandomDataOptions:
    mode: str = ""                     # --distill_random_data: "" (off), "dual" or "replace"
    repeat_indices: Tuple[int, ...] = (0,)   # --distill_random_data_n
    method: str = "shuffle"            # --distill_random_data_method
    vocab_size: int = 0                # ids are drawn from [0, vocab_size) by "sample" (set by the run)

    def __post_init__(self):
        if self.mode and self.mode not in MODES:
            raise ValueError(f"--distill_random_data={self.mode!r}; valid: {MODES}")
        if self.method not in METHODS:
            raise ValueError(f"--distill_random_data_method={self.method!r}; valid: {METHODS}")

    @classmethod
    def from_flags(cls, mode: str, indices: str, method: str, vocab_size: int = 0) -> "RandomDataOptions":
        try:
            repeat = tuple(int(i) for i in str(indices).split(",") if i.strip())
        except ValueError:
            raise ValueError(f"--distill_random_data_n={indices!r} is not a comma list of integers") from None
        return cls(mode or "", repeat, method, vocab_size)

    def applies(self, repeat_index: int) -> bool:
        return bool(self.mode) and repeat_index in self.repeat_indices


def disturb_tokens(tokens: torch.Tensor, method: str, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """`shuffle`: one random permutation of all elements (across the batch, padding included);
    `sample`: every token replaced by a uniform id in [0, vocab_size)."""
    if method == "sample" and vocab_size < 1:
        raise ValueError("--distill_random_data_method=sample needs the vocabulary size")
    if method == "shuffle":
        order = torch.randperm(tokens.numel(), generator=generator).to(tokens.device)
        return tokens.reshape(-1)[order].view_as(tokens)
    return torch.randint(0, vocab_size, tokens.shape, generator=generator).to(tokens.device, tokens.dtype)


def disturb_batch(batch: Dict[str, Any], options: RandomDataOptions, generator: torch.Generator,
                  token_key: str = "text") -> Dict[str, Any]:
    """The batch with its token ids disturbed (replace) or the disturbed copy appended (dual)."""
    disturbed = disturb_tokens(batch[token_key], options.method, options.vocab_size, generator)
    if options.mode == "replace":
        return {**batch, token_key: disturbed}
    doubled = {}
    for key, value in batch.items():
        if key == token_key:
            doubled[key] = torch.cat([value, disturbed])
        elif torch.is_tensor(value) and value.dim() > 0:
            doubled[key] = torch.cat([value, value])
        elif isinstance(value, list):
            doubled[key] = value + value
        else:
            doubled[key] = value
    return doubled
