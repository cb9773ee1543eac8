"""One writer for what a run reports: a tqdm bar, TensorBoard scalars and a JSONL file.

Losses and metrics are computed (and reduced across ranks) elsewhere and handed in as
{name: float}; only rank 0 writes. The JSONL file has one object per logged step:
{"step": 12, "split": "train", "loss": ..., "kd/soft": ..., "lr": ..., ...}.
"""
import json
import math
import time
from pathlib import Path
from typing import Mapping, Optional

from tqdm import tqdm


class MetricsLogger:
    """`open_now=False` defers creating the files and the bar to `open()`, so that a run can be
    validated (and refused) before it writes anything."""

    def __init__(self, log_dir: Optional[str], total_steps: int, enabled: bool, initial_step: int = 0,
                 tensorboard: bool = True, desc: str = "train", open_now: bool = True):
        self.enabled = enabled
        self.log_dir, self.total_steps, self.initial_step = log_dir, total_steps, initial_step
        self.tensorboard, self.desc = tensorboard, desc
        self.jsonl = None
        self.writer = None
        self.bar = None
        if open_now:
            self.open()

    def open(self, initial_step: Optional[int] = None) -> None:
        """Create metrics.jsonl (appended to: a resumed run continues it), TensorBoard and the bar."""
        if not self.enabled:
            return
        if self.log_dir is not None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self.jsonl = open(Path(self.log_dir) / "metrics.jsonl", "a", encoding="utf-8")
            if self.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(self.log_dir) / "tensorboard"))
        initial = self.initial_step if initial_step is None else initial_step
        self.bar = tqdm(total=self.total_steps, initial=initial, desc=self.desc, dynamic_ncols=True, mininterval=1.0)
        self._last_time = time.perf_counter()

    def log(self, step: int, values: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _plain(v) for k, v in values.items()}}
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{split}/{name}", value, step)

    def progress(self, step: int, postfix: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write_line(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        for closeable in (self.bar, self.writer, self.jsonl):
            if closeable is not None:
                closeable.close()
        self.bar = self.writer = self.jsonl = None


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
