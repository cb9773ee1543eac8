"""Per-task patches of the DeepSpeed JSON.

`--ds_<a>__<b>=v` sets `config[a][b]`, cast to the type of the value already there (so the key
must exist); `v` may be a `;` list with one value per task of `--tasks`. `--rate_ds_<a>__<b>=r`
multiplies that value (the overridden one, or the JSON's) by `r`. `--del_fp16` sets
`fp16.enabled` to false and drops `zero_optimization`.
"""
import copy
import json
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .arglist import ArgError

KeyPath = Tuple[str, ...]


@dataclass(frozen=True)
class DsOverride:
    flag: str                  # as given, for messages: "--ds_optimizer__params__lr"
    path: KeyPath              # ("optimizer", "params", "lr")
    values: Tuple[str, ...]    # one value, or one per task


@dataclass(frozen=True)
class DsRate:
    flag: str
    path: KeyPath
    rate: float


def key_path(name: str, flag: str) -> KeyPath:
    parts = tuple(name.split("__"))
    if not all(parts):
        raise ArgError(f"{flag}: empty key in the path {name!r} (levels are separated by '__')")
    return parts


def parse_override(flag: str, name: str, value: Optional[str], num_tasks: int) -> DsOverride:
    if value is None or value == "":
        raise ArgError(f"{flag} needs a value, e.g. {flag}=16")
    values = tuple(value.split(";"))
    if len(values) > 1 and len(values) != num_tasks:
        raise ArgError(f"{flag}={value}: {len(values)} ';'-separated values for {num_tasks} tasks in --tasks")
    return DsOverride(flag, key_path(name, flag), values)


def parse_rate(flag: str, name: str, value: Optional[str]) -> DsRate:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ArgError(f"{flag}={value}: a rate must be a number") from None
    if rate <= 0:
        raise ArgError(f"{flag}={value}: a rate must be positive")
    return DsRate(flag, key_path(name, flag), rate)


def _parent(config: dict, path: KeyPath, flag: str, source: str) -> dict:
    node = config
    for depth, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(path[:depth]) or "the top level"
            keys = ", ".join(sorted(node)) if isinstance(node, dict) else "none: not an object"
            raise ArgError(f"{flag}: {source} has no key {key!r} at {where} (keys there: {keys})")
        if depth < len(path) - 1:
            node = node[key]
    return node


def cast_like(text: str, like: Any, flag: str) -> Any:
    """`text` converted to the type of the existing value `like`."""
    try:
        if isinstance(like, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1")
        if isinstance(like, int):
            number = float(text)
            if not number.is_integer():
                raise ValueError("expected an integer")
            return int(number)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, (list, dict)):
            value = json.loads(text)
            if not isinstance(value, type(like)):
                raise ValueError(f"expected a JSON {type(like).__name__}")
            return value
        return text
    except ValueError as error:
        raise ArgError(f"{flag}={text}: {error} (the JSON holds {json.dumps(like)})") from None


def _scaled(value: Any, rate: DsRate, task: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgError(f"{rate.flag}: {'.'.join(rate.path)} is {json.dumps(value)}, not a number")
    product = value * rate.rate
    if isinstance(value, int):
        if abs(product - round(product)) > 1e-9:
            raise ArgError(f"{rate.flag}={rate.rate:g} makes {'.'.join(rate.path)} {value} x {rate.rate:g} = "
                           f"{product:g} for task {task}: not an integer")
        return int(round(product))
    return product


def patch_config(base: dict, overrides: Sequence[DsOverride], rates: Sequence[DsRate], task_index: int, task: str,
                 del_fp16: bool, source: str) -> Tuple[dict, List[str]]:
    """The config of the `task_index`-th task and the list of changes ("a.b=v"), empty when none."""
    config, changed = copy.deepcopy(base), {}

    def assign(path: KeyPath, value: Any, flag: str) -> None:
        parent = _parent(config, path, flag, source)
        parent[path[-1]] = value
        changed[".".join(path)] = value

    for override in overrides:
        text = override.values[task_index if len(override.values) > 1 else 0]
        current = _parent(config, override.path, override.flag, source)[override.path[-1]]
        assign(override.path, cast_like(text, current, override.flag), override.flag)
    for rate in rates:
        current = _parent(config, rate.path, rate.flag, source)[rate.path[-1]]
        assign(rate.path, _scaled(current, rate, task), rate.flag)
    changes = [f"{path}={json.dumps(value)}" for path, value in changed.items()
               if _lookup(base, path.split(".")) != (type(value), value)]
    if del_fp16:
        if config.get("fp16", {}).get("enabled"):
            config["fp16"]["enabled"] = False
            changes.append("fp16.enabled=false")
        if "zero_optimization" in config:
            del config["zero_optimization"]
            changes.append("zero_optimization removed")
    return config, changes


def _lookup(config: dict, path: Sequence[str]) -> Tuple[type, Any]:
    for key in path:
        config = config[key]
    return type(config), config
