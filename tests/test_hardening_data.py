"""Every bad data input is named before anything expensive (issue 12): non-UTF-8 or binary
corpora, task files and vocabularies raise an error naming the file and the line (and the
byte offset in the file); an empty vocabulary is an error; a corpus in a read-only folder
caches its tokens in the per-user folder, or says which folders to fix."""
import gzip
import json
import re
from pathlib import Path

import pytest

from cli_fixtures import (finetune_flags, pretrain_flags, run_script, write_corpus, write_rte,
                          write_vocab)
from data_utils import corpora
from data_utils.corpora import (CorpusCacheError, CorpusConfig, CorpusFormatError, build_corpus,
                                corpus_cache_dir, iter_documents)
from data_utils.text_files import read_lines
from data_utils.tokenization import VocabularyFormatError, build_tokenizer
from model.vocab_map import VocabTableError, read_vocab_table
from tasks.examples import DataFormatError, read_jsonl, read_tsv

BAD_LINE = b"the cat \xff sees the dog\n"  # 0xff never occurs in UTF-8


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def bad_byte_offset(lines: list[bytes], bad_line: int) -> int:
    """The file offset of the 0xff byte on (1-based) line ``bad_line``."""
    return sum(map(len, lines[:bad_line - 1])) + lines[bad_line - 1].index(b"\xff")


def assert_named(error: pytest.ExceptionInfo, path: Path, line: int, offset: int) -> None:
    message = str(error.value)
    assert f"{path}:{line}:" in message and f"byte offset {offset}" in message, message


def assert_nothing_saved(save: Path) -> None:
    written = sorted(str(p.relative_to(save)) for p in save.rglob("*")) if save.exists() else []
    assert written == [], written


# --------------------------------------------------------------------------- corpora
@pytest.mark.parametrize("name, good, bad", [
    ("corpus.txt", b"the dog\n", BAD_LINE),
    ("corpus.jsonl", b'{"text": "the dog"}\n', b'{"text": "the \xff dog"}\n')])
def test_corpus_with_an_invalid_byte_names_file_line_and_offset(tmp_path, name, good, bad):
    lines = [good, good, bad, good]
    path = write_lines(tmp_path / name, lines)
    with pytest.raises(CorpusFormatError) as error:
        list(iter_documents(CorpusConfig((str(path),))))
    assert_named(error, path, 3, bad_byte_offset(lines, 3))


def test_offset_counts_from_the_start_of_the_file_not_the_decoder_chunk(tmp_path):
    # ~50 KB before the bad byte: several of a text decoder's 8 KB chunks
    lines = [b"the cat sees the dog quickly\n"] * 1800 + [BAD_LINE]
    path = write_lines(tmp_path / "big.txt", lines)
    with pytest.raises(CorpusFormatError) as error:
        list(iter_documents(CorpusConfig((str(path),))))
    assert_named(error, path, 1801, bad_byte_offset(lines, 1801))


def test_binary_corpus_is_named_as_binary(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(gzip.compress(b"the cat sees the dog\n" * 10, mtime=0))
    with pytest.raises(CorpusFormatError, match="looks binary") as error:
        list(iter_documents(CorpusConfig((str(path),))))
    assert f"{path}:1:" in str(error.value)


def test_bom_is_dropped_and_crlf_line_ends_are_folded(tmp_path):
    path = write_lines(tmp_path / "a.txt", [b"\xef\xbb\xbfone two\r\n", b"\r\n", b"three\n", b"four"])
    assert read_lines(path) == ["one two", "", "three", "four"]
    config = CorpusConfig((str(path),), plain_text_unit="paragraph")
    assert list(iter_documents(config)) == ["one two", "three\nfour"]


# --------------------------------------------------------------------------- task files
def test_task_jsonl_with_an_invalid_byte_names_file_line_and_offset(tmp_path):
    good = json.dumps({"premise": "a", "hypothesis": "b", "idx": 0}).encode() + b"\n"
    lines = [good, b'{"premise": "\xff", "hypothesis": "b", "idx": 1}\n', good]
    path = write_lines(tmp_path / "train.jsonl", lines)
    with pytest.raises(DataFormatError) as error:
        list(read_jsonl(path))
    assert_named(error, path, 2, bad_byte_offset(lines, 2))


def test_task_tsv_with_an_invalid_byte_or_binary_is_named(tmp_path):
    lines = [b"\xef\xbb\xbfindex\tsentence\n", b"0\tfine\n", b"1\tbad \xff\n"]
    path = write_lines(tmp_path / "dev.tsv", lines)
    with pytest.raises(DataFormatError) as error:
        list(read_tsv(path))
    assert_named(error, path, 3, bad_byte_offset(lines, 3))  # the BOM's 3 bytes count too
    ok = write_lines(tmp_path / "ok.tsv", lines[:2])
    assert [row for _, row in read_tsv(ok)] == [{"index": "0", "sentence": "fine"}]  # BOM dropped
    (tmp_path / "bin.tsv").write_bytes(b"index\tsentence\n0\t\x00\x01\x02\n")
    with pytest.raises(DataFormatError, match=r"bin.tsv:2: NUL byte at byte offset 17"):
        list(read_tsv(tmp_path / "bin.tsv"))


# --------------------------------------------------------------------------- vocabularies
@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_wordpiece_vocab_is_an_error(tmp_path, content):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(VocabularyFormatError, match=re.escape(f"{path} is empty")):
        build_tokenizer("BertWordPieceTokenizer", path)


def test_wordpiece_vocab_with_an_invalid_byte_or_no_command_tokens(tmp_path):
    lines = [b"[PAD]\n", b"[UNK]\n", b"caf\xff\n", b"[CLS]\n"]
    path = write_lines(tmp_path / "vocab.txt", lines)
    with pytest.raises(VocabularyFormatError) as error:
        build_tokenizer("BertWordPieceTokenizer", path)
    assert_named(error, path, 3, bad_byte_offset(lines, 3))
    write_lines(path, [b"[PAD]\n", b"[UNK]\n", b"cat\n"])
    with pytest.raises(VocabularyFormatError, match=r"lacks \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        build_tokenizer("BertWordPieceTokenizer", path)


def test_gpt2_files_empty_malformed_or_not_utf8(tmp_path):
    encoder, merges = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    merges.write_text("#version: 0.2\n")
    for content, expected in ((b"", "encoder.json is empty"), (b"{}", "encoder.json is empty"),
                              (b'{"a": 0,\n "b" 1}', "encoder.json:2: malformed JSON"),
                              (b'{"a": 0,\n "\xff": 1}', "encoder.json:2: invalid UTF-8")):
        encoder.write_bytes(content)
        with pytest.raises(VocabularyFormatError, match=expected):
            build_tokenizer("GPT2BPETokenizer", tmp_path)
    encoder.write_text('{"<|endoftext|>": 0}')
    merges.write_bytes(b"\n")
    with pytest.raises(VocabularyFormatError, match="vocab.bpe is empty"):
        build_tokenizer("GPT2BPETokenizer", tmp_path)


def test_sentencepiece_model_empty_or_not_a_model(tmp_path):
    path = tmp_path / "sp.model"
    path.write_bytes(b"")
    with pytest.raises(VocabularyFormatError, match="sp.model is empty"):
        build_tokenizer("SentencePieceTokenizer", path)
    path.write_bytes(gzip.compress(b"not a model"))
    with pytest.raises(VocabularyFormatError, match="sp.model: not a SentencePiece model"):
        build_tokenizer("SentencePieceTokenizer", path)


def test_sorted_vocab_table_empty_or_not_utf8(tmp_path):
    path = tmp_path / "table.txt"
    path.write_bytes(b"\n\n")
    with pytest.raises(VocabTableError, match=re.escape(f"{path} is empty")):
        read_vocab_table(str(path))
    lines = [b"origin_no\tsort_id\ttoken\tnumber\tfrequency\n", b"0\t0\ta\t3\t0.5\n",
             b"1\t1\t\xff\t3\t0.5\n"]
    write_lines(path, lines)
    with pytest.raises(VocabTableError) as error:
        read_vocab_table(str(path))
    assert_named(error, path, 3, bad_byte_offset(lines, 3))


# --------------------------------------------------------------------------- corpus cache folder
@pytest.fixture
def read_only_data(tmp_path, monkeypatch):
    """A corpus whose folder (``data``) counts as read-only, and XDG_CACHE_HOME in tmp_path.
    Tests run as root, which ignores permission bits (chmod 0o555 stays writable and so does
    os.access), so the one writability check, ``corpora._writable``, is monkeypatched."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(corpora, "_writable", lambda path: data not in (path, *path.parents))
    return write_corpus(data, num_documents=8), write_vocab(tmp_path)


def test_read_only_corpus_folder_caches_in_the_user_folder(read_only_data, tmp_path):
    corpus, vocab = read_only_data
    tokenizer = build_tokenizer("BertWordPieceTokenizer", vocab)
    config = CorpusConfig((str(corpus),))
    built = build_corpus(config, tokenizer)
    expected = tmp_path / "xdg" / "glmkd" / "corpora" / corpus_cache_dir(config, tokenizer).name
    assert built.directory == expected and not built.cache_hit and len(built.documents) == 8
    assert not (corpus.parent / ".glm_cache").exists()
    assert built.note == (f"{corpus.parent / '.glm_cache'} is not writable; the corpus token cache "
                          f"is in {expected} instead")
    again = build_corpus(config, tokenizer)
    assert again.cache_hit and again.directory == expected and again.note == built.note


def test_read_only_folder_with_a_built_store_is_reused(read_only_data, monkeypatch):
    corpus, vocab = read_only_data
    tokenizer = build_tokenizer("BertWordPieceTokenizer", vocab)
    config = CorpusConfig((str(corpus),))
    with monkeypatch.context() as writable:
        writable.setattr(corpora, "_writable", lambda path: True)
        first = build_corpus(config, tokenizer)
    again = build_corpus(config, tokenizer)
    assert again.cache_hit and again.directory == first.directory and again.note is None


def test_no_writable_cache_folder_names_both(read_only_data, tmp_path, monkeypatch):
    corpus, vocab = read_only_data
    monkeypatch.setattr(corpora, "_writable", lambda path: False)
    with pytest.raises(CorpusCacheError) as error:
        build_corpus(CorpusConfig((str(corpus),)), build_tokenizer("BertWordPieceTokenizer", vocab))
    message = str(error.value)
    assert str(corpus.parent / ".glm_cache") in message
    assert str(tmp_path / "xdg" / "glmkd" / "corpora") in message
    assert "XDG_CACHE_HOME" in message


def test_user_cache_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert corpora.user_cache_root() == tmp_path / ".cache" / "glmkd" / "corpora"


# --------------------------------------------------------------------------- end to end
def assert_run_error(done, error_type: str, *fragments: str) -> None:
    assert done.returncode == 1, done.stderr
    assert f"error: {error_type}: " in done.stderr and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


@pytest.mark.slow
def test_pretrain_on_a_corpus_with_an_invalid_byte(tmp_path):
    corpus = write_corpus(tmp_path, num_documents=8)
    lines = corpus.read_bytes().splitlines(keepends=True)
    lines[2] = BAD_LINE
    write_lines(corpus, lines)
    done = run_script("pretrain.py", pretrain_flags(write_vocab(tmp_path), corpus, tmp_path / "save", 2))
    assert_run_error(done, "CorpusFormatError", f"{corpus}:3:",
                     f"byte offset {bad_byte_offset(lines, 3)}")
    assert_nothing_saved(tmp_path / "save")


@pytest.mark.slow
def test_finetune_on_a_task_file_with_an_invalid_byte(tmp_path):
    data = write_rte(tmp_path, num_train=8, num_dev=4)
    train = data / "train.jsonl"
    lines = train.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b"the", b"th\xff", 1)
    write_lines(train, lines)
    done = run_script("finetune.py", finetune_flags(write_vocab(tmp_path), data, tmp_path / "save"))
    assert_run_error(done, "DataFormatError", f"{train}:5:", f"byte offset {bad_byte_offset(lines, 5)}")
    assert_nothing_saved(tmp_path / "save")


@pytest.mark.slow
def test_pretrain_with_an_empty_vocabulary(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("")
    done = run_script("pretrain.py", pretrain_flags(vocab, write_corpus(tmp_path), tmp_path / "save", 2))
    assert_run_error(done, "VocabularyFormatError", f"{vocab} is empty")
    assert_nothing_saved(tmp_path / "save")
