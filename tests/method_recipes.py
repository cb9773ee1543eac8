"""The seeds' method recipes as data, for the tests that run every method.

Each `tests/recipes_<group>.py` defines RECIPES = {method name: [Recipe, ...]}: one Recipe per
stage of the method's recipe in the seeds' README (000_*.txt / 002_*.txt), with the recipe's
exact method flags. `all_recipes()` merges them. The shared tests build a tiny teacher and
student from `student`/`teacher` (layers, hidden, heads) and run the recipe's stage.
"""
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

TESTS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Recipe:
    stage: str                                   # "pretrain" or "finetune"
    flags: Tuple[str, ...]                       # the recipe's method flags, as in the seeds
    student: Tuple[int, int, int] = (2, 32, 4)   # layers, hidden, heads
    teacher: Tuple[int, int, int] = (4, 48, 4)
    extra: Tuple[str, ...] = ()                  # architecture flags the recipe needs (e.g. IB)
    teacher_extra: Tuple[str, ...] = ()


def all_recipes() -> Dict[str, List[Recipe]]:
    recipes: Dict[str, List[Recipe]] = {}
    for info in pkgutil.iter_modules([str(TESTS_DIR)]):
        if info.name.startswith("recipes_"):
            module = importlib.import_module(info.name)
            for name, items in module.RECIPES.items():
                recipes.setdefault(name, []).extend(items)
    return recipes
