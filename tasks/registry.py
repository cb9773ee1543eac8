"""The task registry (keyed by the original's task names) and the typed task options.

Per-task defaults (pattern id, max length, metrics) are plain data, the original's for SuperGLUE;
the first metric of ``DEFAULT_METRICS[task]`` selects the best epoch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

from tasks.glue import patterns as glue_patterns
from tasks.glue.processors import GlueProcessor
from tasks.superglue import patterns as sg_patterns
from tasks.superglue import processors as sg
from tasks.superglue.record_wsc import RecordProcessor, WscProcessor

SINGLE_TOKEN, MULTI_TOKEN, GENERATIVE = "single_token", "multi_token", "generative"


@dataclass(frozen=True)
class TaskConfig:
    """Options of one downstream task.

    ``pattern_id``/``max_seq_length`` None take the task's defaults. ``wsc_negative`` None
    means "as the task name says": ``wsc`` is the multi-candidate variant, ``wsc_generative``
    the generative one; ``wsc`` with ``wsc_negative=False`` is the generative variant (the
    original ``--task=WSC`` without ``--wsc-negative``). ``cloze_eval=False`` builds plain
    classification/regression inputs (pair tasks only).
    """
    task_name: str
    data_dir: str
    pattern_id: Optional[int] = None
    max_seq_length: Optional[int] = None
    wsc_negative: Optional[bool] = None
    fix_variable_num_choices: bool = False
    cloze_eval: bool = True
    few_superglue: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        spec = get_task_spec(resolve_task_name(self.task_name, self.wsc_negative))
        if self.max_seq_length is not None and self.max_seq_length < 4:
            raise ValueError(f"max_seq_length must be >= 4, got {self.max_seq_length}")
        if self.cloze_eval and spec.pvp is None:
            raise ValueError(f"task {spec.name!r} has no cloze pattern; use cloze_eval=False")
        if not self.cloze_eval and spec.kind != SINGLE_TOKEN:
            raise ValueError(f"task {spec.name!r} ({spec.kind}) has no plain classification "
                             f"input; use cloze_eval=True")
        if self.few_superglue and spec.benchmark != "superglue":
            raise ValueError(f"few_superglue applies to SuperGLUE tasks, not {spec.name!r}")

    def resolved(self) -> "TaskConfig":
        """A copy with the canonical task name and every default filled in."""
        spec = get_task_spec(resolve_task_name(self.task_name, self.wsc_negative))
        return dataclasses.replace(
            self, task_name=spec.name, wsc_negative=spec.name == "wsc",
            pattern_id=spec.default_pattern_id if self.pattern_id is None else self.pattern_id,
            max_seq_length=(spec.default_max_seq_length if self.max_seq_length is None
                            else self.max_seq_length))


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its reader, pattern class, defaults and metrics."""
    name: str
    benchmark: str                       # "superglue" or "glue"
    directory: str                       # the official data folder name
    make_processor: Callable[[TaskConfig], object]
    pvp: Optional[type]                  # None: no cloze pattern (STS-B)
    kind: str                            # SINGLE_TOKEN, MULTI_TOKEN or GENERATIVE
    default_pattern_id: int
    default_max_seq_length: int
    metrics: tuple[str, ...]
    submission_file: str
    max_choices: int = 0                 # > 0: variable number of choices, padded/trimmed to it
    regression: bool = False


def _sg(cls: type) -> Callable[[TaskConfig], object]:
    return lambda config: cls(few_superglue=config.few_superglue, seed=config.seed)


def _glue(name: str) -> Callable[[TaskConfig], object]:
    return lambda config: GlueProcessor(name)


def _wsc(negative: bool) -> Callable[[TaskConfig], object]:
    return lambda config: WscProcessor(negative, config.few_superglue, config.seed)


_ACC = ("accuracy",)
_SPECS = [
    TaskSpec("record", "superglue", "ReCoRD", _sg(RecordProcessor), sg_patterns.RecordPVP,
             MULTI_TOKEN, 0, 512, ("EM", "F1"), "ReCoRD.jsonl", max_choices=10),
    TaskSpec("copa", "superglue", "COPA", _sg(sg.CopaProcessor), sg_patterns.CopaPVP,
             MULTI_TOKEN, 0, 256, _ACC, "COPA.jsonl"),
    TaskSpec("wsc", "superglue", "WSC-negative", _wsc(True), sg_patterns.WscPVP, MULTI_TOKEN,
             2, 128, _ACC, "WSC.jsonl", max_choices=10),
    TaskSpec("wsc_generative", "superglue", "WSC", _wsc(False), sg_patterns.WscPVP, GENERATIVE,
             0, 128, _ACC, "WSC.jsonl"),
    TaskSpec("rte", "superglue", "RTE", _sg(sg.RteProcessor), sg_patterns.RtePVP, SINGLE_TOKEN,
             0, 256, _ACC, "RTE.jsonl"),
    TaskSpec("boolq", "superglue", "BoolQ", _sg(sg.BoolQProcessor), sg_patterns.BoolQPVP,
             SINGLE_TOKEN, 4, 256, _ACC, "BoolQ.jsonl"),
    TaskSpec("wic", "superglue", "WiC", _sg(sg.WicProcessor), sg_patterns.WicPVP, SINGLE_TOKEN,
             1, 256, _ACC, "WiC.jsonl"),
    TaskSpec("cb", "superglue", "CB", _sg(sg.CbProcessor), sg_patterns.CbPVP, SINGLE_TOKEN, 3,
             256, ("accuracy", "f1-macro"), "CB.jsonl"),
    TaskSpec("multirc", "superglue", "MultiRC", _sg(sg.MultiRcProcessor),
             sg_patterns.MultiRcPVP, SINGLE_TOKEN, 0, 512, ("f1a", "em", "acc"),
             "MultiRC.jsonl"),
    TaskSpec("ax-b", "superglue", "AX-b", _sg(sg.AxbProcessor), sg_patterns.RtePVP,
             SINGLE_TOKEN, 0, 256, ("matthews", "accuracy"), "AX-b.jsonl"),
    TaskSpec("ax-g", "superglue", "AX-g", _sg(sg.AxgProcessor), sg_patterns.RtePVP,
             SINGLE_TOKEN, 0, 256, _ACC, "AX-g.jsonl"),
    TaskSpec("mnli", "glue", "MNLI", _glue("mnli"), glue_patterns.MnliPVP, SINGLE_TOKEN, 0, 256,
             _ACC, "MNLI-m.tsv"),
    TaskSpec("mnli-mm", "glue", "MNLI", _glue("mnli-mm"), glue_patterns.MnliPVP, SINGLE_TOKEN,
             0, 256, _ACC, "MNLI-mm.tsv"),
    TaskSpec("qnli", "glue", "QNLI", _glue("qnli"), glue_patterns.QnliPVP, SINGLE_TOKEN, 0, 256,
             _ACC, "QNLI.tsv"),
    TaskSpec("qqp", "glue", "QQP", _glue("qqp"), glue_patterns.ParaphrasePVP, SINGLE_TOKEN, 0,
             256, ("f1", "accuracy"), "QQP.tsv"),
    TaskSpec("glue-rte", "glue", "RTE", _glue("glue-rte"), glue_patterns.GlueRtePVP,
             SINGLE_TOKEN, 0, 256, _ACC, "RTE.tsv"),
    TaskSpec("sst2", "glue", "SST-2", _glue("sst2"), glue_patterns.Sst2PVP, SINGLE_TOKEN, 0,
             128, _ACC, "SST-2.tsv"),
    TaskSpec("mrpc", "glue", "MRPC", _glue("mrpc"), glue_patterns.ParaphrasePVP, SINGLE_TOKEN,
             0, 256, ("f1", "accuracy"), "MRPC.tsv"),
    TaskSpec("cola", "glue", "CoLA", _glue("cola"), glue_patterns.ColaPVP, SINGLE_TOKEN, 0, 128,
             ("matthews", "accuracy"), "CoLA.tsv"),
    TaskSpec("sts-b", "glue", "STS-B", _glue("sts-b"), None, SINGLE_TOKEN, 0, 256,
             ("pearson", "spearman"), "STS-B.tsv", regression=True),
    TaskSpec("wnli", "glue", "WNLI", _glue("wnli"), glue_patterns.WnliPVP, SINGLE_TOKEN, 0, 256,
             _ACC, "WNLI.tsv"),
]
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {spec.name: spec.metrics for spec in _SPECS}


def get_task_spec(name: str) -> TaskSpec:
    """The spec of ``name`` (case-insensitive); an unknown name lists the valid ones."""
    key = name.lower()
    if key not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[key]


def resolve_task_name(name: str, wsc_negative: Optional[bool] = None) -> str:
    """Canonical registry key; ``wsc`` with ``wsc_negative=False`` is ``wsc_generative``."""
    key = get_task_spec(name).name
    if key == "wsc" and wsc_negative is False:
        return "wsc_generative"
    if key == "wsc_generative" and wsc_negative:
        raise ValueError("wsc_generative contradicts wsc_negative=True; use task 'wsc'")
    if wsc_negative and key not in ("wsc", "wsc_generative"):
        raise ValueError(f"wsc_negative applies to the WSC tasks only, not {key!r}")
    return key
