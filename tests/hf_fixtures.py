"""Tiny Hugging Face model folders built in the test: random BERT (WordPiece tokenizer over the
test vocabulary) and Llama (grouped-query attention; a word-level tokenizer with an EOS token),
saved with `save_pretrained` like a real checkpoint folder."""
from pathlib import Path

import torch

from cli_fixtures import write_vocab

V_PAD = 8   # vocabulary rows beyond the tokenizer (real models pad their embedding tables too)


def bert_folder(directory: Path, layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0,
                weights: bool = True) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = write_vocab(folder).read_text().split()
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})   # 5.x: `vocab`, not `vocab_file`
    config = BertConfig(vocab_size=len(tokenizer) + V_PAD, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64,
                        pad_token_id=tokenizer.pad_token_id)
    _save(BertForMaskedLM, config, folder, seed, weights)
    tokenizer.save_pretrained(str(folder))
    return folder


def llama_folder(directory: Path, layers: int = 4, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                 seed: int = 0, weights: bool = True) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    words = write_vocab(folder).read_text().split()
    (folder / "vocab.txt").unlink()
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>"] + [w for w in words if not w.startswith("[")])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab) + V_PAD, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=2 * hidden,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    _save(LlamaForCausalLM, config, folder, seed, weights)
    tokenizer.save_pretrained(str(folder))
    return folder


def _save(cls, config, folder: Path, seed: int, weights: bool) -> None:
    torch.manual_seed(seed)
    if weights:
        cls(config).save_pretrained(str(folder))
    else:
        config.save_pretrained(str(folder))
