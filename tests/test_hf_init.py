"""model/hf_init.py: which layers a student keeps, layer-dropped students of tiny random BERT,
Llama (grouped-query attention) and GPT-2 teachers against the teacher run with only the kept
layers, and the export read back by transformers' Auto classes (here and in a fresh process)."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, BertForMaskedLM,  # noqa: E402
                          BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from model.hf import ATTENTION_NAME, HFTapModel  # noqa: E402
from model.hf_init import (check_keep, export_student, keep_layers, layer_dropped_student,  # noqa: E402
                           student_config)

B, S, V, H, L = 2, 7, 100, 32, 4
KEEP = [1, 3]
# Student and reference run the very same fp32 modules on the very same weights and inputs
# (only the list holding the layers differs), so they agree to the bit in practice; 1e-6
# (a few ulp of logits of order 1) only absorbs a kernel choice that could depend on layout.
SAME_OPS_ATOL = 1e-6
# An exported model reloaded with transformers' sdpa attention against HFTapModel's "gkd_taps"
# function, which calls the same fused sdpa kernel with a boolean mask: same ops, a few ulp at most.
EXPORT_ATOL = 1e-6
AUTO_CLASS = {"bert": AutoModelForMaskedLM, "llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM}
FAMILIES = ("bert", "llama", "gpt2")


def tiny(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A 4-layer, width-32, vocab-100 random model of the family, in eval mode."""
    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, **overrides)
        model = BertForMaskedLM(config)
    elif family == "llama":
        config = LlamaConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, **overrides)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=V, n_embd=H, n_layer=L, n_head=4, n_positions=64, bos_token_id=0,
                            eos_token_id=0, **overrides)
        model = GPT2LMHeadModel(config)
    return model.eval()


def inputs(seed: int = 1):
    """ids [B, S] and a padding mask [B, S] (sample 1 right-padded)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, S), generator=gen)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


def hf_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The HF model's own forward: logits [B, S, V] (no KV cache: a reference with foreign layers
    would index a cache by their teacher layer_idx)."""
    extra = {} if model.config.model_type == "bert" else {"use_cache": False}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **extra).logits


def tap_logits(model: HFTapModel, ids, mask) -> torch.Tensor:
    """The in-framework forward's logits [B, S, V]."""
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def layer_list_owner(model: nn.Module):
    """(module holding the layer ModuleList, its attribute name), written out per family."""
    base, family = model.base_model, model.config.model_type
    if family == "bert":
        return base.encoder, "layer"
    return base, {"llama": "layers", "gpt2": "h"}[family]


@contextlib.contextmanager
def only_layers(model: nn.Module, keep):
    """The teacher with its layer list replaced by the kept layers and its config's layer count
    patched (decoders loop over `layers[:num_hidden_layers]`), restored on exit."""
    owner, name = layer_list_owner(model)
    saved_layers, saved_count = getattr(owner, name), model.config.num_hidden_layers
    setattr(owner, name, nn.ModuleList([saved_layers[index] for index in keep]))
    model.config.num_hidden_layers = len(keep)
    try:
        yield model
    finally:
        setattr(owner, name, saved_layers)
        model.config.num_hidden_layers = saved_count


def teacher_with_only(teacher: nn.Module, keep, ids, mask) -> torch.Tensor:
    with only_layers(teacher, keep):
        return hf_logits(teacher, ids, mask)


# --------------------------------------------------------------------------- keep_layers
def test_keep_layers_bottom_and_stride():
    assert keep_layers("bottom", 12, 4) == [0, 1, 2, 3]
    assert keep_layers("stride", 12, 6) == [1, 3, 5, 7, 9, 11]
    assert keep_layers("stride", 12, 4) == [2, 5, 8, 11]
    assert keep_layers("stride", 12, 12) == list(range(12))
    assert keep_layers("stride", 12, 1) == [11]
    assert keep_layers("stride", 12, 5) == [1, 3, 5, 7, 9]          # 5 does not divide 12: k = 2, top 2 unused
    assert keep_layers(" bottom ", 4, 4) == [0, 1, 2, 3]


def test_keep_layers_explicit_list():
    assert keep_layers("0,2,4,7,9,11", 12) == [0, 2, 4, 7, 9, 11]     # DistilBERT's choice
    assert keep_layers("2, 6,10", 12, 3) == [2, 6, 10]
    assert keep_layers("5", 12) == [5]


@pytest.mark.parametrize("spec, teacher_layers, student_layers, reason", [
    ("bottom", 12, None, "required"),
    ("stride", 12, None, "required"),
    ("bottom", 12, 0, "not in 1..12"),
    ("stride", 12, 13, "not in 1..12"),
    ("2,6,10", 12, 4, "student should have 4"),
    ("0,12", 12, None, "outside 0..11"),
    ("-1,3", 12, None, "outside 0..11"),
    ("3,3,5", 12, None, "repeated"),
    ("5,3", 12, None, "not strictly increasing"),
    ("top", 12, 4, "comma-separated"),
    ("1,,2", 12, None, "comma-separated"),
    ("0,1,2,3,4", 4, None, "more than the teacher has"),
])
def test_keep_layers_errors_name_spec_and_teacher(spec, teacher_layers, student_layers, reason):
    with pytest.raises(ValueError) as error:
        keep_layers(spec, teacher_layers, student_layers)
    message = str(error.value)
    assert repr(spec) in message and f"{teacher_layers}-layer teacher" in message and reason in message


def test_check_keep_rejects_an_empty_list():
    with pytest.raises(ValueError, match="at least one layer"):
        check_keep([], 4)


# --------------------------------------------------------------------------- layer_dropped_student
@pytest.mark.parametrize("family", FAMILIES)
def test_student_equals_teacher_running_only_the_kept_layers(family):
    teacher = tiny(family)
    ids, mask = inputs()
    student = layer_dropped_student(teacher, KEEP)
    assert type(student) is type(teacher) and not student.training
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == L
    reference = teacher_with_only(teacher, KEEP, ids, mask)
    torch.testing.assert_close(hf_logits(student, ids, mask), reference, rtol=0, atol=SAME_OPS_ATOL)
    full = hf_logits(teacher, ids, mask)                            # the teacher itself is restored, and
    assert full.shape == reference.shape and (full - reference).abs().max() > 1e-3   # dropping layers shows


@pytest.mark.parametrize("family", FAMILIES)
def test_student_layers_are_copies_of_the_kept_teacher_layers(family):
    teacher = tiny(family)
    student = layer_dropped_student(teacher, KEEP)
    owner, name = layer_list_owner(student)
    teacher_owner, _ = layer_list_owner(teacher)
    for j, index in enumerate(KEEP):
        student_layer, teacher_layer = getattr(owner, name)[j], getattr(teacher_owner, name)[index]
        for (key, value), (teacher_key, teacher_value) in zip(student_layer.state_dict().items(),
                                                              teacher_layer.state_dict().items()):
            assert key == teacher_key and torch.equal(value, teacher_value)
            assert value.data_ptr() != teacher_value.data_ptr()     # a copy, not a shared tensor
        attention = student_layer.attn if family == "gpt2" else getattr(student_layer, "self_attn", None)
        if attention is not None:                                   # the KV-cache slot is the student position
            assert attention.layer_idx == j
    head, words = student.get_output_embeddings(), student.get_input_embeddings()
    if family != "llama":                                           # BERT and GPT-2 tie the head to the embedding
        assert head.weight is words.weight
    torch.testing.assert_close(head.weight, teacher.get_output_embeddings().weight, rtol=0, atol=0)


def test_student_of_a_wrapped_teacher():
    """The usual flow: the teacher already runs as an HFTapModel ("gkd_taps" attention, hooks);
    its student, wrapped in turn, still computes the teacher's kept layers."""
    teacher = HFTapModel(tiny("llama"))
    ids, mask = inputs()
    student = HFTapModel(layer_dropped_student(teacher.hf, KEEP))
    assert student.config.num_layers == 2
    reference = teacher_with_only(teacher.hf, KEEP, ids, mask)
    torch.testing.assert_close(tap_logits(student, ids, mask), reference, rtol=0, atol=SAME_OPS_ATOL)


def test_gpt2_config_writes_n_layer():
    student = layer_dropped_student(tiny("gpt2"), KEEP)
    assert student.config.n_layer == 2 and len(student.transformer.h) == 2


def test_student_is_in_training_mode_iff_the_teacher_is():
    teacher = tiny("bert").train()
    assert layer_dropped_student(teacher, KEEP).training
    assert not layer_dropped_student(teacher.eval(), KEEP).training


def test_student_of_a_base_model():
    """A base model (BertModel) has no prefix before `encoder.layer`."""
    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64)).eval()
    ids, mask = inputs()
    student = layer_dropped_student(teacher, KEEP)
    with torch.no_grad():
        got = student(input_ids=ids, attention_mask=mask).last_hidden_state
        with only_layers(teacher, KEEP):
            reference = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, reference, rtol=0, atol=SAME_OPS_ATOL)


def test_layer_types_are_sliced_by_keep():
    """Qwen2 lists one attention type per layer; the student keeps those of its kept layers."""
    config = Qwen2Config(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64,
                         layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"])
    assert student_config(config, [0, 1]).layer_types == ["full_attention", "sliding_attention"]
    assert student_config(config, [1, 3]).layer_types == ["sliding_attention", "sliding_attention"]
    assert config.num_hidden_layers == L and len(config.layer_types) == L          # the teacher's is untouched
    torch.manual_seed(0)
    student = layer_dropped_student(Qwen2ForCausalLM(config).eval(), [0, 1])
    assert [layer.self_attn.layer_type for layer in student.model.layers] == ["full_attention", "sliding_attention"]


def test_gpt2_inverse_layer_idx_scaling():
    """With scale_attn_by_inverse_layer_idx, a layer's scale depends on its position: bottom
    layers keep theirs (and match the teacher's), a moved layer would not, so it is refused."""
    teacher = tiny("gpt2", scale_attn_by_inverse_layer_idx=True)
    ids, mask = inputs()
    student = layer_dropped_student(teacher, [0, 1])
    torch.testing.assert_close(hf_logits(student, ids, mask), teacher_with_only(teacher, [0, 1], ids, mask),
                               rtol=0, atol=SAME_OPS_ATOL)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        layer_dropped_student(teacher, KEEP)


def test_student_rejects_a_bad_keep():
    with pytest.raises(ValueError, match="4-layer teacher"):
        layer_dropped_student(tiny("llama"), [1, 4])


# --------------------------------------------------------------------------- export
def fake_tokenizer(folder) -> dict:
    """A tokenizer folder with a tiny vocab.txt, tokenizer.json and tokenizer_config.json, plus
    a file that is not a tokenizer file; {name: bytes} of the tokenizer files."""
    folder.mkdir()
    files = {"vocab.txt": "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(95)]),
             "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}),
             "tokenizer_config.json": json.dumps({"model_max_length": 64})}
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / "notes.txt").write_text("not a tokenizer file")
    return {name: text.encode() for name, text in files.items()}


@pytest.mark.parametrize("wrapped", [True, False], ids=["HFTapModel", "plain"])
@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip(family, wrapped, tmp_path):
    student = layer_dropped_student(tiny(family), KEEP)
    ids, mask = inputs()
    tokenizer = fake_tokenizer(tmp_path / "tokenizer")
    out = tmp_path / "export"
    if wrapped:
        tapped = HFTapModel(student)
        assert tapped.hf.config._attn_implementation == ATTENTION_NAME
        assert export_student(tapped, out, tokenizer_dir=tmp_path / "tokenizer") == out
    else:
        export_student(student, out, tokenizer_dir=tmp_path / "tokenizer")
        tapped = HFTapModel(student)
    config_text = (out / "config.json").read_text()
    assert ATTENTION_NAME not in config_text and "attn_implementation" not in config_text
    assert (out / "model.safetensors").is_file()
    for name, content in tokenizer.items():
        assert (out / name).read_bytes() == content
    assert not (out / "notes.txt").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []   # no staging left
    reloaded = AUTO_CLASS[family].from_pretrained(out, local_files_only=True).eval()
    assert type(reloaded) is type(student) and reloaded.config.num_hidden_layers == 2
    assert reloaded.config._attn_implementation == "sdpa"
    torch.testing.assert_close(hf_logits(reloaded, ids, mask), tap_logits(tapped, ids, mask), rtol=0,
                               atol=EXPORT_ATOL)


def test_export_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    student = layer_dropped_student(tiny("gpt2"), KEEP)
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("earlier run")
    with pytest.raises(FileExistsError, match=str(out)):
        export_student(student, out)
    assert sorted(path.name for path in out.iterdir()) == ["old.txt"]          # untouched
    assert [path.name for path in tmp_path.iterdir()] == ["export"]            # no staging left
    export_student(student, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["export"]            # the old folder is gone


def test_export_into_an_existing_empty_folder_and_refuses_a_file(tmp_path):
    student = layer_dropped_student(tiny("llama"), KEEP)
    (tmp_path / "empty").mkdir()
    export_student(student, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        export_student(student, tmp_path / "file", overwrite=True)


def test_export_rejects_what_is_not_a_model_and_a_tokenizer_folder_without_files(tmp_path):
    with pytest.raises(TypeError, match="HFTapModel or a transformers PreTrainedModel"):
        export_student(nn.Linear(2, 2), tmp_path / "export")
    (tmp_path / "no_tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="has none of"):
        export_student(layer_dropped_student(tiny("bert"), KEEP), tmp_path / "export",
                       tokenizer_dir=tmp_path / "no_tokenizer")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["no_tokenizer"]    # nothing half-written


FRESH_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True).eval()
batch = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(input_ids=batch["ids"], attention_mask=batch["mask"], use_cache=False).logits
torch.save({"logits": logits, "attention": model.config._attn_implementation,
            "layers": model.config.num_hidden_layers, "framework_loaded": "model.hf" in sys.modules}, sys.argv[3])
"""


@pytest.mark.slow   # a subprocess that imports transformers
def test_export_loads_in_a_fresh_process(tmp_path):
    """A process that never imports this framework (no "gkd_taps" registered) loads the export."""
    student = layer_dropped_student(tiny("llama"), KEEP)
    tapped = HFTapModel(student)
    ids, mask = inputs()
    export_student(tapped, tmp_path / "export")
    torch.save({"ids": ids, "mask": mask}, tmp_path / "batch.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run([sys.executable, "-c", FRESH_LOAD, str(tmp_path / "export"), str(tmp_path / "batch.pt"),
                    str(tmp_path / "result.pt")], cwd=tmp_path, env=env, check=True, timeout=600)
    result = torch.load(tmp_path / "result.pt")
    assert result["attention"] == "sdpa" and result["layers"] == 2 and not result["framework_loaded"]
    torch.testing.assert_close(result["logits"], tap_logits(tapped, ids, mask), rtol=0, atol=EXPORT_ATOL)
