"""The original's 314 logged command lines and every seed recipe resolve to the same typed
configuration as when this snapshot was taken (before the configuration refactoring of issue
13): a refactoring of the option machinery must not change what any real command line means.

The snapshot (tests/data/resolved_configs.json) holds, per command line, the resolved values
that differ from an empty command line's, flattened to "section.field" keys; regenerate it only
for a deliberate change of meaning: `python tests/test_config_golden.py --regenerate`.
"""
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR.parent))
sys.path.insert(0, str(TESTS_DIR))

from training.arguments import parse_run_config   # noqa: E402
from training.config import ConfigError           # noqa: E402

SNAPSHOT = TESTS_DIR / "data" / "resolved_configs.json"
RECIPE_BASE = ("--tokenizer-path=vocab.txt", "--make-vocab-size-divisible-by=16", "--seq-length=32",
               "--teacher_load_pretrained=teacher")


# Values that were only in the raw flag record when the snapshot was taken: not compared.
UNTYPED_BEFORE = ("distill.random_data.", "distill.analysis.", "train.custom_no_summary_writer",
                  "distill.combiner_options.avgmt_inter_checkpoint", "distill.combiner_options.avgmt_pre_checkpoint")


def flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """{"section.field": leaf} of a RunConfig.to_dict(), as the snapshot names them: without the
    raw flag record of the time; a method's options under "distill.method_options.<field>" and
    a combiner's under "distill.combiner_options.<field>" whether they are a flat mapping (then)
    or typed options with typed components (MixBaseline, MixMT: "...components.<name>.<field>");
    an absent options instance (None) as the empty mapping it was."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if prefix == "" and key == "flags":
                continue
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    for options in ("distill.method_options.", "distill.combiner_options."):
        if key.startswith(options + "components."):
            key = options + key.rsplit(".", 1)[-1]
    if key in ("distill.method_options", "distill.combiner_options") and value is None:
        return {}
    if key.startswith(UNTYPED_BEFORE):
        return {}
    return {key: value}


def resolved(argv: List[str], stage: str) -> Dict[str, Any]:
    try:
        return flatten(json.loads(json.dumps(parse_run_config(argv, stage, "golden").to_dict(), default=str)))
    except ConfigError as error:
        return {"error": str(error)}


def difference(config: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in config.items() if key not in base or base[key] != value} | {
        key: "<absent>" for key in base if key not in config}


def logged_command_lines(shared_dir: Path) -> List[Tuple[str, List[str], str]]:
    """(key, argv, stage) of the 314 command lines in the original's result logs."""
    lines = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                lines.append(item) if key == "*cmd" else walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in sorted((shared_dir / "data/glmkd/ft_logs").rglob("*.json")):
        walk(json.loads(path.read_text()))
    result = []
    for line in lines:
        tokens = shlex.split(line)
        script = next(i for i, token in enumerate(tokens) if token.endswith(("finetune.py", "pretrain.py")))
        stage = "finetune" if tokens[script].endswith("finetune.py") else "pretrain"
        result.append((hashlib.sha256(line.encode()).hexdigest()[:16], tokens[script + 1:], stage))
    return result


def recipe_command_lines() -> List[Tuple[str, List[str], str]]:
    from method_recipes import all_recipes
    result = []
    for method, recipes in sorted(all_recipes().items()):
        for number, recipe in enumerate(recipes):
            layers, hidden, heads = recipe.teacher
            argv = [*RECIPE_BASE, f"--teacher_num_layers={layers}", f"--teacher_hidden_size={hidden}",
                    f"--teacher_num_attention_heads={heads}", *recipe.flags, *recipe.extra, *recipe.teacher_extra]
            if recipe.stage == "finetune":
                argv += ["--task=RTE", "--data-dir=RTE"]
            result.append((f"recipe:{method}:{number}", argv, recipe.stage))
    return result


def snapshot_of(lines) -> Dict[str, Any]:
    bases = {stage: resolved(list(RECIPE_BASE) + (["--task=RTE"] if stage == "finetune" else []), stage)
             for stage in ("pretrain", "finetune")}
    return {key: difference(resolved(argv, stage), bases[stage]) for key, argv, stage in lines}


def _compare(lines, expected: Dict[str, Any]) -> None:
    actual = snapshot_of(lines)
    for key, _, _ in lines:
        assert key in expected, f"{key}: not in the snapshot"
        assert actual[key] == expected[key], (key, {k: (actual[key].get(k), expected[key].get(k))
                                                     for k in set(actual[key]) | set(expected[key])
                                                     if actual[key].get(k) != expected[key].get(k)})


def test_the_seed_recipes_resolve_as_before():
    expected = json.loads(SNAPSHOT.read_text())["recipes"]
    lines = recipe_command_lines()
    assert len(lines) == len(expected)
    _compare(lines, expected)


def test_the_314_logged_command_lines_resolve_as_before(shared_dir):
    expected = json.loads(SNAPSHOT.read_text())["logged"]
    lines = logged_command_lines(shared_dir)
    assert len(lines) == 314 and len({key for key, _, _ in lines}) == len(expected)
    _compare(lines, expected)


def test_the_snapshot_sees_a_change_of_meaning():
    """A flag whose default moved would show: the comparison is not vacuous."""
    argv = list(RECIPE_BASE) + ["--student_model=kd", "--distill_temperature=3"]
    changed = difference(resolved(argv, "pretrain"), resolved(list(RECIPE_BASE), "pretrain"))
    assert changed["distill.options.distill_temperature"] == 3.0 and changed["distill.student_model"] == "kd"


if __name__ == "__main__" and "--regenerate" in sys.argv:
    shared = Path(__file__).resolve().parents[2] / "shared"
    SNAPSHOT.parent.mkdir(exist_ok=True)
    data = {"recipes": snapshot_of(recipe_command_lines()), "logged": snapshot_of(logged_command_lines(shared))}
    SNAPSHOT.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}: {len(data['recipes'])} recipes, {len(data['logged'])} logged lines")
