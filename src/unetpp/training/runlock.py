"""One training process per run folder.

Two ``unetpp train`` started at once into the same ``--out`` used to both pass the "folder
exists" check and write one folder. Now the run folder holds ``.lock``, locked with
``flock`` (released by the kernel on any exit, a kill included, so a dead process never
leaves a stale lock) and holding the owner's PID and host, so the second run refuses at once
naming the folder and the process that has it. The file is removed when training ends.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import UnetppError

LOCK = ".lock"


@contextlib.contextmanager
def hold_run(run: Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``run``'s lock for the block; UnetppError at once if another process holds it.

    ``enabled`` False (the non-main ranks of a torchrun job) does nothing: rank 0 holds it.
    """
    if not enabled:
        yield
        return
    import fcntl

    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    f = open(run / LOCK, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise UnetppError(f"--out {run}: in use by {owner} (another 'unetpp train' is writing it); wait "
                              "for it to finish, or choose another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        # the file goes before the lock is released, so the folder is left as training wrote it
        # (a process killed here leaves .lock behind, unlocked: harmless)
        with contextlib.suppress(OSError):
            (run / LOCK).unlink()
        f.close()  # closing releases the lock
        if created:  # refused before writing anything: no empty folder left behind
            with contextlib.suppress(OSError):
                run.rmdir()


__all__ = ["LOCK", "hold_run"]
