"""Reading and writing one image file, whatever its format, keeping its geometry.

Every reader returns ``(array, meta)``:

- ``array``: the pixel data in **channel-first, slowest-axis-first** order:
  ``(C, H, W)`` for 2D images and ``(C, Z, Y, X)`` for volumes. NIfTI stores voxels as
  ``(X, Y, Z)``; we reverse the axes so that spatial axis 0 is the slice axis, as SimpleITK
  and nnU-Net do, which makes "2D training from a volume" mean axial slices for CT/MRI.
- ``meta``: a JSON-friendly dict with ``format`` (``png``, ``jpg``, ``bmp``, ``tif``,
  ``nifti``, ``nrrd``, ``mha``, ``dicom``: a series folder, read by :mod:`.dicom`), ``shape`` (spatial, in array order), ``spacing`` (array
  order), and for volumes ``affine`` (the 4x4 voxel-to-world matrix of the *file*, in the
  file's own axis order) plus what the matching writer needs (NIfTI codes, NRRD header).

Writers take the spatial array in the same order and the reader's ``meta`` and write the
file through :func:`unetpp.io.atomic_write_bytes`, so a mask written for an input has the
input's format, grid and geometry.

MHA/MHD (MetaImage) is read and written by :mod:`.metaimage`; the header checks every reader
makes before decoding (size limits, real data, finite geometry) are in :mod:`.limits`.

Example::

    >>> array, meta = read_file("case_0000.nii.gz")       # doctest: +SKIP
    >>> array.shape, meta["spacing"]                       # doctest: +SKIP
    ((1, 40, 256, 256), [3.0, 0.8, 0.8])
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ...io import atomic_write_bytes
from .limits import (DEFAULT_MAX_VOXELS, STREAM_CHECK_BYTES, _check_declared, _check_geometry,  # noqa: F401
                     _check_real, _gzip_holds, _missing_path_error, max_voxels)
from .metaimage import encode_metaimage, read_metaimage

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
SUFFIXES = VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES


def suffix_of(path: str | os.PathLike) -> str:
    """The format suffix, including double ones: ``a/b_0000.nii.gz`` -> ``.nii.gz``."""
    name = Path(path).name.lower()
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return Path(path).suffix.lower()


def strip_suffix(path: str | os.PathLike) -> str:
    """The file name without its format suffix: ``b_0000.nii.gz`` -> ``b_0000``."""
    name = Path(path).name
    return name[: len(name) - len(suffix_of(path))]


def format_of(path: str | os.PathLike) -> str:
    s = suffix_of(path)
    return {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".mha": "mha", ".mhd": "mha",
            ".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".bmp": "bmp", ".tif": "tif",
            ".tiff": "tif"}.get(s, "")


# ----------------------------------------------------------------------------------- reading

def read_file(path: str | os.PathLike, mask: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image or mask file; ``DataError`` naming the file when it cannot be read.

    Returns ``(array (C, *spatial), meta)``; see the module docstring. ``mask=True`` keeps
    the indices of palette PNGs (label values, as in Pascal VOC-style masks); images are
    converted to RGB instead.
    """
    path = Path(path)
    if path.is_dir():  # a DICOM series folder (:mod:`.dicom`); any other folder is refused there
        from .dicom import read_series

        array, meta = read_series(path)
        _check_geometry(path, meta)
        return array, meta
    fmt = format_of(path)
    if not fmt:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; "
                        f"expected one of {', '.join(SUFFIXES)} or a DICOM series folder")
    if not path.is_file():
        raise _missing_path_error(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        reader = {"nifti": _read_nifti, "nrrd": _read_nrrd, "mha": read_metaimage, "tif": _read_tif}
        array, meta = _read_pil(path, mask) if fmt in ("png", "jpg", "bmp") else reader[fmt](path)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: not enough memory to decode this {fmt} file") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad or truncated file
        detail = " ".join(str(e).split())[:300]  # one line, whatever the decoder said
        raise DataError(f"{path}: unreadable or truncated {fmt} file ({type(e).__name__}: {detail})") from None
    _check_real(path, array.dtype)
    meta = {"format": fmt, "source": [str(path)], **meta, "shape": list(array.shape[1:])}
    meta.setdefault("spacing", [1.0] * (array.ndim - 1))
    _check_geometry(path, meta)
    return array, meta


def _channels_first_2d(a: np.ndarray) -> np.ndarray:
    """(H, W) -> (1, H, W); (H, W, C) -> (C, H, W), dropping an alpha channel."""
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3 and a.shape[-1] in (2, 3, 4):
        if a.shape[-1] in (2, 4):  # gray+alpha or RGBA: alpha carries no image content
            a = a[..., :-1]
        return np.moveaxis(a, -1, 0)
    raise DataError(f"unexpected 2D image shape {a.shape}")


def _read_pil(path: Path, mask: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        # our own limit (max_voxels) applies; Pillow's bomb *warning* would only be noise
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:
            raise DataError(f"{path}: the header declares an enormous image, refused before decoding "
                            f"(Pillow's decompression-bomb limit: {e})") from None
    with im:
        _check_declared(path, (im.size[1], im.size[0], len(im.getbands())))
        im.load()  # decode now so a truncated file fails here
        mode = im.mode
        if mode == "P" and mask:  # palette masks: the indices are the label values
            a = np.asarray(im)
        elif mode == "1":  # bilevel: 0/255 gray
            a = np.asarray(im.convert("L"))
        elif mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "LA", "RGB", "RGBA"):
            a = np.asarray(im)
        else:  # palette images, CMYK, YCbCr...: their colours
            a = np.asarray(im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB"))
    return _channels_first_2d(a), {"mode": mode}


def _read_tif(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    import logging

    log = logging.getLogger("tifffile")  # its warnings about odd tags would only be noise:
    level = log.level                    # a bad file fails below with one clear line
    log.setLevel(logging.CRITICAL)
    try:
        return _read_tif_quiet(path, tifffile)
    finally:
        log.setLevel(level)


def _read_tif_quiet(path: Path, tifffile: Any) -> tuple[np.ndarray, dict[str, Any]]:
    with tifffile.TiffFile(path) as tf:
        if not tf.series:
            raise DataError(f"{path}: TIF without image data")
        series = tf.series[0]
        _check_declared(path, series.shape)
        _check_real(path, series.dtype)
        a = series.asarray()
    # A TIF is a 2D image (H, W), (H, W, C<=4), or a stack (Z, Y, X): a volume.
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (2, 3, 4)):
        return _channels_first_2d(a), {}
    if a.ndim == 3:
        return a[None], {"spacing": [1.0, 1.0, 1.0]}
    raise DataError(f"{path}: TIF of shape {a.shape}; expected (H, W), (H, W, C) or (Z, Y, X)")


def _read_nifti(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib

    img = nib.load(str(path))
    hdr = img.header
    shape = hdr.get_data_shape()
    dtype = hdr.get_data_dtype()
    _check_real(path, dtype)
    count = _check_declared(path, shape)
    needed = int(hdr.get_data_offset()) + count * dtype.itemsize
    if path.name.lower().endswith(".gz"):
        if needed > STREAM_CHECK_BYTES:  # do not let the decoder allocate what is not there
            got = _gzip_holds(path, needed)
            if got < needed:
                raise DataError(f"{path}: truncated NIfTI: the header declares {tuple(shape)} {dtype} "
                                f"({needed:,} bytes), the file decompresses to {got:,}")
    elif path.stat().st_size < needed:
        raise DataError(f"{path}: truncated NIfTI: the header declares {tuple(shape)} {dtype} "
                        f"({needed:,} bytes), the file has {path.stat().st_size:,}")
    data = np.asanyarray(img.dataobj)  # raw stored values (after scl_slope/inter)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"{path}: NIfTI with {data.ndim} dimensions; expected 3 (or 4 with channels)")
    # (X, Y, Z, C) -> (C, Z, Y, X)
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    hdr = img.header
    return array, {"affine": np.asarray(img.affine, dtype=float).tolist(),
                   "spacing": zooms[::-1],
                   "nifti": {"qform_code": int(hdr["qform_code"]), "sform_code": int(hdr["sform_code"]),
                             "xyzt_units": int(hdr["xyzt_units"])}}


def _nrrd_affine(header: dict[str, Any], ndim: int) -> tuple[list[list[float]], list[float]]:
    """4x4 affine (index order x, y, z as in the file) and per-axis spacing from an NRRD header."""
    dirs = header.get("space directions")
    aff = np.eye(4)
    if dirs is not None:
        rows = [np.asarray(d, dtype=float) for d in dirs if d is not None and not np.any(np.isnan(np.asarray(d, dtype=float)))]
        for i, d in enumerate(rows[:3]):
            aff[: len(d), i] = d
        spacing = [float(np.linalg.norm(d)) for d in rows[:3]]
    else:
        spacing = [float(s) for s in header.get("spacings", [1.0] * ndim)][:3]
        for i, s in enumerate(spacing):
            aff[i, i] = s
    origin = header.get("space origin")
    if origin is not None:
        aff[: len(origin), 3] = np.asarray(origin, dtype=float)
    return aff.tolist(), spacing


def _read_nrrd(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import nrrd

    with open(path, "rb") as f:
        declared = nrrd.read_header(f)
    _check_declared(path, declared.get("sizes", []))
    data, header = nrrd.read(str(path), index_order="F")  # (X, Y, Z[, ...]) as stored
    kinds = list(header.get("kinds", ["domain"] * data.ndim))
    chan_axes = [i for i, k in enumerate(kinds) if k not in ("domain", "space")]
    if len(chan_axes) > 1 or data.ndim - len(chan_axes) != 3:
        raise DataError(f"{path}: NRRD of shape {data.shape} (kinds {kinds}); expected a 3D volume "
                        "with at most one channel axis")
    if chan_axes:
        data = np.moveaxis(data, chan_axes[0], -1)
    else:
        data = data[..., None]
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    affine, spacing = _nrrd_affine(header, 3)
    keep = {k: _jsonable(v) for k, v in header.items()
            if k in ("space", "space directions", "space origin", "space units", "kinds", "spacings")}
    return array, {"affine": affine, "spacing": spacing[::-1], "nrrd_header": keep}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()] if v.ndim else v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------------- writing

def write_file(path: str | os.PathLike, array: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write ``array`` (spatial, or (C, *spatial)) to ``path`` in the format of its suffix,
    with the geometry in ``meta`` (from :func:`read_file`, or ``{"spacing": [...]}``).

    2D formats take (H, W) or (C, H, W) with C in 1, 3; volumes take (Z, Y, X) or
    (C, Z, Y, X). Returns the path written.
    """
    path = Path(path)
    fmt = format_of(path)
    if fmt in ("png", "bmp", "jpg"):
        data = _encode_pil(array, fmt)
    elif fmt == "tif":
        import tifffile

        buf = io.BytesIO()
        a = array[0] if array.ndim in (3, 4) and array.shape[0] == 1 else array
        if a.ndim == 3 and a.shape[0] in (3, 4) and array.ndim == 3:
            a = np.moveaxis(a, 0, -1)
        tifffile.imwrite(buf, np.ascontiguousarray(a))
        data = buf.getvalue()
    elif fmt == "nifti":
        data = _encode_nifti(array, meta, gz=path.name.lower().endswith(".gz"))
    elif fmt == "nrrd":
        data = _encode_nrrd(array, meta)
    elif fmt == "mha":
        if path.suffix.lower() == ".mhd":
            raise DataError(f"{path}: writing .mhd (two files) is not supported; use .mha")
        data = encode_metaimage(array, _affine_from_meta(meta))
    else:
        raise DataError(f"{path}: cannot write files of type {path.suffix or '(none)'}")
    return atomic_write_bytes(path, data)


def _encode_pil(array: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        if a.dtype.kind in "ui" and a.max(initial=0) > 255:
            if fmt != "png" or a.ndim != 2:
                raise DataError(f"values up to {a.max()} need 16-bit PNG or TIF")
            a = a.astype(np.uint16)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format={"png": "PNG", "bmp": "BMP", "jpg": "JPEG"}[fmt],
                            **({"quality": 95} if fmt == "jpg" else {}))
    return buf.getvalue()


def _to_file_order(array: np.ndarray) -> np.ndarray:
    """(Z, Y, X) -> (X, Y, Z); (C, Z, Y, X) -> (X, Y, Z, C) (C == 1 dropped)."""
    a = np.asarray(array)
    if a.ndim == 4:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if a.ndim == 3:
        return np.transpose(a, (2, 1, 0))
    return np.transpose(a, (2, 1, 0, 3))


def _affine_from_meta(meta: dict[str, Any]) -> np.ndarray:
    if meta.get("affine") is not None:
        return np.asarray(meta["affine"], dtype=float)
    aff = np.eye(4)
    spacing = list(meta.get("spacing") or [1.0, 1.0, 1.0])[::-1]  # array order -> x, y, z
    for i, s in enumerate(spacing[:3]):
        aff[i, i] = s
    return aff


def _encode_nifti(array: np.ndarray, meta: dict[str, Any], gz: bool) -> bytes:
    import nibabel as nib

    data = _to_file_order(array)
    img = nib.Nifti1Image(data, _affine_from_meta(meta))
    codes = meta.get("nifti") or {}
    img.header.set_sform(img.affine, code=codes.get("sform_code", 1) or 1)
    img.header.set_qform(img.affine, code=codes.get("qform_code", 1) or 1)
    if "xyzt_units" in codes:
        img.header["xyzt_units"] = codes["xyzt_units"]
    raw = img.to_bytes()
    # mtime=0: the same mask gives the same bytes (reproducible outputs, comparable hashes)
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw


def _encode_nrrd(array: np.ndarray, meta: dict[str, Any]) -> bytes:
    import nrrd

    data = _to_file_order(array)
    header: dict[str, Any] = {}
    old = meta.get("nrrd_header") or {}
    if "space" in old:
        header["space"] = old["space"]
    aff = _affine_from_meta(meta)
    header["space directions"] = aff[:3, :3].T.copy()
    header["space origin"] = aff[:3, 3].copy()
    header.setdefault("space", "left-posterior-superior")
    header["kinds"] = ["domain"] * 3 + (["vector"] if data.ndim == 4 else [])
    if data.ndim == 4:
        header["space directions"] = np.vstack([header["space directions"], np.full((1, 3), np.nan)])
    header["encoding"] = "gzip"
    # pynrrd writes to a path only: write to a private temp file, then publish atomically.
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "out.nrrd")
        nrrd.write(p, np.ascontiguousarray(data), header, index_order="F")
        return Path(p).read_bytes()
