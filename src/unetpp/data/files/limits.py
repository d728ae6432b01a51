"""What every reader checks before it decodes: the declared size against a limit, real-valued
data, finite geometry; and why a path is not a readable file.

Checked against what the file's *header* declares, before anything is allocated, so a
header that claims an enormous image with a tiny body is refused at once instead of
exhausting memory.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError

#: Largest image a reader decodes, in elements (voxels x channels): 2**30 (a 1024^3 volume,
#: 4 GiB as float32) unless ``UNETPP_MAX_VOXELS`` says otherwise. Checked against what the
#: file's *header* declares, before anything is allocated, so a header that claims an
#: enormous image with a tiny body is refused at once instead of exhausting memory.
DEFAULT_MAX_VOXELS = 2**30
#: Compressed volumes declaring more than this many bytes are first checked to really hold
#: that much data (a streaming pass that keeps nothing) before the decoder allocates it.
STREAM_CHECK_BYTES = 256 * 2**20


def max_voxels() -> int:
    """The decoding limit in elements (``UNETPP_MAX_VOXELS``, default 2**30)."""
    raw = os.environ.get("UNETPP_MAX_VOXELS", "")
    try:
        value = int(float(raw)) if raw.strip() else DEFAULT_MAX_VOXELS
    except ValueError:
        raise DataError(f"UNETPP_MAX_VOXELS={raw!r}: expected a number of voxels") from None
    return max(1, value)


def _check_declared(path: Path, shape: Any, what: str = "header") -> int:
    """Refuse a declared shape that is invalid or larger than :func:`max_voxels`."""
    dims = [int(n) for n in shape]
    if any(n < 0 for n in dims):
        raise DataError(f"{path}: the {what} declares a negative size {tuple(dims)}")
    count = 1
    for n in dims:
        count *= n
    if count == 0:
        raise DataError(f"{path}: the {what} declares an empty image {tuple(dims)}")
    limit = max_voxels()
    if count > limit:
        raise DataError(f"{path}: the {what} declares {' x '.join(map(str, dims))} = {count:,} elements, "
                        f"more than the {limit:,} allowed (set UNETPP_MAX_VOXELS to raise the limit); "
                        "refused before reading")
    return count


def _check_real(path: Path, dtype: Any) -> None:
    """Only real numbers (ints, floats, bools) are image data; refuse complex, text, records."""
    dt = np.dtype(dtype)
    if dt.kind == "c":
        raise DataError(f"{path}: complex-valued data ({dt}); expected real intensities "
                        "(save the magnitude image instead)")
    if dt.kind not in "biuf":
        raise DataError(f"{path}: data of type {dt} is not numeric image data")


def _check_geometry(path: Path, meta: dict[str, Any]) -> None:
    """Voxel spacing must be finite and positive, the affine finite."""
    spacing = meta.get("spacing")
    if spacing is not None:
        s = np.asarray(spacing, dtype=np.float64)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise DataError(f"{path}: invalid voxel spacing {[float(x) for x in s]} in the header "
                            "(must be finite and > 0); fix the file's header")
    affine = meta.get("affine")
    if affine is not None and not np.all(np.isfinite(np.asarray(affine, dtype=np.float64))):
        raise DataError(f"{path}: the header's affine (orientation/origin) holds NaN or Inf values")


def _gzip_holds(path: Path, needed: int) -> int:
    """How many bytes (up to ``needed``) the gzip file decompresses to, keeping nothing."""
    got = 0
    with gzip.open(path, "rb") as f:
        while got < needed:
            chunk = f.read(min(4 * 2**20, needed - got))
            if not chunk:
                break
            got += len(chunk)
    return got


def _missing_path_error(path: Path) -> DataError:
    """Why ``path`` is not a readable file: missing, a folder, a broken or looping link."""
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == getattr(__import__("errno"), "ELOOP", -1):
                return DataError(f"{path}: symbolic link loop")
            return DataError(f"{path}: broken symbolic link (to {os.readlink(path)})")
    if path.is_dir():
        return DataError(f"{path}: a folder, expected an image file")
    if path.exists():
        return DataError(f"{path}: not a regular file")
    return DataError(f"{path}: file not found")
