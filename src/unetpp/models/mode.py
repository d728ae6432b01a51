"""The paper's two ways to read a deep-supervised UNet++, as one value settled once.

- **accurate**: the mean of every head's probabilities;
- **fast** at level ``L``: head ``L`` alone, computed by the pruned network UNet++ L<L>.

:func:`resolve_mode` turns the user's ``--mode``/``--level``, the run's ``prune.json`` choice
and the model's heads into a :class:`Mode`; everything downstream (the engine, the
Predictor, evaluate, prune, export, compare) takes that value and never re-derives it.
:func:`combine_heads` is the one place that turns per-level probabilities into a mode's.

Example:
    >>> mode = resolve_mode(heads=(1, 2, 3, 4), depth=4, level=2)
    >>> mode, str(mode), mode.levels((1, 2, 3, 4))
    (Mode(name='fast', level=2), 'fast L2', (2,))
    >>> resolve_mode(heads=(1, 2, 3, 4), depth=4)            # no flags, no prune.json
    Mode(name='accurate', level=None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ..errors import UnetppError

MODES = ("accurate", "fast")


class Mode(NamedTuple):
    """``("accurate", None)`` or ``("fast", L)``; compares equal to that plain tuple."""

    name: str
    level: int | None = None

    @classmethod
    def accurate(cls) -> "Mode":
        return cls("accurate", None)

    @classmethod
    def fast(cls, level: int) -> "Mode":
        return cls("fast", int(level))

    def __str__(self) -> str:
        return "accurate" if self.name == "accurate" else f"fast L{self.level}"

    def levels(self, heads: Sequence[int]) -> tuple[int, ...]:
        """The heads this mode reads: all of ``heads`` (accurate) or its one level (fast).

        Raises UnetppError when ``heads`` has no head at the fast level.
        """
        heads = tuple(heads)
        if self.name == "accurate":
            return heads
        if self.level not in heads:
            if len(heads) == 1:
                raise UnetppError(f"--level {self.level}: this model was trained without deep supervision "
                                  f"and has only level {heads[0]}")
            raise UnetppError(f"--level must be one of {', '.join(map(str, heads))}, got {self.level}")
        return (int(self.level),)

    def to_json(self) -> dict[str, Any]:
        """``{"mode": "fast", "level": 2}`` (prune.json's ``chosen``; level null for accurate)."""
        return {"mode": self.name, "level": self.level}

    @classmethod
    def from_json(cls, data: Any, where: str = "mode") -> "Mode":
        """Parse :meth:`to_json`'s form; UnetppError naming ``where`` otherwise."""
        if not isinstance(data, Mapping) or data.get("mode") not in MODES:
            raise UnetppError(f"{where}: expected {{\"mode\": \"accurate\" | \"fast\", \"level\": ...}}, got {data!r}")
        if data["mode"] == "accurate":
            return cls.accurate()
        level = data.get("level")
        if isinstance(level, bool) or not isinstance(level, int):
            raise UnetppError(f"{where}: fast mode needs an integer level, got {level!r}")
        return cls.fast(level)


def resolve_mode(heads: Sequence[int], depth: int | None = None, mode: str | None = None,
                 level: int | None = None, chosen: Mode | None = None) -> Mode:
    """Settle the mode from the user's flags, ``prune.json``'s choice and the model's heads.

    Args:
        heads: the levels that have a head (``model.levels``).
        depth: the network's depth; when given, a level outside ``1..depth`` is refused
            naming it (the CLI's message).
        mode: ``"accurate"``, ``"fast"`` or None.
        level: fast mode's level, or None. A level alone means fast mode.
        chosen: what ``unetpp prune`` chose, used when neither flag is given (and for fast
            mode without a level, if it chose fast).

    Without flags or a choice: accurate for a deep-supervised model, its one head otherwise.
    Fast without a level: the chosen fast level, else the deepest head.

    Raises:
        UnetppError: one line naming the flag (``--mode``/``--level``) and what is allowed.
    """
    heads = tuple(heads)
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, int) and not hasattr(level, "__index__"):
            raise UnetppError(f"--level must be an integer, got {level!r}")
        level = int(level)
        if depth is not None and not 1 <= level <= depth:
            raise UnetppError(f"--level {level}: the network has depth {depth}, so levels are 1..{depth}")
    if mode is None and level is None:
        if chosen is not None:
            chosen.levels(heads)  # prune.json must fit the model
            return chosen
        return Mode.accurate() if len(heads) > 1 else Mode.fast(heads[-1])
    if mode is None:
        mode = "fast"
    if mode not in MODES:
        raise UnetppError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "accurate":
        if level is not None:
            raise UnetppError("--level is for fast mode; accurate mode averages every head")
        return Mode.accurate()
    if level is None:
        level = chosen.level if chosen is not None and chosen.name == "fast" and chosen.level in heads \
            else heads[-1]
    result = Mode.fast(level)
    result.levels(heads)
    return result


def combine_heads(probs: Mapping[int, torch.Tensor], mode: Mode | str, level: int | None = None) -> torch.Tensor:
    """A mode's probabilities from per-level ones: the mean over every level given
    (accurate, in level order) or one level (fast; the deepest given when ``level`` is None).

    ``mode`` may be a :class:`Mode` or its name (then ``level`` is fast mode's level).
    """
    name, level = (mode.name, mode.level) if isinstance(mode, Mode) else (mode, level)
    if name == "accurate":
        return torch.stack([probs[lv] for lv in sorted(probs)]).mean(dim=0)
    if name == "fast":
        return probs[level if level is not None else max(probs)]
    raise UnetppError(f"--mode must be one of {', '.join(MODES)}, got {name!r}")


__all__ = ["MODES", "Mode", "combine_heads", "resolve_mode"]
