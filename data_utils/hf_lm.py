"""Language-modelling batches for Hugging Face models from a text/JSONL corpus.

The corpus (the same files and readers as GLM pretraining: `data_utils.corpora`) is split by
document (`--split`), each document tokenised with the model folder's tokenizer (no special
tokens), documents joined by a separator id (EOS for decoders, SEP for encoders), and the
stream cut into blocks of `block_length` ids. A decoder learns the next token of every
position (causal LM); an encoder's block is wrapped in its [CLS] ... [SEP] and 15 % of its
tokens are masked (80 % [MASK], 10 % a random id, 10 % kept) and predicted (masked LM).

`LMBatches` draws batches of blocks in seeded epochs, each data-parallel rank its slice of
every global batch; its state (epoch, position) makes a resumed run read the same batches, and
the masks are drawn from a generator seeded by (seed, epoch, position), so they are the same
too.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from .corpora import CorpusConfig, iter_documents, split_documents

OBJECTIVES = ("causal", "masked")


@dataclass(frozen=True)
class LMSpecialIds:
    """The ids the objectives need: separator between documents; for masked LM the [CLS],
    [SEP], [MASK] ids (and the vocabulary size, for the 10 % random replacements)."""
    separator: int
    vocab_size: int
    cls: Optional[int] = None
    sep: Optional[int] = None
    mask: Optional[int] = None


def special_ids(tokenizer, objective: str) -> LMSpecialIds:
    """The special ids of an HF tokenizer for `objective` (ValueError naming what is missing)."""
    vocab_size = len(tokenizer)
    if objective == "causal":
        separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if separator is None:
            raise ValueError("causal LM needs an end-of-sequence (or separator) token in the tokenizer")
        return LMSpecialIds(separator, vocab_size)
    missing = [name for name in ("cls_token_id", "sep_token_id", "mask_token_id") if getattr(tokenizer, name) is None]
    if missing:
        raise ValueError(f"masked LM needs the tokenizer's {', '.join(missing)}")
    return LMSpecialIds(tokenizer.sep_token_id, vocab_size, tokenizer.cls_token_id, tokenizer.sep_token_id,
                        tokenizer.mask_token_id)


def corpus_blocks(paths: Sequence[str], tokenizer, block_length: int, split: str, seed: int, separator: int,
                  text_key: str = "text") -> List[torch.Tensor]:
    """[train, valid, test] blocks, each a [N, block_length] long tensor of token ids."""
    documents = list(iter_documents(CorpusConfig(tuple(paths), text_key=text_key, split=split, split_seed=seed)))
    parts = split_documents(len(documents), split, seed)
    blocks = []
    for indices in parts:
        stream: List[int] = []
        for index in sorted(int(i) for i in indices):
            stream += tokenizer(documents[index], add_special_tokens=False)["input_ids"] + [separator]
        count = len(stream) // block_length
        blocks.append(torch.tensor(stream[:count * block_length], dtype=torch.long).view(count, block_length))
    return blocks


def lm_batch(blocks: torch.Tensor, objective: str, ids: LMSpecialIds, generator: torch.Generator,
             mask_prob: float = 0.15) -> Dict[str, torch.Tensor]:
    """A batch for HFLanguageModelStage from blocks [B, L]: text, attention_mask, target,
    loss_mask ([B, S]; S = L for causal LM, L + 2 for masked LM's [CLS] ... [SEP])."""
    if objective == "causal":
        text = blocks
        target = torch.cat([blocks[:, 1:], blocks[:, :1]], dim=1)                 # position t predicts t + 1
        loss_mask = torch.ones_like(blocks, dtype=torch.float)
        loss_mask[:, -1] = 0.0                                                    # the last has no next token
        return {"text": text, "attention_mask": torch.ones_like(text), "target": target, "loss_mask": loss_mask}
    batch = blocks.size(0)
    text = torch.cat([torch.full((batch, 1), ids.cls), blocks, torch.full((batch, 1), ids.sep)], dim=1)
    chosen = torch.rand(text.shape, generator=generator) < mask_prob
    chosen[:, 0] = chosen[:, -1] = False                                          # never [CLS] / [SEP]
    roll = torch.rand(text.shape, generator=generator)
    random_ids = torch.randint(ids.vocab_size, text.shape, generator=generator)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(text, ids.mask), text)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return {"text": masked, "attention_mask": torch.ones_like(text), "target": torch.where(chosen, text, 0),
            "loss_mask": chosen.float()}


class LMBatches:
    """Batches of `batch_size` blocks per data-parallel rank, in seeded epochs (the last
    incomplete global batch of an epoch is dropped). State: (epoch, position)."""

    def __init__(self, blocks: torch.Tensor, objective: str, ids: LMSpecialIds, batch_size: int, dp_rank: int,
                 dp_world_size: int, seed: int, device: torch.device, mask_prob: float = 0.15):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        if blocks.size(0) < batch_size * dp_world_size:
            raise ValueError(f"{blocks.size(0)} blocks cannot fill one batch of {batch_size} x {dp_world_size} "
                             f"data-parallel ranks")
        self.blocks, self.objective, self.ids, self.mask_prob = blocks, objective, ids, mask_prob
        self.batch_size, self.dp_rank, self.dp_world_size = batch_size, dp_rank, dp_world_size
        self.seed, self.device = seed, device
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.blocks.size(0) // (self.batch_size * self.dp_world_size)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = torch.randperm(self.blocks.size(0), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        start = (self.position * self.dp_world_size + self.dp_rank) * self.batch_size
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + self.position * 31
                                                  + self.dp_rank)
        batch = lm_batch(self.blocks[order[start:start + self.batch_size]], self.objective, self.ids, generator,
                         self.mask_prob)
        self.position += 1
        return {name: value.to(self.device) for name, value in batch.items()}

    def take(self, count: int) -> List[Dict[str, torch.Tensor]]:
        return [next(self) for _ in range(min(count, self.batches_per_epoch))]

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
