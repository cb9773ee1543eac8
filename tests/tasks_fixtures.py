"""Fixtures for the task tests: a tiny WordPiece vocabulary and small task files written in the
official formats (SuperGLUE JSONL, GLUE TSV with the official headers)."""
from __future__ import annotations

import json
from pathlib import Path

# Token ids are the positions in this tuple (5 per line; the comment gives the first id).
VOCAB = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",                  # 0
    '"', "'", "(", ")", "*",                                       # 5
    ",", "-", ".", "/", "?",                                       # 10
    "[", "]", ":", "a", "the",                                     # 15
    "dog", "ran", "cat", "sat", "sky",                             # 20
    "is", "blue", "bank", "wet", "he",                             # 25
    "to", "tom", "ann", "who", "grass",                            # 30
    "it", "rained", "sun", "was", "hot",                           # 35
    "told", "met", "good", "question", "answer",                   # 40
    "true", "false", "or", "based", "on",                          # 45
    "previous", "passage", "following", "correct", "sense",        # 50
    "similar", "of", "1", "2", "b",                                # 55
    "does", "have", "same", "meaning", "in",                       # 60
    "both", "sentences", "yes", "no", "maybe",                     # 65
    "neither", "pronoun", "refers", "refer", "what",               # 70
    "above", "because", "so", "great", "terrible",                 # 75
    "bad", "this", "incorrect", "right", "wrong",                  # 80
    "sentence",                                                    # 85
)
SOP, EOP = len(VOCAB), len(VOCAB) + 1  # 86, 87: appended by the tokenizer
ID = {token: i for i, token in enumerate(VOCAB)}
ID["<sop>"], ID["<eop>"] = SOP, EOP


def ids(tokens: str) -> list[int]:
    """Ids of space-separated tokens of ``VOCAB`` (``<sop>``/``<eop>`` for the piece tokens)."""
    return [ID[token] for token in tokens.split()]


def build_small_tokenizer(folder: Path):
    from data_utils.tokenization import build_tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return build_tokenizer("BertWordPieceTokenizer", path)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_tsv(path: Path, header: list[str] | None, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([("\t".join(header))] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ SuperGLUE records

def rte(idx: int, label: str | None = "entailment") -> dict:
    record = {"premise": "A dog ran.", "hypothesis": "The cat sat.", "idx": idx}
    return record if label is None else {**record, "label": label}


def boolq(idx: int, label: bool = True) -> dict:
    return {"question": "is the sky blue", "passage": "The sky is blue.", "idx": idx,
            "label": label}


def wic(idx: int, label: bool = False) -> dict:
    return {"word": "bank", "sentence1": "The bank is wet.", "sentence2": "He ran to the bank.",
            "idx": idx, "label": label, "start1": 4, "end1": 8, "start2": 14, "end2": 18,
            "version": 1.1}


def copa(idx: int, label: int = 0, question: str = "cause") -> dict:
    return {"premise": "The grass is wet.", "choice1": "It rained.", "choice2": "The sun was hot.",
            "question": question, "idx": idx, "label": label}


def multirc(idx: int) -> dict:
    """One passage, two questions (2 + 1 answer options)."""
    return {"idx": idx, "version": 1.1, "passage": {
        "text": "Tom sat. Ann ran.",
        "questions": [
            {"question": "Who ran?", "idx": 0, "answers": [
                {"text": "Ann", "idx": 0, "label": 1}, {"text": "Tom", "idx": 1, "label": 0}]},
            {"question": "Who sat?", "idx": 1, "answers": [
                {"text": "Tom", "idx": 2, "label": 1}]}]}}


def record(idx: int) -> dict:
    text = "Tom met Ann.@highlight\nAnn ran"
    return {"source": "Daily mail", "idx": idx, "passage": {
        "text": text, "entities": [{"start": 0, "end": 2}, {"start": 8, "end": 10},
                                   {"start": 23, "end": 25}]},
        "qas": [{"query": "@placeholder was hot.", "idx": 7,
                 "answers": [{"start": 8, "end": 10, "text": "Ann"}]}]}


def wsc(idx: int, label: bool = True, candidates: list[str] | None = None) -> dict:
    out = {"text": "Tom told Ann he was hot.", "idx": idx, "label": label,
           "target": {"span1_text": "Tom", "span1_index": 0, "span2_text": "he",
                      "span2_index": 3}}
    if candidates is not None:
        out["candidates"] = [{"text": text} for text in candidates]
    return out


# ------------------------------------------------------------------ GLUE files

MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                     "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]


def mnli_row(index: int, s1: str, s2: str, label: str | None, dev: bool = False) -> list:
    row = [index, 31193, f"{index}n", "government", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s1,
           s2]
    if label is None:
        return row
    return row + ([label] * 5 if dev else [label]) + [label]


def write_glue(root: Path) -> dict[str, Path]:
    """Every GLUE task's train/dev/test files (2 rows each, test unlabelled) under ``root``."""
    dirs = {}

    def task(name: str) -> Path:
        dirs[name] = root / name
        return dirs[name]

    d = task("MNLI")
    write_tsv(d / "train.tsv", MNLI_TRAIN_HEADER, [
        mnli_row(0, "The cat sat.", "A dog ran.", "neutral"),
        mnli_row(1, "Tom ran.", "Tom ran.", "entailment")])
    for split in ("matched", "mismatched"):
        write_tsv(d / f"dev_{split}.tsv", MNLI_DEV_HEADER, [
            mnli_row(0, "The cat sat.", "The cat sat.", "entailment", dev=True),
            mnli_row(1, "The cat sat.", "No cat sat.", "contradiction", dev=True)])
        write_tsv(d / f"test_{split}.tsv", MNLI_TEST_HEADER,
                  [mnli_row(5, "The cat sat.", "A dog ran.", None)])
    pair = [["index", "question", "sentence", "label"], ["index", "question", "sentence"]]
    d = task("QNLI")
    for split in ("train", "dev"):
        write_tsv(d / f"{split}.tsv", pair[0], [[0, "Who ran?", "Ann ran.", "entailment"],
                                                [1, "Who sat?", "Ann ran.", "not_entailment"]])
    write_tsv(d / "test.tsv", pair[1], [[0, "Who ran?", "Ann ran."]])
    d = task("QQP")
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    for split in ("train", "dev"):
        write_tsv(d / f"{split}.tsv", header, [[201, 1, 2, "Who ran?", "Who ran?", 1],
                                               [202, 3, 4, "Who ran?", "Who sat?", 0]])
    write_tsv(d / "test.tsv", ["id", "question1", "question2"], [[0, "Who ran?", "Who sat?"]])
    for name, labels in (("RTE", ("entailment", "not_entailment")), ("WNLI", (1, 0))):
        d = task(name)
        for split in ("train", "dev"):
            write_tsv(d / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
                      [[0, "A dog ran.", "The cat sat.", labels[0]],
                       [1, "A dog ran.", "A dog ran.", labels[1]]])
        write_tsv(d / "test.tsv", ["index", "sentence1", "sentence2"],
                  [[0, "A dog ran.", "The cat sat."]])
    d = task("SST-2")
    for split in ("train", "dev"):
        write_tsv(d / f"{split}.tsv", ["sentence", "label"], [["a good cat ", 1],
                                                              ["a bad dog ", 0]])
    write_tsv(d / "test.tsv", ["index", "sentence"], [[0, "a good dog"]])
    d = task("MRPC")
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    for split in ("train", "dev"):
        write_tsv(d / f"{split}.tsv", header, [[1, 702876, 702977, "Tom ran.", "He ran."],
                                               [0, 2108705, 2108831, "Tom ran.", "Ann sat."]])
    write_tsv(d / "test.tsv", ["index"] + header[1:], [[0, 1089874, 1089925, "Tom ran.",
                                                        "He ran."]])
    d = task("CoLA")
    for split in ("train", "dev"):  # no header, as the official files
        write_tsv(d / f"{split}.tsv", None, [["gj04", 1, "", "The cat sat."],
                                             ["gj04", 0, "*", "Cat the sat."]])
    write_tsv(d / "test.tsv", ["index", "sentence"], [[0, "The dog ran."]])
    d = task("STS-B")
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2", "score"]
    for split in ("train", "dev"):
        write_tsv(d / f"{split}.tsv", header, [
            [0, "main-captions", "MSRvid", "2012test", 1, "none", "none", "A dog ran.",
             "A dog ran.", "5.000"],
            [1, "main-captions", "MSRvid", "2012test", 4, "none", "none", "A dog ran.",
             "The cat sat.", "0.500"]])
    write_tsv(d / "test.tsv", header[:-1], [[0, "main-captions", "MSRvid", "2012test", 1,
                                             "none", "none", "A dog ran.", "A cat ran."]])
    return dirs
