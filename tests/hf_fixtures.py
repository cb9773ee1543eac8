"""Tiny Hugging Face model folders built in the test over the test vocabulary (the README's
stand-in folders, `examples/tiny_hf_models.py`): random BERT (WordPiece) and Llama
(grouped-query attention, word-level tokenizer with an EOS token)."""
from pathlib import Path

from cli_fixtures import write_vocab
from examples import tiny_hf_models


def _words(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(directory)
    words = [token for token in vocab.read_text().split() if token not in tiny_hf_models.BERT_SPECIAL]
    vocab.unlink()
    return words


def bert_folder(directory: Path, layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0,
                weights: bool = True) -> Path:
    return tiny_hf_models.bert_folder(Path(directory), _words(Path(directory)), layers, hidden, heads, seed, weights)


def llama_folder(directory: Path, layers: int = 4, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                 seed: int = 0, weights: bool = True) -> Path:
    return tiny_hf_models.llama_folder(Path(directory), _words(Path(directory)), layers, hidden, heads, kv_heads,
                                       seed, weights)
