"""Command-line arguments as ordered (flag, value) pairs, with the original auto_tune's rules.

An `Arg` is `("--seed", "1234")`, `("--fp16", None)` for a switch, or `("--load-pretrained", "")`
for a flag given an empty value. `merge_args` keeps the original's `OrderedDict(py_args)`
semantics: a later duplicate overrides the value but keeps the first position, which
is how forwarded flags override template flags.
"""
from typing import Iterable, List, Optional, Sequence, Tuple

Arg = Tuple[str, Optional[str]]


class ArgError(ValueError):
    """A malformed command line given to auto_tune (the message names the culprit)."""


def parse_arg_tokens(tokens: Sequence[str]) -> List[Arg]:
    """`--k=v`, `--k v` and `--k` tokens -> pairs, in order.

    >>> parse_arg_tokens(["--seed=1", "--fp16", "--lr", "2e-5"])
    [('--seed', '1'), ('--fp16', None), ('--lr', '2e-5')]
    """
    pairs: List[Arg] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or token == "--":
            raise ArgError(f"unexpected value {token!r}" + (f" after {tokens[index - 1]}" if index else "")
                           + ": give flags as --flag=value")
        if "=" in token:
            flag, value = token.split("=", 1)
            pairs.append((flag, value))
        elif index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
            pairs.append((token, tokens[index + 1]))
            index += 1
        else:
            pairs.append((token, None))
        index += 1
    return pairs


def merge_args(args: Iterable[Arg]) -> List[Arg]:
    """Later duplicates override the value of the first occurrence, at its position."""
    merged: dict = {}
    for flag, value in args:
        merged[flag] = value
    return list(merged.items())


def remove_flags(args: Iterable[Arg], flags: Iterable[str]) -> List[Arg]:
    dropped = set(flags)
    return [(flag, value) for flag, value in args if flag not in dropped]


def get_value(args: Iterable[Arg], flag: str) -> Optional[str]:
    """The value of the last occurrence of `flag` (None when absent or a switch)."""
    found = None
    for name, value in args:
        if name == flag:
            found = value
    return found


def set_value(args: Iterable[Arg], flag: str, value: Optional[str]) -> List[Arg]:
    """`flag` set to `value` at its position (appended when absent)."""
    return merge_args([*args, (flag, value)])


def render_args(args: Iterable[Arg]) -> List[str]:
    return [flag if value is None else f"{flag}={value}" for flag, value in args]


def toggle_stage_args(base: Sequence[Arg], stage: Sequence[Arg]) -> Tuple[List[Arg], List[Arg]]:
    """The original's `--again_N__` rule: a stage pair identical to a base pair
    removes both (a switch is toggled off); the other stage pairs are kept, to be appended after
    the base pairs (so a flag the base has is overridden at its position).

    Returns (base without the toggled pairs, remaining stage pairs).
    """
    base, remaining = list(base), []
    for pair in stage:
        if pair in base:
            base = [item for item in base if item != pair]
        else:
            remaining.append(pair)
    return base, remaining


def format_value(value) -> Optional[str]:
    """A JSON value as a command-line value: numbers as written, true/null as a switch."""
    if value is None or value is True:
        return None
    if value is False:
        raise ArgError("false is not a flag value: leave the switch out instead")
    return str(value)
