"""The flag table against the original's real command lines: the README recipes of the seed
documents and the 314 `*cmd` lines recorded in ../shared/data/glmkd/ft_logs (both skipped
when ../shared is absent), plus its own consistency and spot checks of the original's defaults."""
import json
import re
import shlex

import pytest

from training.flags import (GENERIC_GROUPS, all_flags, build_parser, combiner_groups, flag_groups,
                            student_method_groups)

SEED_FILES = ("000_4d6fa89e447557cf.txt", "002_11b19339c97663d7.txt")
SCRIPT = re.compile(r"(?:^|\s)distill/(?:pretrain|finetune)\.py(?=\s|$)")
FLAG_TOKEN = re.compile(r"--[A-Za-z][\w-]*(?:=\S*)?")
# README placeholders that stand for a number; 1/N is 0.5 with the logs' two teachers.
PLACEHOLDER_VALUES = {"1/teacher_num": "0.5"}
LAUNCHER_FLAGS = ("--master_port", "--include", "--hostfile", "--num_gpus", "--num_nodes", "--master_addr")
FLAGS = all_flags()
BY_NAME = {flag.name: flag for flag in FLAGS}


@pytest.fixture(scope="module")
def parser():
    return build_parser("distill/finetune.py", "test parser")


def dest(name: str) -> str:
    return name.lstrip("-").replace("-", "_")


def expected_value(name: str, value):
    """What argparse must store for `--name[=value]`, from the table alone."""
    flag = BY_NAME[name]
    if flag.action == "store_true":
        assert value is None, f"{name} is a switch but was given {value!r}"
        return True
    converted = flag.type(value)
    return [converted] if flag.nargs else converted


def assert_parses(parser, tokens):
    """Every `--flag[=value]` token is in the table and parses to the value the table says."""
    expected = {}
    for token in tokens:
        name, eq, value = token.partition("=")
        assert name in BY_NAME, f"{name} is not in training.flags.FLAGS"
        expected[dest(name)] = expected_value(name, value if eq else None)
    namespace = vars(parser.parse_args(tokens))
    for key, value in expected.items():
        assert namespace[key] == value, key


# ---- 1. the seed README recipes --------------------------------------------------------------

def usage_section(text: str) -> list:
    start = text.index("## Usage of existing methods")
    end = text.index("\n## ", start + 1)
    return text[start:end].splitlines()


def recipe_tokens(line: str) -> list:
    """The flag tokens of one recipe line: after the script, without the `[Prefix-...]`
    placeholders and the `(...)` notes, placeholder values replaced."""
    match = SCRIPT.search(line)
    if match:
        line = line[match.end():]
    line = re.sub(r"\[[^\]]*\]", " ", line)
    line = re.sub(r"\([^)]*\)", " ", line)
    tokens = FLAG_TOKEN.findall(line)
    for placeholder, value in PLACEHOLDER_VALUES.items():
        tokens = [t.replace("=" + placeholder, "=" + value) for t in tokens]
    return tokens


@pytest.fixture(scope="module")
def seed_lines(shared_dir):
    lines = []
    for name in SEED_FILES:
        text = (shared_dir / "seeds" / name).read_text(encoding="utf8")
        # The prefixes and recipes, plus the full deepspeed command lines of the examples.
        lines += [line for line in usage_section(text) if "--" in line]
        lines += [line for line in text.splitlines() if SCRIPT.search(line)]
    return lines


def test_seed_recipes_parse(parser, seed_lines):
    assert len(seed_lines) > 60   # 4 prefixes and about 40 recipes per file
    names = set()
    for line in seed_lines:
        tokens = recipe_tokens(line)
        assert tokens, line
        assert not {t.partition("=")[0] for t in tokens} & set(LAUNCHER_FLAGS), line
        assert_parses(parser, tokens)
        names |= {t.partition("=")[0] for t in tokens}
    # Landmarks of each kind: prefix, method recipe, GLMD example, random-data note.
    assert {"--hostfile", "--master_port"}.isdisjoint(names)
    assert {"--deepspeed_config", "--teacher_fp16", "--mt_num_attention_heads", "--ignore_first_backward_gard",
            "--rl_kd_semantic_model_dim", "--student_map_vocab_method", "--distill_random_data_method",
            "--cross_layer_parameter_sharing", "--args_to_ds_config"} <= names


def test_placeholder_value_parses(parser):
    tokens = recipe_tokens("2. [Prefix-finetune] [Prefix-multi-teacher](One more base teacher) "
                           "--distill_hard_rate=1/teacher_num --mt_hidden_size=h1:h2")
    assert tokens == ["--distill_hard_rate=0.5", "--mt_hidden_size=h1:h2"]
    assert_parses(parser, tokens)


# ---- 2. the 314 command lines of ft_logs ------------------------------------------------------

def find_cmds(node) -> list:
    if isinstance(node, dict):
        return [cmd for key, value in node.items()
                for cmd in ([value] if key.endswith("cmd") and isinstance(value, str) else find_cmds(value))]
    if isinstance(node, list):
        return [cmd for item in node for cmd in find_cmds(item)]
    return []


@pytest.fixture(scope="module")
def ft_log_cmds(shared_dir):
    files = sorted((shared_dir / "data/glmkd/ft_logs").rglob("*.json"))
    return [cmd for path in files for cmd in find_cmds(json.loads(path.read_text(encoding="utf8")))]


def script_tokens(cmd: str) -> list:
    """The tokens after the script; asserts that what precedes it is only the launcher."""
    tokens = shlex.split(cmd)
    at = next(i for i, t in enumerate(tokens) if t in ("distill/finetune.py", "distill/pretrain.py"))
    for token in tokens[:at]:
        is_env = re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", token) is not None
        assert is_env or token == "deepspeed" or token.partition("=")[0] in LAUNCHER_FLAGS, token
    return tokens[at + 1:]


def test_ft_log_command_lines_parse(parser, ft_log_cmds):
    assert len(ft_log_cmds) == 314
    methods = set()
    for cmd in ft_log_cmds:
        tokens = script_tokens(cmd)
        assert all(t.startswith("--") for t in tokens), cmd
        assert_parses(parser, tokens)
        methods.add(parser.parse_args(tokens).student_model)
    assert {"kd", "tinybert", "logitsdistil", "rail_kd", "theseus", "lrc_bert", "continuation_kd"} <= methods


def test_empty_value_parses(parser):
    # The logs' KD runs pass `--load-pretrained=` (a randomly initialised student).
    assert parser.parse_args(["--load-pretrained="]).load_pretrained == ""


# ---- 3. consistency of the table ---------------------------------------------------------------

def test_names_and_dests_unique():
    names = [flag.name for flag in FLAGS]
    assert len(names) == len(set(names))
    assert len({dest(name) for name in names}) == len(names)


def test_every_flag_documented_and_in_help(parser):
    text = parser.format_help()
    for flag in FLAGS:
        assert flag.help.strip(), flag.name
        assert re.search(re.escape(flag.name) + r"(?![\w-])", text), flag.name


def test_flag_kinds_are_consistent():
    for flag in FLAGS:
        if flag.action == "store_true":
            assert flag.type is None and flag.default is False and flag.choices is None, flag.name
        else:
            assert flag.action == "store" and flag.type in (int, float, str), flag.name
            if flag.default is not None and not flag.nargs:
                assert isinstance(flag.default, flag.type), flag.name
            if flag.choices is not None and flag.default is not None:
                assert flag.default in flag.choices, flag.name


def test_groups():
    groups = flag_groups()
    methods, combiners = student_method_groups(), combiner_groups()
    assert list(groups) == list(GENERIC_GROUPS) + methods + combiners
    assert all(groups[name] for name in groups), [name for name in groups if not groups[name]]
    assert set(methods).isdisjoint(combiners)
    assert sum(len(flags) for flags in groups.values()) == len(FLAGS)
    # The original's 378 flags plus the ones this project added (the divergence choice; Hugging Face
    # models), one group per method and per combiner that has options.
    added = {"--distill_logit_loss": "distill", "--distill_jsd_beta": "distill", "--distill_skew_alpha": "distill",
             "--hf_model": "hf", "--teacher_hf_model": "hf", "--mt_hf_model": "hf", "--hf_student_layers": "hf",
             "--hf_objective": "hf", "--hf_mask_prob": "hf"}
    assert {flag.name: flag.group for flag in FLAGS if flag.name in added} == added
    assert len(FLAGS) == 378 + len(added) and len(methods) == 18 and len(combiners) == 5


def test_method_groups_hold_exactly_their_prefix():
    prefixes = {group: f"--{group}_" for group in student_method_groups() + combiner_groups()} | {"avg": "--avgmt_"}
    for group, prefix in prefixes.items():
        in_group = {flag.name for flag in flag_groups()[group]}
        with_prefix = {flag.name for flag in FLAGS if flag.name.startswith(prefix)}
        assert in_group == with_prefix, group
    # RL-KD (multi-teacher) and RAIL-KD are different methods.
    assert {f.group for f in FLAGS if f.name.startswith("--rl_kd_")} == {"rl_kd"}
    assert {f.group for f in FLAGS if f.name.startswith("--rail_kd_")} == {"rail_kd"}


def test_argparse_groups_and_no_abbreviation(parser):
    headings = re.findall(r"^(\S+):$", parser.format_help(), flags=re.M)
    assert set(GENERIC_GROUPS) | set(student_method_groups() + combiner_groups()) <= set(headings)
    with pytest.raises(SystemExit):
        parser.parse_args(["--distill_temp=2"])   # allow_abbrev=False, as the original


# ---- 4. spot checks against the original's defaults --------------------------------------------

@pytest.mark.parametrize("name,type_,default", [
    ("--distill_temperature", float, 1.0), ("--num-layers", int, 24), ("--hidden-size", int, 1024),
    ("--ib_ffn_num", int, 4), ("--ib_hidden_size", int, 128), ("--teacher_ib_ffn_num", int, 1),
    ("--teacher_ib_hidden_size", int, 1024), ("--teacher_hidden_size", int, 1024),
    ("--mt_disable_operation", str, "0"), ("--mt_hidden_size", str, ""), ("--rl_kd_alpha", float, 0.5),
    ("--avgmt_teacher_survival_p", float, 1.0), ("--lr-decay-ratio", float, 0.1), ("--warmup", float, 0.01),
    ("--split", str, "1000,1,1"), ("--seed", int, 1234), ("--lr", float, 1e-4), ("--batch-size", int, 4),
    ("--log-interval", int, 100), ("--rail_kd_inter_rate", float, 0.3334), ("--pkd_beta", float, 100.0),
    ("--mgskd_sample_level_m", int, 2), ("--diito_interchange_max_token", int, -1),
    ("--distil_analysis_frcn", str, "0"), ("--distill_random_data_method", str, "shuffle"),
    ("--continuation_kd_psi_denominator", float, 1.333), ("--minilmv2_relation_heads", int, 48),
])
def test_spec_defaults(parser, name, type_, default):
    flag = BY_NAME[name]
    assert (flag.type, flag.default) == (type_, default)
    value = getattr(parser.parse_args([]), dest(name))
    assert type(value) is type_ and value == default


def test_switches_and_choices(parser):
    defaults = parser.parse_args([])
    assert defaults.bf16 is False and defaults.distill_ft_soft is False and defaults.student_model is None
    assert BY_NAME["--lr-decay-style"].choices == ("constant", "linear", "cosine", "exponential")
    assert "GPT2BPETokenizer" in BY_NAME["--tokenizer-type"].choices
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr-decay-style=step"])
    args = parser.parse_args(["--train-data", "bert-base", "wiki", "--mt_num_layers=12:24"])
    assert args.train_data == ["bert-base", "wiki"] and args.mt_num_layers == "12:24"
