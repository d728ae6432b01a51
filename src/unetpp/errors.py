"""User-facing errors: each carries one line per problem, naming the file or option.

The CLI prints ``problems`` one per line and exits 1, with no traceback unless ``--debug``.
Library callers can catch :class:`UnetppError` (a ``ValueError``) and read ``problems``.
"""

from __future__ import annotations

from collections.abc import Iterable


class UnetppError(ValueError):
    """A problem the user can fix (bad input, bad option, bad file)."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else [str(p) for p in problems]
        super().__init__("\n".join(self.problems))


class DataError(UnetppError):
    """A dataset or input file that cannot be used as it is."""


class RunError(UnetppError):
    """A run folder that is missing files, tampered with, or from an incompatible version."""
