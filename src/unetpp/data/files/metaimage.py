"""MetaImage (``.mha``/``.mhd``) without ITK.

MONAI reads MetaImage only through ITK (a large optional package), so this module carries a
small reader and writer for the common single-file case (``.mha`` with local data, or
``.mhd`` + one raw file; raw or zlib-compressed). Anything else is refused with a one-line
error rather than guessed. The data is never inflated beyond what the header declares.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .limits import _check_declared

_MHA_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2",
              "MET_UINT": "u4", "MET_INT": "i4", "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8",
              "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def read_metaimage(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(array (C, Z, Y, X), meta)`` of a ``.mha``/``.mhd`` file (see the module doc)."""
    raw = path.read_bytes()
    header: dict[str, str] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DataError(f"{path}: MetaImage header without ElementDataFile")
        line = raw[pos:end].decode("latin-1").strip()
        pos = end + 1
        if "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            header[key] = value
            if key == "ElementDataFile":
                break
    dims = [int(x) for x in header["DimSize"].split()]
    if len(dims) != 3:
        raise DataError(f"{path}: MetaImage with DimSize {dims}; only 3D volumes are supported")
    channels = int(header.get("ElementNumberOfChannels", "1"))
    _check_declared(path, dims + [channels])
    etype = header.get("ElementType", "")
    if etype not in _MHA_TYPES:
        raise DataError(f"{path}: MetaImage ElementType {etype!r} is not supported")
    big = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(_MHA_TYPES[etype]).newbyteorder(">" if big else "<")
    datafile = header["ElementDataFile"]
    if datafile == "LOCAL":
        payload = raw[pos:]
    elif " " in datafile or "%" in datafile or datafile == "LIST":
        raise DataError(f"{path}: MetaImage with a list of data files is not supported")
    else:
        rel = Path(datafile)
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{path}: ElementDataFile {datafile!r} points outside the header's folder")
        with open(path.parent / rel, "rb") as f:  # no more than the header's size (+1 to see excess)
            compressed = header.get("CompressedData", "False").lower() == "true"
            payload = f.read() if compressed else f.read(int(np.prod(dims)) * channels * dtype.itemsize + 1)
    count = int(np.prod(dims)) * channels
    if header.get("CompressedData", "False").lower() == "true":
        # never inflate more than the header's size (a zip bomb stops here)
        payload = zlib.decompressobj().decompress(payload, count * dtype.itemsize)
    if len(payload) < count * dtype.itemsize:
        raise DataError(f"{path}: truncated MetaImage data ({len(payload)} bytes, "
                        f"{count * dtype.itemsize} expected)")
    # MetaImage stores x fastest: C-order shape (Z, Y, X, C).
    data = np.frombuffer(payload[: count * dtype.itemsize], dtype=dtype).reshape(dims[::-1] + [channels])
    array = np.ascontiguousarray(np.moveaxis(data, -1, 0).astype(dtype.newbyteorder("=")))
    spacing = [float(x) for x in header.get("ElementSpacing", "1 1 1").split()]
    offset = [float(x) for x in header.get("Offset", header.get("Position", "0 0 0")).split()]
    matrix = np.asarray([float(x) for x in header.get("TransformMatrix", "1 0 0 0 1 0 0 0 1").split()]).reshape(3, 3)
    aff = np.eye(4)
    # TransformMatrix is written row by row with column i the direction of axis i.
    aff[:3, :3] = matrix.T * np.asarray(spacing)[None, :]
    aff[:3, 3] = offset
    return array, {"affine": aff.tolist(), "spacing": spacing[::-1],
                   "mha": {"TransformMatrix": matrix.reshape(-1).tolist(), "Offset": offset,
                           "ElementSpacing": spacing}}


def encode_metaimage(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A ``.mha`` file (local data, uncompressed) of ``array`` ``(Z, Y, X)`` or ``(C, Z, Y, X)``
    with the 4x4 voxel-to-world ``affine`` (file axis order)."""
    a = np.asarray(array)
    channels = 1
    if a.ndim == 4:
        channels = a.shape[0]
        a = np.moveaxis(a, 0, -1)
    inv = {v: k for k, v in _MHA_TYPES.items()}
    kind = a.dtype.newbyteorder("<").str[1:]
    if kind not in inv:
        a = a.astype(np.float32)
        kind = "f4"
    aff = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    matrix = (aff[:3, :3] / np.where(spacing == 0, 1, spacing)[None, :]).T
    dims = list(a.shape[:3])[::-1]
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             "CompressedData = False",
             "TransformMatrix = " + " ".join(f"{x:g}" for x in matrix.reshape(-1)),
             "Offset = " + " ".join(f"{x:g}" for x in aff[:3, 3]),
             "ElementSpacing = " + " ".join(f"{x:g}" for x in spacing),
             "DimSize = " + " ".join(str(d) for d in dims)]
    if channels > 1:
        lines.append(f"ElementNumberOfChannels = {channels}")
    lines += [f"ElementType = {inv[kind]}", "ElementDataFile = LOCAL"]
    return ("\n".join(lines) + "\n").encode("latin-1") + np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
