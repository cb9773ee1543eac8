"""Hugging Face model folders as students and teachers: reading and checking a folder's
config.json (at parse time, before anything is built), loading the model for the run's
objective, the layer-dropped student, the tokenizer and the teachers' agreement with it.

Everything loads offline from local folders (`local_files_only=True`). A model may also be a
GGUF file (llama.cpp's format): a `.gguf` path, or a folder holding exactly one `.gguf` file and
no config.json. transformers reads its config and tokenizer from the file's metadata and
dequantises its weights to the requested dtype when the model is loaded (which needs the `gguf`
and `accelerate` packages); the parse-time check reads the metadata only, once per process.
"""
import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from model.hf import MODEL_TYPES, HFTapModel, family_of

from .config import ArchConfig, ConfigError

ENCODER_TYPES = ("bert", "roberta")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


GGUF_SUFFIX = ".gguf"
GGUF_PACKAGES = ("gguf", "accelerate")   # transformers reads GGUF with gguf; loads its weights with accelerate
_GGUF_CONFIGS: Dict[Tuple[str, int, int], object] = {}   # (file, mtime_ns, size) -> config: read once


def gguf_file(source: str) -> Optional[Path]:
    """The GGUF file a model source names: the source itself when it is a `.gguf` file, the one
    `.gguf` file of a folder that has no config.json; None otherwise (a folder with several is
    refused by `read_hf_config`)."""
    path = Path(source)
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if path.is_dir() and not (path / "config.json").is_file():
        found = _gguf_files(path)
        return found[0] if len(found) == 1 else None
    return None


def _gguf_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())


def _gguf_config(file: Path, folder: str, what: str):
    """The config in a GGUF file's metadata (no tensor is read), cached per file version."""
    missing = [name for name in GGUF_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{what}={folder} is a GGUF file, which needs the {' and '.join(missing)} "
                          f"package{'s' if len(missing) > 1 else ''}: pip install {' '.join(GGUF_PACKAGES)}")
    stat = file.stat()
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _GGUF_CONFIGS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig
        try:
            _GGUF_CONFIGS[key] = AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name,
                                                            local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"{what}={folder}: not a GGUF model transformers reads ({error})") from None
    return copy.deepcopy(_GGUF_CONFIGS[key])


def _check_model_type(model_type, folder: str, what: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{what}={folder}: unsupported Hugging Face architecture {model_type!r}; supported model "
                          f"types: {', '.join(sorted(MODEL_TYPES))}")


def read_hf_config(folder: str, what: str):
    """The transformers config of a model folder or GGUF file; ConfigError naming `what` and the
    folder when it is neither, or its architecture is not supported."""
    path = Path(folder)
    gguf = gguf_file(folder)
    if gguf is not None:
        config = _gguf_config(gguf, folder, what)
        _check_model_type(config.model_type, folder, what)
        return config
    if path.is_file():
        raise ConfigError(f"{what}={folder} is a file, neither a Hugging Face model folder nor a {GGUF_SUFFIX} file")
    if not path.is_dir():
        raise ConfigError(f"{what}={folder}: no such folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        several = _gguf_files(path)
        if several:
            raise ConfigError(f"{what}={folder} holds {len(several)} GGUF files "
                              f"({', '.join(p.name for p in several)}): name one of them")
        raise ConfigError(f"{what}={folder} is not a Hugging Face model folder: it has no config.json "
                          f"(nor one {GGUF_SUFFIX} file)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{what}={folder}: config.json is not valid JSON ({error})") from None
    _check_model_type(model_type, folder, what)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def has_weights(folder: str) -> bool:
    return gguf_file(folder) is not None or any((Path(folder) / name).is_file() for name in WEIGHT_FILES)


def arch_of(config, num_layers: Optional[int] = None) -> ArchConfig:
    """The sizes of an HF config as the run's ArchConfig (the layer count overridable)."""
    family_of(config.model_type)   # NotImplementedError for an unsupported architecture
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
    return ArchConfig(num_layers=num_layers or layers, hidden_size=config.hidden_size,
                      num_attention_heads=config.num_attention_heads, max_position_embeddings=positions)


def check_classifier(config, folder: str, num_labels: int, what: str) -> None:
    """A teacher must be fine-tuned on the task: a sequence-classification model with its labels."""
    architectures = getattr(config, "architectures", None) or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        recorded = ", ".join(architectures) or "no architecture recorded"
        raise ConfigError(f"{what} ({folder}) has no trained classification head ({recorded}): fine-tune it on the "
                          f"task first (finetune.py --hf_model={folder} --task=...), then distil from its exported "
                          f"hf_student folder")
    if config.num_labels != num_labels:
        raise ConfigError(f"{what} ({folder}) classifies into {config.num_labels} labels; the task has {num_labels}")


def objective_of(config, requested: str = "auto") -> str:
    """masked LM for encoders, causal LM for decoders (or the requested one, checked)."""
    natural = "masked" if config.model_type in ENCODER_TYPES else "causal"
    if requested not in ("auto", natural):
        raise ConfigError(f"--hf_objective={requested} does not fit a {config.model_type} model "
                          f"({natural} LM does)")
    return natural


def _auto_class(objective: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification
    return {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM,
            "classification": AutoModelForSequenceClassification}[objective]


def load_hf_model(folder: str, objective: str, dtype: torch.dtype = torch.float32,
                  num_labels: Optional[int] = None) -> HFTapModel:
    """The folder's model with its LM head, or with a classification head of `num_labels`
    (objective "classification"; a head of another size is initialised afresh): weights, or a
    fresh model from config.json alone; a GGUF file's weights dequantised to `dtype`."""
    cls = _auto_class(objective)
    extra = {} if num_labels is None else {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    gguf = gguf_file(folder)
    if gguf is not None:
        model = cls.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=dtype,
                                    **_dequantised(), **extra)
        if getattr(model, "is_quantized", False):
            raise ConfigError(f"{folder}: transformers kept the GGUF weights packed; distillation needs them "
                              f"dequantised (a plain trainable model)")
    elif has_weights(folder):
        model = cls.from_pretrained(folder, local_files_only=True, dtype=dtype, **extra)
    else:
        config = read_hf_config(folder, "the model")
        if num_labels is not None:
            config.num_labels = num_labels
        model = cls.from_config(config, dtype=dtype)
    if objective == "classification" and model.config.pad_token_id is None:   # decoders score the last token
        model.config.pad_token_id = model.config.eos_token_id
    return HFTapModel(model)


def _dequantised() -> Dict[str, object]:
    """from_pretrained's arguments for a GGUF file unpacked into a plain dense model. transformers
    may otherwise keep the weights in GGUF blocks (with the `kernels` package), or mark the model
    quantized, which refuses `.float()`, `.to(dtype)` and training; older versions always unpack."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def load_tokenizer(folder: str, what: str):
    """The tokenizer of a model folder, or the one in a GGUF file's metadata."""
    from transformers import AutoTokenizer
    gguf = gguf_file(folder)
    try:
        if gguf is not None:
            return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what}={folder}: no usable tokenizer in the folder ({error})") from None


def tokenizer_mismatch(ours, theirs) -> Optional[str]:
    """None when both tokenizers map the same tokens to the same ids; otherwise both sizes and
    the first differing token."""
    mine, other = ours.get_vocab(), theirs.get_vocab()
    if mine == other:
        return None
    by_id = {i: t for t, i in mine.items()}
    other_by_id = {i: t for t, i in other.items()}
    for index in range(max(len(by_id), len(other_by_id))):
        if by_id.get(index) != other_by_id.get(index):
            return (f"{len(mine)} against {len(other)} tokens; the first difference is id {index}: "
                    f"{by_id.get(index)!r} against {other_by_id.get(index)!r}")
    return f"{len(mine)} against {len(other)} tokens"


def check_tokenizers(student_folder: str, teacher_folders: List[str]) -> None:
    """Every teacher reads the student's tokenisation: ConfigError naming both folders otherwise."""
    ours = load_tokenizer(student_folder, "the student's tokenizer")
    for t_no, folder in enumerate(teacher_folders):
        difference = tokenizer_mismatch(ours, load_tokenizer(folder, f"teacher {t_no}"))
        if difference is not None:
            raise ConfigError(f"teacher {t_no} ({folder}) and the student ({student_folder}) have different "
                              f"vocabularies: {difference}; distillation feeds both the same token ids")


def student_from_checkpoint(checkpoint_dir: str):
    """(the HF student model of a run's checkpoint, the tokenizer folder the run recorded): the
    model built from the recorded config.json values with the checkpoint's `hf.*` weights
    (strict); auxiliary layers and the combiner (`student.*`) are left out."""
    from model.checkpoint import CheckpointError
    from .checkpointing import read_model_states
    states = read_model_states(checkpoint_dir, 0, 1)
    if states.get("model_family") != "hf":
        raise CheckpointError(f"{checkpoint_dir} is not a Hugging Face student's checkpoint (model family "
                              f"{states.get('model_family')!r}); export_hf.py exports runs of --hf_model / "
                              f"--hf_student_layers")
    from transformers import AutoConfig
    values = dict(states["model_config"])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    objective = "masked" if config.model_type in ENCODER_TYPES else "causal"
    model = _auto_class(objective).from_config(config)
    weights = {key[len("hf."):]: value for key, value in states["module"].items() if key.startswith("hf.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {name for name in missing if name in getattr(model, "_tied_weights_keys", None) or ()}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{checkpoint_dir}: the weights do not fit the recorded {config.model_type} config "
                              f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.eval(), (states.get("tokenizer") or {}).get("folder")
