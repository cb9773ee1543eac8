"""Layer-dropped students of Hugging Face teachers, and the export of a trained student.

* `keep_layers(spec, teacher_layers, student_layers)`: which teacher layers a student keeps
  ("bottom", "stride" or an explicit list such as DistilBERT's "0,2,4,7,9,11").
* `layer_dropped_student(teacher, keep)`: a model of the teacher's class and width with only
  the kept layers; student layer j is a copy of teacher layer `keep[j]`, every other tensor
  (embeddings, final norm, heads) is copied as is.
* `export_student(model, out_dir, tokenizer_dir)`: a folder that `AutoModelFor*.from_pretrained`
  loads in a process that knows nothing of this framework (safetensors weights, a config
  without our registered attention, the tokenizer files, or a tokenizer object's
  `save_pretrained` files), written atomically.

See `hf-interop-design.md`, section 4.
"""
import copy
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn
from transformers import PreTrainedModel

from .hf import HFTapModel, family_of

# Tokenizer files copied next to an export when they exist in the tokenizer folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja")
# config.json keys naming an attention implementation; an export must not name ours ("gkd_taps").
ATTENTION_CONFIG_KEYS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal")


# --------------------------------------------------------------------------- which layers
def _layer_error(spec: str, teacher_layers: int, reason: str) -> ValueError:
    return ValueError(f"student layers {spec!r} of a {teacher_layers}-layer teacher: {reason}")


def check_keep(keep: List[int], teacher_layers: int, spec: Optional[str] = None) -> None:
    """Raise a ValueError unless `keep` is 1..teacher_layers distinct, strictly increasing
    teacher layer indices in [0, teacher_layers). `spec` names the request in the message."""
    spec = spec if spec is not None else ",".join(str(index) for index in keep)
    if not keep:
        raise _layer_error(spec, teacher_layers, "a student needs at least one layer")
    if len(keep) > teacher_layers:
        raise _layer_error(spec, teacher_layers, f"{len(keep)} layers is more than the teacher has")
    outside = [index for index in keep if not 0 <= index < teacher_layers]
    if outside:
        raise _layer_error(spec, teacher_layers, f"indices {outside} are outside 0..{teacher_layers - 1}")
    repeated = sorted({index for index in keep if keep.count(index) > 1})
    if repeated:
        raise _layer_error(spec, teacher_layers, f"indices {repeated} are repeated")
    if any(later <= earlier for earlier, later in zip(keep, keep[1:])):
        raise _layer_error(spec, teacher_layers, f"indices {keep} are not strictly increasing")


def _student_count(spec: str, teacher_layers: int, student_layers: Optional[int]) -> int:
    """The student's layer count for "bottom"/"stride", which need it given and in 1..teacher_layers."""
    if student_layers is None:
        raise _layer_error(spec, teacher_layers, "the number of student layers is required")
    if not 1 <= student_layers <= teacher_layers:
        raise _layer_error(spec, teacher_layers, f"{student_layers} student layers is not in 1..{teacher_layers}")
    return student_layers


def _parse_list(spec: str, teacher_layers: int) -> List[int]:
    """"2, 6,10" -> [2, 6, 10]; anything that is not a comma list of integers raises."""
    try:
        return [int(part) for part in spec.split(",")]
    except ValueError:
        raise _layer_error(spec, teacher_layers, 'expected "bottom", "stride" or comma-separated layer indices '
                                                 'such as "0,2,4"') from None


def keep_layers(spec: str, teacher_layers: int, student_layers: Optional[int] = None) -> List[int]:
    """The teacher layers a layer-dropped student keeps, in order (student layer j <- keep[j]).

    spec:
    * "bottom": layers 0..n-1 (n = student_layers);
    * "stride": keep = [(j+1)*k - 1 for j in range(n)] with k = teacher_layers // n
      (12 -> 6 gives [1, 3, 5, 7, 9, 11]): student representation j+1 starts as teacher
      representation (j+1)k, the pair `layer_mapping.stride_layers` distils. When n does not
      divide teacher_layers, k is still the floor and the teacher's top teacher_layers - n*k
      layers are not kept (12 -> 5, k = 2: [1, 3, 5, 7, 9]);
    * an explicit comma list, e.g. "2,6,10" (student_layers, if given, must equal its length).
    Every error is a ValueError naming the spec and the teacher's layer count.
    """
    name = spec.strip()
    if name == "bottom":
        keep = list(range(_student_count(spec, teacher_layers, student_layers)))
    elif name == "stride":
        count = _student_count(spec, teacher_layers, student_layers)
        step = teacher_layers // count
        keep = [(j + 1) * step - 1 for j in range(count)]
    else:
        keep = _parse_list(spec, teacher_layers)
        if student_layers is not None and student_layers != len(keep):
            raise _layer_error(spec, teacher_layers, f"lists {len(keep)} layers but the student should have "
                                                     f"{student_layers}")
    check_keep(keep, teacher_layers, spec)
    return keep


# --------------------------------------------------------------------------- the student
def num_layers_of(config) -> int:
    """The layer count of an HF config (`num_hidden_layers`; GPT-2 maps it onto `n_layer`)."""
    return config.num_hidden_layers


def student_config(teacher_config, keep: List[int]):
    """The teacher's config with the layer count set to len(keep) and, where the config lists
    one type per layer (`layer_types`: full/sliding attention), that list sliced by `keep`."""
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(keep)          # GPT-2's attribute_map writes it to n_layer
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = [layer_types[index] for index in keep]
    return config


def layer_key_prefixes(model: nn.Module) -> List[str]:
    """State-dict key prefixes of the model's layer list, e.g. ["bert.encoder.layer."] for
    BertForMaskedLM, ["encoder.layer."] for a BertModel (a base model has no prefix)."""
    layers = family_of(model.config.model_type).layers
    if model.base_model is model:
        return [f"{layers}."]
    return [f"{model.base_model_prefix}.{layers}."]


def _split_layer_key(key: str, prefixes: List[str]):
    """"bert.encoder.layer.3.output.dense.weight" -> ("bert.encoder.layer.", 3, "output.dense.weight");
    None for a key outside the layers."""
    for prefix in prefixes:
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            return prefix, int(index), rest
    return None


def student_state_dict(teacher_state: Dict[str, torch.Tensor], keep: List[int],
                       prefixes: List[str]) -> Dict[str, torch.Tensor]:
    """The student's state dict: layer j's keys from teacher layer keep[j], dropped layers
    left out, every key outside the layers copied as is."""
    position = {teacher_index: student_index for student_index, teacher_index in enumerate(keep)}
    state = {}
    for key, tensor in teacher_state.items():
        parts = _split_layer_key(key, prefixes)
        if parts is None:
            state[key] = tensor
        elif parts[1] in position:
            prefix, teacher_index, rest = parts
            state[f"{prefix}{position[teacher_index]}.{rest}"] = tensor
    return state


def _check_gpt2_scaling(config, keep: List[int]) -> None:
    """GPT-2 with `scale_attn_by_inverse_layer_idx` divides layer i's attention scale by i + 1,
    with i the module's own `layer_idx`, fixed at construction from its position. A kept layer
    moved to a lower position would get another scale (the config cannot carry per-layer
    scales, so neither can an export): refuse rather than build a student that differs."""
    if getattr(config, "scale_attn_by_inverse_layer_idx", False) and keep != list(range(len(keep))):
        raise ValueError(f"student layers {keep} of a {num_layers_of(config)}-layer GPT-2 teacher with "
                         f"scale_attn_by_inverse_layer_idx: layer j would scale attention by 1/(j+1) instead of "
                         f"the teacher layer's 1/(keep[j]+1); only bottom layers (0..n-1) are supported")


def layer_dropped_student(teacher: PreTrainedModel, keep: List[int]) -> PreTrainedModel:
    """A new model of `type(teacher)` (same width, dtype and device) with len(keep) layers:
    student layer j <- teacher layer keep[j], every other tensor copied, loaded with strict=True.

    The student is built from scratch, so each layer's `layer_idx` (its KV-cache slot, and on
    GPT-2 with `scale_attn_by_inverse_layer_idx` its attention scale) is its own position j;
    for GPT-2 with that flag only bottom layers are accepted (`_check_gpt2_scaling`). Tied
    weights (LM head = word embedding) stay tied: the state dict lists both keys with the same
    values and load_state_dict copies into the one shared parameter. The student is in eval()
    mode iff the teacher is. The tensors are copies: training the student leaves the teacher as is.
    """
    keep = list(keep)
    check_keep(keep, num_layers_of(teacher.config))
    _check_gpt2_scaling(teacher.config, keep)
    config = student_config(teacher.config, keep)
    with torch.device(teacher.device):
        student = type(teacher)(config)
    student.to(dtype=teacher.dtype)
    state = student_state_dict(teacher.state_dict(), keep, layer_key_prefixes(teacher))
    student.load_state_dict(state, strict=True)
    return student.train(teacher.training)


# --------------------------------------------------------------------------- export
def _hf_model_of(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside an HFTapModel, or the model itself if it is one."""
    if isinstance(model, HFTapModel):
        return model.hf
    if isinstance(model, PreTrainedModel):
        return model
    raise TypeError(f"export_student takes an HFTapModel or a transformers PreTrainedModel, not "
                    f"{type(model).__name__}; load a checkpoint's state dict into HFTapModel(model) first")


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file at out_dir, and a non-empty folder unless overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"export target {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"export folder {out_dir} exists and is not empty; pass overwrite=True to replace it")


def strip_attention_implementation(config_path: Path) -> None:
    """Remove the attention-implementation keys (ATTENTION_CONFIG_KEYS) from a saved config.json,
    at any depth (sub-configs), so a loader picks its own default instead of our "gkd_taps"."""
    def strip(node):
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items() if key not in ATTENTION_CONFIG_KEYS}
        if isinstance(node, list):
            return [strip(value) for value in node]
        return node
    config = json.loads(config_path.read_text())
    stripped = strip(config)
    if stripped != config:
        config_path.write_text(json.dumps(stripped, indent=2, sort_keys=True) + "\n")


def copy_tokenizer_files(tokenizer_dir: Union[str, Path], out_dir: Path) -> List[str]:
    """Copy the TOKENIZER_FILES that exist in tokenizer_dir into out_dir; their names. A
    folder with none of them raises FileNotFoundError (a silently tokenizer-less export
    would fail only when someone loads it)."""
    source = Path(tokenizer_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"tokenizer folder {source} does not exist")
    names = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not names:
        raise FileNotFoundError(f"tokenizer folder {source} has none of {', '.join(TOKENIZER_FILES)}")
    for name in names:
        shutil.copy2(source / name, out_dir / name)
    return names


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to out_dir. An existing out_dir (empty, or replaced
    under overwrite) is first renamed aside and removed after, so out_dir is never a
    half-written folder. The target is checked again: it may have filled during the write."""
    _check_target(out_dir, overwrite)
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(aside)
    staging.rename(out_dir)
    shutil.rmtree(aside)


def export_student(model: nn.Module, out_dir: Union[str, Path], tokenizer_dir: Union[str, Path, None] = None,
                   overwrite: bool = False, tokenizer=None) -> Path:
    """Write `model` (an HFTapModel or a transformers PreTrainedModel; a trainer checkpoint's
    `hf.`-prefixed state dict is exported by loading it into HFTapModel(model) first) as a
    folder that `AutoModelFor*.from_pretrained(out_dir)` loads in a fresh process; returns out_dir.

    The folder holds `save_pretrained`'s files (config.json, model.safetensors: transformers 5
    writes safetensors only; generation_config.json for generative models), config.json with
    no attention implementation (so the loader picks its default, not the "gkd_taps" it has
    not registered), and the tokenizer files found in tokenizer_dir (TOKENIZER_FILES) or, for a
    tokenizer with no files to copy (one read from a GGUF file), what `tokenizer.save_pretrained`
    writes (give one of tokenizer_dir and tokenizer). It is written into a temporary sibling
    folder and renamed into place. An existing non-empty out_dir raises FileExistsError unless
    overwrite=True. The model itself is not changed (save_pretrained records its dtype and
    architecture in its config).
    """
    hf_model = _hf_model_of(model)
    if tokenizer_dir is not None and tokenizer is not None:
        raise ValueError("export_student takes the tokenizer as files (tokenizer_dir) or as an object (tokenizer), "
                         "not both")
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        hf_model.save_pretrained(staging)
        if not any(staging.glob("*.safetensors")):
            raise RuntimeError(f"save_pretrained wrote no safetensors file in {staging}: {os.listdir(staging)}")
        strip_attention_implementation(staging / "config.json")
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        _move_into_place(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
