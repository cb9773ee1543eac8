"""Typed options that are also command-line flags: one declaration per option.

A method's (or combiner's) options dataclass declares each flag once, with `option`:

    @dataclass(frozen=True)
    class ReverseKDOptions:
        reversekd_weight: float = option(1.0, "Weight of the reverse KL term.")

and `--reversekd_weight` exists: name, type, default and help text come from the field.
Validation lives in the dataclass's `__post_init__`, which the parser runs.
"""
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, List, Optional, Tuple, Union, get_args, get_origin, get_type_hints


def option(default: Any, help: str, *, choices: Optional[Tuple] = None, no_effect: bool = False):
    """A dataclass field that is the flag --<field name>. `no_effect`: parsed for the original's
    command lines but unused (giving it warns)."""
    return field(default=default, metadata={"help": help, "choices": choices, "no_effect": no_effect})


@dataclass(frozen=True)
class OptionFlag:
    name: str                  # the field name (the flag without dashes)
    type: type                 # bool, int, float or str
    default: Any
    help: str
    choices: Optional[Tuple] = None
    no_effect: bool = False


def _scalar_type(hint) -> type:
    """int for `int` and `Optional[int]`; the flag's argparse type."""
    if get_origin(hint) is Union:
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if hint not in (bool, int, float, str):
        raise TypeError(f"an option must be bool, int, float or str (optionally Optional), not {hint}")
    return hint


def option_flags(options_class: Optional[type]) -> List[OptionFlag]:
    """The flags an options dataclass declares (fields made with `option`), in field order."""
    if options_class in (None, type(None)):
        return []
    hints = get_type_hints(options_class)
    flags = []
    for item in fields(options_class):
        if "help" not in item.metadata:
            continue   # not a flag (e.g. the components of a composed method)
        if item.default is MISSING:
            raise TypeError(f"{options_class.__name__}.{item.name} needs a default to be a flag")
        flags.append(OptionFlag(item.name, _scalar_type(hints[item.name]), item.default, item.metadata["help"],
                                item.metadata["choices"], item.metadata["no_effect"]))
    return flags
