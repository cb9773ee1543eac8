"""Checks that run before any data, model or file of a run is built or written.

    check_run_folder     the run may write into --save/--experiment-name (never over another run)
    check_checkpoints    every checkpoint the run reads exists, is intact and safe to read, and
                         is what the flags say: the architecture and the tokenizer it records
                         match (teachers, --load-pretrained, --load), and a resume has work left
    check_teacher_tensors  each teacher checkpoint holds exactly the tensors of its model

A checkpoint records its provenance next to its weights: `model_config` (the GLMConfig),
`model_family` and `tokenizer` (type, size, a hash of the tokens and the tokens themselves,
so that a mismatch can name the first token that differs).
"""
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from model import GLMConfig, GLMModel
from model.checkpoint import TRACKER_FILENAME, check_all_shards_present, list_shards, load_file, read_tracker

from .checkpointing import canonical_key
from .config import ConfigError, RunConfig

MODEL_FAMILY = "glm"
# Files and folders that make a folder a run: training over them would lose them.
RUN_MARKERS = (TRACKER_FILENAME, "config.json", "metrics.jsonl", "results.json", "tensorboard")
# Everything else a run writes at the top of its folder (checkpoint tags are found by their shards).
RUN_FILES = RUN_MARKERS + ("test_results.json", "predictions", "deepspeed_config", "zero_to_fp32.py",
                           "zero_to_torch.py")
# GLMConfig fields a checkpoint must agree on with the flags, and the student's flag for each.
CHECKED_FIELDS = {"num_layers": "--num-layers", "hidden_size": "--hidden-size",
                  "num_attention_heads": "--num-attention-heads",
                  "vocab_size": "the padded vocabulary (tokenizer size, --make-vocab-size-divisible-by)"}
# Where the method and combiner keep auxiliary training-only layers in a student checkpoint.
AUXILIARY_PREFIXES = ("student.",)


# --------------------------------------------------------------------------- provenance
def tokenizer_record(tokenizer) -> Dict[str, Any]:
    """What a checkpoint records of the tokenizer it was trained with."""
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.num_tokens)]
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8", errors="surrogatepass")).hexdigest()
    return {"type": tokenizer.tokenizer_type, "model_type": tokenizer.model_type,
            "num_tokens": tokenizer.num_tokens, "sha256": digest, "tokens": tokens}


def provenance(model_config: Mapping[str, Any], tokenizer: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The entries every checkpoint of a run carries beside its weights."""
    record = {"model_config": dict(model_config), "model_family": MODEL_FAMILY}
    if tokenizer is not None:
        record["tokenizer"] = tokenizer
    return record


def tokenizer_difference(recorded: Mapping[str, Any], ours: Mapping[str, Any]) -> Optional[str]:
    """None when both describe the same vocabulary; otherwise what differs, naming the first
    differing token."""
    if recorded.get("sha256") == ours["sha256"]:
        return None
    if recorded.get("num_tokens") != ours["num_tokens"]:
        return (f"{recorded.get('num_tokens')} tokens ({recorded.get('type')}, {recorded.get('model_type')}) there, "
                f"{ours['num_tokens']} here ({ours['type']}, {ours['model_type']})")
    theirs = recorded.get("tokens") or []
    for index, (a, b) in enumerate(zip(theirs, ours["tokens"])):
        if a != b:
            return f"the same size ({ours['num_tokens']}) but token {index} is {a!r} there and {b!r} here"
    return f"the same size ({ours['num_tokens']}) but another vocabulary (hash {recorded.get('sha256', '?')[:12]})"


# --------------------------------------------------------------------------- the run folder
def holds_run(folder: Optional[str]) -> bool:
    return folder is not None and any((Path(folder) / marker).exists() for marker in RUN_MARKERS)


def _writable(folder: Path) -> bool:
    """Whether `folder`, or its nearest existing ancestor, accepts new files."""
    while not folder.exists():
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def check_run_folder(cfg: RunConfig, save_dir: Optional[str]) -> None:
    """Refuse a --save that cannot hold the run, and any run that would write over another run
    than the one it resumes (whatever --custom_no_save_checkpoint says: its metrics and
    config.json would still replace that run's)."""
    if save_dir is None:
        return
    folder = Path(save_dir)
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--save={cfg.train.save}: {parent} is a file, not a folder")
    if not _writable(folder):
        raise ConfigError(f"--save={cfg.train.save}: {folder} cannot be written (permissions or a read-only disk)")
    resumes_here = cfg.train.load is not None and _same_folder(cfg.train.load, save_dir)
    if resumes_here and cfg.train.overwrite:
        raise ConfigError(f"--overwrite with --load={cfg.train.load}: the run would delete the checkpoint it resumes; "
                          f"drop one of them")
    if not holds_run(save_dir) or resumes_here or cfg.train.overwrite:
        return
    tracker = folder / TRACKER_FILENAME
    held = f"a checkpoint (tag {tracker.read_text().strip()})" if tracker.is_file() else "the files of another run"
    loading = f" (--load={cfg.train.load} resumes another folder)" if cfg.train.load else ""
    raise ConfigError(f"{save_dir} already holds {held}{loading}: pass --load={save_dir} to resume it, "
                      f"--overwrite to replace it, or another --experiment-name")


def clear_run(folder: str) -> List[str]:
    """Delete what a run wrote into `folder` (trackers, checkpoint tags, metrics, TensorBoard,
    configs, results, predictions) and leave anything else; returns the names removed."""
    removed = []
    for path in sorted(Path(folder).iterdir()):
        is_tag = path.is_dir() and any(path.glob("mp_rank_*_model_states.pt"))
        is_partial = path.name.startswith(".") and path.name.endswith((".partial", ".old"))
        if path.name.endswith("_checkpointed_iteration.txt") or path.name in RUN_FILES or is_tag or is_partial:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path.name)
    return removed


def _same_folder(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


# --------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Recorded:
    """What a checkpoint folder records, read from its first shard (memory-mapped)."""
    path: str
    tag: str
    states: Mapping[str, Any]

    @property
    def model_config(self) -> Optional[Mapping[str, Any]]:
        return self.states.get("model_config")


def read_recorded(checkpoint_dir: str) -> Recorded:
    tag = read_tracker(checkpoint_dir)
    shards = list_shards(Path(checkpoint_dir) / tag)
    states = load_file(shards[0])
    check_all_shards_present(states, shards)
    return Recorded(checkpoint_dir, tag, states)


def check_recorded_model(recorded: Recorded, expected: GLMConfig, flag_names: Mapping[str, str], what: str,
                         tokenizer: Optional[Mapping[str, Any]], fields: Sequence[str] = tuple(CHECKED_FIELDS)) -> None:
    """Raise naming the flag and both values when the checkpoint's recorded model family,
    architecture or tokenizer disagrees with what the run builds."""
    family = recorded.states.get("model_family", MODEL_FAMILY)
    if family != MODEL_FAMILY:
        raise ConfigError(f"{what} {recorded.path} holds a {family} model, but this run builds a {MODEL_FAMILY} model")
    config = recorded.model_config
    if config:
        for name in fields:
            ours, theirs = getattr(expected, name), config.get(name)
            if theirs is not None and theirs != ours:
                raise ConfigError(f"{what} {recorded.path}: {flag_names.get(name, name)} gives {name}={ours}, but the "
                                  f"checkpoint records {name}={theirs}")
    theirs_tokenizer = recorded.states.get("tokenizer")
    if tokenizer is not None and theirs_tokenizer:
        difference = tokenizer_difference(theirs_tokenizer, tokenizer)
        if difference:
            raise ConfigError(f"{what} {recorded.path} was trained with another vocabulary than this run's "
                              f"tokenizer: {difference}. Student and teachers must share one vocabulary (the "
                              f"teacher reads the student's token ids and its logits are compared token by token)")


def teacher_flag_names(cfg: RunConfig, index: int) -> Dict[str, str]:
    return {**cfg.teachers[index].flag_names, "vocab_size": CHECKED_FIELDS["vocab_size"]}


@dataclass(frozen=True)
class CheckedCheckpoints:
    teachers: Sequence[Optional[Recorded]]    # None: a teacher with random weights
    resumed: Optional[Recorded]               # what --load records


def check_checkpoints(cfg: RunConfig, student_config: GLMConfig, teacher_configs: Sequence[GLMConfig],
                      tokenizer: Optional[Mapping[str, Any]]) -> CheckedCheckpoints:
    """Check every checkpoint the run reads against the flags."""
    teachers = []
    for index, (teacher, expected) in enumerate(zip(cfg.teachers, teacher_configs)):
        recorded = None
        if teacher.load_pretrained and not teacher.random_para:
            recorded = read_recorded(teacher.load_pretrained)
            check_recorded_model(recorded, expected, teacher_flag_names(cfg, index), f"teacher {index}", tokenizer)
        teachers.append(recorded)
    if cfg.train.load_pretrained:
        check_recorded_model(read_recorded(cfg.train.load_pretrained), student_config, CHECKED_FIELDS,
                             "--load-pretrained", tokenizer, fields=("hidden_size", "num_attention_heads", "vocab_size"))
    if not cfg.train.load:
        return CheckedCheckpoints(teachers, None)
    recorded = read_recorded(cfg.train.load)
    check_recorded_model(recorded, student_config, CHECKED_FIELDS, "--load", tokenizer)
    if "train_state" not in recorded.states:
        raise ConfigError(f"--load={cfg.train.load}: its tracker points at tag {recorded.tag!r}, which holds weights "
                          f"only (the best weights of a finished fine-tuning run), no optimizer, schedule or data "
                          f"position to resume from; start a new run from them with "
                          f"--load-pretrained={cfg.train.load}")
    return CheckedCheckpoints(teachers, recorded)


def check_teacher_tensors(checked: CheckedCheckpoints, head: Callable[[GLMModel], torch.nn.Module],
                          teacher_configs: Sequence[GLMConfig], may_be_missing: Sequence[str]) -> None:
    """Teachers load strictly: the tensors of each checkpoint are the ones the model its flags
    describe holds (built on the meta device: no memory, no weights), minus a distilled
    student's auxiliary layers; names in `may_be_missing` (the vocabulary-map buffers, checked
    with the maps) may be absent."""
    for index, (recorded, config) in enumerate(zip(checked.teachers, teacher_configs)):
        if recorded is None:
            continue
        with torch.device("meta"):
            expected = {canonical_key(key) for key in head(GLMModel(config)).state_dict()}
        saved = {canonical_key(key) for key in recorded.states["module"] if not key.startswith(AUXILIARY_PREFIXES)}
        missing = sorted(key for key in expected - saved if key.rsplit(".", 1)[-1] not in may_be_missing)
        unexpected = sorted(saved - expected)
        if missing or unexpected:
            parts = ([f"missing from the checkpoint: {', '.join(missing[:6])}"] if missing else []) + (
                [f"not in the model: {', '.join(unexpected[:6])}"] if unexpected else [])
            raise ConfigError(f"teacher {index} {recorded.path} does not match the model built from the teacher "
                              f"flags: {'; '.join(parts)}")


def check_work_left(recorded: Optional[Recorded], total_iters: int, flag: str) -> None:
    """A resume whose checkpoint is already at (or past) the run's last iteration has nothing to do."""
    if recorded is None:
        return
    iteration = int(recorded.states.get("iteration", 0))
    if iteration >= total_iters:
        raise ConfigError(f"nothing to do: --load={recorded.path} resumes at iteration {iteration} and the run ends "
                          f"at iteration {total_iters} ({flag}); raise it to train further")
