"""Golden tests: for every task and pattern id, the rendered pattern text and the cloze token
layout of one example.

Expected values are written by hand: token strings of the test vocabulary (tests/
tasks_fixtures.py, ids = positions in VOCAB), the index of ``[MASK]`` and ``sep`` = len(Part A).
"""
from __future__ import annotations

import numpy as np
import pytest

from tasks import InputExample, Task, TaskConfig
from tasks.cloze import render
from tests.tasks_fixtures import SOP, build_small_tokenizer, ids

S = 40  # max_seq_length of these tests: no truncation happens


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_small_tokenizer(tmp_path_factory.mktemp("vocab"))


def make_task(name, pattern_id, tokenizer, **kw):
    return Task(TaskConfig(name, "unused", pattern_id=pattern_id, max_seq_length=S, **kw),
                tokenizer)


RTE_EX = InputExample("dev-0", "A dog ran.", "The cat sat.", label="entailment", idx=0)
CB_EX = InputExample("dev-0", "A dog ran.", "The cat sat.", label="neutral", idx=0)
BOOLQ_EX = InputExample("dev-0", "The sky is blue.", "is the sky blue", label="true", idx=0)
WIC_EX = InputExample("dev-0", "The bank is wet.", "He ran to the bank.", label="false",
                      meta={"word": "bank"}, idx=0)
MULTIRC_EX = InputExample("dev-p0-q0-a0", "Tom sat. Ann ran.", "Who ran?", label=1,
                          meta={"answer": "Ann", "passage_idx": 0, "question_idx": 0,
                                "answer_idx": 0}, idx=[0, 0, 0])
MNLI_EX = InputExample("dev-0", "The cat sat.", "A dog ran.", label="neutral", idx=0)
QNLI_EX = InputExample("dev-0", "Who ran?", "Ann ran.", label="entailment", idx=0)
PARA_EX = InputExample("dev-0", "Tom ran.", "He ran.", label="1", idx=0)
WNLI_EX = InputExample("dev-0", "A dog ran.", "The cat sat.", label="1", idx=0)

RTE_P0 = ('"The cat sat" ?', '[MASK], "A dog ran."')
RTE_P1 = ("The cat sat?", "[MASK], A dog ran.")
RTE_P2 = ('"The cat sat" ?', '[MASK]. "A dog ran."')
RTE_P3 = ("The cat sat?", "[MASK]. A dog ran.")
RTE_T0 = '[CLS] " the cat sat " ? [MASK] , " a dog ran . " [PAD]'
RTE_T1 = "[CLS] the cat sat ? [MASK] , a dog ran . [PAD]"
RTE_T2 = '[CLS] " the cat sat " ? [MASK] . " a dog ran . " [PAD]'
RTE_T3 = "[CLS] the cat sat ? [MASK] . a dog ran . [PAD]"
RTE_T4 = "[CLS] a dog ran . question : the cat sat true or false ? answer : [MASK] [PAD]"
YES, NO, MAYBE, TRUE, FALSE = 67, 68, 69, 45, 46

# (task, pattern id, example, rendered (a, b), Part A tokens, [MASK] index, verbalizer ids)
SINGLE = [
    ("rte", 0, RTE_EX, RTE_P0, RTE_T0, 7, [YES, NO]),
    ("rte", 1, RTE_EX, RTE_P1, RTE_T1, 5, [YES, NO]),
    ("rte", 2, RTE_EX, RTE_P2, RTE_T2, 7, [YES, NO]),
    ("rte", 3, RTE_EX, RTE_P3, RTE_T3, 5, [YES, NO]),
    ("rte", 4, RTE_EX, ("A dog ran. question: The cat sat True or False? answer:[MASK]", ""),
     RTE_T4, 16, [TRUE, FALSE]),
    ("ax-b", 0, RTE_EX, RTE_P0, RTE_T0, 7, [YES, NO]),
    ("ax-g", 3, RTE_EX, RTE_P3, RTE_T3, 5, [YES, NO]),
    ("cb", 0, CB_EX, RTE_P0, RTE_T0, 7, [YES, NO, MAYBE]),
    ("cb", 1, CB_EX, RTE_P1, RTE_T1, 5, [YES, NO, MAYBE]),
    ("cb", 2, CB_EX, RTE_P2, RTE_T2, 7, [YES, NO, MAYBE]),
    ("cb", 3, CB_EX, RTE_P3, RTE_T3, 5, [YES, NO, MAYBE]),
    ("cb", 4, CB_EX,
     ("A dog ran. question: The cat sat. true, false or neither? answer:[MASK]", ""),
     "[CLS] a dog ran . question : the cat sat . true , false or neither ? answer : [MASK] "
     "[PAD]", 19, [TRUE, FALSE, 70]),
    *[("boolq", pid, BOOLQ_EX,
       ("The sky is blue. Question: is the sky blue? Answer:[MASK].", ""),
       "[CLS] the sky is blue . question : is the sky blue ? answer : [MASK] . [PAD]", 15,
       verbalizer) for pid, verbalizer in ((0, [NO, YES]), (1, [FALSE, TRUE]))],
    *[("boolq", pid, BOOLQ_EX,
       ("The sky is blue. Based on the previous passage, is the sky blue?[MASK].", ""),
       "[CLS] the sky is blue . based on the previous passage , is the sky blue ? [MASK] . "
       "[PAD]", 17, verbalizer) for pid, verbalizer in ((2, [NO, YES]), (3, [FALSE, TRUE]))],
    *[("boolq", pid, BOOLQ_EX,
       ("Based on the following passage is the sky blue?[MASK]. The sky is blue.", ""),
       "[CLS] based on the following passage is the sky blue ? [MASK] . the sky is blue . "
       "[PAD]", 11, verbalizer) for pid, verbalizer in ((4, [NO, YES]), (5, [FALSE, TRUE]))],
    ("wic", 0, WIC_EX,
     ('"The bank is wet." / "He ran to the bank." Similar sense of "bank"?[MASK].', ""),
     '[CLS] " the bank is wet . " / " he ran to the bank . " similar sense of " bank " ? '
     "[MASK] . [PAD]", 24, [NO, YES]),
    ("wic", 1, WIC_EX,
     ("The bank is wet. He ran to the bank. Does bank have the same meaning in both "
      "sentences?[MASK]", ""),
     "[CLS] the bank is wet . he ran to the bank . does bank have the same meaning in both "
     "sentences ? [MASK] [PAD]", 22, [NO, YES]),
    ("wic", 2, WIC_EX,
     ('bank . Sense (1) (a) "The bank is wet." ([MASK]) "He ran to the bank."', ""),
     '[CLS] bank . sense ( 1 ) ( a ) " the bank is wet . " ( [MASK] ) " he ran to the bank '
     '. " [PAD]', 18, [58, 59]),
    ("multirc", 0, MULTIRC_EX, ("Tom sat. Ann ran. Question: Who ran? Is it Ann?[MASK].", ""),
     "[CLS] tom sat . ann ran . question : who ran ? is it ann ? [MASK] . [PAD]", 16,
     [NO, YES]),
    ("multirc", 1, MULTIRC_EX,
     ('Tom sat. Ann ran. Question: Who ran? Is the correct answer "Ann"?[MASK].', ""),
     '[CLS] tom sat . ann ran . question : who ran ? is the correct answer " ann " ? [MASK] . '
     "[PAD]", 20, [NO, YES]),
    ("multirc", 2, MULTIRC_EX,
     ('Tom sat. Ann ran. Based on the previous passage, Who ran? Is "Ann" a correct '
      "answer?[MASK].", ""),
     '[CLS] tom sat . ann ran . based on the previous passage , who ran ? is " ann " a correct '
     "answer ? [MASK] . [PAD]", 24, [NO, YES]),
    ("multirc", 3, MULTIRC_EX, ("Tom sat. Ann ran Who ran- [[MASK]]Ann", ""),
     "[CLS] tom sat . ann ran who ran - [ [MASK] ] ann [PAD]", 10, [FALSE, TRUE]),
    ("multirc", 4, MULTIRC_EX, ("Tom sat. Ann ran. Question: Who ran? Ann?[MASK].", ""),
     "[CLS] tom sat . ann ran . question : who ran ? ann ? [MASK] . [PAD]", 14, [NO, YES]),
    # GLUE
    *[(name, pid, MNLI_EX, RTE_P0 if pid % 2 == 0 else RTE_P1, RTE_T0 if pid % 2 == 0 else
       RTE_T1, 7 if pid % 2 == 0 else 5, verbalizer)
      for name in ("mnli", "mnli-mm")
      for pid, verbalizer in ((0, [84, 83, MAYBE]), (1, [84, 83, MAYBE]), (2, [NO, YES, MAYBE]),
                              (3, [NO, YES, MAYBE]))],
    ("qnli", 0, QNLI_EX, ('"Who ran" ?', '[MASK], "Ann ran."'),
     '[CLS] " who ran " ? [MASK] , " ann ran . " [PAD]', 6, [YES, NO]),
    ("qnli", 1, QNLI_EX, ("Who ran?", "[MASK], Ann ran."),
     "[CLS] who ran ? [MASK] , ann ran . [PAD]", 4, [YES, NO]),
    *[(name, 0, PARA_EX, ("Tom ran.", "[MASK], he ran."),
       "[CLS] tom ran . [MASK] , he ran . [PAD]", 4, [NO, YES]) for name in ("mrpc", "qqp")],
    *[(name, 1, PARA_EX, ("Tom ran.", "[MASK]. He ran."),
       "[CLS] tom ran . [MASK] . he ran . [PAD]", 4, [NO, YES]) for name in ("mrpc", "qqp")],
    ("sst2", 0, InputExample("dev-0", "a good cat ", label="1"), ("a good cat  It was[MASK].", ""),
     "[CLS] a good cat it was [MASK] . [PAD]", 6, [79, 78]),
    ("sst2", 1, InputExample("dev-0", "a good cat ", label="1"), ("a good cat  It was[MASK].", ""),
     "[CLS] a good cat it was [MASK] . [PAD]", 6, [80, 42]),
    ("cola", 0, InputExample("dev-0", "The cat sat.", label="1"), ("The cat sat. This is[MASK].",
                                                                   ""),
     "[CLS] the cat sat . this is [MASK] . [PAD]", 7, [82, 53]),
    ("glue-rte", 0, RTE_EX, RTE_P0, RTE_T0, 7, [YES, NO]),
    ("glue-rte", 4, RTE_EX, ("A dog ran. question: The cat sat True or False? answer:[MASK]", ""),
     RTE_T4, 16, [TRUE, FALSE]),
    ("wnli", 0, WNLI_EX, RTE_P0, RTE_T0, 7, [NO, YES]),
    ("wnli", 1, WNLI_EX, RTE_P1, RTE_T1, 5, [NO, YES]),
    ("wnli", 2, WNLI_EX, RTE_P2, RTE_T2, 7, [NO, YES]),
    ("wnli", 3, WNLI_EX, RTE_P3, RTE_T3, 5, [NO, YES]),
    ("wnli", 4, WNLI_EX, ("A dog ran. question: The cat sat True or False? answer:[MASK]", ""),
     RTE_T4, 16, [FALSE, TRUE]),
]


@pytest.mark.parametrize("name,pid,example,rendered,part_a,mask,verbalizers", SINGLE,
                         ids=[f"{c[0]}-{c[1]}" for c in SINGLE])
def test_single_token_golden(tokenizer, name, pid, example, rendered, part_a, mask, verbalizers):
    task = make_task(name, pid, tokenizer)
    assert render(task.pvp.fill(example)) == rendered
    sample = task.encode(example)
    sep = len(part_a.split())
    rest = S - sep - 1
    assert sample["attention_mask"] == sep
    assert sample["text"].tolist() == ids(part_a) + [SOP] + [0] * rest
    assert sample["position"][0].tolist() == list(range(sep)) + [mask] + [0] * rest
    assert sample["position"][1].tolist() == [0] * sep + [1] + [0] * rest
    assert sample["logit_mask"].tolist() == [0] * sep + [1] + [0] * rest
    assert sample["target"].tolist() == verbalizers
    assert sample["text"][mask] == 4  # [MASK]


COPA_EX = InputExample("dev-0", "The grass is wet.", label=1, idx=0,
                       meta={"choice1": "It rained.", "choice2": "The sun was hot.",
                             "question": "cause"})
COPA_EFFECT = InputExample("dev-1", "The grass is wet.", label=0, idx=1,
                           meta={"choice1": "It rained.", "choice2": "The sun was hot.",
                                 "question": "effect"})
WSC_EX = InputExample("dev-0", "Tom told Ann he was hot.", label="True", idx=0,
                      meta={"span1_text": "Tom", "span1_index": 0, "span2_text": "he",
                            "span2_index": 3, "candidates": ["Ann"]})
RECORD_EX = InputExample("dev-p0-q7", "Tom met Ann.- Ann ran", "@placeholder was hot.", label=0,
                         idx=7, meta={"candidates": ["Ann", "Tom"], "answers": ["Ann"],
                                      "passage_idx": 0, "question_idx": 7})
COPA_T0 = '[CLS] " it rained " or " the sun was hot " ? the grass is wet because [MASK] . [PAD]'
COPA_T1 = "[CLS] it rained or the sun was hot ? the grass is wet because [MASK] . [PAD]"
WSC_HEAD = "[CLS] tom told ann * he * was hot ."
WSC_TEXT = "Tom told Ann *he* was hot."
WSC_RENDERED = {
    0: f"{WSC_TEXT} The pronoun '*he*' refers to[MASK].",
    1: f"{WSC_TEXT} In the previous sentence, the pronoun '*he*' refers to[MASK].",
    2: f"{WSC_TEXT} Question: In the passage above, what does the pronoun '*he*' refer to? "
       f"Answer:[MASK].",
}
WSC_TOKENS = {
    0: (f"{WSC_HEAD} the pronoun ' * he * ' refers to [MASK] . [PAD]", 19),
    1: (f"{WSC_HEAD} in the previous sentence , the pronoun ' * he * ' refers to [MASK] . [PAD]",
        24),
    2: (f"{WSC_HEAD} question : in the passage above , what does the pronoun ' * he * ' refer "
        f"to ? answer : [MASK] . [PAD]", 31),
}

# (task, pattern id, example, [(rendered a, Part A tokens, answer tokens incl. <eop>)], mask)
MULTI = [
    ("copa", 0, COPA_EX,
     [('"it rained" or "the sun was hot"? The grass is wet because[MASK].', COPA_T0,
       "it rained <eop>"),
      ('"it rained" or "the sun was hot"? The grass is wet because[MASK].', COPA_T0,
       "the sun was hot <eop>")], 18),
    ("copa", 0, COPA_EFFECT,
     [('"it rained" or "the sun was hot"? The grass is wet, so[MASK].',
       '[CLS] " it rained " or " the sun was hot " ? the grass is wet , so [MASK] . [PAD]',
       "it rained <eop>")] * 1, 19),
    ("copa", 1, COPA_EX,
     [("it rained or the sun was hot? The grass is wet because[MASK].", COPA_T1,
       "it rained <eop>"),
      ("it rained or the sun was hot? The grass is wet because[MASK].", COPA_T1,
       "the sun was hot <eop>")], 14),
    ("copa", 2, COPA_EX,
     [('"it rained" or "the sun was hot"? The grass is wet[MASK] it rained',
       '[CLS] " it rained " or " the sun was hot " ? the grass is wet [MASK] it rained [PAD]',
       "because <eop>"),
      ('"it rained" or "the sun was hot"? The grass is wet[MASK] the sun was hot',
       '[CLS] " it rained " or " the sun was hot " ? the grass is wet [MASK] the sun was hot '
       "[PAD]", "because <eop>")], 17),
    ("copa", 2, COPA_EFFECT,
     [('"it rained" or "the sun was hot"? The grass is wet[MASK] it rained',
       '[CLS] " it rained " or " the sun was hot " ? the grass is wet [MASK] it rained [PAD]',
       "so <eop>")], 17),
    *[("wsc", pid, WSC_EX, [(WSC_RENDERED[pid], WSC_TOKENS[pid][0], "tom <eop>"),
                            (WSC_RENDERED[pid], WSC_TOKENS[pid][0], "ann <eop>")],
       WSC_TOKENS[pid][1]) for pid in (0, 1, 2)],
    ("record", 0, RECORD_EX,
     [("Tom met Ann.- Ann ran[MASK] was hot.", "[CLS] tom met ann . - ann ran [MASK] was hot . "
       "[PAD]", "ann <eop>"),
      ("Tom met Ann.- Ann ran[MASK] was hot.", "[CLS] tom met ann . - ann ran [MASK] was hot . "
       "[PAD]", "tom <eop>")], 8),
    ("record", 0, InputExample("dev-p0-q8", "Tom ran.", "Ann told @placeholder it was hot.",
                               label=0, idx=8, meta={"candidates": ["Tom"], "answers": ["Tom"]}),
     [("Tom ran. Ann told[MASK] it was hot.", "[CLS] tom ran . ann told [MASK] it was hot . "
       "[PAD]", "tom <eop>")], 6),
]


@pytest.mark.parametrize("name,pid,example,rows,mask", MULTI,
                         ids=[f"{c[0]}-{c[1]}-{c[2].guid}" for c in MULTI])
def test_multi_token_golden(tokenizer, name, pid, example, rows, mask):
    task = make_task(name, pid, tokenizer)
    filled = task.pvp.fill_choices(example)
    sample = task.encode(example)
    for r, (rendered, part_a, answer) in enumerate(rows):
        assert render(filled[r]) == (rendered, "")
        sep, num_b = len(part_a.split()), len(answer.split())
        rest = S - sep - num_b
        assert sample["attention_mask"][r] == sep
        assert sample["text"][r].tolist() == ids(part_a) + [SOP] + ids(answer)[:-1] + [0] * rest
        assert sample["target"][r].tolist() == [0] * sep + ids(answer) + [0] * rest
        assert sample["position"][r, 0].tolist() == (list(range(sep)) + [mask] * num_b
                                                     + [0] * rest)
        assert sample["position"][r, 1].tolist() == ([0] * sep + list(range(1, num_b + 1))
                                                     + [0] * rest)
        assert sample["logit_mask"][r].tolist() == [0] * sep + [1] * num_b + [0] * rest


@pytest.mark.parametrize("pid", [0, 1, 2])
def test_wsc_generative_golden(tokenizer, pid):
    task = make_task("wsc_generative", pid, tokenizer)
    example = InputExample("dev-0", WSC_EX.text_a, label="False", idx=0,
                           meta={k: v for k, v in WSC_EX.meta.items() if k != "candidates"})
    assert [render(f) for f in task.pvp.fill_choices(example)] == [(WSC_RENDERED[pid], "")]
    sample = task.encode(example)
    part_a, mask = WSC_TOKENS[pid]
    sep = len(part_a.split())
    rest = S - sep - 2
    assert sample["attention_mask"] == sep and sample["label"] == 0  # "False"
    assert sample["text"].tolist() == ids(part_a) + [SOP, ids("tom")[0]] + [0] * rest
    assert sample["target"].tolist() == [0] * sep + ids("tom <eop>") + [0] * rest
    assert sample["position"].tolist() == [list(range(sep)) + [mask, mask] + [0] * rest,
                                           [0] * sep + [1, 2] + [0] * rest]
    assert sample["logit_mask"].tolist() == [0] * sep + [1, 1] + [0] * rest


def test_rte_fully_literal(tokenizer):
    """Every array spelled out as integers (ids from VOCAB; sop = 86)."""
    task = Task(TaskConfig("rte", "unused", pattern_id=0, max_seq_length=20), tokenizer)
    sample = task.encode(RTE_EX)
    assert sample["text"].tolist() == [2, 5, 19, 22, 23, 5, 14, 4, 10, 5, 18, 20, 21, 12, 5, 0,
                                       86, 0, 0, 0]
    assert sample["position"].tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 7, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]]
    assert sample["logit_mask"].tolist() == [0] * 16 + [1, 0, 0, 0]
    assert sample["target"].tolist() == [67, 68]
    assert int(sample["attention_mask"]) == 16 and sample["label"] == 0
    assert sample["uid"] == "dev-0" and sample["idx"] == 0


def test_copa_fully_literal(tokenizer):
    task = Task(TaskConfig("copa", "unused", pattern_id=1, max_seq_length=22), tokenizer)
    sample = task.encode(COPA_EX)
    head = [2, 35, 36, 47, 19, 37, 38, 39, 14, 19, 34, 25, 28, 76, 4, 12, 0]
    assert sample["text"].tolist() == [head + [86, 35, 36, 0, 0],
                                       head + [86, 19, 37, 38, 39]]
    assert sample["target"].tolist() == [[0] * 17 + [35, 36, 87, 0, 0],
                                         [0] * 17 + [19, 37, 38, 39, 87]]
    assert sample["position"][0].tolist() == [list(range(17)) + [14, 14, 14, 0, 0],
                                              [0] * 17 + [1, 2, 3, 0, 0]]
    assert sample["position"][1].tolist() == [list(range(17)) + [14, 14, 14, 14, 14],
                                              [0] * 17 + [1, 2, 3, 4, 5]]
    assert sample["logit_mask"].tolist() == [[0] * 17 + [1, 1, 1, 0, 0], [0] * 17 + [1] * 5]
    assert sample["attention_mask"].tolist() == [17, 17]
    assert sample["label"] == 1 and "loss_mask" not in sample


def test_plain_classification_literal(tokenizer):
    task = Task(TaskConfig("mrpc", "unused", cloze_eval=False, max_seq_length=11), tokenizer)
    sample = task.encode(PARA_EX)
    assert sample["text"].tolist() == [2, 31, 21, 12, 3, 29, 21, 12, 0, 0, 0]
    assert sample["position"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0], [0] * 11]
    assert int(sample["attention_mask"]) == 9 and sample["label"] == 1
    assert set(sample) == {"text", "position", "attention_mask", "label", "uid", "idx"}
    single = Task(TaskConfig("sst2", "unused", cloze_eval=False, max_seq_length=6), tokenizer)
    sample = single.encode(InputExample("dev-0", "a good cat", label="0"))
    assert sample["text"].tolist() == [2, 18, 42, 22, 0, 0] and sample["label"] == 0
    regression = Task(TaskConfig("sts-b", "unused", cloze_eval=False, max_seq_length=8),
                      tokenizer)
    sample = regression.encode(InputExample("dev-0", "A dog ran.", "The cat sat.", label=3.5))
    # the longer side loses its last token (b on a tie): "a dog ran" | "the cat"
    assert sample["text"].tolist() == [2, 18, 20, 21, 3, 19, 22, 0]
    assert sample["label"].dtype == np.float32 and float(sample["label"]) == 3.5
