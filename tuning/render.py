"""A sweep spec -> the commands of every run, as the original auto_tune builds them.

Pure functions: the clock, the ports and the files are inputs. One run per task and stage; a
task's stages run in order, stage N loading stage N-1's `<save>/<experiment-name>` (its tracker
points to the best weights). The argument order is the original's, which its logs show:

    stage 0: <fixed flags> <model flags> <task flags> <batch, epochs, lr> <deepspeed>
             <forwarded flags> <teacher flags> --custom_tmp_result
    stage N: <fixed flags> ... <deepspeed> <teacher flags> <forwarded flags, toggled>
             <stage-N flags> --custom_first_eval --custom_tmp_result

and a flag given twice keeps its first position with the last value (forwarded flags override
the template's in place).
"""
import math
import posixpath
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .arglist import (Arg, ArgError, get_value, merge_args, remove_flags, render_args, set_value,
                      toggle_stage_args)
from .deepspeed import DsOverride, DsRate, patch_config
from .teachers import TeacherEntry, teacher_args
from .templates import (BATCH_SIZE, DEEPSPEED_SUFFIX, DEFAULT_LR, NCCL_ENV, ModelTemplate, TaskTemplate, common_args,
                        task_train_args)

LAUNCHERS = ("deepspeed", "torchrun", "python")


@dataclass(frozen=True)
class StageSpec:
    """Stage `number` >= 1: its `--again_N__` flags and, when swapped, its teacher set."""
    number: int
    args: Tuple[Arg, ...] = ()
    teacher_key: Optional[str] = None


@dataclass(frozen=True)
class DeepSpeedSpec:
    """The template configs (file name -> content), where they live, and the patches."""
    configs: Mapping[str, dict]
    config_dir: str
    overrides: Tuple[DsOverride, ...] = ()
    rates: Tuple[DsRate, ...] = ()
    big_task_suffix: str = "_big_task"


@dataclass(frozen=True)
class SweepSpec:
    py_file: str
    model: ModelTemplate
    tasks: Tuple[TaskTemplate, ...]
    data_root: str
    checkpoint_root: str
    output_dir: str
    ds: DeepSpeedSpec
    forwarded: Tuple[Arg, ...] = ()
    stages: Tuple[StageSpec, ...] = ()
    model_path: Optional[str] = None
    task_model_paths: Mapping[str, str] = field(default_factory=dict)
    teacher_key: Optional[str] = None
    registry: Mapping[str, TeacherEntry] = field(default_factory=dict)
    glue_data_root: Optional[str] = None
    save_sub: Optional[str] = None
    epoch_type: str = "EPOCH_SINGLE"
    epoch_rate: float = 1.0
    rate_arg_epochs: float = 1.0
    num_gpus: int = 1
    del_checkpoint_activations: bool = False
    del_fp16: bool = False
    big_tasks: Tuple[str, ...] = ()

    @property
    def resolved_save_sub(self) -> str:
        student = get_value(self.forwarded, "--student_model")
        return self.save_sub or (f"ft_{student}" if student else "finetune")


@dataclass(frozen=True)
class RunPlan:
    """One run: the flags after the script, and what the runner needs around them."""
    index: int
    task: TaskTemplate
    stage: int
    args: Tuple[Arg, ...]
    run_dir: str                  # <save>/<experiment-name>: the next stage's --load-pretrained
    epochs: int
    result_path: str
    ds_config_path: str
    ds_config: Optional[dict]     # the patched config to write at ds_config_path; None: a template file
    ds_changes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    env: Tuple[Tuple[str, str], ...]
    argv: Tuple[str, ...]

    def shell(self) -> str:
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env] + [shlex.quote(a) for a in self.argv])


# --------------------------------------------------------------------------- pieces
def per_gpu_batch_size(num_gpus: int) -> int:
    return max(BATCH_SIZE // num_gpus, 1)


def task_epochs(spec: SweepSpec, task: TaskTemplate) -> int:
    return math.ceil(task.epochs[spec.epoch_type] * spec.epoch_rate)


def _deepspeed_config(spec: SweepSpec, task_index: int, task: TaskTemplate) -> Tuple[str, Optional[dict], List[str]]:
    name = spec.model.ds_config
    if task.key in spec.big_tasks:
        name = name[:-len(".json")] + spec.ds.big_task_suffix + ".json"
    if name not in spec.ds.configs:
        raise ArgError(f"no DeepSpeed config {name} in {spec.ds.config_dir} (task {task.key})")
    config, changes = patch_config(spec.ds.configs[name], spec.ds.overrides, spec.ds.rates, task_index, task.key,
                                   spec.del_fp16, f"{spec.ds.config_dir}/{name}")
    if not changes:
        return posixpath.join(spec.ds.config_dir, name), None, []
    return posixpath.join(spec.output_dir, "deepspeed_config", f"{task.key}.json"), config, changes


def _teachers(spec: SweepSpec, key: Optional[str], task: TaskTemplate) -> List[Arg]:
    return teacher_args(spec.registry, key, task.key, spec.checkpoint_root) if key else []


def _template_args(spec: SweepSpec, task: TaskTemplate, experiment: str, save: str, load: str,
                   ds_path: str) -> List[Arg]:
    data_root = spec.glue_data_root if task.benchmark == "glue" and spec.glue_data_root else spec.data_root
    head = [("--finetune", None)] + ([("--cloze-eval", None)] if task.cloze_eval else [])
    head += [("--experiment-name", experiment), ("--task", task.task),
             ("--data-dir", posixpath.join(data_root, task.data_dir)), ("--save", save),
             ("--seq-length", str(task.seq_length)), ("--checkpoint-activations", None),
             ("--eval-batch-size", "16"), ("--save-epoch", "100000")]
    model = list(spec.model.arch_args) + [("--load-pretrained", load)] + ([("--fp16", None)] if spec.model.fp16 else [])
    tail = [("--batch-size", str(per_gpu_batch_size(spec.num_gpus))), ("--epochs", str(task_epochs(spec, task))),
            ("--lr", DEFAULT_LR), ("--overwrite", None)]
    return (head + model + list(task_train_args(task)) + list(common_args(task)) + tail + list(DEEPSPEED_SUFFIX)
            + [("--deepspeed_config", ds_path)])


def _epochs_of(args: Sequence[Arg]) -> int:
    value = get_value(args, "--epochs")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ArgError(f"--epochs={value}: the number of epochs must be an integer") from None


def _finalise(spec: SweepSpec, args: List[Arg]) -> List[Arg]:
    args = merge_args(args)
    if spec.del_checkpoint_activations:
        args = remove_flags(args, ["--checkpoint-activations"])
    if spec.del_fp16:
        args = remove_flags(args, ["--fp16"])
    if spec.rate_arg_epochs != 1.0:
        args = set_value(args, "--epochs", str(int(spec.rate_arg_epochs * _epochs_of(args))))
    return args


def _start_path(spec: SweepSpec, task: TaskTemplate) -> Tuple[str, str]:
    """(the stage-0 --load-pretrained, the folder its runs are saved under)."""
    path = spec.task_model_paths.get(task.key, spec.model_path)
    if path:
        full = posixpath.join(spec.checkpoint_root, path)
        return full, full
    return "", posixpath.join(spec.checkpoint_root, spec.model.default_path)


# --------------------------------------------------------------------------- the sweep
def plan_task(spec: SweepSpec, task_index: int, first_index: int, stamp: str) -> List[RunPlan]:
    """Every stage of the `task_index`-th task."""
    task = spec.tasks[task_index]
    ds_path, ds_config, ds_changes = _deepspeed_config(spec, task_index, task)
    experiment = f"{spec.model.model_type}-{task.experiment_part}-{stamp}"
    load, root = _start_path(spec, task)
    plans = []
    for stage in range(len(spec.stages) + 1):
        index = first_index + stage
        save = posixpath.join(root, spec.resolved_save_sub, task.save_name)
        result = posixpath.join(spec.output_dir, "results", f"{index:02d}_{task.key}_stage{stage}.json")
        template = _template_args(spec, task, experiment, save, load, ds_path)
        if stage == 0:
            args = template + list(spec.forwarded) + _teachers(spec, spec.teacher_key, task)
        else:
            again = spec.stages[stage - 1]
            forwarded, added = toggle_stage_args(merge_args(spec.forwarded), again.args)
            teachers = _teachers(spec, again.teacher_key or spec.teacher_key, task)
            args = template + teachers + forwarded + added + [("--custom_first_eval", None)]
        args = _finalise(spec, args + [("--custom_tmp_result", result)])
        run_dir = posixpath.join(save, experiment)
        plans.append(RunPlan(index, task, stage, tuple(args), run_dir, _epochs_of(args), result,
                             ds_path, ds_config, tuple(ds_changes)))
        load = root = run_dir
    return plans


def plan_sweep(spec: SweepSpec, stamp: str) -> List[RunPlan]:
    """All runs, task by task, each task's stages in order. `stamp` ends the experiment names."""
    plans: List[RunPlan] = []
    for task_index in range(len(spec.tasks)):
        plans += plan_task(spec, task_index, len(plans), stamp)
    return plans


def parse_gpus(gpus: str) -> Tuple[str, List[str]]:
    """"0,1" -> ("localhost", ["0", "1"]); "host:2,3" -> ("host", ["2", "3"])."""
    host, _, ids = gpus.rpartition(":")
    items = [item.strip() for item in ids.split(",")]
    if not all(items):
        raise ArgError(f"--gpus={gpus}: expected comma-separated GPU ids, e.g. 0,1 or host:0,1")
    return host or "localhost", items


def launch_command(plan: RunPlan, py_file: str, launcher: str, gpus: str, port: int) -> Command:
    """The full command of `plan` for one launcher on the GPU set `gpus`."""
    host, ids = parse_gpus(gpus)
    script_args = tuple(render_args(plan.args))
    if launcher == "deepspeed":
        include = gpus if ":" in gpus else f"localhost:{gpus}"
        return Command(NCCL_ENV, ("deepspeed", f"--master_port={port}", f"--include={include}", "--hostfile=",
                                  py_file) + script_args)
    if host != "localhost":
        raise ArgError(f"--gpus={gpus}: a host is only meaningful with --launcher=deepspeed")
    env = (("CUDA_VISIBLE_DEVICES", ",".join(ids)),)
    if launcher == "torchrun":
        return Command(env, ("torchrun", f"--nproc_per_node={len(ids)}", f"--master_port={port}", py_file)
                       + script_args)
    if launcher == "python":
        if len(ids) != 1:
            raise ArgError(f"--gpus={gpus}: --launcher=python runs one process on one GPU; use torchrun or "
                           f"deepspeed for {len(ids)}")
        return Command(env, ("python", py_file) + script_args)
    raise ArgError(f"unknown --launcher={launcher}; valid: {', '.join(LAUNCHERS)}")


def describe_plan(plans: Sequence[RunPlan], commands: Sequence[Command]) -> str:
    """The `--test` listing: a comment line per run, then its command."""
    lines = []
    for plan, command in zip(plans, commands):
        note = f"# {plan.index + 1}/{len(plans)}: {plan.task.key}, stage {plan.stage}, {plan.epochs} epochs"
        if plan.ds_changes:
            note += f"; {plan.ds_config_path}: {', '.join(plan.ds_changes)}"
        lines += [note, command.shell()]
    return "\n".join(lines)


def stage_modifiers(again: Mapping[int, List[Arg]]) -> Tuple[StageSpec, ...]:
    """`{N: [(flag, value), ...]}` from the `--again_N__` flags -> the stage specs, N = 1, 2, ..."""
    numbers = sorted(again)
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        raise ArgError(f"--again_N__ stages must be numbered 1, 2, ... without gaps; got {numbers}")
    stages = []
    for number in numbers:
        teacher = [value for flag, value in again[number] if flag == "--task_t_load"]
        if teacher and not teacher[-1]:
            raise ArgError(f"--again_{number}__task_t_load needs a teacher set name")
        args = tuple((flag, value) for flag, value in again[number] if flag != "--task_t_load")
        stages.append(StageSpec(number, args, teacher[-1] if teacher else None))
    return tuple(stages)


def stage_index(plans: Sequence[RunPlan]) -> Dict[str, List[RunPlan]]:
    """The plans of each task, in stage order."""
    chains: Dict[str, List[RunPlan]] = {}
    for plan in plans:
        chains.setdefault(plan.task.key, []).append(plan)
    return chains
