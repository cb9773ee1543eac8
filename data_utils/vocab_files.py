"""Checks of the tokenizers' vocabulary files, before a tokenizer library reads them.

An empty file, a line that is not UTF-8 (``path:line`` and its byte offset), a binary file,
malformed JSON or a SentencePiece model that does not parse raises ``VocabularyFormatError``
naming the file, instead of a bare library error or a 0-token tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

from data_utils.text_files import read_lines

BERT_COMMAND_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class VocabularyFormatError(ValueError):
    """A tokenizer file is empty, not UTF-8, binary or malformed; the message names the file
    (and the line where there is one)."""


def read_vocabulary_lines(path: Path) -> list[str]:
    """The lines of a text vocabulary file, checked: UTF-8 text (``path:line`` and byte offset
    otherwise) holding at least one non-blank line."""
    lines = read_lines(path, VocabularyFormatError)
    if not any(line.strip() for line in lines):
        raise VocabularyFormatError(f"{path} is empty: a vocabulary file needs one entry per line")
    return lines


def check_wordpiece_vocab(path: Path) -> None:
    """A WordPiece vocab.txt: UTF-8, not empty, and holding BERT's command tokens."""
    tokens = {line.strip() for line in read_vocabulary_lines(path)}
    missing = [token for token in BERT_COMMAND_TOKENS if token not in tokens]
    if missing:
        raise VocabularyFormatError(f"{path}: the vocabulary lacks {missing} (a BERT vocab.txt "
                                    f"holds {list(BERT_COMMAND_TOKENS)})")


def check_gpt2_files(encoder: Path, merges: Path) -> None:
    """encoder.json: a non-empty JSON object of token -> id; merges: UTF-8, not empty."""
    text = "\n".join(read_vocabulary_lines(encoder))
    try:
        vocab = json.loads(text)
    except json.JSONDecodeError as error:
        raise VocabularyFormatError(f"{encoder}:{error.lineno}: malformed JSON ({error.msg})") from None
    if not isinstance(vocab, dict):
        raise VocabularyFormatError(f"{encoder}: expected a JSON object of token -> id, "
                                    f"got {type(vocab).__name__}")
    if not vocab:
        raise VocabularyFormatError(f"{encoder} is empty: the JSON object holds no tokens")
    read_vocabulary_lines(merges)


def load_sentencepiece(path: Path) -> "sentencepiece.SentencePieceProcessor":
    """A ``SentencePieceProcessor`` of ``path``; an empty or unparsable file names the file."""
    import sentencepiece
    if path.stat().st_size == 0:
        raise VocabularyFormatError(f"{path} is empty: expected a SentencePiece .model file")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except RuntimeError as error:
        raise VocabularyFormatError(f"{path}: not a SentencePiece model ({error})") from None
