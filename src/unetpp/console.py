"""The ground floor for output: where results, log lines and progress go.

Every floor may import this module (it imports nothing of unetpp), so training, experiments
and the CLI all write through it, and nothing below the CLI imports the CLI.

- ``out``: stdout, for results (JSON, tables).
- ``err``: stderr, for log lines and progress bars.
- :func:`log`: one plain line on stderr, or to the sink set by :func:`log_to` (a worker
  process of ``compare --jobs`` sends its lines to the parent this way).
- :class:`Progress`: a rich progress bar on a terminal, plain log lines in CI, a pipe or a
  file.

Example:
    >>> from unetpp.console import log, log_to
    >>> lines = []
    >>> with log_to(lines.append):
    ...     log("epoch 1/3: loss 0.5")
    >>> lines
    ['epoch 1/3: loss 0.5']
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console

#: stdout for results (JSON, tables); stderr for logs and progress.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_sink: Callable[[str], None] | None = None


def interactive() -> bool:
    """A progress bar on a terminal, plain log lines in CI, a pipe or a file."""
    return err.is_terminal and not os.environ.get("CI")


def log(message: str) -> None:
    """One plain line (no markup) on stderr, or to the sink of :func:`log_to`."""
    if _sink is not None:
        _sink(message)
    else:
        err.print(message, markup=False)


@contextlib.contextmanager
def log_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Send :func:`log`'s lines to ``sink`` inside the block (restored afterwards)."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous


class Progress:
    """A progress bar with one task at a time on a terminal, plain lines otherwise.

    Args:
        mode: ``auto`` (a bar on an interactive terminal), ``bar``, ``log`` or ``none``.
        enabled: False silences it entirely (the non-main ranks of a torchrun job).
    """

    def __init__(self, mode: str = "auto", enabled: bool = True):
        self.bar = None
        self.task = None
        self.quiet = not enabled or mode == "none"
        if not self.quiet and _sink is None and (mode == "bar" or (mode == "auto" and interactive())):
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.fields[info]}"), console=err, transient=False)
            self.bar.start()

    def start(self, description: str, total: int | None, done: int = 0) -> None:
        """Replace the current task by a new one."""
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(description, total=total, completed=done, info="")

    def advance(self, info: str = "", steps: int = 1) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=steps, info=info)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            log(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Progress", "err", "interactive", "log", "log_to", "out"]
