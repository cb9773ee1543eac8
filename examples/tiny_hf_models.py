"""Write tiny random Hugging Face model folders that stand in for real checkpoints.

    python examples/tiny_hf_models.py OUT_DIR [--vocab VOCAB_TXT]

OUT_DIR receives three folders laid out like a downloaded checkpoint (config.json,
model.safetensors, tokenizer files), so that the README's Hugging Face commands run anywhere:
* llama: a 4-layer Llama (grouped-query attention, 4 heads, 2 key/value heads) with a
  word-level tokenizer and an end-of-sequence token (causal LM);
* bert: a 4-layer BERT with a WordPiece tokenizer (masked LM);
* bert-student: a 2-layer BERT of the same width with only config.json and the tokenizer,
  i.e. a fresh student.
The tokenizers cover the words of VOCAB_TXT (one token per line, BERT's special tokens first,
as the demo's runs/demo/data/vocab.txt). Weights are random: real folders work the same way.
"""
import argparse
from pathlib import Path
from typing import List

import torch

BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LLAMA_SPECIAL = ["<unk>", "<s>", "</s>"]
EXTRA_ROWS = 8   # embedding rows beyond the tokenizer, as real models pad their tables


def _words(vocab_file: Path) -> List[str]:
    return [token for token in vocab_file.read_text().split() if token not in BERT_SPECIAL]


def bert_folder(folder: Path, words: List[str], layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0,
                weights: bool = True) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    tokens = BERT_SPECIAL + words
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})   # 5.x: `vocab`, a mapping
    config = BertConfig(vocab_size=len(tokenizer) + EXTRA_ROWS, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64,
                        pad_token_id=tokenizer.pad_token_id)
    _save(BertForMaskedLM, config, folder, seed, weights)
    tokenizer.save_pretrained(str(folder))
    return folder


def llama_folder(folder: Path, words: List[str], layers: int = 4, hidden: int = 32, heads: int = 4,
                 kv_heads: int = 2, seed: int = 0, weights: bool = True) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(LLAMA_SPECIAL + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab) + EXTRA_ROWS, hidden_size=hidden, num_hidden_layers=layers,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--vocab", type=Path, default=Path("runs/demo/data/vocab.txt"),
                        help="one token per line (default: the demo's vocabulary)")
    args = parser.parse_args()
    if not args.vocab.is_file():
        raise SystemExit(f"tiny_hf_models.py: error: {args.vocab}: no such file (run examples/kd_demo.py first, "
                         f"or pass --vocab)")
    words = _words(args.vocab)
    for folder in (llama_folder(args.out_dir / "llama", words), bert_folder(args.out_dir / "bert", words),
                   bert_folder(args.out_dir / "bert-student", words, layers=2, seed=1, weights=False)):
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
