"""Running jobs on a shared machine: how many torch threads, which device, and ``--jobs N``.

- (the torch threads of each job: :func:`unetpp.runtime.set_threads`, the idle cores shared
  out between the jobs);
- :func:`job_devices` shares several GPUs out between the workers.
- :func:`run_jobs` runs :class:`Job` s N at a time, one process each, and hands each one's
  result (or error) to a callback.

It knows nothing of networks or training: a job is a picklable callable and its arguments.

Why the processes are made this way:

- **spawned**, not forked: a forked child of a process that has used torch's thread pool
  can hang;
- **in their own process group**: Ctrl-C reaches the parent only, which passes each signal
  on to every running worker exactly once, so a worker sees what a single process would
  (first signal: finish the step and save; second: abort);
- **stopped with their parent**: a worker whose parent was killed is sent SIGTERM rather
  than going on alone;
- **their log lines go through** :func:`unetpp.console.log_to` to stderr, prefixed with the
  job's name, so the lines of jobs running at once can be told apart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..console import log as console_log


# ------------------------------------------------------------------------------ threads, devices
def job_devices(device: str, jobs: int) -> list[str]:
    """The device of each worker: with several GPUs, worker k gets ``cuda:(k mod count)``;
    otherwise every worker gets ``device``."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{k % torch.cuda.device_count()}" for k in range(jobs)]
    return [device] * jobs


# ------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args, device=...)`` in a worker process.

    ``fn`` must be picklable (a module-level function) and so must ``args``; ``device`` is
    the worker's (:func:`job_devices`). ``key`` names the job to the caller's ``record``;
    ``name`` is its process name and the prefix of its log lines.
    """

    key: Hashable
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = field(default=())


class JobStopped(Exception):
    """Raised by a job that stopped on a (forwarded) signal; ``str(e)`` says what it left."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class JobFailed(Exception):
    """Raised by a job for an expected failure: reported as ``str(e)``, without a traceback."""


class JobsInterrupted(Exception):
    """SIGINT/SIGTERM reached :func:`run_jobs`: ``signals`` holds each one received (one:
    the running jobs were asked to stop cleanly; two or more: to abort)."""

    def __init__(self, signals: list[int]):
        super().__init__(f"stopped by signal {signals[0]}")
        self.signals = list(signals)
        self.signum = signals[0]


def _stop_with_parent(parent: int) -> None:
    """If the parent dies (killed), stop like a SIGTERM, instead of working on alone."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _stderr_sink(name: str) -> Callable[[str], None]:
    """A worker's log lines on stderr, each prefixed ``[name]`` unless it starts ``name: ``."""
    import sys

    def sink(message: str) -> None:
        if not message.startswith(f"{name}: "):
            message = f"[{name}] {message}"
        print(message, file=sys.stderr, flush=True)

    return sink


def _worker_main(job: Job, device: str, threads: int | None, parent: int, messages: Any) -> None:
    """A spawned worker: run ``job`` and put ``(key, status, payload)`` on ``messages``."""
    import traceback

    from ..console import log_to

    if hasattr(os, "setpgrp"):  # POSIX: out of the terminal's process group (see the module doc)
        os.setpgrp()
    _stop_with_parent(parent)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with log_to(_stderr_sink(job.name)):
        try:
            messages.put((job.key, "done", job.fn(*job.args, device=device)))
        except JobStopped as e:
            messages.put((job.key, "interrupted", str(e)))
        except KeyboardInterrupt:  # a second signal: nothing saved
            messages.put((job.key, "interrupted", "stopped by signal 2"))
        except JobFailed as e:
            messages.put((job.key, "failed", str(e)))
        except Exception as e:  # noqa: BLE001 - reported as this job's failure; the others go on
            traceback.print_exc()
            messages.put((job.key, "failed", f"{type(e).__name__}: {e}"))


def run_jobs(jobs: Sequence[Job], workers: int, record: Callable[[Job, Any, str | None], None], *,
             device: str = "cpu", threads: int | None = None, log: Callable[[str], None] = console_log,
             on_signal: Callable[[int, int], None] | None = None) -> None:
    """Run ``jobs`` ``workers`` at a time, one spawned process each, in the given order.

    ``record(job, result, None)`` for each job that returned, ``record(job, None, error)``
    for one that failed (it raised, or its process died); the others go on. ``threads``:
    torch threads per worker (None: torch's default). ``on_signal(signum, running)`` is
    called on the first SIGINT/SIGTERM (default: a log line).

    Raises :class:`JobsInterrupted` after SIGINT/SIGTERM, once every running worker has
    ended (the signal is passed on to each; jobs not started yet are not started).
    """
    import multiprocessing
    import queue as queue_module
    import signal
    import threading

    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    slots = job_devices(device, workers)
    free = list(range(workers))
    todo = list(jobs)
    running: dict[Hashable, tuple[Job, Any, int]] = {}
    outcome: dict[Hashable, tuple[str, Any]] = {}
    signals: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        signals.append(signum)
        if len(signals) == 1:
            if on_signal is not None:
                on_signal(signum, len(running))
            else:
                log(f"received {signal.Signals(signum).name}: passed on to the {len(running)} running job(s) "
                    "(send it again to abort them)")
        for _, process, _ in running.values():
            if process.exitcode is None:
                os.kill(process.pid, signum)

    def collect(wait: float) -> None:
        """Every message in the queue, waiting up to ``wait`` seconds for the first."""
        try:
            while True:
                key, status, payload = messages.get(timeout=wait)
                outcome[key] = (status, payload)
                wait = 0.0
        except queue_module.Empty:
            pass

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (todo and not signals):
            while todo and free and not signals:
                job = todo.pop(0)
                slot = free.pop(0)
                process = ctx.Process(target=_worker_main, name=job.name,
                                      args=(job, slots[slot], threads, os.getpid(), messages))
                process.start()
                running[job.key] = (job, process, slot)
            collect(wait=0.5)
            ended = [k for k, (_, process, _) in running.items() if process.exitcode is not None]
            collect(wait=0.0)  # a worker's message is in the pipe before its exit code is set
            for k in ended:
                job, process, slot = running.pop(k)
                process.join()
                free.append(slot)
                status, payload = outcome.get(k, ("ended", process.exitcode))
                if status == "done":
                    record(job, payload, None)
                elif status == "failed":
                    record(job, None, payload)
                elif signals:
                    pass  # stopped on our request: the caller reports the interruption
                elif status == "interrupted":
                    record(job, None, payload)
                else:
                    record(job, None, f"its process ended with exit code {payload} before reporting "
                                      "(killed? out of memory?)")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for _, process, _ in running.values():  # only after an error in this loop
            process.kill()
    if signals:
        raise JobsInterrupted(signals)


__all__ = ["Job", "JobFailed", "JobStopped", "JobsInterrupted", "job_devices", "run_jobs"]
