"""auto_tune's command line: parse, validate, then print (--test), run, or re-print a table.

Everything that is not an auto_tune flag is classified here and nowhere else: `--again_N__flag`
stage modifiers, `--ds_*`/`--rate_ds_*` DeepSpeed patches, `--<task>_model_path` overrides, and
the rest, forwarded to every run.
"""
import argparse
import difflib
import io
import json
import os
import re
import signal
import sys
from contextlib import redirect_stderr
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .arglist import Arg, ArgError, parse_arg_tokens, render_args
from .deepspeed import DsOverride, DsRate, parse_override, parse_rate
from .render import (LAUNCHERS, Command, DeepSpeedSpec, RunPlan, SweepSpec, describe_plan, launch_command,
                     parse_gpus, plan_sweep, stage_modifiers)
from .teachers import DEFAULT_REGISTRY, check_key, load_registry
from .templates import DEFAULT_TASKS, EPOCH_TYPES, MODELS, TASKS

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "config"
ENV_DATA_ROOT, ENV_CHECKPOINT_ROOT, ENV_TUNE_DIR = "GLMKD_DATA_ROOT", "GLMKD_CHECKPOINT_ROOT", "GLMKD_TUNE_DIR"
# Flags auto_tune writes itself, with what to use instead.
RESERVED = {"--experiment-name": "it is <model type>-<task>-<time>", "--save": "use --model_path and --save_sub",
            "--task": "use --tasks", "--data-dir": "use --data_root", "--load-pretrained": "use --model_path",
            "--custom_tmp_result": "auto_tune reads it", "--deepspeed_config": "patch it with --ds_* flags"}
_AGAIN = re.compile(r"^--again_(\d+)__(.+)$")
STAMP_FORMAT = "%y%m%d_%H%M%S.%f"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auto_tune.py", allow_abbrev=False,
        description="Fine-tune or distil over several tasks and stages, one run after another, and report a "
                    "table. Flags that are not listed here are passed to every run.")
    add = parser.add_argument
    add("--py_file", default="finetune.py", help="the script each run launches (looked up in the current folder, "
                                                 "then next to auto_tune.py)")
    add("--launcher", default="deepspeed", choices=LAUNCHERS, help="how runs are launched (deepspeed as the original)")
    add("--gpus", default="0", help="GPU ids of each run, e.g. 0,1, or host:0,1 for the deepspeed launcher")
    add("--parallel_gpus", default=None, help="';'-separated disjoint GPU sets, e.g. '0,1;2,3': tasks run in "
                                              "parallel, one per set (a task's stages stay in order)")
    add("--model", default="block_tiny6", help=f"student template: {', '.join(MODELS)}")
    add("--model_path", default=None, help="student checkpoint (relative to --checkpoint_root); runs are saved "
                                           "under it. Without it the student starts untrained")
    add("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma list of tasks, run in order: {', '.join(TASKS)}")
    add("--task_t_load", default=None, help="teacher set of the registry (the per-task teacher checkpoints)")
    add("--task_t_load_path", default=str(DEFAULT_REGISTRY), help="the teacher registry (JSON)")
    add("--save_sub", default=None, help="folder under the model path: ft_<student_model>, or finetune")
    add("--data_root", default=None, help=f"folder of the SuperGLUE task folders (default: ${ENV_DATA_ROOT})")
    add("--glue_data_root", default=None, help="folder of the GLUE task folders (default: --data_root)")
    add("--checkpoint_root", default=None, help=f"root of relative checkpoint paths (default: "
                                                f"${ENV_CHECKPOINT_ROOT}, else the current folder)")
    add("--output_dir", default=None, help=f"where the results, tables, patched DeepSpeed configs and logs go "
                                           f"(default: ${ENV_TUNE_DIR}, else runs/auto_tune/tune_<time>)")
    add("--name", default=None, help="the method's name in the table (default: --student_model, or finetune)")
    add("--epoch_type", default="EPOCH_SINGLE", choices=EPOCH_TYPES, help="epoch table")
    add("--epoch_rate", type=float, default=1.0, help="multiply the table's epochs (rounded up)")
    add("--rate_arg_epochs", type=float, default=1.0, help="multiply the final --epochs (rounded down)")
    add("--del_checkpoint_activations", action="store_true", help="drop --checkpoint-activations")
    add("--del_fp16", action="store_true", help="drop --fp16, disable fp16 and ZeRO in the DeepSpeed config")
    add("--big_task", default="record", help="comma list of memory-heavy tasks")
    add("--big_task_gpus", default=None, help="GPUs of the big tasks")
    add("--big_task_dsc_suffix", default="_big_task", help="DeepSpeed config variant of the big tasks "
                                                           "(used with --big_task_gpus)")
    add("--max_retries", type=int, default=2, help="retries of a failed run (each with a fresh port)")
    add("--retry_wait", type=float, default=30.0, help="seconds between retries")
    add("--run_timeout", type=float, default=None, help="seconds after which a run is stopped and counted failed")
    add("--fix_module_parameters_mp", default="", help="accepted for the original's commands; unneeded here "
                                                       "(change_mp.py reads the partition specs of checkpoints)")
    add("--script", default="finetune_superglue", help="the original's script template; only "
                                                       "finetune_superglue is rebuilt")
    add("--test", action="store_true", help="print the commands, run nothing")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="an --output_dir that holds results (tune.json): start afresh, replacing its "
                               "tune.json, tune.md, tune.csv and logs (default: refuse, exit code 2)")
    existing.add_argument("--append", action="store_true",
                          help="an --output_dir that holds results (tune.json): keep its records and add this "
                               "sweep's after them; the tables cover all of them (default: refuse, exit code 2)")
    add("--show_tune", nargs="+", default=None, metavar="PATH",
        help="print the table of result JSON files (or folders of them) and exit")
    add("--table_format", default="md", choices=("md", "csv"), help="format of --show_tune")
    return parser


@dataclass(frozen=True)
class ExtraFlags:
    """The flags auto_tune does not define, sorted by what they are for."""
    forwarded: Tuple[Arg, ...]
    again: Dict[int, List[Arg]]
    overrides: Tuple[DsOverride, ...]
    rates: Tuple[DsRate, ...]
    task_paths: Dict[str, str]


def _task_of_model_path(name: str) -> Optional[str]:
    task = name[:-len("_model_path")] if name.endswith("_model_path") else None
    return task if task in TASKS else None


def classify(tokens: Sequence[str], tasks: Sequence[str]) -> ExtraFlags:
    """The non-auto_tune tokens -> forwarded pairs, stage modifiers, ds patches, task model paths."""
    forwarded: List[Arg] = []
    again: Dict[int, List[Arg]] = {}
    overrides, rates, task_paths = [], [], {}
    for flag, value in parse_arg_tokens(tokens):
        match, name, task = _AGAIN.match(flag), flag[2:], _task_of_model_path(flag[2:])
        if match:
            again.setdefault(int(match.group(1)), []).append((f"--{match.group(2)}", value))
        elif name.startswith("rate_ds_"):
            rates.append(parse_rate(flag, name[len("rate_ds_"):], value))
        elif name.startswith("ds_"):
            overrides.append(parse_override(flag, name[len("ds_"):], value, len(tasks)))
        elif task is not None:
            if task not in tasks:
                raise ArgError(f"{flag}: task {task} is not in --tasks")
            task_paths[task] = value
        elif flag in RESERVED:
            raise ArgError(f"{flag} is set by auto_tune for each run ({RESERVED[flag]})")
        else:
            forwarded.append((flag, value))
    return ExtraFlags(tuple(forwarded), again, tuple(overrides), tuple(rates), task_paths)


def _tasks(text: str) -> Tuple[str, ...]:
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    unknown = [key for key in keys if key not in TASKS]
    if unknown or not keys:
        raise ArgError(f"--tasks={text}: unknown task {', '.join(unknown) or '(none given)'}; "
                       f"valid: {', '.join(TASKS)}")
    if len(set(keys)) != len(keys):
        raise ArgError(f"--tasks={text}: a task is listed twice")
    return keys


def _roots(args) -> Tuple[str, str]:
    data_root = args.data_root or os.environ.get(ENV_DATA_ROOT)
    if not data_root:
        raise ArgError(f"no data root: pass --data_root=DIR (or set ${ENV_DATA_ROOT}); task data is read from "
                       f"DIR/<Task>, e.g. DIR/RTE")
    return data_root, args.checkpoint_root or os.environ.get(ENV_CHECKPOINT_ROOT) or "."


def output_dir_of(args, stamp: str) -> str:
    return args.output_dir or os.environ.get(ENV_TUNE_DIR) or str(Path("runs") / "auto_tune" / f"tune_{stamp}")


def previous_records(output_dir: Path, append: bool, overwrite: bool) -> List[dict]:
    """The records a sweep into `output_dir` keeps: its tune.json's with --append, else none.
    --overwrite first removes the old results, tables and logs; a folder that holds results
    without either flag is refused (ArgError), so no sweep replaces them silently."""
    from .results import load_records
    from .runner import clear_results
    results = output_dir / "tune.json"
    if overwrite:
        clear_results(output_dir)
        return []
    if not results.exists():
        return []
    if not append:
        raise ArgError(f"the output folder {output_dir} already holds a sweep's results ({results}); pass "
                       f"--append to add this sweep's runs to them, or --overwrite to replace them")
    try:
        return load_records(results)
    except ValueError as error:
        raise ArgError(f"--append: cannot add to {error}") from None


def _configs(model_name: str, big_suffix: Optional[str]) -> Dict[str, dict]:
    names = [MODELS[model_name].ds_config]
    if big_suffix is not None:
        names.append(names[0][:-len(".json")] + big_suffix + ".json")
    configs = {}
    for name in names:
        path = CONFIG_DIR / name
        if not path.is_file():
            raise ArgError(f"DeepSpeed config {path} does not exist")
        configs[name] = json.loads(path.read_text())
    return configs


def build_spec(args, extra: Sequence[str], output_dir: str) -> SweepSpec:
    if args.model not in MODELS:
        raise ArgError(f"--model={args.model}: unknown template; valid: {', '.join(MODELS)}")
    if args.script != "finetune_superglue":
        raise ArgError(f"--script={args.script}: only finetune_superglue is rebuilt (the original's language-"
                       f"modelling and seq2seq scripts are not)")
    if args.epoch_rate <= 0 or args.rate_arg_epochs <= 0 or args.max_retries < 0:
        raise ArgError("--epoch_rate and --rate_arg_epochs must be positive, --max_retries >= 0")
    tasks = _tasks(args.tasks)
    parts = classify(extra, tasks)
    stages = stage_modifiers(parts.again)
    keys = [key for key in [args.task_t_load] + [s.teacher_key for s in stages] if key]
    registry = load_registry(args.task_t_load_path) if keys else {}
    for key in keys:
        check_key(registry, key)
    data_root, checkpoint_root = _roots(args)
    big_tasks = tuple(t for t in args.big_task.split(",") if t) if args.big_task_gpus else ()
    if args.fix_module_parameters_mp:
        print("auto_tune.py: note: --fix_module_parameters_mp has no effect: change_mp.py reshards every tensor by "
              "the partition specs its checkpoint records", file=sys.stderr)
    num_gpus = len(parse_gpus(gpu_sets(args)[0])[1])
    return SweepSpec(
        py_file=args.py_file, model=MODELS[args.model], tasks=tuple(TASKS[key] for key in tasks),
        data_root=data_root, checkpoint_root=checkpoint_root, output_dir=output_dir,
        ds=DeepSpeedSpec(_configs(args.model, args.big_task_dsc_suffix if big_tasks else None), str(CONFIG_DIR),
                         parts.overrides, parts.rates, args.big_task_dsc_suffix),
        forwarded=parts.forwarded, stages=stages, model_path=args.model_path, task_model_paths=parts.task_paths,
        teacher_key=args.task_t_load, registry=registry, glue_data_root=args.glue_data_root, save_sub=args.save_sub,
        epoch_type=args.epoch_type, epoch_rate=args.epoch_rate, rate_arg_epochs=args.rate_arg_epochs,
        num_gpus=num_gpus, del_checkpoint_activations=args.del_checkpoint_activations, del_fp16=args.del_fp16,
        big_tasks=big_tasks)


def gpu_sets(args) -> Tuple[str, ...]:
    if not args.parallel_gpus:
        return (args.gpus,)
    sets = tuple(item.strip() for item in args.parallel_gpus.split(";") if item.strip())
    seen: Dict[Tuple[str, str], str] = {}
    for gpus in sets:
        host, ids = parse_gpus(gpus)
        for gpu in ids:
            if (host, gpu) in seen:
                raise ArgError(f"--parallel_gpus={args.parallel_gpus}: GPU {gpu} is in two sets "
                               f"({seen[host, gpu]} and {gpus}); the sets must be disjoint")
            seen[host, gpu] = gpus
    if len({len(parse_gpus(g)[1]) for g in sets}) > 1:
        raise ArgError(f"--parallel_gpus={args.parallel_gpus}: the sets must have the same size (the per-GPU "
                       f"batch size is derived from it)")
    return sets


def check_against_finetune(plans: Sequence[RunPlan], py_file: str) -> None:
    """Every run's flags parse with finetune.py's own parser (when that is the script)."""
    if Path(py_file).name != "finetune.py":
        return
    from training.flags import all_flags, build_parser as finetune_parser
    parser, names = finetune_parser("finetune.py", "finetune"), [flag.name for flag in all_flags()]
    for plan in plans:
        argv = render_args(plan.args)
        captured = io.StringIO()
        try:
            with redirect_stderr(captured):
                _, unknown = parser.parse_known_args(argv)
        except SystemExit:
            raise ArgError(f"{plan.task.key}, stage {plan.stage}: finetune.py rejects the command: "
                           f"{captured.getvalue().strip().splitlines()[-1]}") from None
        for token in unknown:
            flag = token.split("=", 1)[0]
            close = difflib.get_close_matches(flag, names, n=2, cutoff=0.7)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ArgError(f"finetune.py has no flag {flag}{hint} (task {plan.task.key}, stage {plan.stage})")


def resolve_py_file(py_file: str) -> str:
    """A relative script is looked up in the current folder, then next to auto_tune.py."""
    if Path(py_file).is_file():
        return py_file
    candidate = REPO_ROOT / py_file
    if not Path(py_file).is_absolute() and candidate.is_file():
        return str(candidate)
    raise ArgError(f"--py_file={py_file}: no such script (looked in {Path.cwd()} and {REPO_ROOT})")


def commands_for(plans: Sequence[RunPlan], spec: SweepSpec, launcher: str, gpus: str,
                 port: int = 29500) -> List[Command]:
    """The commands `--test` prints (a run gets a free port when it starts)."""
    return [launch_command(plan, spec.py_file, launcher, gpus, port) for plan in plans]


def _sweep(args, extra: Sequence[str]) -> int:
    stamp = datetime.now().strftime(STAMP_FORMAT)
    output_dir = output_dir_of(args, stamp)
    spec = build_spec(args, extra, output_dir)
    plans = plan_sweep(spec, stamp)
    sets = gpu_sets(args)
    commands = commands_for(plans, spec, args.launcher, sets[0])
    check_against_finetune(plans, spec.py_file)
    if args.test:
        print(describe_plan(plans, commands))
        if any(flag == "--model-parallel-size" for plan in plans for flag, _ in plan.args):
            print("# checkpoints of another model-parallel size are resharded with change_mp.py before their run")
        return 0
    spec = replace(spec, py_file=resolve_py_file(spec.py_file))
    previous = previous_records(Path(output_dir), args.append, args.overwrite)
    from .runner import RunnerOptions, run_sweep
    options = RunnerOptions(launcher=args.launcher, gpu_sets=sets, big_task_gpus=args.big_task_gpus,
                            max_retries=args.max_retries, retry_wait=args.retry_wait, run_timeout=args.run_timeout,
                            output_dir=Path(output_dir), name=args.name or spec.resolved_save_sub.removeprefix("ft_"))
    return run_sweep(spec, plans, options, previous=previous)


def run_from_command_line() -> int:
    """The scripts' entry: a SIGTERM (a scheduler ending the job) stops the runs in flight too."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return main()
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def main(argv: Optional[Sequence[str]] = None) -> int:
    """0: done; 1: some run failed (recorded in the results); 2: bad input, nothing ran."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = build_parser().parse_known_args(argv)
    args.test = args.test or not argv   # as the original: no arguments print the default sweep
    try:
        if args.show_tune:
            from .results import show_tune
            try:
                print(show_tune(args.show_tune, args.table_format))
            except ValueError as error:
                raise ArgError(str(error)) from None
            return 0
        return _sweep(args, extra)
    except ArgError as error:
        print(f"auto_tune.py: error: {error}", file=sys.stderr)
        return 2
