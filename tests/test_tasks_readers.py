"""Loaders of every task on small files in the official formats, and their errors."""
from __future__ import annotations

import pytest

from tasks import DataFormatError, Task, TaskConfig
from tests import tasks_fixtures as fx


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return fx.build_small_tokenizer(tmp_path_factory.mktemp("vocab"))


def read(name, data_dir, split, tokenizer=None, **kw):
    return Task(TaskConfig(name, str(data_dir), **kw), tokenizer).read_examples(split)


def write_splits(folder, train, dev, test):
    for split, records in (("train", train), ("val", dev), ("test", test)):
        fx.write_jsonl(folder / f"{split}.jsonl", records)
    return folder


# ------------------------------------------------------------------ SuperGLUE

def test_rte_cb_boolq_wic(tmp_path, tokenizer):
    d = write_splits(tmp_path / "RTE", [fx.rte(0), fx.rte(1, "not_entailment")], [fx.rte(0)],
                     [fx.rte(0, None), fx.rte(1, None)])
    train = read("rte", d, "train", tokenizer)
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in train] == [
        ("train-0", "A dog ran.", "The cat sat.", "entailment"),
        ("train-1", "A dog ran.", "The cat sat.", "not_entailment")]
    assert [e.label for e in read("rte", d, "test", tokenizer)] == [None, None]
    d = write_splits(tmp_path / "CB", [fx.rte(0, "neutral"), fx.rte(1, "contradiction")], [], [])
    assert [e.label for e in read("cb", d, "train", tokenizer)] == ["neutral", "contradiction"]
    d = write_splits(tmp_path / "BoolQ", [fx.boolq(0, True), fx.boolq(1, False)], [], [])
    assert [(e.text_a, e.text_b, e.label) for e in read("boolq", d, "train", tokenizer)] == [
        ("The sky is blue.", "is the sky blue", "true"),
        ("The sky is blue.", "is the sky blue", "false")]
    d = write_splits(tmp_path / "WiC", [fx.wic(0, False), fx.wic(1, True)], [], [])
    examples = read("wic", d, "train", tokenizer)
    assert [(e.label, e.meta["word"]) for e in examples] == [("false", "bank"), ("true", "bank")]


def test_diagnostics_read_their_single_file(tmp_path, tokenizer):
    fx.write_jsonl(tmp_path / "AX-b.jsonl", [{"sentence1": "A dog ran.", "sentence2": "A cat.",
                                              "label": "not_entailment", "idx": 0,
                                              "logic": "Negation"}])
    fx.write_jsonl(tmp_path / "AX-g.jsonl", [{**fx.rte(0), "pair_id": 1}, fx.rte(1)])
    axb = read("ax-b", tmp_path, "test", tokenizer)
    assert [(e.text_a, e.text_b, e.label) for e in axb] == [("A dog ran.", "A cat.",
                                                             "not_entailment")]
    assert len(read("ax-g", tmp_path, "test", tokenizer)) == 2
    with pytest.raises(ValueError, match=r"unknown split 'train'; valid: \['test'\]"):
        read("ax-b", tmp_path, "train", tokenizer)


def test_copa_train_is_mirrored(tmp_path, tokenizer):
    d = write_splits(tmp_path / "COPA", [fx.copa(0, 0), fx.copa(1, 1, "effect")],
                     [fx.copa(0, 1)], [])
    train = read("copa", d, "train", tokenizer)
    assert [(e.guid, e.label, e.meta["choice1"], e.meta["question"]) for e in train] == [
        ("train-0", 0, "It rained.", "cause"), ("train-1", 1, "It rained.", "effect"),
        ("train-0m", 1, "The sun was hot.", "cause"),
        ("train-1m", 0, "The sun was hot.", "effect")]
    assert len(read("copa", d, "dev", tokenizer)) == 1  # dev is not mirrored


def test_multirc_one_example_per_answer(tmp_path, tokenizer):
    d = write_splits(tmp_path / "MultiRC", [fx.multirc(0), fx.multirc(1)], [], [])
    examples = read("multirc", d, "train", tokenizer)
    assert [(e.guid, e.idx, e.text_b, e.meta["answer"], e.label) for e in examples[:3]] == [
        ("train-p0-q0-a0", [0, 0, 0], "Who ran?", "Ann", 1),
        ("train-p0-q0-a1", [0, 0, 1], "Who ran?", "Tom", 0),
        ("train-p0-q1-a2", [0, 1, 2], "Who sat?", "Tom", 1)]
    assert len(examples) == 6 and examples[3].meta["passage_idx"] == 1


def test_record_train_and_dev(tmp_path, tokenizer):
    d = write_splits(tmp_path / "ReCoRD", [fx.record(0)], [fx.record(0)], [])
    train = read("record", d, "train", tokenizer)
    assert len(train) == 1
    ex = train[0]
    assert ex.text_a == "Tom met Ann.- Ann ran" and ex.text_b == "@placeholder was hot."
    assert ex.meta["candidates"] == ["Ann", "Tom"] and ex.label == 0
    dev = read("record", d, "dev", tokenizer)
    assert (dev[0].meta["candidates"], dev[0].meta["answers"], dev[0].label, dev[0].idx) == (
        ["Ann", "Tom"], ["Ann"], 0, 7)


def test_record_train_samples_at_most_nine_negatives(tmp_path, tokenizer):
    words = ["w%02d" % i for i in range(15)]
    text = " ".join(words)
    entities = [{"start": 4 * i, "end": 4 * i + 2} for i in range(15)]
    qas = [{"query": "@placeholder ran", "idx": 0, "answers": [{"text": "w03"}, {"text": "w07"}]}]
    record = {"idx": 0, "passage": {"text": text, "entities": entities}, "qas": qas}
    d = write_splits(tmp_path / "ReCoRD", [record], [record], [])
    first = read("record", d, "train", tokenizer)
    again = read("record", d, "train", tokenizer)
    assert len(first) == 2  # one example per gold answer
    for ex, gold in zip(first, ["w03", "w07"]):
        cands = ex.meta["candidates"]
        assert cands[0] == gold and len(cands) == 10 and ex.label == 0
        assert set(cands[1:]) <= set(words) - {"w03", "w07"} and len(set(cands)) == 10
    assert [e.meta["candidates"] for e in first] == [e.meta["candidates"] for e in again]
    dev = read("record", d, "dev", tokenizer)
    assert dev[0].meta["candidates"] == words and dev[0].label == 3
    sample = Task(TaskConfig("record", str(d), max_seq_length=40), tokenizer).encode(dev[0])
    assert sample["text"].shape == (15, 40) and sample["loss_mask"].tolist() == [1] * 15
    fixed = Task(TaskConfig("record", str(d), max_seq_length=40, fix_variable_num_choices=True),
                 tokenizer)
    sample = fixed.encode(dev[0])
    assert sample["text"].shape == (10, 40) and sample["choice_index"].tolist() == list(range(10))


def test_wsc_spans_are_corrected(tmp_path, tokenizer):
    shifted = {**fx.wsc(0), "target": {"span1_text": "Tom", "span1_index": 1,
                                       "span2_text": "he", "span2_index": 4}}
    glued = {**fx.wsc(1), "text": 'Tom told Ann he," was hot.'}
    d = write_splits(tmp_path / "WSC", [shifted, glued, fx.wsc(2, label=False)], [], [])
    train = read("wsc_generative", d, "train", tokenizer)
    assert len(train) == 2  # label False dropped from train
    assert (train[0].meta["span1_index"], train[0].meta["span2_index"]) == (0, 3)
    assert train[1].text_a == 'Tom told Ann he ," was hot.' and train[1].meta["span2_index"] == 3
    bad = {**fx.wsc(3), "target": {**fx.wsc(3)["target"], "span2_index": 0}}
    d = write_splits(tmp_path / "WSC2", [bad], [], [])
    with pytest.raises(DataFormatError, match=r"train.jsonl:1: span2 'he' not found at word 0"):
        read("wsc_generative", d, "train", tokenizer)


def test_wsc_negative_candidates(tmp_path, tokenizer):
    many = ["c%d" % i for i in range(12)]
    d = write_splits(tmp_path / "WSC-negative",
                     [fx.wsc(0, True, ["Ann", "Ann", "tom"]), fx.wsc(1, False, ["Ann"]),
                      fx.wsc(2, True, many)],
                     [fx.wsc(0, False, ["Ann", "it"])], [])
    train = read("wsc", d, "train", tokenizer)
    assert [(e.guid, e.meta["candidates"]) for e in train] == [
        ("train-0", ["Ann"]),  # de-duplicated, span 1 ("tom") dropped
        ("train-2-c0", many[:9]), ("train-2-c1", many[9:] + many[:6])]
    dev = read("wsc", d, "dev", tokenizer)
    assert dev[0].meta["candidates"] == ["Ann", "it"] and dev[0].label == "False"
    task = Task(TaskConfig("wsc", str(d), max_seq_length=40), tokenizer)
    assert task.encode(train[0])["label"] == 0  # training label forced to the gold row
    assert task.encode(dev[0])["label"] == 0 and task.encode(dev[0])["text"].shape[0] == 3
    d = write_splits(tmp_path / "WSC", [fx.wsc(0)], [], [])
    with pytest.raises(DataFormatError, match="missing field 'candidates'.*wsc_generative"):
        read("wsc", d, "train", tokenizer)


# ------------------------------------------------------------------ errors

def test_malformed_line_names_file_and_line(tmp_path, tokenizer):
    path = fx.write_jsonl(tmp_path / "train.jsonl", [fx.rte(0)])
    path.write_text(path.read_text() + '{"premise": "x",\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: malformed JSON line"):
        read("rte", tmp_path, "train", tokenizer)
    line = path.read_text().splitlines()[0]
    path.write_text(f"{line}\n\n{line}\n")
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: malformed JSON line"):
        read("rte", tmp_path, "train", tokenizer)  # a blank line inside the file


def test_missing_field_and_unknown_label(tmp_path, tokenizer):
    record = fx.rte(1)
    del record["hypothesis"]
    fx.write_jsonl(tmp_path / "train.jsonl", [fx.rte(0), record])
    with pytest.raises(DataFormatError, match=r"train.jsonl:2: missing field 'hypothesis'"):
        read("rte", tmp_path, "train", tokenizer)
    fx.write_jsonl(tmp_path / "train.jsonl", [fx.rte(0, "yes")])
    with pytest.raises(DataFormatError, match=r"train.jsonl:1: unknown label 'yes'; valid "
                                              r"labels: \['entailment', 'not_entailment'\]"):
        read("rte", tmp_path, "train", tokenizer)
    fx.write_jsonl(tmp_path / "train.jsonl", [{**fx.boolq(0), "label": "true"}])
    with pytest.raises(DataFormatError, match=r"unknown label 'true'; valid labels: \[False, "
                                              r"True\]"):
        read("boolq", tmp_path, "train", tokenizer)
    fx.write_jsonl(tmp_path / "val.jsonl", [fx.rte(0, None)])
    with pytest.raises(DataFormatError, match=r"val.jsonl:1: missing field 'label'"):
        read("rte", tmp_path, "dev", tokenizer)  # dev must be labelled
    with pytest.raises(FileNotFoundError, match="test file not found"):
        read("rte", tmp_path, "test", tokenizer)


# ------------------------------------------------------------------ GLUE

GLUE_EXPECTED = {  # task: (dir, train labels, dev first (a, b, label), test count)
    "mnli": ("MNLI", ["neutral", "entailment"], ("The cat sat.", "The cat sat.", "entailment")),
    "mnli-mm": ("MNLI", ["neutral", "entailment"], ("The cat sat.", "The cat sat.",
                                                    "entailment")),
    "qnli": ("QNLI", ["entailment", "not_entailment"], ("Who ran?", "Ann ran.", "entailment")),
    "qqp": ("QQP", ["1", "0"], ("Who ran?", "Who ran?", "1")),
    "glue-rte": ("RTE", ["entailment", "not_entailment"], ("A dog ran.", "The cat sat.",
                                                           "entailment")),
    "wnli": ("WNLI", ["1", "0"], ("A dog ran.", "The cat sat.", "1")),
    "sst2": ("SST-2", ["1", "0"], ("a good cat ", None, "1")),
    "mrpc": ("MRPC", ["1", "0"], ("Tom ran.", "He ran.", "1")),
    "cola": ("CoLA", ["1", "0"], ("The cat sat.", None, "1")),
    "sts-b": ("STS-B", [5.0, 0.5], ("A dog ran.", "A dog ran.", 5.0)),
}


@pytest.mark.parametrize("name", sorted(GLUE_EXPECTED))
def test_glue_loaders(tmp_path, tokenizer, name):
    dirs = fx.write_glue(tmp_path)
    folder, train_labels, dev_first = GLUE_EXPECTED[name]
    cloze = name != "sts-b"
    train = read(name, dirs[folder], "train", tokenizer, cloze_eval=cloze)
    assert [e.label for e in train] == train_labels
    dev = read(name, dirs[folder], "dev", tokenizer, cloze_eval=cloze)
    assert (dev[0].text_a, dev[0].text_b, dev[0].label) == dev_first
    test = read(name, dirs[folder], "test", tokenizer, cloze_eval=cloze)
    assert len(test) == 1 and test[0].label is None


def test_glue_ids_and_mismatched_dev(tmp_path, tokenizer):
    dirs = fx.write_glue(tmp_path)
    assert [e.idx for e in read("qqp", dirs["QQP"], "train", tokenizer)] == [201, 202]
    assert [e.idx for e in read("sst2", dirs["SST-2"], "train", tokenizer)] == [0, 1]
    assert read("mnli", dirs["MNLI"], "test", tokenizer)[0].idx == 5
    (dirs["MNLI"] / "dev_mismatched.tsv").write_text(
        "\t".join(fx.MNLI_DEV_HEADER) + "\n" +
        "\t".join(map(str, fx.mnli_row(9, "Ann ran.", "Tom ran.", "neutral", dev=True))) + "\n")
    assert [e.idx for e in read("mnli-mm", dirs["MNLI"], "dev", tokenizer)] == [9]
    assert [e.idx for e in read("mnli", dirs["MNLI"], "dev", tokenizer)] == [0, 1]


def test_glue_errors(tmp_path, tokenizer):
    dirs = fx.write_glue(tmp_path)
    path = dirs["QNLI"] / "train.tsv"
    path.write_text(path.read_text() + "2\tWho ran?\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:4: expected 4 tab-separated fields"):
        read("qnli", dirs["QNLI"], "train", tokenizer)
    path.write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tAnn.\tmaybe\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:2: unknown label 'maybe'; valid "
                                              r"labels: \['entailment', 'not_entailment'\]"):
        read("qnli", dirs["QNLI"], "train", tokenizer)
    path = dirs["STS-B"] / "train.tsv"
    path.write_text(path.read_text().replace("0.500", "high"))
    with pytest.raises(DataFormatError, match=r"train.tsv:3: score 'high' is not a number"):
        read("sts-b", dirs["STS-B"], "train", tokenizer, cloze_eval=False)
    path = dirs["CoLA"] / "dev.tsv"
    path.write_text("gj04\t1\tThe cat sat.\n")
    with pytest.raises(DataFormatError, match=r"dev.tsv:1: expected 4 tab-separated fields"):
        read("cola", dirs["CoLA"], "dev", tokenizer)
    path = dirs["SST-2"] / "train.tsv"
    path.write_text("text\tlabel\nnice\t1\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:2: missing column 'sentence'"):
        read("sst2", dirs["SST-2"], "train", tokenizer)
