"""Metrics against hand-computed values, task-level evaluation and prediction files."""
from __future__ import annotations

import json

import pytest

from tasks import InputExample, Task, TaskConfig
from tasks import metrics as m
from tests import tasks_fixtures as fx

# Tolerance: the expected values are hand-computed fractions rounded to 4 decimals (percent).
TOL = 1e-3


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return fx.build_small_tokenizer(tmp_path_factory.mktemp("vocab"))


def test_accuracy_and_f1():
    assert m.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 50.0
    # tp=2, predicted positives=3, actual positives=3: F1 = 4/6
    assert m.f1_binary([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(66.6667, abs=TOL)
    assert m.f1_binary([0, 0], [0, 0]) == 0.0  # no positives at all (sklearn's zero_division)
    # per class: 0 -> 1.0, 1 -> 2*1/(2+2) = 0.5, 2 -> 0.5; mean 2/3
    assert m.f1_macro([0, 1, 2, 2, 1], [0, 1, 1, 2, 2]) == pytest.approx(66.6667, abs=TOL)
    # class 2 never occurs in labels but is predicted once: F1 0 for it; class 0: 2*1/3
    assert m.f1_macro([0, 2, 1], [0, 0, 1]) == pytest.approx((2 / 3 + 1 + 0) / 3 * 100, abs=TOL)
    with pytest.raises(ValueError, match="non-empty vectors of one length"):
        m.accuracy([1, 0], [1])


def test_matthews():
    # TP=2 TN=2 FP=1 FN=1: (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert m.matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]) == pytest.approx(
        33.3333, abs=TOL)
    assert m.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # constant predictions: undefined
    assert m.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -100.0


def test_pearson_and_spearman():
    # dx=[-1.5,-.5,.5,1.5], dy=[-3,-1,0,4]: 11 / sqrt(5 * 26)
    assert m.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(96.4764, abs=TOL)
    assert m.spearman([1, 2, 3, 4], [2, 4, 5, 9]) == 100.0
    # ties share ranks: x -> [1, 2.5, 2.5, 4], y -> [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert m.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(94.8683, abs=TOL)
    assert m.pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_multirc_exact_match_groups_by_passage_and_question():
    keys = [(0, 0), (0, 0), (0, 1), (1, 0), (1, 0)]
    predictions, labels = [1, 0, 1, 0, 1], [1, 0, 0, 0, 0]
    # (0,0) all right; (0,1) wrong; (1,0) one wrong -> 1 of 3 questions
    assert m.multirc_exact_match(predictions, labels, keys) == pytest.approx(33.3333, abs=TOL)


def test_squad_normalisation():
    assert m.squad_normalize("The  Café, Inc.") == "cafe inc"
    assert m.squad_normalize("The Ærø-Straße!") == "aerostrasse"
    assert m.squad_normalize("an Apple a day") == "apple day"
    assert m.squad_normalize("the U.S.") == m.squad_normalize("U.S") == "us"


def test_record_em_f1():
    predictions = ["Barack Obama", "the U.S.", "Paris France"]
    golds = [["Obama", "Barack Obama"], ["United States", "U.S."], ["France", "London"]]
    em, f1 = m.record_scores(predictions, golds)
    assert em == pytest.approx(66.6667, abs=TOL)  # 1 + 1 + 0
    assert f1 == pytest.approx(88.8889, abs=TOL)  # 1 + 1 + (p=1/2, r=1 -> 2/3)
    assert m.squad_f1("new york new", "new york") == pytest.approx(0.8)  # p=2/3, r=1
    with pytest.raises(ValueError, match="no gold answers"):
        m.record_scores(["x"], [[]])


# ------------------------------------------------------------------ task level

def test_task_evaluate_uses_default_metrics(tmp_path, tokenizer):
    fx.write_jsonl(tmp_path / "val.jsonl", [fx.multirc(0), fx.multirc(1)])
    task = Task(TaskConfig("multirc", str(tmp_path)), tokenizer)
    examples = task.read_examples("dev")  # labels: 1 0 1 | 1 0 1
    scores = task.evaluate([1, 0, 1, 1, 1, 1], examples)
    assert list(scores) == ["f1a", "em", "acc"]
    # tp=4, predicted 5, actual 4: 8/9; questions right: (0,0) (0,1) (1,1) of 4
    assert scores["f1a"] == pytest.approx(88.8889, abs=TOL)
    assert scores["em"] == 75.0 and scores["acc"] == pytest.approx(83.3333, abs=TOL)
    cb = Task(TaskConfig("cb", "unused"), tokenizer)
    labelled = [InputExample(f"dev-{i}", "a", "b", label=label) for i, label in
                enumerate(["entailment", "contradiction", "neutral", "neutral"])]
    scores = cb.evaluate([0, 1, 2, 0], labelled)
    assert scores["accuracy"] == 75.0
    assert scores["f1-macro"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3 * 100, abs=TOL)
    with pytest.raises(ValueError, match="cannot score unlabelled"):
        cb.evaluate([0], [InputExample("test-0", "a", "b")])


def test_record_task_scores_candidate_strings(tmp_path, tokenizer):
    task = Task(TaskConfig("record", "unused"), tokenizer)
    examples = [InputExample("dev-0", "p", "q", label=0, idx=0,
                             meta={"candidates": ["Ann", "Tom"], "answers": ["Ann"]}),
                InputExample("dev-1", "p", "q", label=1, idx=1,
                             meta={"candidates": ["Ann", "Tom Smith"], "answers": ["Smith"]})]
    scores = task.evaluate([0, 1], examples)
    assert list(scores) == ["EM", "F1"]
    assert scores["EM"] == 50.0 and scores["F1"] == pytest.approx((1 + 2 / 3) / 2 * 100, abs=TOL)


def test_glue_metrics(tokenizer):
    mrpc = Task(TaskConfig("mrpc", "unused"), tokenizer)
    examples = [InputExample(f"dev-{i}", "a", "b", label=y) for i, y in
                enumerate(["1", "0", "1", "1"])]
    scores = mrpc.evaluate([1, 1, 0, 1], examples)
    assert scores == {"f1": pytest.approx(66.6667, abs=TOL), "accuracy": 50.0}
    cola = Task(TaskConfig("cola", "unused"), tokenizer)
    examples = [InputExample(f"dev-{i}", "a", label=y) for i, y in
                enumerate(["1", "0", "0", "1", "1", "0"])]
    assert cola.evaluate([1, 1, 0, 0, 1, 0], examples)["matthews"] == pytest.approx(33.3333,
                                                                                     abs=TOL)
    stsb = Task(TaskConfig("sts-b", "unused", cloze_eval=False), tokenizer)
    examples = [InputExample(f"dev-{i}", "a", "b", label=y) for i, y in enumerate([2, 4, 5, 9])]
    scores = stsb.evaluate([1.0, 2.0, 3.0, 4.0], examples)
    assert scores["pearson"] == pytest.approx(96.4764, abs=TOL) and scores["spearman"] == 100.0


# ------------------------------------------------------------------ prediction files

def test_superglue_prediction_files(tmp_path, tokenizer):
    fx.write_jsonl(tmp_path / "MultiRC" / "val.jsonl", [fx.multirc(3)])
    multirc = Task(TaskConfig("multirc", str(tmp_path / "MultiRC")), tokenizer)
    path = multirc.write_predictions(tmp_path / "out" / "MultiRC.jsonl",
                                     multirc.read_examples("dev"), [1, 1, 0])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"idx": 3, "passage": {"questions": [
            {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 1}]},
            {"idx": 1, "answers": [{"idx": 2, "label": 0}]}]}}]
    record = Task(TaskConfig("record", "unused"), tokenizer)
    ex = InputExample("dev-0", "p", "q", idx=7, meta={"candidates": ["Ann", "Tom"],
                                                      "answers": []})
    path = record.write_predictions(tmp_path / "ReCoRD.jsonl", [ex], [1])
    assert path.read_text() == '{"idx": 7, "label": "Tom"}\n'
    cases = [("boolq", "true"), ("rte", "not_entailment"), ("copa", 1), ("wsc", "True")]
    for name, label in cases:
        task = Task(TaskConfig(name, "unused"), tokenizer)
        path = task.write_predictions(tmp_path / f"{name}.jsonl",
                                      [InputExample("test-5", "x", idx=5)], [1])
        assert json.loads(path.read_text()) == {"idx": 5, "label": label}


def test_glue_prediction_files(tmp_path, tokenizer):
    from tasks.predictions import submission_path
    mnli = Task(TaskConfig("mnli-mm", "unused"), tokenizer)
    examples = [InputExample("test-0", "a", "b", idx=0), InputExample("test-1", "a", "b", idx=1)]
    path = mnli.write_predictions(submission_path(mnli, tmp_path), examples, [2, 0])
    assert path.name == "MNLI-mm.tsv"
    assert path.read_text() == "index\tprediction\n0\tneutral\n1\tcontradiction\n"
    stsb = Task(TaskConfig("sts-b", "unused", cloze_eval=False), tokenizer)
    path = stsb.write_predictions(tmp_path / "STS-B.tsv", examples[:1], [3.14159])
    assert path.read_text() == "index\tprediction\n0\t3.142\n"


def test_unknown_metric_name_lists_valid_ones(tokenizer):
    task = Task(TaskConfig("rte", "unused"), tokenizer)
    example = InputExample("dev-0", "a", "b", label="entailment")
    assert task.evaluate([0], [example], ["acc"]) == {"acc": 100.0}
    with pytest.raises(KeyError, match=r"unknown metrics \['bleu'\]; valid: \['EM', 'F1', "):
        task.evaluate([0], [example], ["bleu"])
