"""The run's files, written by one background thread so that training never waits for a disk.

At each epoch boundary the loop takes a :class:`EpochFiles`: private CPU copies of the
weights and Adam's state, with the metrics rows so far
(:func:`~unetpp.training.checkpoint.snapshot_checkpoint`, 0.05 s on a CPU for the 300 MB 3D
paper network against 1.4-4.7 s to serialise and fsync it). :class:`RunWriter` writes them in a fixed order:

1. ``model.safetensors`` when the epoch's score improved (the best weights);
2. ``RUN/last/`` (the resume point), atomically;
3. ``metrics.csv`` (and TensorBoard, and now and then ``curves.png``).

So a metrics row exists only for an epoch whose checkpoint is complete, and a kill -9 at any
instant leaves the last complete checkpoint with at most the rows of the epochs it holds.

**No queue.** If a write is still running when the next epoch ends, the new files wait in a
single slot; a third one replaces the waiting one (its best weights carry over when the new
one has none), since an older resume point is worth nothing once a newer one exists.
``flush()`` waits for the slot and the running write: every way out of training (the end,
early stopping, the time budget, SIGTERM, Ctrl-C, an error) calls it. A write that fails
(disk full) is raised in the training thread at the next submit or flush.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..io import save_tensors
from .checkpoint import Snapshot, write_checkpoint


@dataclass
class EpochFiles:
    """What one epoch boundary writes (see the module doc for the order)."""

    checkpoint: Snapshot | None              # RUN/last/, or None (nothing to resume yet)
    best: dict[str, str] | None = None       # metadata of model.safetensors when the epoch improved
    best_tensors: dict[str, torch.Tensor] | None = None  # default: the checkpoint's weights

    @property
    def rows(self) -> list[dict[str, Any]] | None:
        """The metrics rows the checkpoint holds (every completed epoch's): metrics.csv's."""
        return self.checkpoint.state.get("rows") if self.checkpoint is not None else None

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The best weights: the checkpoint's copy of the model (no second copy), unless an
        older epoch's were carried over."""
        if self.best_tensors is not None:
            return self.best_tensors
        assert self.checkpoint is not None
        return {k[len("model."):]: v for k, v in self.checkpoint.tensors.items() if k.startswith("model.")}


class RunWriter:
    """Writes :class:`EpochFiles` in a background thread, newest first, no queue.

    Args:
        run: the run folder.
        weights_name: the best weights' file name in ``run``.
        write_rows: writes metrics rows (``Records.write``), called after the checkpoint.
        enabled: False on the non-main ranks of a torchrun job (nothing is written).

    Example:
        >>> writer = RunWriter(run, "model.safetensors", records.write)   # doctest: +SKIP
        >>> writer.submit(EpochFiles(snapshot_checkpoint(model, opt, state, rows=rows)))  # doctest: +SKIP
        >>> writer.flush()   # every exit path                              # doctest: +SKIP
    """

    def __init__(self, run: Path, weights_name: str, write_rows: Callable[[list[dict[str, Any]]], None],
                 enabled: bool = True):
        self.run, self.weights_name, self.write_rows, self.enabled = run, weights_name, write_rows, enabled
        self._lock = threading.Condition()
        self._waiting: EpochFiles | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.superseded = 0  # snapshots replaced before they were written

    # ------------------------------------------------------------------ training thread
    def submit(self, files: EpochFiles) -> None:
        """Hand over an epoch's files; returns at once (raises an earlier write's error)."""
        if not self.enabled:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("RunWriter.submit after close()")
            self._raise_error()
            if self._waiting is not None:  # still waiting: the newer one replaces it
                self.superseded += 1
                old = self._waiting
                # the newer one holds every row; best weights it lacks (its epoch did not
                # improve) are carried over, never lost
                if files.best is None and old.best is not None:
                    files = EpochFiles(files.checkpoint, old.best, best_tensors=old.best_weights())
            self._waiting = files
            if self._thread is None:
                thread = threading.Thread(target=self._work, name="unetpp-run-writer", daemon=True)
                thread.start()
                self._thread = thread
            self._lock.notify_all()

    def flush(self) -> None:
        """Wait until everything submitted is on disk; raise a write's error."""
        if not self.enabled:
            return
        with self._lock:
            while self._waiting is not None or self._busy:
                self._lock.wait()
            self._raise_error()

    def close(self) -> None:
        """Flush, then stop the thread. A second Ctrl-C during the flush (KeyboardInterrupt)
        leaves at once: the write in progress is abandoned (its temporary file is removed by
        the atomic write, or left as a ``.tmp``), the previous files stay whole."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------------ writer thread
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._waiting is None and not self._closed:
                    self._lock.wait()
                if self._waiting is None:
                    return
                files, self._waiting, self._busy = self._waiting, None, True
            try:
                if self._error is None:
                    self.write(files)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def write(self, files: EpochFiles) -> None:
        """Write one epoch's files in order (best weights, checkpoint, rows); synchronous."""
        if files.best is not None:
            save_tensors(self.run / self.weights_name, files.best_weights(), metadata=files.best, copy=False)
        if files.checkpoint is not None:
            write_checkpoint(self.run, files.checkpoint)
        if files.rows:
            self.write_rows(files.rows)

    # ------------------------------------------------------------------ helpers
    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


__all__ = ["EpochFiles", "RunWriter"]
