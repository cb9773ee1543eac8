"""Run the planned commands: one after another (or one task per GPU set in parallel), each with
a bounded number of retries on a fresh port, resharding checkpoints for `--model-parallel-size`;
a failed run is recorded (and the task's later stages skipped) instead of stopping the sweep.

Every finished run appends a record to `<output_dir>/tune.json`, in the original's format
(`args`, `now`, `max_score_dict`, `epoch`, `*cmd`) plus an `auto_tune` section (task, stage,
status, attempts, best epoch and metrics); the tables are rewritten next to it. An earlier
sweep's records (`--append`) stay first in tune.json and the tables cover them too;
`clear_results` removes an earlier sweep's results, tables and logs (`--overwrite`).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from queue import Queue
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .arglist import Arg, get_value
from .render import Command, RunPlan, SweepSpec, launch_command, stage_index
from .results import best_entry, render_tables

RESHARDED_FLAGS = ("--load-pretrained", "--teacher_load_pretrained", "--mt_load_pretrained")
RESULT_FILES = ("tune.json", "tune.md", "tune.csv")   # what a sweep writes into its output folder
USAGE_ERROR = 2   # argparse's exit status: the command itself is wrong, a retry cannot help


@dataclass(frozen=True)
class RunnerOptions:
    launcher: str
    gpu_sets: Tuple[str, ...]
    output_dir: Path
    name: str
    max_retries: int = 2
    retry_wait: float = 30.0
    run_timeout: Optional[float] = None
    big_task_gpus: Optional[str] = None
    log: Callable[[str], None] = lambda text: print(f"[auto_tune] {text}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- resharding
def _mp_suffix_free(path: str) -> str:
    head, _, tail = path.rpartition("_MP")
    return head if head and tail.isdigit() else path


def reshard_path(path: str, mp: int, convert: Callable[[str, int], Optional[Path]]) -> str:
    """The checkpoint to load at model-parallel size `mp`: `path` itself when it is
    missing (a later stage's, written at `mp` anyway), already named `_MP<mp>`, or already of
    size `mp`; otherwise `<path without _MPk>[_MP<mp>]`, written by `convert` (change_mp) unless
    it exists."""
    if not path or not Path(path).exists() or path.endswith(f"_MP{mp}"):
        return path
    target = _mp_suffix_free(path) + (f"_MP{mp}" if mp > 1 else "")
    if target != path and Path(target).exists():
        return target
    written = convert(path, mp)
    if written is None:       # the checkpoint already has this size: nothing to convert
        return path
    if target == path:        # an unsuffixed checkpoint to MP=1 keeps change_mp's name (<path>_MP1)
        return str(written)
    if str(written) != str(Path(target).resolve()):
        Path(written).rename(target)
    return target


def reshard_args(args: Sequence[Arg], convert: Callable[[str, int], Optional[Path]],
                 log: Callable[[str], None]) -> List[Arg]:
    size = get_value(args, "--model-parallel-size")
    if size is None or int(size) < 1:
        return list(args)
    mp, result = int(size), []
    for flag, value in args:
        if flag in RESHARDED_FLAGS and value:
            paths = [reshard_path(item, mp, convert) for item in value.split(":")]
            if paths != value.split(":"):
                log(f"{flag}: resharded to model parallel size {mp}: {':'.join(paths)}")
            value = ":".join(paths)
        result.append((flag, value))
    return result


def change_mp_convert(path: str, mp: int) -> Optional[Path]:
    from model.checkpoint import change_mp   # imports torch: only when a checkpoint needs resharding
    return change_mp(path, mp)


# --------------------------------------------------------------------------- one run
class Processes:
    """The runs in flight, so that an interrupted sweep (Ctrl-C) stops every one of them; runs
    get their own session, so a stuck one can be stopped with everything it started."""

    def __init__(self):
        self.lock, self.running, self.stopping = threading.Lock(), set(), threading.Event()

    def check(self) -> None:
        if self.stopping.is_set():
            raise KeyboardInterrupt

    def pause(self, seconds: float) -> None:
        """Wait between retries, unless the sweep is stopped."""
        self.stopping.wait(seconds)
        self.check()

    def start(self, argv: List[str], env: Dict[str, str], log) -> subprocess.Popen:
        with self.lock:
            self.check()
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.running.add(process)
            return process

    def wait(self, process: subprocess.Popen, timeout: Optional[float]) -> int:
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            return -signal.SIGTERM
        except BaseException:   # interrupted: the run must not outlive the sweep
            _stop(process)
            raise
        finally:
            with self.lock:
                self.running.discard(process)

    def stop_all(self) -> None:
        with self.lock:
            self.stopping.set()
            running = list(self.running)
        for process in running:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """End a run and everything it started (launchers spawn one process per rank)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _resolve_executable(command: Command) -> List[str]:
    program = command.argv[0]
    if program == "python":
        return [sys.executable, *command.argv[1:]]
    found = shutil.which(program)
    if found is None:
        raise FileNotFoundError(f"{program} is not installed (needed by --launcher={program})")
    return [found, *command.argv[1:]]


def execute(command: Command, log_path: Path, timeout: Optional[float], processes: Processes) -> int:
    """Run `command` with its output appended to `log_path`; its exit status (-15 when stopped)."""
    argv = _resolve_executable(command)
    with open(log_path, "a") as log:
        log.write(f"\n=== {datetime.now()}: {command.shell()}\n")
        log.flush()
        returncode = processes.wait(processes.start(argv, {**os.environ, **dict(command.env)}, log), timeout)
        if returncode == -signal.SIGTERM and timeout is not None:
            log.write(f"\n=== stopped (--run_timeout={timeout:g} s, or the sweep was interrupted)\n")
    return returncode


def read_result(plan: RunPlan) -> dict:
    """The scores the run wrote to --custom_tmp_result; raises ValueError when incomplete."""
    path = Path(plan.result_path)
    if not path.is_file():
        raise ValueError(f"the run wrote no results to {path}")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(result, dict) or not isinstance(result.get("max_score_dict"), dict):
        raise ValueError(f"{path} has no max_score_dict")
    epoch = result.get("epoch")
    if plan.epochs > 0 and isinstance(epoch, int) and epoch != -1 and epoch < plan.epochs - 1:
        raise ValueError(f"the run stopped at epoch {epoch} of {plan.epochs}")
    return result


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in text[-lines:])


@dataclass(frozen=True)
class Outcome:
    status: str                       # "ok", "failed" or "skipped"
    command: str = ""
    attempts: int = 0
    returncode: Optional[int] = None
    error: Optional[str] = None
    result: Optional[dict] = None
    log: Optional[str] = None


def make_record(plan: RunPlan, name: str, outcome: Outcome) -> dict:
    """The original's record of a run, plus what auto_tune knows about it."""
    result = outcome.result or {}
    best = best_entry(result.get("max_score_dict") or {})
    return {
        "args": {"save": plan.run_dir, "epochs": plan.epochs, "iteration": result.get("iteration"),
                 "task": plan.task.task, "wsc_negative": plan.task.key == "wsc"},
        "now": str(datetime.now()), "max_score_dict": result.get("max_score_dict", {}), "epoch": result.get("epoch"),
        "*cmd": outcome.command,
        "auto_tune": {"name": name, "task": plan.task.key, "stage": plan.stage, "status": outcome.status,
                      "attempts": outcome.attempts, "returncode": outcome.returncode, "error": outcome.error,
                      "log": outcome.log, "percent_scale": True,
                      "best": None if best is None else {"epoch": best.get("epoch"), "iteration": best.get("iteration"),
                                                         "metrics": best["score_dict"]}},
    }


def _prepare(plan: RunPlan, convert, log: Callable[[str], None]) -> RunPlan:
    """Reshard its checkpoints and write its DeepSpeed config."""
    plan = replace(plan, args=tuple(reshard_args(plan.args, convert, log)))
    if plan.ds_config is not None:
        Path(plan.ds_config_path).parent.mkdir(parents=True, exist_ok=True)
        Path(plan.ds_config_path).write_text(json.dumps(plan.ds_config, indent=2) + "\n")
    Path(plan.result_path).parent.mkdir(parents=True, exist_ok=True)
    return plan


def run_one(spec: SweepSpec, plan: RunPlan, gpus: str, options: RunnerOptions, processes: Processes,
            convert: Callable[[str, int], Optional[Path]] = change_mp_convert) -> Outcome:
    """Run `plan` until it succeeds, at most 1 + max_retries times, each time on a fresh port."""
    log_path = options.output_dir / "logs" / f"{plan.index:02d}_{plan.task.key}_stage{plan.stage}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        plan = _prepare(plan, convert, options.log)
    except Exception as error:   # a checkpoint that cannot be resharded fails this run only
        return Outcome("failed", error=f"resharding: {type(error).__name__}: {error}", log=str(log_path))
    where = f"{plan.task.key} stage {plan.stage}"
    for attempt in range(1, options.max_retries + 2):
        command = launch_command(plan, spec.py_file, options.launcher, gpus, free_port())
        Path(plan.result_path).unlink(missing_ok=True)
        options.log(f"{plan.index + 1}: {where}, attempt {attempt} (log: {log_path})")
        try:
            returncode = execute(command, log_path, options.run_timeout, processes)
            if returncode == 0:
                return Outcome("ok", command.shell(), attempt, 0, None, read_result(plan), str(log_path))
            error = f"exit status {returncode}"
        except FileNotFoundError as missing:   # no launcher: a retry cannot help
            return Outcome("failed", command.shell(), attempt, None, str(missing), log=str(log_path))
        except ValueError as bad:
            returncode, error = 0, str(bad)
        processes.check()
        options.log(f"{where} failed ({error}); the end of its log:\n{_tail(log_path)}")
        if returncode == USAGE_ERROR:
            error += " (a usage error: not retried)"
            break
        if attempt <= options.max_retries:
            processes.pause(options.retry_wait)
    return Outcome("failed", command.shell(), attempt, returncode, error, log=str(log_path))


# --------------------------------------------------------------------------- the sweep
def clear_results(folder: Path) -> None:
    """Remove an earlier sweep's tune.json, tune.md, tune.csv and run logs from `folder` (the
    logs are appended to, so they would otherwise mix two sweeps)."""
    for name in RESULT_FILES:
        (folder / name).unlink(missing_ok=True)
    for log in (folder / "logs").glob("*.log"):
        log.unlink()


class _Results:
    """This sweep's records so far, after `previous` (an earlier sweep's, kept by --append),
    all written after every run (thread-safe)."""

    def __init__(self, options: RunnerOptions, total: int, previous: Sequence[dict] = ()):
        self.options, self.total = options, total
        self.previous = list(previous)
        self.records: Dict[int, dict] = {}
        self.lock = threading.Lock()

    def add(self, index: int, record: dict) -> None:
        with self.lock:
            self.records[index] = record
            self.write()

    def ordered(self) -> List[dict]:
        """This sweep's records, in plan order."""
        return [self.records[index] for index in sorted(self.records)]

    def everything(self) -> List[dict]:
        """The earlier sweep's records, then this sweep's."""
        return self.previous + self.ordered()

    def write(self) -> None:
        folder = self.options.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        records = self.everything()
        _atomic_write(folder / "tune.json", json.dumps(records, indent=1) + "\n")
        markdown, csv = render_tables(records)
        _atomic_write(folder / "tune.md", markdown + "\n")
        _atomic_write(folder / "tune.csv", csv)


def _atomic_write(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    staging.replace(path)


def _summary(record: dict) -> str:
    meta = record["auto_tune"]
    if meta["best"] is None:
        return meta["error"] or "no scores"
    scores = ", ".join(f"{name} {value:.4g}" for name, value in meta["best"]["metrics"].items())
    return f"best {scores} at epoch {meta['best']['epoch']}"


def _run_chain(spec: SweepSpec, chain: List[RunPlan], gpus: str, options: RunnerOptions, results: _Results,
               processes: Processes, convert) -> None:
    """A task's stages in order; after a failure the later stages are skipped."""
    failed: Optional[int] = None
    for plan in chain:
        if failed is not None:
            outcome = Outcome("skipped", error=f"stage {failed} of {plan.task.key} failed")
        else:
            big = plan.task.key in spec.big_tasks and options.big_task_gpus
            outcome = run_one(spec, plan, options.big_task_gpus if big else gpus, options, processes, convert)
            failed = None if outcome.status == "ok" else plan.stage
        record = make_record(plan, options.name, outcome)
        options.log(f"{plan.index + 1}/{results.total}: {plan.task.key} stage {plan.stage}: {outcome.status} "
                    f"({_summary(record)})")
        results.add(plan.index, record)


def _run_chains(spec: SweepSpec, chains: List[List[RunPlan]], options: RunnerOptions, results: _Results,
                processes: Processes, convert) -> None:
    """The tasks one after another, or side by side, one per free GPU set."""
    if len(options.gpu_sets) == 1:
        for chain in chains:
            _run_chain(spec, chain, options.gpu_sets[0], options, results, processes, convert)
        return
    free: Queue = Queue()
    for gpus in options.gpu_sets:
        free.put(gpus)

    def work(chain: List[RunPlan]) -> None:
        gpus = free.get()
        try:
            _run_chain(spec, chain, gpus, options, results, processes, convert)
        finally:
            free.put(gpus)

    with ThreadPoolExecutor(max_workers=len(options.gpu_sets)) as pool:
        futures = [pool.submit(work, chain) for chain in chains]
        try:
            for future in futures:
                future.result()
        except BaseException:
            processes.stop_all()
            for future in futures:
                future.cancel()
            raise


def run_sweep(spec: SweepSpec, plans: Sequence[RunPlan], options: RunnerOptions,
              convert: Callable[[str, int], Optional[Path]] = change_mp_convert,
              previous: Sequence[dict] = ()) -> int:
    """Run every plan; write tune.json, tune.md and tune.csv (after the `previous` records, which
    the tables cover too); 0 when every run of this sweep succeeded."""
    results, processes = _Results(options, len(plans), previous), Processes()
    chains = list(stage_index(plans).values())
    options.log(f"{len(plans)} runs ({len(chains)} tasks x {len(plans) // max(len(chains), 1)} stages); "
                f"results in {options.output_dir}"
                + (f", after its {len(previous)} earlier records" if previous else ""))
    try:
        _run_chains(spec, chains, options, results, processes, convert)
    except BaseException:   # Ctrl-C, or SIGTERM at the entry point: no run outlives the sweep
        processes.stop_all()
        options.log(f"interrupted; the finished runs are in {options.output_dir / 'tune.json'}")
        raise
    records = results.ordered()
    print(render_tables(results.everything())[0], flush=True)
    bad = [r for r in records if r["auto_tune"]["status"] != "ok"]
    if bad:
        options.log(f"{len(bad)} of {len(records)} runs did not succeed: " + ", ".join(
            f"{r['auto_tune']['task']} stage {r['auto_tune']['stage']} ({r['auto_tune']['status']})" for r in bad))
    options.log(f"results: {options.output_dir / 'tune.json'}, tables: {options.output_dir / 'tune.md'}, "
                f"{options.output_dir / 'tune.csv'}")
    return 1 if bad else 0
