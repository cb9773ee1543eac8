"""auto_tune's templates as plain data: the student models, the downstream tasks with
their presets, the epoch tables, and the fixed parts of a fine-tuning command.

The SuperGLUE presets are the original's (sequence length, PET pattern, extra flags, epochs,
logging and evaluation intervals). The original has no GLUE presets; the ones here are this
project's: each task's default pattern and length from `tasks/registry.py`, 3 epochs for the
large tasks and 10 for the small ones (change them with `--epochs` or `--epoch_rate`).
"""
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from .arglist import Arg

EPOCH_TYPES = ("EPOCH_SINGLE", "XXLARGE_EPOCH", "EPOCH_0")
BATCH_SIZE = 16            # the global batch the per-GPU --batch-size is derived from
DEFAULT_LR = "1e-5"


@dataclass(frozen=True)
class ModelTemplate:
    """A student model: its architecture flags and default DeepSpeed config.

    `model_type` prefixes experiment names; `default_path` (relative to the checkpoint root) is
    where runs are saved when no `--model_path` is given (the student then starts untrained,
    `--load-pretrained=` empty, as in the original's logs).
    """
    name: str
    model_type: str
    default_path: str
    arch_args: Tuple[Arg, ...]
    fp16: bool
    ds_config: str          # a file of config/


def _arch(layers: int, hidden: int, heads: int, max_positions: int = 512, tokenizer_model: Optional[str] = None,
          tokenizer: str = "BertWordPieceTokenizer", task_mask: bool = False) -> Tuple[Arg, ...]:
    args = [("--block-lm", None)] + ([("--task-mask", None)] if task_mask else [])
    args += [("--num-layers", str(layers)), ("--hidden-size", str(hidden)), ("--num-attention-heads", str(heads)),
             ("--max-position-embeddings", str(max_positions))]
    if tokenizer_model:
        args.append(("--tokenizer-model-type", tokenizer_model))
    return tuple(args + [("--tokenizer-type", tokenizer)])


_TINY6_DS = "config_blocklm_tiny6.json"
MODELS: Dict[str, ModelTemplate] = {m.name: m for m in (
    ModelTemplate("model_blocklm_base", "blank-base", "checkpoints/pretrain/blocklm-base-blank",
                  _arch(12, 768, 12, tokenizer_model="bert-base-uncased"), True, _TINY6_DS),
    ModelTemplate("block_tiny6", "blank-tiny6", "checkpoints/pretrain/block_tiny6",
                  _arch(6, 768, 12, tokenizer_model="bert-base-uncased"), True, _TINY6_DS),
    ModelTemplate("model_blocklm_large", "blank-large", "checkpoints/pretrain/blocklm-large-blank",
                  _arch(24, 1024, 16, tokenizer_model="bert-large-uncased"), True, "config_blocklm_large.json"),
    ModelTemplate("block_tiny4", "blank-tiny4", "checkpoints/pretrain/block_tiny4",
                  _arch(4, 768, 12, tokenizer_model="bert-base-uncased"), True, _TINY6_DS),
    ModelTemplate("block_tiny24_4", "blank-tiny24_4", "checkpoints/pretrain/block_tiny24_4",
                  _arch(4, 768, 16, tokenizer_model="bert-base-uncased"), False, "config_blocklm_tiny4_fp32.json"),
    ModelTemplate("model_blocklm_10B", "blocklm-10B", "checkpoints/pretrain/blocklm-xxlarge",
                  _arch(48, 4096, 64, 1024, tokenizer="GPT2BPETokenizer", task_mask=True), True,
                  "config_blocklm_10B_1gpu.json"),
    ModelTemplate("model_blocklm_10B_chinese", "blocklm-10B-chinese", "checkpoints/pretrain/blocklm-xxlarge-zh",
                  _arch(48, 4096, 64, 1024, tokenizer="ChineseSPTokenizer", task_mask=True), True,
                  "config_blocklm_10B_1gpu.json"),
)}


@dataclass(frozen=True)
class TaskTemplate:
    """A downstream task: `--task`, its data folder, presets and epochs per epoch table.

    `save_name` is the folder runs are saved under and `exp_name` the experiment-name part
    (they differ for WSC's generative variant, as in the original's logs).
    """
    key: str
    task: str
    data_dir: str
    benchmark: str                      # "superglue" or "glue"
    seq_length: int
    epochs: Mapping[str, int]
    pattern_id: Optional[int] = None
    extra_args: Tuple[Arg, ...] = ()
    log_interval: int = 50
    eval_interval: int = 10000000
    cloze_eval: bool = True
    exp_name: str = ""
    title: str = ""

    @property
    def save_name(self) -> str:
        return self.task

    @property
    def experiment_part(self) -> str:
        return self.exp_name or self.task

    @property
    def display(self) -> str:
        return self.title or self.task


def _epochs(single: int, xxlarge: int) -> Mapping[str, int]:
    return {"EPOCH_SINGLE": single, "XXLARGE_EPOCH": xxlarge, "EPOCH_0": 0}


def _superglue(key: str, task: str, seq: int, single: int, xxlarge: int, pattern: Optional[int] = 0, **kw):
    return TaskTemplate(key, task, kw.pop("data_dir", task), "superglue", seq, _epochs(single, xxlarge), pattern, **kw)


def _glue(key: str, task: str, data_dir: str, seq: int, epochs: int, title: str, **kw):
    return TaskTemplate(key, task, data_dir, "glue", seq, _epochs(epochs, epochs), 0, title=title, **kw)


TASKS: Dict[str, TaskTemplate] = {t.key: t for t in (
    _superglue("record", "ReCoRD", 512, 5, 3, eval_interval=1000),
    _superglue("copa", "COPA", 256, 50, 100, log_interval=20, eval_interval=1000),
    _superglue("wsc", "WSC", 128, 50, 100, 2, data_dir="WSC-negative", eval_interval=1000,
               extra_args=(("--loss-func", "mix"), ("--wsc-negative", None), ("--length-penalty", "1"))),
    _superglue("wsc_generative", "WSC", 128, 50, 100, None, eval_interval=1000, exp_name="WSC_generative",
               title="WSC-gen"),
    _superglue("rte", "RTE", 256, 50, 50),
    _superglue("boolq", "BoolQ", 256, 20, 24, 4),
    _superglue("wic", "WiC", 256, 30, 40, 1),
    _superglue("cb", "CB", 256, 50, 100, 3),
    _superglue("multirc", "MultiRC", 512, 15, 12),
    _glue("mnli", "mnli", "MNLI", 256, 3, "MNLI"),
    _glue("mnli-mm", "mnli-mm", "MNLI", 256, 3, "MNLI-mm"),
    _glue("qnli", "qnli", "QNLI", 256, 3, "QNLI"),
    _glue("qqp", "qqp", "QQP", 256, 3, "QQP"),
    _glue("sst2", "sst2", "SST-2", 128, 3, "SST-2"),
    _glue("glue-rte", "glue-rte", "RTE", 256, 10, "RTE (GLUE)"),
    _glue("mrpc", "mrpc", "MRPC", 256, 10, "MRPC"),
    _glue("cola", "cola", "CoLA", 128, 10, "CoLA"),
    _glue("sts-b", "sts-b", "STS-B", 256, 10, "STS-B", cloze_eval=False),
    _glue("wnli", "wnli", "WNLI", 256, 10, "WNLI"),
)}
DEFAULT_TASKS = ("copa", "wsc_generative", "cb", "rte", "boolq", "wic", "wsc", "multirc", "record")
# Table column order: the SuperGLUE order of the original's tables, then GLUE.
TASK_ORDER = ("record", "copa", "wsc", "wsc_generative", "rte", "boolq", "wic", "cb", "multirc") + tuple(
    key for key, task in TASKS.items() if task.benchmark == "glue")

TRAIN_ARGS: Tuple[Arg, ...] = (("--lr-decay-style", "linear"), ("--warmup", "0.1"), ("--weight-decay", "1.0e-1"))
DEEPSPEED_SUFFIX: Tuple[Arg, ...] = (("--deepspeed-activation-checkpointing", None), ("--deepspeed", None))
NCCL_ENV: Tuple[Tuple[str, str], ...] = (("NCCL_DEBUG", "info"), ("NCCL_IB_DISABLE", "0"), ("NCCL_NET_GDR_LEVEL", "2"))


def common_args(task: TaskTemplate) -> Tuple[Arg, ...]:
    return (("--save-interval", "10000"), ("--log-interval", str(task.log_interval)),
            ("--eval-interval", str(task.eval_interval)), ("--eval-iters", "100"))


def task_train_args(task: TaskTemplate) -> Tuple[Arg, ...]:
    pattern = () if task.pattern_id is None else (("--pattern-id", str(task.pattern_id)),)
    return TRAIN_ARGS + task.extra_args + pattern


# How results are read: the metrics that count for selecting a run's best epoch, and
# the order a table shows a task's metrics in when it is not the logged order.
ALLOWED_METRICS = ("f1a", "f1", "f1-macro", "em", "acc", "accuracy", "ppl", "matthews", "pearson", "spearman")
DISPLAY_METRICS: Mapping[str, Tuple[str, ...]] = {"record": ("F1", "EM")}
