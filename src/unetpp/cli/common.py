"""What every CLI command shares: error reporting, output on a terminal vs. in a pipe."""

from __future__ import annotations

import sys

from rich.console import Console

#: stdout for results (JSON, tables); stderr for logs and progress.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def interactive() -> bool:
    """A progress bar on a terminal, plain log lines in CI, a pipe or a file."""
    import os

    return err.is_terminal and not os.environ.get("CI")


def log(message: str) -> None:
    err.print(message, markup=False)


def fail(problems: list[str] | str, code: int = 1) -> None:
    """Print one line per problem on stderr and exit (no traceback)."""
    for p in [problems] if isinstance(problems, str) else problems:
        print(f"error: {p}", file=sys.stderr)
    raise SystemExit(code)
