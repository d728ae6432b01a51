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
import struct
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO

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
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, fill: Callable[[BinaryIO], Any]) -> Path:
    """Like :func:`atomic_write_bytes`, with ``fill(file)`` writing the content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fill(f)
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
    if not copy:
        return stream_tensors(path, tensors, metadata)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return atomic_write_bytes(path, st_save(clean, metadata=metadata))


_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def stream_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                   metadata: dict[str, str] | None = None) -> Path:
    """Write contiguous CPU ``tensors`` as a safetensors file, atomically, straight from their
    memory.

    Why not ``safetensors.torch.save``: it copies every tensor into a bytes object and then
    into one more for the file, holding the GIL (0.7 s for the 300 MB checkpoint of the 3D
    paper network), which stalls the training thread while a background thread checkpoints.
    Here each tensor's memory goes to ``write`` as a buffer, which releases the GIL. The format
    is safetensors' own (8-byte header length, JSON header, raw little-endian data in header
    order), and every file is read back by the safetensors library, which checks it.
    """
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata must map str to str")
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset, order = 0, sorted(tensors)
    for name in order:
        t = tensors[name]
        if t.device.type != "cpu" or not t.is_contiguous() or t.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: stream_tensors needs contiguous CPU tensors of a safetensors dtype")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it

    def fill(f: BinaryIO) -> None:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in order:
            t = tensors[name]
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    return atomic_write_with(path, fill)


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
