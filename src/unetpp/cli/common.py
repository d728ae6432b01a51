"""What every CLI command shares: error reporting; output goes through :mod:`unetpp.console`."""

from __future__ import annotations

import sys

from ..console import err, interactive, log, out

__all__ = ["err", "fail", "interactive", "log", "out"]


def fail(problems: list[str] | str, code: int = 1) -> None:
    """Print one line per problem on stderr and exit (no traceback)."""
    for p in [problems] if isinstance(problems, str) else problems:
        print(f"error: {p}", file=sys.stderr)
    raise SystemExit(code)
