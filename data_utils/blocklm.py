"""GLM blank-infilling (block-LM) batches: the original's ``ConstructBlockStrategy``.

Input: a list of samples, each a list of token ids that starts with ``[CLS]`` (as produced by
``data_utils.corpora.BlockSampleDataset``). A sample may hold several documents separated by
eos; spans never cross eos or ``[CLS]``. Every sample needs at least one token after ``[CLS]``.

Per batch one mode is drawn (probabilities ``bert_prob``, ``gap_sentence_prob``, rest gpt):

* ``bert``: per document, Poisson(``avg_block_length``) span lengths (1 .. max_block_length-1)
  until ``bert_ratio`` of the sample is covered; spans at random non-overlapping places.
* ``sentence``: whole sentences (ending in a token whose text holds . ? ! ; : or a newline)
  until ``gap_sentence_ratio`` of the sample is covered; mask ``[sMASK]`` with ``task_mask``.
* ``gpt``: a suffix of length in [gpt_min_ratio * min_len, max_len - 2]; with probability
  ``gpt_infill_prob`` (or for multi-document samples) a direct prefix/suffix split
  (Part A = prefix + ``[gMASK]``, Part B = ``[sop]`` suffix[:-1], targets = suffix, no eop, as in
  the original), otherwise one blank span of that length; mask ``[gMASK]`` with ``task_mask``.

Row layout (blank spans): Part A is the sample with each span replaced by one mask token,
positions 0 .. sep-1. Part B holds, per span (shuffled unless ``no_shuffle_block``),
input ``[sop] span`` and targets ``span [eop]``; all its tokens carry the position of the
span's mask and block positions 1 .. len(span)+1.

Batch (B samples, S = longest row): ``text`` [B, S] long (right-padded with pad id),
``target`` [B, S] long (0 wherever ``loss_mask`` is 0), ``loss_mask`` [B, S] float (1 exactly
on Part B), ``position_id`` [B, 2, S] long (absolute, block; 0 on padding), ``attention_mask``
[B] long (= sep, the length of Part A).

``short_seq_prob`` splits each sample into ``(max_seq_length-1) // L`` random sentence-aligned
segments of about L tokens (L uniform in [32, max_seq_length-1)), so B grows, as in the
original.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import torch

from data_utils.tokenization import CommandTokens, GLMTokenizer

SENTENCE_END_CHARS = (".", "?", "!", ";", ":", "\n")


@dataclass(frozen=True)
class BlockLMConfig:
    """Options of the blank-infilling objective; field names follow the original's flags."""
    bert_prob: float = 0.5  # --bert-prob
    gap_sentence_prob: float = 0.0  # --gap-sentence-prob
    gpt_infill_prob: float = 0.5  # --gpt-infill-prob
    gpt_min_ratio: float = 0.5  # --gpt-min-ratio
    bert_ratio: float = 0.15  # fraction of tokens masked in bert mode
    gap_sentence_ratio: float = 0.15  # --gap-sentence-ratio
    avg_block_length: float = 3.0  # --avg-block-length (Poisson mean)
    max_block_length: int = 40  # span lengths are 1 .. max_block_length - 1
    short_seq_prob: float = 0.0  # --short-seq-prob
    block_mask_prob: float = 0.0  # --block-mask-prob (needs a [dBLOCK] token)
    task_mask: bool = False  # --task-mask ([gMASK]/[sMASK] for gpt/sentence modes)
    no_shuffle_block: bool = False  # --no-shuffle-block
    max_seq_length: int = 512  # --seq-length; used by short_seq_prob only

    def __post_init__(self) -> None:
        for name in ("bert_prob", "gap_sentence_prob", "gpt_infill_prob", "gpt_min_ratio",
                     "bert_ratio", "gap_sentence_ratio", "short_seq_prob", "block_mask_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"BlockLMConfig.{name} must be in [0, 1], got {value}")
        if self.bert_prob + self.gap_sentence_prob > 1.0 + 1e-9:
            raise ValueError(f"bert_prob ({self.bert_prob}) + gap_sentence_prob "
                             f"({self.gap_sentence_prob}) must be <= 1 (the rest is gpt)")
        if self.avg_block_length <= 0:
            raise ValueError(f"avg_block_length must be > 0, got {self.avg_block_length}")
        if self.max_block_length < 2:
            raise ValueError(f"max_block_length must be >= 2, got {self.max_block_length}")
        if self.short_seq_prob > 0 and self.max_seq_length < 34:
            raise ValueError(f"short_seq_prob needs max_seq_length >= 34, "
                             f"got {self.max_seq_length}")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (e.g. base seed, batch index, DP rank)."""
    digest = hashlib.sha256(repr(tuple(int(p) for p in parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sentence_end_ids(tokenizer: GLMTokenizer) -> frozenset[int]:
    """Ids whose decoded text holds a sentence end (. ? ! ; : newline); command tokens excluded."""
    command_ids = {i for i in asdict(tokenizer.command).values() if i is not None}
    return frozenset(i for i in range(tokenizer.num_tokens) if i not in command_ids
                     and any(c in tokenizer.decode([i]) for c in SENTENCE_END_CHARS))


def place_spans(lengths: Sequence[int], start: int, region_length: int,
                rng: random.Random) -> list[tuple[int, int]]:
    """Random non-overlapping [begin, end) spans of ``lengths`` inside
    [start, start + region_length), in order, with at least one token between two spans."""
    num_free = region_length - sum(lengths) - len(lengths) + 1
    if num_free < 0:
        raise ValueError(f"spans {list(lengths)} do not fit in {region_length} tokens")
    gaps = sorted(rng.randrange(num_free + 1) for _ in lengths)
    spans, offset = [], start
    for gap, length in zip(gaps, lengths):
        spans.append((offset + gap, offset + gap + length))
        offset += length + 1
    return spans


def document_regions(tokens: Sequence[int], command: CommandTokens) -> list[tuple[int, int]]:
    """[begin, end) runs of maskable tokens: maximal runs without ``[CLS]`` or eos."""
    regions, begin = [], None
    for i, token in enumerate(tokens):
        if token in (command.cls, command.eos):
            if begin is not None:
                regions.append((begin, i))
            begin = None
        elif begin is None:
            begin = i
    if begin is not None:
        regions.append((begin, len(tokens)))
    return regions


def sentence_spans(tokens: Sequence[int], command: CommandTokens,
                   end_ids: frozenset[int]) -> list[tuple[int, int]]:
    """[begin, end) sentences: each ends after a sentence-end token; eos and [CLS] excluded."""
    spans, begin = [], 0
    for i, token in enumerate(tokens):
        if token in (command.cls, command.eos):
            if begin < i:  # an unterminated sentence before eos
                spans.append((begin, i))
            begin = i + 1
        elif token in end_ids:
            spans.append((begin, i + 1))
            begin = i + 1
    if begin < len(tokens):
        spans.append((begin, len(tokens)))
    return spans


@dataclass
class BlockRow:
    """One un-padded sample; lists of equal length."""
    tokens: list[int]
    targets: list[int]
    loss_mask: list[int]
    positions: list[int]
    block_positions: list[int]
    sep: int


class BlockLMStrategy:
    """Builds blank-infilling batches; ``strategy(samples, seed)`` is deterministic in ``seed``.

    Args:
        config: the objective's options.
        command: the tokenizer's command tokens.
        end_ids: sentence-end token ids (``sentence_end_ids(tokenizer)``); needed when
            ``gap_sentence_prob`` or ``short_seq_prob`` is > 0.
    """

    def __init__(self, config: BlockLMConfig, command: CommandTokens,
                 end_ids: Optional[Iterable[int]] = None):
        self.config = config
        self.command = command
        self.end_ids = frozenset(end_ids or ())
        needs_sentences = config.gap_sentence_prob > 0 or config.short_seq_prob > 0
        if needs_sentences and not self.end_ids:
            raise ValueError("gap_sentence_prob/short_seq_prob > 0 need sentence-end ids")
        if config.task_mask and (command.gmask is None or command.smask is None):
            raise ValueError("task_mask needs a tokenizer built with add_task_mask=True")
        if config.block_mask_prob > 0 and command.dblock is None:
            raise ValueError("block_mask_prob > 0 needs a tokenizer built with "
                             "add_decoder_mask=True ([dBLOCK])")
        mean = config.avg_block_length  # Poisson pmf over 1 .. max_block_length - 1
        self._length_weights = [mean ** k * math.exp(-mean) / math.factorial(k)
                                for k in range(1, config.max_block_length)]
        self._gmask = command.gmask if config.task_mask else command.mask
        self._smask = command.smask if config.task_mask else command.mask

    @classmethod
    def from_tokenizer(cls, config: BlockLMConfig, tokenizer: GLMTokenizer) -> "BlockLMStrategy":
        needs_sentences = config.gap_sentence_prob > 0 or config.short_seq_prob > 0
        end_ids = sentence_end_ids(tokenizer) if needs_sentences else None
        return cls(config, tokenizer.command, end_ids)

    def __call__(self, samples: Sequence[Sequence[int]], seed: int) -> dict[str, torch.Tensor]:
        """Batch dict (see the module docstring) for ``samples`` ([CLS]-led token-id lists)."""
        self._check_samples(samples)
        rng = random.Random(seed)
        samples = [list(sample) for sample in samples]
        if rng.random() < self.config.short_seq_prob:
            samples = self._split_short(samples, rng)
        draw = rng.random()
        if draw < self.config.bert_prob:
            rows = [self._bert_row(sample, rng) for sample in samples]
        elif draw < self.config.bert_prob + self.config.gap_sentence_prob:
            rows = [self._sentence_row(sample, rng) for sample in samples]
        else:
            rows = self._gpt_rows(samples, rng)
        return pad_rows(rows, self.command.pad)

    def _check_samples(self, samples: Sequence[Sequence[int]]) -> None:
        if not samples:
            raise ValueError("a batch needs at least one sample")
        for i, sample in enumerate(samples):
            if not sample or sample[0] != self.command.cls or not document_regions(
                    sample, self.command):
                raise ValueError(f"sample {i} must be [CLS] followed by >= 1 text token (not "
                                 f"eos), got {list(sample[:8])}... (length {len(sample)})")

    def _span_lengths(self, num_to_mask: int, region_length: int, rng: random.Random) -> list[int]:
        """Poisson lengths until ``num_to_mask`` tokens are covered, cut to fit the region."""
        lengths: list[int] = []
        choices = range(1, self.config.max_block_length)
        while sum(lengths) < num_to_mask:
            lengths.append(rng.choices(choices, weights=self._length_weights)[0])
        while sum(lengths) + len(lengths) - 1 > region_length:
            if len(lengths) == 1:
                return [region_length]
            lengths.pop()
        return lengths

    def _bert_row(self, tokens: list[int], rng: random.Random) -> BlockRow:
        spans = []
        for begin, end in document_regions(tokens, self.command):
            # at least one span per document, else short documents would give no loss
            num_to_mask = max(1, int(self.config.bert_ratio * (end - begin)))
            lengths = self._span_lengths(num_to_mask, end - begin, rng)
            rng.shuffle(lengths)
            spans += place_spans(lengths, begin, end - begin, rng)
        return self._blank_row(tokens, spans, self.command.mask, rng, block_mask=True)

    def _sentence_row(self, tokens: list[int], rng: random.Random) -> BlockRow:
        sentences = sentence_spans(tokens, self.command, self.end_ids)
        rng.shuffle(sentences)
        spans, num_masked = [], 0
        for begin, end in sentences:
            spans.append((begin, end))
            num_masked += end - begin
            if num_masked >= int(self.config.gap_sentence_ratio * len(tokens)):
                break
        return self._blank_row(tokens, sorted(spans), self._smask, rng, block_mask=False)

    def _gpt_rows(self, samples: list[list[int]], rng: random.Random) -> list[BlockRow]:
        lengths = [len(sample) for sample in samples]
        high = max(max(lengths) - 2, 1)
        low = min(max(int(self.config.gpt_min_ratio * min(lengths)), 1), high)
        max_generation = rng.randint(low, high)
        rows = []
        for tokens in samples:
            generation = max(1, min(max_generation, len(tokens) - 2))
            multi_doc = self.command.eos in tokens[:-1]
            if multi_doc or rng.random() < self.config.gpt_infill_prob:
                rows.append(prefix_row(tokens, generation, self._gmask, self.command.sop))
            else:
                begin, end = document_regions(tokens, self.command)[0]
                span = place_spans([generation], begin, end - begin, rng)
                rows.append(self._blank_row(tokens, span, self._gmask, rng, block_mask=False))
        return rows

    def _blank_row(self, tokens: list[int], spans: list[tuple[int, int]], mask_id: int,
                   rng: random.Random, block_mask: bool) -> BlockRow:
        spans = sorted(spans)
        if not self.config.no_shuffle_block:
            rng.shuffle(spans)
        row = blank_row(tokens, spans, mask_id, self.command.sop, self.command.eop)
        if block_mask and self.config.block_mask_prob > 0:
            for i in range(row.sep, len(row.tokens)):
                if row.block_positions[i] > 1 and rng.random() < self.config.block_mask_prob:
                    row.tokens[i] = self.command.dblock
        return row

    def _split_short(self, samples: list[list[int]], rng: random.Random) -> list[list[int]]:
        """Each sample -> ``(max_seq_length-1) // L`` [CLS]-led sentence-aligned segments."""
        max_len = self.config.max_seq_length
        target_length = rng.randrange(32, max_len - 1)
        num_splits = (max_len - 1) // target_length
        segments = []
        for sample in samples:
            body = sample[1:]
            for _ in range(num_splits):
                segments.append([self.command.cls] + self._segment(body, target_length, rng))
        return segments

    def _segment(self, body: list[int], target_length: int, rng: random.Random) -> list[int]:
        if target_length >= len(body):
            return body
        eos = self.command.eos

        def ends_sentence(i: int) -> bool:
            return body[i] in self.end_ids or body[i] == eos

        begin = rng.randrange(0, len(body) - target_length)
        while begin > 0 and (body[begin] == eos or not ends_sentence(begin - 1)):
            begin -= 1
        end = begin + target_length
        while end > begin and not ends_sentence(end - 1):
            end -= 1
        if end - begin < target_length // 2:
            end = begin + target_length
        return body[begin:end]


def blank_row(tokens: list[int], spans: Sequence[tuple[int, int]], mask_id: int, sop: int,
              eop: int) -> BlockRow:
    """Part A = ``tokens`` with each [begin, end) span replaced by ``mask_id`` (positions
    0 .. sep-1); Part B = per span, in the given order, input ``[sop] span`` with targets
    ``span [eop]``, at the span's mask position, block positions 1 .. len(span)+1."""
    part_a, mask_position, last = [], {}, 0
    for begin, end in sorted(spans):
        if begin < last or end <= begin:
            raise ValueError(f"spans must be non-empty and disjoint, got {sorted(spans)}")
        part_a += tokens[last:begin]
        mask_position[begin] = len(part_a)
        part_a.append(mask_id)
        last = end
    part_a += tokens[last:]
    sep = len(part_a)
    row = BlockRow(part_a, [0] * sep, [0] * sep, list(range(sep)), [0] * sep, sep)
    for begin, end in spans:
        span = tokens[begin:end]
        row.tokens += [sop] + span
        row.targets += span + [eop]
        row.loss_mask += [1] * (len(span) + 1)
        row.positions += [mask_position[begin]] * (len(span) + 1)
        row.block_positions += list(range(1, len(span) + 2))
    return row


def prefix_row(tokens: list[int], generation_length: int, mask_id: int, sop: int) -> BlockRow:
    """Direct prefix/suffix split: Part A = prefix + [mask_id]; Part B = [sop] suffix[:-1]
    with targets = suffix (no eop, as in the original); block positions 1 .. len(suffix)."""
    division = len(tokens) - generation_length
    prefix, suffix = tokens[:division], tokens[division:]
    sep = division + 1
    return BlockRow(
        tokens=prefix + [mask_id, sop] + suffix[:-1],
        targets=[0] * sep + suffix,
        loss_mask=[0] * sep + [1] * len(suffix),
        positions=list(range(sep)) + [division] * len(suffix),
        block_positions=[0] * sep + list(range(1, len(suffix) + 1)),
        sep=sep)


def pad_rows(rows: Sequence[BlockRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest: text with ``pad_id``, everything else with 0."""
    length = max(len(row.tokens) for row in rows)

    def padded(values: list[int], fill: int = 0) -> list[int]:
        return values + [fill] * (length - len(values))

    return {
        "text": torch.tensor([padded(r.tokens, pad_id) for r in rows], dtype=torch.long),
        "target": torch.tensor([padded(r.targets) for r in rows], dtype=torch.long),
        "loss_mask": torch.tensor([padded(r.loss_mask) for r in rows], dtype=torch.float),
        "position_id": torch.tensor(
            [[padded(r.positions), padded(r.block_positions)] for r in rows], dtype=torch.long),
        "attention_mask": torch.tensor([r.sep for r in rows], dtype=torch.long),
    }
