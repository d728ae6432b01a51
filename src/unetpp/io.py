"""Atomic, pickle-free file writing and reading.

Every file the toolkit writes goes through :func:`atomic_write_bytes`: the data is written to
a temporary file in the same folder, flushed and fsynced, then renamed over the target (an
atomic operation on POSIX and Windows), and the folder is fsynced. A crash or SIGKILL at any
moment leaves either the old file or the new one, never a torn one.

Weights are stored with safetensors (plain tensors + a JSON header; loading runs no code).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import RunError

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """The permissions ``open(path, "w")`` would leave: an existing file keeps its own, a new
    one gets 0o666 less the umask. (mkstemp makes every file 0o600, which would hide models and
    predictions from the rest of a group on a shared machine.)"""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        pass
    # the umask can only be read by setting it; 0o077 meanwhile errs on the private side
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync folder), with
    the permissions a plain write would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, max_bytes: int = 16 * 2**20) -> Any:
    """Read a JSON file, refusing huge or malformed files with a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    if path.stat().st_size > max_bytes:
        raise RunError(f"{path}: {path.stat().st_size} bytes, larger than the {max_bytes} allowed")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise RunError(f"{path}: not valid JSON (nested too deeply)") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None, copy: bool = True) -> Path:
    """Save tensors as safetensors, atomically. Shared or non-contiguous tensors are copied;
    ``copy=False``: ``tensors`` are already private contiguous CPU tensors (a snapshot), so
    hundreds of MB are not copied once more."""
    clean = ({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()} if copy else tensors)
    return atomic_write_bytes(path, st_save(clean, metadata=metadata))


def check_weights_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it may be read as weights: refuse pickle-based formats (they can
    run code) and missing files."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise RunError(f"{path}: pickle-based PyTorch files are refused (they can run code); "
                       "use a .safetensors file")
    if not path.is_file():
        raise RunError(f"{path}: file not found")
    return path


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; refuse pickle-based formats (they can run code)."""
    path = check_weights_path(path)
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, Exception) as e:  # noqa: BLE001 - any parse failure is the file's fault
        raise RunError(f"{path}: not a valid safetensors file ({e})") from None
