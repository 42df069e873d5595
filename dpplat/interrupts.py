"""SIGINT and SIGTERM, handled alike: a stop request that a loop checks between steps.

A trainer stopped by Ctrl+C, ``kill`` or a service manager should end the same way: the
step in flight finishes, a checkpoint is written, the run is marked ``interrupted`` and the
user is told how to resume it. A second signal stops at once (KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class StopRequest:
    """Set by the first SIGINT or SIGTERM; ``reason`` names the signal."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a stop request"

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.signum or signal.SIGINT)


@contextlib.contextmanager
def graceful_stop(*, immediate: bool = False) -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to a :class:`StopRequest` while the block runs.

    ``immediate=True`` raises KeyboardInterrupt at the first signal (for work that has no step
    boundary to stop at, like waiting on a pool of audit workers); otherwise the first signal
    sets the request and the second raises. Outside the main thread, nothing is installed.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, _frame) -> None:
        already = request.is_set()
        request.set(signum)
        if immediate or already:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
