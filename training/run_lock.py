"""One process writes a run folder at a time.

The lock is a file beside the run folder (`<save>/.<experiment-name>.lock`), so taking it
never changes the run folder itself. It is held with `fcntl.flock`, which the kernel releases
when the holder dies: a lock file left by a killed run is recognised as stale and taken over.
The file names its holder (host, pid, command line), which a refused run prints.
"""
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from .config import ConfigError


def lock_run_folder(run_dir: Optional[str], is_main: bool, log=print) -> Optional["RunLock"]:
    """The first rank locks the run folder; every rank raises when another run holds it."""
    if run_dir is None:
        return None
    lock, refusal = None, [None]
    if is_main:
        try:
            lock = RunLock(run_dir).acquire()
            if lock.stale_holder:
                log(f"note: took over the lock of a run that is no longer running ({lock.stale_holder})")
        except ConfigError as error:
            refusal = [str(error)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(refusal, src=0)
    if refusal[0]:
        raise ConfigError(refusal[0])
    return lock


def lock_path(run_dir: str) -> Path:
    folder = Path(run_dir).resolve()
    return folder.parent / f".{folder.name}.lock"


class RunLock:
    """An exclusive lock on a run folder; `acquire` raises ConfigError naming the holder."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = lock_path(run_dir)
        self._handle = None
        self._created: list = []
        self.stale_holder: Optional[str] = None   # set when a killed run's lock file was taken over

    def acquire(self) -> "RunLock":
        self._created = [folder for folder in [self.path.parent, *self.path.parent.parents] if not folder.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(handle)
                handle.close()
                raise ConfigError(f"{self.run_dir} is being written by another run ({holder}); wait for it to "
                                  f"finish, stop it, or choose another --experiment-name") from None
            if _same_file(handle, self.path):   # not unlinked by a holder releasing it meanwhile
                break
            handle.close()
        previous = _read_holder(handle)
        if previous != "holder unknown":
            self.stale_holder = previous
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%c"),
                                 "command": " ".join(sys.argv)[:500]}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Unlock, remove the lock file, and the folders `acquire` created if they stayed empty
        (a refused run leaves no trace)."""
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)   # unlink while holding: a waiter re-checks the inode
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
        for folder in self._created:   # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def _same_file(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return "holder unknown"
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}: {info.get('command', '')[:200]}"
