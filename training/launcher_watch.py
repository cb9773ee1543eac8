"""Workers stop when their launcher dies.

torchrun and the deepspeed launcher stop their workers when they are interrupted or terminated,
but a launcher killed outright (SIGKILL, an out-of-memory kill, a closed SSH session that
takes it down hard) leaves its workers running: holding GPUs, blocked in a collective, or
writing checkpoints nobody waits for. Each worker therefore watches the launcher processes
above it (found by their command line in /proc) and exits when one of them is gone.
Linux only; elsewhere, and for a plain `python pretrain.py`, nothing is watched.
"""
import os
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

LAUNCHER_MARKERS = ("torchrun", "torch.distributed.run", "torch.distributed.launch", "deepspeed.launcher", "bin/deepspeed")
POLL_SECONDS = 1.0


def _stat(pid: int) -> Optional[Tuple[int, str]]:
    """(parent pid, start time) of a process from /proc/<pid>/stat, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # after "pid (command) "; the command may hold spaces
    return int(fields[1]), fields[19]               # ppid, starttime (clock ticks since boot)


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def launcher_ancestors(pid: Optional[int] = None) -> List[Tuple[int, str]]:
    """(pid, start time) of every ancestor of `pid` (default: this process) that is a launcher."""
    found, seen = [], set()
    current = _stat(pid or os.getpid())
    while current is not None and current[0] > 1 and current[0] not in seen:
        parent = current[0]
        seen.add(parent)
        current = _stat(parent)
        if current is not None and any(marker in _command_line(parent) for marker in LAUNCHER_MARKERS):
            found.append((parent, current[1]))
    return found


def _alive(pid: int, start_time: str) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start_time   # the same process, not a reused pid


def exit_with_launcher() -> bool:
    """Start a daemon thread that ends this process when a launcher above it is gone; True
    when there is a launcher to watch."""
    launchers = launcher_ancestors() if Path("/proc/self/stat").exists() else []
    if not launchers:
        return False

    def watch() -> None:
        while True:
            time.sleep(POLL_SECONDS)
            for pid, start_time in launchers:
                if not _alive(pid, start_time):
                    print(f"\nrank {os.environ.get('RANK', '?')}: the launcher (pid {pid}) is gone; stopping this "
                          f"worker", file=sys.stderr, flush=True)
                    os._exit(1)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    return True
