"""Result records -> tables: one row per method and stage, one column per task, and
the mean.

A record is one run as auto_tune writes it (the original's `ft_logs/*.json` are lists of the
same records). For each run the table takes the `max_score_dict` entry with the largest sum of
the task's first two metrics (the original's rule, raw values), shows its metrics x100 where the
original logged fractions (values in (0, 1]; records written here are on a 0-100 scale
already), and averages each task's shown metrics for the mean. WSC's generative variant is left
out of the mean when WSC itself is in the row, so a SuperGLUE row averages 8 tasks.
"""
import csv
import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .templates import ALLOWED_METRICS, DISPLAY_METRICS, TASK_ORDER, TASKS

TASK_BY_NAME = {task.task.lower(): key for key, task in TASKS.items() if task.benchmark == "superglue"}


@dataclass(frozen=True)
class Cell:
    metrics: Tuple[Tuple[str, float], ...]   # (name, value shown) in display order
    status: str = "ok"

    @property
    def score(self) -> Optional[float]:
        return sum(v for _, v in self.metrics) / len(self.metrics) if self.metrics else None


@dataclass(frozen=True)
class Row:
    name: str
    stage: int
    cells: Dict[str, Cell]

    @property
    def mean(self) -> Optional[float]:
        tasks = [t for t, cell in self.cells.items() if cell.score is not None]
        if "wsc" in tasks and "wsc_generative" in tasks:
            tasks.remove("wsc_generative")
        return sum(self.cells[t].score for t in tasks) / len(tasks) if tasks else None


# --------------------------------------------------------------------------- one run
def selection_metrics(score_dict: Dict[str, float]) -> List[str]:
    """The task's first two metrics among the counted ones (the selection rule's metrics)."""
    return [name for name in score_dict if name.lower() in ALLOWED_METRICS][:2]


def best_entry(max_score_dict: Dict[str, dict]) -> Optional[dict]:
    """The entry (`{epoch, iteration, score_dict}`) with the largest sum of the first two metrics."""
    entries = [e for e in max_score_dict.values() if isinstance(e, dict) and e.get("score_dict")]
    if not entries:
        return None
    return max(entries, key=lambda e: sum(e["score_dict"][m] for m in selection_metrics(e["score_dict"])))


def _shown(value: float, percent_scale: bool) -> float:
    return value * 100 if not percent_scale and 0 < value <= 1 else value


def task_key(record: dict) -> str:
    own = record.get("auto_tune", {}).get("task")
    if own:
        return own
    args = record.get("args", {})
    name = str(args.get("task", "")).lower()
    if name == "wsc":
        return "wsc" if args.get("wsc_negative") else "wsc_generative"
    return TASK_BY_NAME.get(name, name)


def cell_of(record: dict) -> Cell:
    meta = record.get("auto_tune", {})
    if meta.get("status", "ok") != "ok":
        return Cell((), meta["status"])
    best = best_entry(record.get("max_score_dict") or {})
    if best is None:
        return Cell((), "no scores")
    scores = best["score_dict"]
    names = [m for m in DISPLAY_METRICS.get(task_key(record), ()) if m in scores] or selection_metrics(scores)
    percent = bool(meta.get("percent_scale"))
    return Cell(tuple((m, _shown(float(scores[m]), percent)) for m in names))


# --------------------------------------------------------------------------- records -> rows
def _loaded_from(record: dict) -> Optional[str]:
    command = record.get("*cmd") or ""
    try:
        tokens = shlex.split(command)
    except ValueError:
        return None
    values = [t.split("=", 1)[1] for t in tokens if t.startswith("--load-pretrained=")]
    return values[-1] if values else None


def stages_of(records: Sequence[dict]) -> List[int]:
    """Each record's stage: its own, or 1 + that of the earlier run whose output it loaded."""
    stages, by_save = [], {}
    for record in records:
        stage = record.get("auto_tune", {}).get("stage")
        if stage is None:
            parent = _loaded_from(record)
            stage = by_save[parent] + 1 if parent in by_save else 0
        stages.append(stage)
        save = record.get("args", {}).get("save")
        if save:
            by_save[save] = stage
    return stages


def rows_of(records: Sequence[dict], default_name: str) -> List[Row]:
    """One row per (name, stage); a task run twice at a stage shows its last run."""
    rows: Dict[Tuple[str, int], Dict[str, Cell]] = {}
    for record, stage in zip(records, stages_of(records)):
        name = record.get("auto_tune", {}).get("name") or default_name
        rows.setdefault((name, stage), {})[task_key(record)] = cell_of(record)
    return [Row(name, stage, cells) for (name, stage), cells in rows.items()]


# --------------------------------------------------------------------------- rendering
def _columns(rows: Sequence[Row]) -> List[Tuple[str, List[str]]]:
    """(task, metric names) per column, in the original's task order."""
    present = {task for row in rows for task in row.cells}
    order = [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))
    columns = []
    for task in order:
        names = next((list(n for n, _ in row.cells[task].metrics) for row in rows
                      if task in row.cells and row.cells[task].metrics), [])
        columns.append((task, names))
    return columns


def _title(task: str) -> str:
    return TASKS[task].display if task in TASKS else task


def to_markdown(rows: Sequence[Row]) -> str:
    columns = _columns(rows)
    header = ["method", "stage"] + [f"{_title(t)} {'/'.join(n)}".strip() for t, n in columns] + ["mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for task, _ in columns:
            cell = row.cells.get(task)
            cells.append("" if cell is None else "/".join(f"{v:.1f}" for _, v in cell.metrics) or cell.status)
        mean = "" if row.mean is None else f"{row.mean:.2f}"
        lines.append("| " + " | ".join([row.name, str(row.stage)] + cells + [mean]) + " |")
    return "\n".join(lines)


def to_csv(rows: Sequence[Row]) -> str:
    columns = _columns(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "stage"] + [f"{_title(t)} {m}" for t, names in columns for m in names] + ["mean"])
    for row in rows:
        values = []
        for task, names in columns:
            cell = dict(row.cells[task].metrics) if task in row.cells else {}
            values += [f"{cell[m]:.4f}" if m in cell else "" for m in names]
        writer.writerow([row.name, row.stage] + values + ["" if row.mean is None else f"{row.mean:.4f}"])
    return out.getvalue()


def render_tables(records: Sequence[dict], default_name: str = "run") -> Tuple[str, str]:
    rows = rows_of(records, default_name)
    return to_markdown(rows), to_csv(rows)


# --------------------------------------------------------------------------- --show_tune
def load_records(path: Path) -> List[dict]:
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "max_score_dict" in r for r in records):
        raise ValueError(f"{path}: not a list of run records (each with a max_score_dict), as auto_tune writes")
    return records


def _files(paths: Sequence[str]) -> List[Tuple[Path, str]]:
    """(file, row name) for each given file, and each JSON file under each given folder."""
    found = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found += [(f, str(f.relative_to(path).with_suffix(""))) for f in sorted(path.rglob("*.json"))]
        elif path.is_file():
            found.append((path, path.stem))
        else:
            raise ValueError(f"--show_tune {text}: no such file or folder")
    if not found:
        raise ValueError(f"--show_tune {' '.join(paths)}: no JSON files")
    return found


def show_tune_rows(paths: Sequence[str]) -> List[Row]:
    rows = []
    for path, name in _files(paths):
        rows += rows_of(load_records(path), name)
    return rows


def show_tune(paths: Sequence[str], table_format: str = "md") -> str:
    rows = show_tune_rows(paths)
    return to_markdown(rows) if table_format == "md" else to_csv(rows)
