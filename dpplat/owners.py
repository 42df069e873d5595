"""Who owns a running row of the store: its process (pid and host) and a heartbeat.

A run or audit records its owner when it starts or is taken over. A reader decides from
that whether ``running`` is still true: on the owner's host by asking whether the pid
lives, from another host by the age of the heartbeat, which a daemon thread of the owner
refreshes. A row whose owner is gone reads as ``interrupted``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

STALE_AFTER = 600.0  # seconds without a heartbeat after which another host's running row reads as interrupted
HEARTBEAT_EVERY = 30.0  # seconds between an owner's heartbeats


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def live_status(row: dict, now: float | None = None) -> str:
    """A row's status as a reader should see it: ``running`` only while its owner lives.

    On the owner's own host the owner's pid decides; from another host its heartbeat, which
    goes stale after :data:`STALE_AFTER` seconds. A running row with no owner recorded (written
    before owners were) reads as interrupted.
    """
    status = row.get("status")
    if status != "running":
        return status
    pid, host, beat = row.get("owner_pid"), row.get("owner_host"), row.get("heartbeat_at")
    if pid is None:
        return "interrupted"
    if host == socket.gethostname():
        return "running" if pid_alive(int(pid)) else "interrupted"
    now = time.time() if now is None else now
    return "running" if beat is not None and now - beat < STALE_AFTER else "interrupted"


class Heartbeat:
    """Refreshes ``heartbeat_at`` of one row every :data:`HEARTBEAT_EVERY` seconds from a daemon thread.

    The thread has its own connection, so the owner may be busy (a long evaluation, a pool of
    audit workers) and still be seen alive from another host.
    """

    def __init__(self, path: Path, table: str, row_id: int, every: float = HEARTBEAT_EVERY) -> None:
        if table not in ("runs", "audits"):
            raise ValueError(f"no heartbeat for table {table!r}.")
        self.path, self.table, self.row_id, self.every = path, table, row_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"dpplat-heartbeat-{table}-{row_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            while not self._stop.wait(self.every):
                try:
                    with conn:
                        conn.execute(f"UPDATE {self.table} SET heartbeat_at = ? WHERE id = ?", (time.time(), self.row_id))
                except sqlite3.Error:
                    pass  # a busy or vanished store: the next beat tries again
        finally:
            conn.close()
