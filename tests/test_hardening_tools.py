"""Tools never overwrite a result silently: vocab_sort.py refuses an existing table (exit code 1,
the file byte-identical) unless --overwrite; auto_tune.py refuses an output folder that holds a
sweep's results (exit code 2, tune.json byte-identical) unless --append (old records kept, new
ones after them, tables over all) or --overwrite (a fresh start). Sweeps run a stand-in script
that writes a fixed score, so they take well under a second per run."""
import json
from pathlib import Path

import pytest

import vocab_sort as vocab_sort_cli
from cli_fixtures import write_corpus, write_vocab
from data_utils.corpora import CorpusConfig
from data_utils.tokenization import build_tokenizer
from data_utils.vocab_sort import build_vocab_table
from tuning.cli import main as auto_tune

DEFAULT_TABLE = Path(".pytorch_pretrained_bert") / "BertWordPieceTokenizer_bert-base-uncased.txt"
OLD_TABLE = b"origin_no\tsort_id\ttoken\tnumber\tfrequency\n0\t0\told\t1\t1.000e+00\n"


# --------------------------------------------------------------------------- vocab_sort.py
@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    """(vocab.txt, corpus.txt) in a scratch folder that is also the current folder."""
    monkeypatch.chdir(tmp_path)
    return write_vocab(tmp_path), write_corpus(tmp_path, num_documents=20, seed=1)


def _vocab_sort(vocab: Path, corpus: Path, *flags: str) -> int:
    return vocab_sort_cli.main([f"--train-data={corpus}", f"--tokenizer-path={vocab}",
                                "--tokenizer-model-type=bert-base-uncased", "--quiet", *flags])


@pytest.mark.parametrize("where", ["default", "--output"])
def test_vocab_sort_refuses_an_existing_table(where, corpus, tmp_path, capsys):
    vocab, text = corpus
    table = tmp_path / (DEFAULT_TABLE if where == "default" else "mine.txt")
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_bytes(OLD_TABLE)
    flags = [] if where == "default" else [f"--output={table}"]
    assert _vocab_sort(vocab, text, *flags) == 1
    error = capsys.readouterr().err
    assert error.startswith("vocab_sort.py: error:")
    assert str(table.relative_to(tmp_path) if where == "default" else table) in error and "--overwrite" in error
    assert table.read_bytes() == OLD_TABLE
    assert [path.name for path in table.parent.glob(".*.tmp*")] == []


def test_vocab_sort_overwrite_replaces_the_table(corpus, tmp_path):
    vocab, text = corpus
    expected = tmp_path / "expected.txt"   # the same table written by the function, to a fresh path
    build_vocab_table(CorpusConfig((str(text),)), build_tokenizer("BertWordPieceTokenizer", vocab,
                                                                  "bert-base-uncased"), expected)
    table = tmp_path / DEFAULT_TABLE
    table.parent.mkdir()
    table.write_bytes(OLD_TABLE)
    assert _vocab_sort(vocab, text, "--overwrite") == 0
    assert table.read_bytes() == expected.read_bytes() != OLD_TABLE


# --------------------------------------------------------------------------- auto_tune.py
# A stand-in for finetune.py: RTE scores 60, CB 80, written where auto_tune reads them.
FAKE_RUN = """import json, sys
flags = dict(arg.split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
score = {"RTE": 60.0, "CB": 80.0}[flags["--task"]]
entry = {"epoch": 0, "iteration": 1, "score_dict": {"accuracy": score}}
with open(flags["--custom_tmp_result"], "w") as handle:
    json.dump({"max_score_dict": {"accuracy": entry}, "epoch": -1}, handle)
"""
RESULT_FILES = ("tune.json", "tune.md", "tune.csv")


@pytest.fixture()
def sweep(tmp_path, monkeypatch):
    """auto_tune with the stand-in script into tmp_path/tune: sweep(tasks, *flags) -> exit code."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake_run.py").write_text(FAKE_RUN)

    def run(tasks: str, *flags: str) -> int:
        return auto_tune(["--data_root=data", "--launcher=python", "--py_file=fake_run.py", f"--tasks={tasks}",
                          "--output_dir=tune", "--name=m", "--max_retries=0", "--del_fp16", *flags])
    return run


def _records(folder: Path):
    return json.loads((folder / "tune.json").read_text())


def _snapshot(folder: Path):
    return {name: (folder / name).read_bytes() for name in RESULT_FILES}


def test_auto_tune_refuses_a_folder_with_results(sweep, tmp_path, capsys):
    assert sweep("rte") == 0
    before = _snapshot(tmp_path / "tune")
    capsys.readouterr()
    assert sweep("cb") == 2
    error = capsys.readouterr().err
    assert error.startswith("auto_tune.py: error:")
    assert "tune" in error and str(Path("tune") / "tune.json") in error
    assert "--append" in error and "--overwrite" in error
    assert _snapshot(tmp_path / "tune") == before
    assert not (tmp_path / "tune" / "logs" / "00_cb_stage0.log").exists()   # nothing ran
    # Dry runs write nothing and are not refused.
    assert sweep("cb", "--test") == 0
    assert auto_tune(["--show_tune", str(tmp_path / "tune" / "tune.json")]) == 0
    assert _snapshot(tmp_path / "tune") == before


def test_auto_tune_append_keeps_the_old_records_and_adds_the_new(sweep, tmp_path):
    assert sweep("rte") == 0
    old = _records(tmp_path / "tune")
    assert sweep("cb", "--append") == 0
    records = _records(tmp_path / "tune")
    assert records[:1] == old
    assert [(r["auto_tune"]["task"], r["auto_tune"]["status"]) for r in records] == [("rte", "ok"), ("cb", "ok")]
    markdown = (tmp_path / "tune" / "tune.md").read_text().splitlines()
    assert markdown[0] == "| method | stage | RTE accuracy | CB accuracy | mean |"
    assert markdown[2] == "| m | 0 | 60.0 | 80.0 | 70.00 |"      # (60 + 80) / 2
    assert (tmp_path / "tune" / "tune.csv").read_text().splitlines()[1] == "m,0,60.0000,80.0000,70.0000"


def test_auto_tune_overwrite_starts_afresh(sweep, tmp_path):
    assert sweep("rte,cb") == 0
    logs = tmp_path / "tune" / "logs"
    assert sorted(path.name for path in logs.iterdir()) == ["00_rte_stage0.log", "01_cb_stage0.log"]
    assert sweep("rte", "--overwrite") == 0
    assert [r["auto_tune"]["task"] for r in _records(tmp_path / "tune")] == ["rte"]
    markdown = (tmp_path / "tune" / "tune.md").read_text()
    assert "CB" not in markdown and "| m | 0 | 60.0 | 60.00 |" in markdown
    assert [path.name for path in logs.iterdir()] == ["00_rte_stage0.log"]
    assert (logs / "00_rte_stage0.log").read_text().count("\n=== ") == 1   # one run's log, not two


def test_auto_tune_append_and_overwrite_exclude_each_other(sweep, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep("rte", "--append", "--overwrite")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
