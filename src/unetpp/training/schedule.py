"""The learning rate over a run: constant (the paper's Adam at 3e-4) or poly decay.

``poly`` (the default for user data, issue 22; nnU-Net's schedule) multiplies the base rate by
``(1 - t / T) ** 0.9`` after ``t`` of the run's ``T`` steps, so the last steps take small
updates and the final weights settle instead of jittering at the full rate. ``T`` is
``--epochs`` x steps per epoch; with ``--max-minutes`` it is re-planned after every epoch from
the mean epoch's wall time (:func:`horizon`), so the decay ends where the budget does (what
nnU-Net's budget trainer in ``benchmarks/vs_nnunet.py`` does once, after its first epoch).
The horizon is stored in the checkpoint, so a resumed run takes the very same rates.
"""

from __future__ import annotations

import math
from typing import Any

SCHEDULES = ("poly", "constant")
POLY_EXPONENT = 0.9


def rate(schedule: str, base: float, done: int, total: int) -> float:
    """The learning rate of the step after ``done`` of ``total`` steps."""
    if schedule == "constant" or total <= 0:
        return base
    return base * max(0.0, 1.0 - done / total) ** POLY_EXPONENT


def horizon(epochs: int, max_minutes: float | None, wall_seconds: float, epochs_done: int) -> int:
    """The run's length in epochs: ``epochs``, or fewer when the epochs still to come at the
    mean epoch's wall time so far do not fit ``max_minutes``; never less than the next epoch
    (an epoch that runs at all takes a step at a rate above 0: the loop, not the schedule,
    decides to stop)."""
    if max_minutes is None or epochs_done == 0:
        return epochs
    mean = wall_seconds / epochs_done
    left = math.floor(max(0.0, max_minutes * 60 - wall_seconds) / mean) if mean > 0 else epochs
    return min(epochs, max(epochs_done + 1, epochs_done + left))


def out_of_time_after(max_minutes: float | None, wall_seconds: float, epoch: int, this_epoch: float) -> bool:
    """Whether the epoch now ending is the last the time budget holds: the wall time of the
    epochs before (steps, validation; over resumes) and this one's so far, plus one more epoch
    as long as their mean, pass ``max_minutes`` (so a run ends within its budget, not one
    epoch past it)."""
    if max_minutes is None:
        return False
    mean_epoch = wall_seconds / (epoch - 1) if epoch > 1 else this_epoch
    return wall_seconds + this_epoch + mean_epoch > max_minutes * 60


def set_rate(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
