"""SIGINT and SIGTERM while training: noted, so that the loop stops after the step, saves, and exits 128 + signal."""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the loop saved `last.pth` and stops with `exit_code`."""

    def __init__(self, signum: int, path: Path):
        self.signum, self.path = signum, path
        self.exit_code = 128 + signum
        super().__init__(f"stopped by signal {signum}; state saved to {path}")


class StopSignals:
    """While entered, SIGINT/SIGTERM set `received` instead of stopping the process; the loop checks it."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
