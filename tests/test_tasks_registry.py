"""The task registry, per-task defaults and TaskConfig validation."""
from __future__ import annotations

import pytest

from tasks import DEFAULT_METRICS, TASKS, Task, TaskConfig, get_task_spec
from tasks.registry import resolve_task_name
from tests.tasks_fixtures import build_small_tokenizer

ORIGINAL_NAMES = {"record", "copa", "wsc", "rte", "boolq", "wic", "cb", "multirc",
                  "wsc_generative", "ax-b", "ax-g", "mnli", "mnli-mm", "qnli", "qqp", "sst2",
                  "mrpc", "cola", "sts-b", "wnli", "glue-rte"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_small_tokenizer(tmp_path_factory.mktemp("vocab"))


def test_registry_names_and_unknown_name():
    assert set(TASKS) == ORIGINAL_NAMES
    assert get_task_spec("ReCoRD").name == "record" and get_task_spec("MultiRC").name == "multirc"
    with pytest.raises(KeyError, match=r"unknown task 'squad'; valid tasks: \['ax-b', 'ax-g', "):
        get_task_spec("squad")
    with pytest.raises(KeyError, match="unknown task 'superglue'"):
        TaskConfig("superglue", "unused")


def test_superglue_defaults_match_the_spec_table():
    table = {  # task: (pattern id, max length, metrics, kind)
        "record": (0, 512, ("EM", "F1"), "multi_token"),
        "copa": (0, 256, ("accuracy",), "multi_token"),
        "wsc": (2, 128, ("accuracy",), "multi_token"),
        "wsc_generative": (0, 128, ("accuracy",), "generative"),
        "rte": (0, 256, ("accuracy",), "single_token"),
        "boolq": (4, 256, ("accuracy",), "single_token"),
        "wic": (1, 256, ("accuracy",), "single_token"),
        "cb": (3, 256, ("accuracy", "f1-macro"), "single_token"),
        "multirc": (0, 512, ("f1a", "em", "acc"), "single_token"),
    }
    for name, (pattern_id, length, metrics, kind) in table.items():
        spec = get_task_spec(name)
        assert (spec.default_pattern_id, spec.default_max_seq_length, spec.metrics,
                spec.kind) == (pattern_id, length, metrics, kind), name
        assert DEFAULT_METRICS[name] == metrics
    assert get_task_spec("record").max_choices == 10 and get_task_spec("wsc").max_choices == 10
    assert get_task_spec("copa").max_choices == 0
    assert DEFAULT_METRICS["cola"][0] == "matthews" and DEFAULT_METRICS["mrpc"] == ("f1",
                                                                                  "accuracy")
    assert DEFAULT_METRICS["sts-b"] == ("pearson", "spearman")


def test_config_resolution():
    config = TaskConfig("BoolQ", "data/BoolQ").resolved()
    assert (config.task_name, config.pattern_id, config.max_seq_length) == ("boolq", 4, 256)
    assert TaskConfig("cb", "d", pattern_id=1, max_seq_length=64).resolved().pattern_id == 1
    assert TaskConfig("wsc", "d").resolved().wsc_negative is True
    assert TaskConfig("WSC", "d", wsc_negative=False).resolved().task_name == "wsc_generative"
    assert resolve_task_name("wsc", True) == "wsc"
    with pytest.raises(ValueError, match="contradicts wsc_negative=True"):
        TaskConfig("wsc_generative", "d", wsc_negative=True)
    with pytest.raises(ValueError, match="wsc_negative applies to the WSC tasks only"):
        TaskConfig("rte", "d", wsc_negative=True)


def test_config_validation(tokenizer):
    with pytest.raises(ValueError, match="'sts-b' has no cloze pattern"):
        TaskConfig("sts-b", "d")
    with pytest.raises(ValueError, match="'copa' .multi_token. has no plain classification"):
        TaskConfig("copa", "d", cloze_eval=False)
    with pytest.raises(ValueError, match="few_superglue applies to SuperGLUE tasks"):
        TaskConfig("mnli", "d", few_superglue=True)
    with pytest.raises(ValueError, match="max_seq_length must be >= 4"):
        TaskConfig("rte", "d", max_seq_length=2)
    with pytest.raises(ValueError, match=r"RtePVP has no pattern id 7; available: "
                                         r"\[0, 1, 2, 3, 4\]"):
        Task(TaskConfig("rte", "d", pattern_id=7), tokenizer)
    with pytest.raises(ValueError, match=r"CopaPVP has no pattern id 3; available: \[0, 1, 2\]"):
        Task(TaskConfig("copa", "d", pattern_id=3), tokenizer)


def test_verbalizer_must_be_one_token(tmp_path):
    from data_utils.tokenization import build_tokenizer
    (tmp_path / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "n", "##o"]) + "\n")
    tokenizer = build_tokenizer("BertWordPieceTokenizer", tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match=r"verbalizer ' No' must be a single token"):
        Task(TaskConfig("rte", "d"), tokenizer)


def test_few_superglue_files(tmp_path, tokenizer):
    from tests.tasks_fixtures import rte, write_jsonl
    write_jsonl(tmp_path / "dev32.jsonl", [rte(0)])
    write_jsonl(tmp_path / "val.jsonl", [rte(0), rte(1)])
    task = Task(TaskConfig("rte", str(tmp_path), few_superglue=True), tokenizer)
    assert len(task.read_examples("dev")) == 1 and len(task.read_examples("test")) == 2


def test_ineffective_options_warn(tokenizer):
    with pytest.warns(UserWarning, match="fix_variable_num_choices has no effect on 'copa'"):
        Task(TaskConfig("copa", "d", fix_variable_num_choices=True), tokenizer)
    with pytest.warns(UserWarning, match="pattern_id=2 has no effect without cloze_eval"):
        Task(TaskConfig("rte", "d", pattern_id=2, cloze_eval=False), tokenizer)


def test_mrpc_header_with_byte_order_mark(tmp_path, tokenizer):
    (tmp_path / "train.tsv").write_text(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tTom ran.\tHe ran.\n",
        encoding="utf-8")
    examples = Task(TaskConfig("mrpc", str(tmp_path)), tokenizer).read_examples("train")
    assert [(e.text_a, e.label) for e in examples] == [("Tom ran.", "1")]
