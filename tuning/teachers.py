"""The `task_t_load` registry: per-task teacher checkpoints by name.

The registry is a JSON object `{key: {"args": [[flag, value], ...], "tasks": {task: path},
"comments": str}}`. For a task, each `[flag, value]` with a scalar value is passed as is (`true`
or `null` make a switch); a list value is resolved element by element, an element that is a
registry key to that entry's checkpoint for the task, any other element to a literal path, and
the paths are joined with `:` (several teachers, `--mt_load_pretrained=a:b`). Paths are relative
to the checkpoint root unless absolute.
"""
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from .arglist import Arg, ArgError, format_value

DEFAULT_REGISTRY = Path(__file__).resolve().parent / "task_t_load.json"


@dataclass(frozen=True)
class TeacherEntry:
    key: str
    args: Tuple[Tuple[str, Any], ...]
    tasks: Mapping[str, str]
    comments: str = ""


def _entry(key: str, raw: Any, source: str) -> TeacherEntry:
    where = f"{source}: entry {key!r}"
    if not isinstance(raw, dict) or not isinstance(raw.get("args", []), list):
        raise ArgError(f"{where} must be an object with an 'args' list of [flag, value] pairs")
    args = []
    for pair in raw.get("args", []):
        if not (isinstance(pair, list) and 1 <= len(pair) <= 2 and isinstance(pair[0], str)
                and pair[0].startswith("--")):
            raise ArgError(f"{where}: {pair!r} is not a [\"--flag\", value] pair")
        args.append((pair[0], pair[1] if len(pair) == 2 else None))
    tasks = raw.get("tasks", {})
    if not isinstance(tasks, dict) or not all(isinstance(v, str) for v in tasks.values()):
        raise ArgError(f"{where}: 'tasks' must map task names to checkpoint paths")
    return TeacherEntry(key, tuple(args), dict(tasks), str(raw.get("comments", "")))


def load_registry(path: str) -> Dict[str, TeacherEntry]:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArgError(f"--task_t_load_path={path}: no such file") from None
    except json.JSONDecodeError as error:
        raise ArgError(f"--task_t_load_path={path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ArgError(f"--task_t_load_path={path}: expected a JSON object of named teacher sets")
    return {key: _entry(key, value, path) for key, value in raw.items()}


def check_key(registry: Mapping[str, TeacherEntry], key: str, flag: str = "--task_t_load") -> TeacherEntry:
    if key not in registry:
        raise ArgError(f"{flag}={key}: no such teacher set; the registry has: {', '.join(sorted(registry))}")
    return registry[key]


def _resolve(registry: Mapping[str, TeacherEntry], element: str, task: str, root: str, key: str) -> str:
    if element in registry:
        tasks = registry[element].tasks
        if task not in tasks:
            raise ArgError(f"--task_t_load={key}: teacher set {element!r} has no checkpoint for task {task!r} "
                           f"(it has: {', '.join(sorted(tasks)) or 'none'})")
        return posixpath.join(root, tasks[task])
    return posixpath.join(root, element)


def teacher_args(registry: Mapping[str, TeacherEntry], key: str, task: str, checkpoint_root: str) -> List[Arg]:
    """The teacher flags of teacher set `key` for `task` (a task key such as "rte")."""
    entry = check_key(registry, key)
    args: List[Arg] = []
    for flag, value in entry.args:
        if isinstance(value, list):
            value = ":".join(_resolve(registry, str(item), task, checkpoint_root, key) for item in value)
        try:
            args.append((flag, format_value(value)))
        except ArgError as error:
            raise ArgError(f"--task_t_load={key}: {flag}: {error}") from None
    return args
