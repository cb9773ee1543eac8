"""Truncation, choice padding/fixing, batching and predictions from scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks import InputExample, Task, TaskConfig, collate, fit_choices
from tasks.cloze import MASK, ClozeParts, Seg, build_row, truncate
from tests.tasks_fixtures import SOP, build_small_tokenizer, ids
from tests.test_tasks_patterns import COPA_EX, RECORD_EX, RTE_EX, WSC_EX


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_small_tokenizer(tmp_path_factory.mktemp("vocab"))


def tokens_of(row, tokenizer) -> str:
    return " ".join(tokenizer.id_to_token(int(i)) for i in row)


# ------------------------------------------------------------------ truncation

def test_truncate_takes_from_the_longer_shortenable_side():
    a = [([5], False), ([19, 22, 23], True), ([5, 14], False)]           # " the cat sat " ?
    b = [([4], False), ([10], False), ([5], False), ([18, 20, 21, 12], True), ([5], False)]
    # 6 + 8 tokens + 3 fixed = 17; to fit 14 remove 3: b (4 > 3), b on the tie (3 = 3), then a
    assert truncate(a, b, num_fixed=3, max_length=14) == 3
    assert a == [([5], False), ([19, 22], True), ([5, 14], False)]
    assert b == [([4], False), ([10], False), ([5], False), ([18, 20], True), ([5], False)]
    assert truncate(a, b, num_fixed=3, max_length=14) == 0  # already fits: unchanged
    a, b = [([1, 2], True)], [([3, 4], True)]
    truncate(a, b, num_fixed=0, max_length=3)  # a tie: side b loses the token
    assert (a, b) == ([([1, 2], True)], [([3], True)])


def test_truncate_cuts_the_last_non_empty_shortenable_part():
    a = [([1, 2], True), ([3], False), ([4, 5], True), ([], True)]
    truncate(a, [], num_fixed=0, max_length=2)
    # the last shortenable part with tokens loses tokens first, then the earlier one
    assert a == [([1], True), ([3], False), ([], True), ([], True)]


def test_truncate_raises_when_only_fixed_parts_remain():
    a = [([1, 2], False), ([3], True)]
    with pytest.raises(ValueError, match="cannot fit the input into max_seq_length=3"):
        truncate(a, [], num_fixed=2, max_length=3)


def test_rte_truncated_row_keeps_mask_and_fixed_parts(tokenizer):
    task = Task(TaskConfig("rte", "unused", pattern_id=0, max_seq_length=14), tokenizer)
    sample = task.encode(RTE_EX)
    assert tokens_of(sample["text"], tokenizer) == (
        '[CLS] " the cat " ? [MASK] , " a dog " [PAD] <|startofpiece|>')
    assert int(sample["attention_mask"]) == 13
    assert sample["position"].tolist() == [list(range(13)) + [6], [0] * 13 + [1]]


def test_multi_token_rows_are_truncated_independently(tokenizer):
    """The answer is never cut; the longer answer's row loses premise tokens."""
    task = Task(TaskConfig("copa", "unused", pattern_id=0, max_seq_length=24), tokenizer)
    sample = task.encode(COPA_EX)
    head = '[CLS] " it rained " or " the sun was hot " ? the grass'
    assert tokens_of(sample["text"][0], tokenizer) == (
        f"{head} is wet because [MASK] . [PAD] <|startofpiece|> it rained")  # 21 + 3: no padding
    assert tokens_of(sample["text"][1], tokenizer) == (
        f"{head} because [MASK] . [PAD] <|startofpiece|> the sun was hot")
    assert sample["attention_mask"].tolist() == [21, 19]
    assert sample["target"][1, 19:].tolist() == ids("the sun was hot <eop>")
    assert sample["position"][1, 0, 19:].tolist() == [16] * 5


def test_answer_too_long_raises(tokenizer):
    filled = ClozeParts((Seg("a dog", True), MASK), answer=" the sun was hot")
    with pytest.raises(ValueError, match="no shortenable part has tokens left"):
        build_row(filled, tokenizer, max_seq_length=7, multi_token=True)  # 3 + 2 + 5 > 7


def test_text_with_a_literal_mask_is_rejected(tokenizer):
    example = InputExample("dev-0", "A [MASK] ran.", "The cat sat.", label="entailment")
    task = Task(TaskConfig("rte", "unused", max_seq_length=30), tokenizer)
    with pytest.raises(ValueError, match=r"exactly one \[MASK\]"):
        task.encode(example)


# ------------------------------------------------------------------ choices and batching

def test_collate_pads_variable_choices(tokenizer):
    task = Task(TaskConfig("record", "unused", max_seq_length=16), tokenizer)
    one = InputExample("dev-p0-q8", RECORD_EX.text_a, RECORD_EX.text_b, label=0, idx=8,
                       meta={**RECORD_EX.meta, "candidates": ["Ann"], "answers": ["Ann"]})
    batch = collate([task.encode(RECORD_EX), task.encode(one)])
    assert batch["text"].shape == (2, 2, 16) and batch["position"].shape == (2, 2, 2, 16)
    assert batch["loss_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["choice_index"].tolist() == [[0, 1], [0, -1]]
    assert torch.equal(batch["text"][1, 1], batch["text"][1, 0])  # padding repeats choice 0
    assert batch["label"].tolist() == [0, 0] and batch["attention_mask"].shape == (2, 2)
    assert batch["idx"] == [7, 8] and batch["uid"] == ["dev-p0-q7", "dev-p0-q8"]


def test_collate_single_token_batch(tokenizer):
    task = Task(TaskConfig("rte", "unused", max_seq_length=20), tokenizer)
    batch = collate([task.encode(RTE_EX), task.encode(RTE_EX)])
    assert batch["text"].shape == (2, 20) and batch["target"].shape == (2, 2)
    assert batch["attention_mask"].tolist() == [16, 16] and batch["text"].dtype == torch.int64
    with pytest.raises(ValueError, match="different keys"):
        collate([task.encode(RTE_EX), {**task.encode(RTE_EX), "extra": 1}])


def test_fixed_choice_counts_differ_without_loss_mask_raises(tokenizer):
    task = Task(TaskConfig("copa", "unused", max_seq_length=30), tokenizer)
    sample = task.encode(COPA_EX)
    shorter = {k: (v[:1] if k in ("text", "position", "target", "logit_mask", "attention_mask")
                   else v) for k, v in sample.items()}
    with pytest.raises(ValueError, match="no loss_mask"):
        collate([sample, shorter])


def synthetic(num_choices: int, label: int) -> dict:
    rows = np.arange(num_choices)
    return {"text": np.repeat(rows[:, None], 3, axis=1), "attention_mask": rows + 10,
            "loss_mask": np.ones(num_choices, dtype=np.int64), "choice_index": rows,
            "label": label}


def test_fit_choices_moves_a_cut_gold_to_row_zero():
    out = fit_choices(synthetic(5, 3), target=3, gold=3)
    assert out["choice_index"].tolist() == [3, 0, 1] and out["label"] == 0
    assert out["text"][:, 0].tolist() == [3, 0, 1] and out["attention_mask"].tolist() == [13, 10,
                                                                                          11]
    kept = fit_choices(synthetic(5, 1), target=3, gold=1)
    assert kept["choice_index"].tolist() == [0, 1, 2] and kept["label"] == 1
    padded = fit_choices(synthetic(2, 1), target=4, gold=1)
    assert padded["choice_index"].tolist() == [0, 1, -1, -1]
    assert padded["loss_mask"].tolist() == [1, 1, 0, 0]
    assert padded["text"][:, 0].tolist() == [0, 1, 0, 0]


def test_fix_variable_num_choices_pads_to_ten(tokenizer):
    task = Task(TaskConfig("wsc", "unused", max_seq_length=40, fix_variable_num_choices=True),
                tokenizer)
    sample = task.encode(WSC_EX)
    assert sample["text"].shape == (10, 40) and sample["loss_mask"].tolist() == [1, 1] + [0] * 8


# ------------------------------------------------------------------ predictions

def test_predict_from_scores(tokenizer):
    record = Task(TaskConfig("record", "unused", max_seq_length=16), tokenizer)
    sample = {"loss_mask": np.array([1, 1, 0]), "choice_index": np.array([4, 2, -1])}
    assert record.predict(sample, [0.1, 0.5, 9.0]) == 2  # padded row ignored; mapped to 2
    wsc = Task(TaskConfig("wsc", "unused", max_seq_length=16), tokenizer)
    sample = {"loss_mask": np.array([1, 1]), "choice_index": np.array([0, 1])}
    assert wsc.predict(sample, [2.0, 1.0]) == 1  # span 1 wins: "True"
    assert wsc.predict(sample, [1.0, 2.0]) == 0
    rte = Task(TaskConfig("rte", "unused", max_seq_length=16), tokenizer)
    assert rte.predict({}, [0.2, 0.7]) == 1
    stsb = Task(TaskConfig("sts-b", "unused", cloze_eval=False), tokenizer)
    assert stsb.predict({}, [3.25]) == 3.25


def test_predict_generative(tokenizer):
    task = Task(TaskConfig("wsc_generative", "unused", pattern_id=0, max_seq_length=40),
                tokenizer)
    sample = task.encode(InputExample("dev-0", WSC_EX.text_a, label="True",
                                      meta={k: v for k, v in WSC_EX.meta.items()}))
    argmax = sample["target"].copy()
    argmax[sample["logit_mask"] == 0] = 7  # positions outside Part B do not matter
    assert task.predict_generative(sample, argmax) == 1
    argmax[int(sample["attention_mask"]) + 1] = SOP  # the [eop] position is wrong
    assert task.predict_generative(sample, argmax) == 0
