"""Build the sorted-vocabulary table that GLMD vocabulary compression reads.

    python vocab_sort.py --train-data=FILE [FILE ...] --tokenizer-type=BertWordPieceTokenizer \\
        --tokenizer-model-type=bert-base-uncased [--tokenizer-path=VOCAB] [--text-key=text] \\
        [--task-mask] [--decoder-mask] [--output=PATH] [--overwrite]

Counts the tokens of the corpus (text files with one document per line, JSONL files with the
document under --text-key, or folders of them) and writes a TSV with the header
`origin_no sort_id token number frequency`: the protected tokens (command tokens and the
verbalizer tokens of the single-token task patterns) first, then the rest, each part by corpus
count. The default output is .pytorch_pretrained_bert/<tokenizer-type>_<tokenizer-model-type>.txt,
where a training run with --student_build_map_vocab looks for it. Pass --task-mask /
--decoder-mask when the run does (--task-mask / --block-mask-prob), so that the optional command
tokens exist and are protected. An existing table (at the default place or --output) is never
replaced silently: the run stops before counting, with exit code 1 and the file untouched,
unless --overwrite. The table is written to a temporary file that is then renamed over the
target, so it is either the old or the new table, never half of one. Nothing is written on
error (exit code 1).
The logic is in data_utils/vocab_sort.py.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from data_utils.corpora import CorpusConfig
from data_utils.tokenization import TOKENIZER_TYPES, build_tokenizer, packaged_vocab_path
from data_utils.vocab_sort import build_vocab_table

TABLE_FOLDER = ".pytorch_pretrained_bert"   # where the training run looks for the table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vocab_sort.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-data", nargs="+", required=True, metavar="FILE",
                        help="corpus files or folders (.txt: a document per line; .jsonl/.json)")
    parser.add_argument("--tokenizer-type", default="BertWordPieceTokenizer", choices=TOKENIZER_TYPES)
    parser.add_argument("--tokenizer-model-type", default=None,
                        help="e.g. bert-base-uncased or gpt2 (default: the tokenizer type's default)")
    parser.add_argument("--tokenizer-path", default=None,
                        help="vocabulary file or folder (default: the packaged bert-base-uncased / GPT-2 files)")
    parser.add_argument("--text-key", default="text", help="the JSONL field holding a document")
    parser.add_argument("--task-mask", action="store_true", help="add (and protect) [gMASK] and [sMASK]")
    parser.add_argument("--decoder-mask", action="store_true", help="add (and protect) [dBLOCK]")
    parser.add_argument("--output", default=None,
                        help=f"the table (default: {TABLE_FOLDER}/<tokenizer-type>_<tokenizer-model-type>.txt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the table if it exists (default: refuse, exit code 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def vocab_sort(args: argparse.Namespace) -> Path:
    """Build the tokenizer and the corpus config from ``args`` and write the table."""
    vocab = args.tokenizer_path or packaged_vocab_path(args.tokenizer_type, args.tokenizer_model_type)
    if vocab is None:
        raise FileNotFoundError(f"no vocabulary for --tokenizer-type={args.tokenizer_type} "
                                f"--tokenizer-model-type={args.tokenizer_model_type}: pass --tokenizer-path")
    tokenizer = build_tokenizer(args.tokenizer_type, vocab, args.tokenizer_model_type,
                                add_task_mask=args.task_mask, add_decoder_mask=args.decoder_mask)
    output = Path(args.output or Path(TABLE_FOLDER) / f"{tokenizer.tokenizer_type}_{tokenizer.model_type}.txt")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; name the table file")
    corpus = CorpusConfig(tuple(args.train_data), text_key=args.text_key)
    summary = build_vocab_table(corpus, tokenizer, output, progress=None if not args.quiet else False,
                                overwrite=args.overwrite)
    print(summary.describe())
    return output


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        vocab_sort(args)
    except (OSError, ValueError) as error:
        print(f"vocab_sort.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
