"""The one place that builds the DeepSpeed config.

`build_deepspeed_config` takes what the command line says (`DeepSpeedSettings`) and an
optional DeepSpeed JSON (`config/*.json`) and returns the dict that is handed to
`deepspeed.initialize(config=...)`, plus human-readable notes about every command-line value
the JSON overrode. The semantics are the original's: the JSON's micro batch,
gradient accumulation, optimizer hyper-parameters, clipping, precision and ZeRO settings win
over `--batch-size`, `--lr`, ...; with `--args_to_ds_config` the command line's batch size,
gradient accumulation, ZeRO stage, offload and precision are written into the config instead.
Keys the JSON lacks are filled in from the command line.

DeepSpeed itself is not imported here (STYLE 8). What DeepSpeed 0.19.8 refuses on a CPU-only
machine is encoded as errors instead: fp16 ("Type fp16 is not supported on your device").
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "DeepSpeedConfigError",
    "DeepSpeedSettings",
    "build_deepspeed_config",
    "effective_training_values",
    "write_config_copy",
]


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed JSON or a combination of settings that cannot work."""


@dataclass(frozen=True)
class DeepSpeedSettings:
    """What the command line says; the engine builds it from the parsed flags."""

    batch_size: int = 4  # --batch-size: micro batch per data-parallel rank
    gradient_accumulation_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    fp16: bool = False
    bf16: bool = False
    zero_stage: int = 0
    cpu_offload: bool = False
    args_to_ds_config: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise DeepSpeedConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not _is_int(self.zero_stage) or not 0 <= self.zero_stage <= 3:
            raise DeepSpeedConfigError(f"--zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.fp16 and self.bf16:
            raise DeepSpeedConfigError("--fp16 and --bf16 are both given; choose one (or neither for fp32)")


@dataclass(frozen=True)
class _Field:
    """One command-line value and where it lives in the DeepSpeed config."""

    setting: str  # DeepSpeedSettings attribute
    flag: str  # command-line spelling, for notes
    path: tuple  # key path in the config (an int indexes a list)
    kind: str  # "count", "stage", "number", "bool" or "offload": what a JSON value must be
    from_cli_with_args_to_ds_config: bool  # written from the command line under --args_to_ds_config


_FIELDS = (
    _Field("batch_size", "--batch-size", ("train_micro_batch_size_per_gpu",), "count", True),
    _Field("gradient_accumulation_steps", "--gradient-accumulation-steps", ("gradient_accumulation_steps",), "count",
           True),
    _Field("lr", "--lr", ("optimizer", "params", "lr"), "number", False),
    _Field("weight_decay", "--weight-decay", ("optimizer", "params", "weight_decay"), "number", False),
    _Field("adam_beta1", "--adam-beta1", ("optimizer", "params", "betas", 0), "number", False),
    _Field("adam_beta2", "--adam-beta2", ("optimizer", "params", "betas", 1), "number", False),
    _Field("adam_eps", "--adam-eps", ("optimizer", "params", "eps"), "number", False),
    _Field("clip_grad", "--clip-grad", ("gradient_clipping",), "number", False),
    _Field("fp16", "--fp16", ("fp16", "enabled"), "bool", True),
    _Field("bf16", "--bf16", ("bf16", "enabled"), "bool", True),
    _Field("zero_stage", "--zero_stage", ("zero_optimization", "stage"), "stage", True),
    _Field("cpu_offload", "--cpu_offload", ("zero_optimization", "offload_optimizer", "device"), "offload", True),
)
_OFFLOAD_DEVICES = ("none", "cpu", "nvme")
_ADAM_TYPES = ("adam", "adamw")
_MISSING = object()


def build_deepspeed_config(
    settings: DeepSpeedSettings,
    json_path: Optional[str] = None,
    world_size_dp: int = 1,
    cuda_available: Optional[bool] = None,
) -> tuple[dict, list[str]]:
    """Resolve the DeepSpeed config; returns `(config, notes)`.

    Without `json_path` the config comes from `settings` alone. With it, the JSON's values win
    (each overridden, differing command-line value gives a note), except that with
    `settings.args_to_ds_config` the command line's batch size, gradient accumulation, ZeRO stage,
    offload and precision are written in. `train_batch_size` is always
    `micro * gradient_accumulation_steps * world_size_dp`; a JSON value that disagrees is dropped
    with a note. `cuda_available=None` asks torch.
    """
    if not _is_int(world_size_dp) or world_size_dp < 1:
        raise DeepSpeedConfigError(f"world_size_dp must be a positive integer, got {world_size_dp!r}")
    from_cli = _config_from_settings(settings)
    notes: list[str] = []
    if json_path is None:
        config, sources = from_cli, {f.setting: f.flag for f in _FIELDS}
    else:
        config, sources = _merge_json(settings, from_cli, json_path, notes)
    _set_train_batch_size(config, world_size_dp, json_path, notes)
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    _check_resolved(config, sources, cuda_available)
    return config, notes


def effective_training_values(ds_config: dict) -> dict:
    """What the run really uses (the original wrote these back into `args`).

    Keys: batch_size (micro batch per rank), gradient_accumulation_steps, train_batch_size, lr,
    weight_decay, betas (a tuple), eps, gradient_clipping, fp16, bf16, zero_stage, cpu_offload,
    optimizer (its type). A value the config lacks is None.
    """
    read = {f.setting: _read_field(ds_config, f) for f in _FIELDS}
    read = {name: (None if value is _MISSING else value) for name, value in read.items()}
    betas = None if read["adam_beta1"] is None else (read["adam_beta1"], read["adam_beta2"])
    return {
        "batch_size": read["batch_size"],
        "gradient_accumulation_steps": read["gradient_accumulation_steps"],
        "train_batch_size": ds_config.get("train_batch_size"),
        "lr": read["lr"],
        "weight_decay": read["weight_decay"],
        "betas": betas,
        "eps": read["adam_eps"],
        "gradient_clipping": read["clip_grad"],
        "fp16": bool(read["fp16"]),
        "bf16": bool(read["bf16"]),
        "zero_stage": read["zero_stage"] or 0,
        "cpu_offload": bool(read["cpu_offload"]),
        "optimizer": ds_config.get("optimizer", {}).get("type"),
    }


def write_config_copy(ds_config: dict, directory: str) -> Path:
    """Write the resolved config to `directory/<time>_<pid>_<random>.json` atomically; return the path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{uuid.uuid4().hex[:8]}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(ds_config, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- building


def _config_from_settings(s: DeepSpeedSettings) -> dict:
    """A complete config from the command line alone."""
    zero: dict[str, Any] = {"stage": s.zero_stage}
    if s.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": s.batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        "steps_per_print": 100,
        "gradient_clipping": s.clip_grad,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": s.fp16, "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": s.bf16},
        "optimizer": {
            "type": "Adam",
            "params": {"lr": s.lr, "betas": [s.adam_beta1, s.adam_beta2], "eps": s.adam_eps,
                       "weight_decay": s.weight_decay},
        },
        "wall_clock_breakdown": False,
    }


def _merge_json(settings: DeepSpeedSettings, from_cli: dict, json_path: str, notes: list[str]) -> tuple[dict, dict]:
    """JSON over command line; returns the config and, per setting, where its value came from."""
    from_json = _load_json(json_path)
    _translate_legacy_cpu_offload(from_json, json_path, notes)
    _check_json_types(from_json, json_path)
    _complete_precision(from_json)
    if "scheduler" in from_json:
        raise DeepSpeedConfigError(
            f"{json_path} has a 'scheduler' block; the learning-rate schedule comes from --lr-decay-style "
            "(training.lr_schedule.AnnealingLR), so two schedules would fight: remove the block")
    json_optimizer = from_json.get("optimizer", {}).get("type", "Adam")
    if json_optimizer.lower() not in _ADAM_TYPES:  # the JSON's optimizer block stands alone
        from_cli = {k: v for k, v in from_cli.items() if k != "optimizer"}
    config = _deep_merge(from_cli, from_json)
    sources = {}
    for field in _FIELDS:
        json_value = _read_field(from_json, field)
        if json_value is _MISSING:
            sources[field.setting] = field.flag
            continue
        cli_value = getattr(settings, field.setting)
        if settings.args_to_ds_config and field.from_cli_with_args_to_ds_config:
            _write_field(config, field, cli_value)
            sources[field.setting] = f"{field.flag} (--args_to_ds_config)"
            continue
        sources[field.setting] = f"{_dotted(field)} in {json_path}"
        if field.kind == "offload" and not json_value:  # the merge kept the command line's offload block
            config["zero_optimization"].pop("offload_optimizer", None)
        if json_value != cli_value:
            notes.append(_override_note(field, cli_value, _read_path(from_json, field.path), json_path))
    return config, sources


def _override_note(field: _Field, cli_value: Any, raw_json_value: Any, json_path: str) -> str:
    if field.from_cli_with_args_to_ds_config:
        hint = "pass --args_to_ds_config to use the command line's value"
    else:
        hint = "edit the JSON, or patch it with auto_tune's ds_ flags, to change it"
    json_text = _json_text(field, raw_json_value)
    return f"{field.flag}={_cli_text(cli_value)} is overridden by {_dotted(field)}={json_text} in {json_path} ({hint})"


def _set_train_batch_size(config: dict, world_size_dp: int, json_path: Optional[str], notes: list[str]) -> None:
    micro, gas = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    total = micro * gas * world_size_dp
    given = config.get("train_batch_size", total)
    if given != total:
        notes.append(f"train_batch_size={given} in {json_path} is dropped: micro batch {micro} x gradient "
                     f"accumulation {gas} x data-parallel size {world_size_dp} = {total} is used")
    config["train_batch_size"] = total


def _check_resolved(config: dict, sources: dict, cuda_available: bool) -> None:
    fp16, bf16 = config["fp16"].get("enabled", False), config.get("bf16", {}).get("enabled", False)
    stage = config["zero_optimization"].get("stage", 0)
    offload = _read_field(config, _FIELDS_BY_NAME["cpu_offload"])
    if fp16 and bf16:
        raise DeepSpeedConfigError(
            f"fp16 and bf16 are both enabled (fp16 from {sources['fp16']}, bf16 from {sources['bf16']}); choose one")
    if not 0 <= stage <= 3:
        raise DeepSpeedConfigError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage} (from {sources['zero_stage']})")
    if offload and stage == 0:
        raise DeepSpeedConfigError(
            f"optimizer offload needs ZeRO stage 1, 2 or 3, but the stage is 0 (offload from "
            f"{sources['cpu_offload']}, stage from {sources['zero_stage']}); set --zero_stage or drop the offload")
    if fp16 and not cuda_available:
        raise DeepSpeedConfigError(
            f"fp16 is not supported on CPU (DeepSpeed: 'Type fp16 is not supported on your device'); fp16 comes "
            f"from {sources['fp16']}: use --bf16 or fp32 instead (with a JSON: disable fp16.enabled there, "
            "or pass --args_to_ds_config without --fp16)")


# --------------------------------------------------------------------------- JSON reading


def _load_json(json_path: str) -> dict:
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {json_path} does not exist")
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeepSpeedConfigError(
            f"{json_path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(loaded, dict):
        raise DeepSpeedConfigError(f"{json_path} must hold a JSON object, got {type(loaded).__name__}")
    return loaded


def _translate_legacy_cpu_offload(config: dict, json_path: str, notes: list[str]) -> None:
    """DeepSpeed deprecated zero_optimization.cpu_offload; the original's JSONs used it."""
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict) or "cpu_offload" not in zero:
        return
    legacy = zero.pop("cpu_offload")
    if not isinstance(legacy, bool):
        raise DeepSpeedConfigError(f"{json_path}: zero_optimization.cpu_offload must be true or false, got {legacy!r}")
    if legacy and "offload_optimizer" not in zero:
        zero["offload_optimizer"] = {"device": "cpu"}
    meaning = f"offload_optimizer={json.dumps(zero['offload_optimizer'])}" if legacy else "no optimizer offload"
    notes.append(f"{json_path}: deprecated zero_optimization.cpu_offload={json.dumps(legacy)} is read as {meaning}")


def _complete_precision(config: dict) -> None:
    """A JSON that enables or disables fp16 (or bf16) decides the precision: the other one is off."""
    named = [key for key in ("fp16", "bf16") if _read_path(config, (key, "enabled")) is not _MISSING]
    if named:
        for key in ("fp16", "bf16"):
            config.setdefault(key, {}).setdefault("enabled", False)


_SECTIONS = (("optimizer",), ("optimizer", "params"), ("fp16",), ("bf16",), ("zero_optimization",),
             ("zero_optimization", "offload_optimizer"))


def _check_json_types(config: dict, json_path: str) -> None:
    """Type-check the keys this module reads (DeepSpeed validates the rest)."""
    for section in _SECTIONS:
        value = _read_path(config, section)
        if value is not _MISSING and not isinstance(value, dict):
            raise DeepSpeedConfigError(f"{json_path}: {'.'.join(section)} must be an object, got {value!r}")
    optimizer_type = _read_path(config, ("optimizer", "type"))
    if optimizer_type is not _MISSING and not isinstance(optimizer_type, str):
        raise DeepSpeedConfigError(f"{json_path}: optimizer.type must be a string, got {optimizer_type!r}")
    betas = _read_path(config, ("optimizer", "params", "betas"))
    if betas is not _MISSING and not (isinstance(betas, list) and len(betas) == 2):
        raise DeepSpeedConfigError(f"{json_path}: optimizer.params.betas must be a list of two numbers, got {betas!r}")
    for field in _FIELDS:
        value = _read_path(config, field.path)
        if value is not _MISSING and not _has_kind(value, field.kind):
            expected = {"count": "a positive integer", "stage": "an integer", "number": "a non-negative number",
                        "bool": "true or false", "offload": f"one of {list(_OFFLOAD_DEVICES)}"}[field.kind]
            raise DeepSpeedConfigError(f"{json_path}: {_dotted(field)} must be {expected}, got {json.dumps(value)}")
    total = config.get("train_batch_size", 1)
    if not _is_int(total) or total < 1:
        raise DeepSpeedConfigError(f"{json_path}: train_batch_size must be a positive integer, got {json.dumps(total)}")


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "count":
        return _is_int(value) and value >= 1
    if kind == "stage":
        return _is_int(value)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if kind == "bool":
        return isinstance(value, bool)
    return value in _OFFLOAD_DEVICES


# --------------------------------------------------------------------------- small helpers

_FIELDS_BY_NAME = {f.setting: f for f in _FIELDS}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_path(config: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, int):
            if not isinstance(config, list) or key >= len(config):
                return _MISSING
        elif not isinstance(config, dict) or key not in config:
            return _MISSING
        config = config[key]
    return config


def _read_field(config: dict, field: _Field) -> Any:
    """The field's value in settings terms (offload: a bool); `_MISSING` if absent."""
    value = _read_path(config, field.path)
    if field.kind == "offload":
        if not isinstance(_read_path(config, ("zero_optimization",)), dict):
            return _MISSING  # no ZeRO block: the JSON says nothing about offload
        return value not in (_MISSING, "none")
    return value


def _write_field(config: dict, field: _Field, value: Any) -> None:
    if field.kind == "offload":
        zero = config.setdefault("zero_optimization", {})
        if value:
            zero["offload_optimizer"] = {**zero.get("offload_optimizer", {}), "device": "cpu"}
        else:
            zero.pop("offload_optimizer", None)
        return
    holder = config
    for key in field.path[:-1]:
        holder = holder.setdefault(key, {})
    holder[field.path[-1]] = value


def _deep_merge(base: dict, override: dict) -> dict:
    """`override` wins leaf by leaf (lists are leaves); neither input is modified."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _dotted(field: _Field) -> str:
    if field.kind == "offload":
        return "zero_optimization.offload_optimizer.device"
    parts = [str(k) if isinstance(k, str) else f"[{k}]" for k in field.path]
    return ".".join(parts).replace(".[", "[")


def _cli_text(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else repr(value)


def _json_text(field: _Field, raw: Any) -> str:
    if field.kind == "offload" and raw is _MISSING:  # a zero_optimization block without offload_optimizer
        return json.dumps("none")
    return json.dumps(raw)
