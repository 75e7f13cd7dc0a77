"""One writer per run folder: a lock file that names its holder.

`RunLock(run_dir)` creates ``run_dir/.lock`` atomically (``O_CREAT | O_EXCL``) holding the
holder's pid, host and start time. A second writer is refused with `RunFolderBusyError`,
which names the holder. A lock left by a process that is gone (killed, machine rebooted)
is stale: on the same host a dead pid is detected and the lock taken over; a lock from
another host is never broken automatically (its process cannot be checked from here) —
the message says how to remove it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLock", "RunFolderBusyError"]

LOCK_NAME = ".lock"


class RunFolderBusyError(FileExistsError):
    """Another process is writing to this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Context manager: hold ``run_dir/.lock`` for the block (the folder is created)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.took_over: dict[str, Any] | None = None
        self._created_folder = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> None:
        self._created_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # written but not yet filled, or damaged: look again
                    time.sleep(0.05)
                    continue
                same_host = holder.get("host") == me["host"]
                pid = holder.get("pid")
                if same_host and isinstance(pid, int) and not _alive(pid):
                    self.took_over = holder  # stale: its process is gone
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunFolderBusyError(
                    f"{self.path.parent} is in use by process {pid} on host "
                    f"{holder.get('host')} (since {holder.get('started')}); wait for it to "
                    f"finish, or, if that process is gone, delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            return
        raise RunFolderBusyError(
            f"{self.path} exists but does not say who holds it (it is empty or damaged); if no "
            "other run is writing to this folder, delete it and run again"
        )

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
            # A run that failed before writing anything leaves no empty folder behind.
            if self._created_folder and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
