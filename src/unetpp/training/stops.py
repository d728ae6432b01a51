"""How training stops early: patience spent, an error it cannot go past, or a signal asking it
to save."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

from ..console import log
from ..errors import UnetppError

if TYPE_CHECKING:
    from .config import TrainConfig


def patience_spent(cfg: "TrainConfig", state: dict[str, Any]) -> bool:
    """Early stopping: ``patience`` epochs without a better score, and at least
    ``min_patience_steps`` training steps in them (epochs of a few steps, a small data set on a
    CPU, would otherwise stop a run after seconds)."""
    bad = state["bad_epochs"]
    return cfg.patience is not None and bad >= cfg.patience and \
        bad * (cfg.steps_per_epoch or 1) >= cfg.min_patience_steps


class TrainingError(UnetppError):
    """Training cannot go on (non-finite loss, ...); RUN/last/ keeps the last good state."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: a resumable state was saved. ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.message, self.signum, self.exit_code = message, signum, 128 + signum


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop reads after each step; a second one aborts."""

    def __init__(self, main: bool):
        self.signum: int | None = None
        self.main = main
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.main:
            log(f"received {signal.Signals(signum).name}: finishing the current step, then saving a "
                "resumable state (send it again to abort without saving)")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


__all__ = ["StopRequest", "TrainingError", "TrainingInterrupted"]
