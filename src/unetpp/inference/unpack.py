"""Open a ``MODEL.zip`` from ``unetpp package``: untrusted input, checked before use.

A package is a zip holding a run folder (or a cross-validation folder: ``fold_k/`` runs and
the files of the CV folder) plus ``unetpp-package.json`` (the manifest: every member with
its size and SHA-256), ``README.md`` (the model card), ``labels.csv`` and ``test/`` (a test
case). :func:`open_package` checks the archive *before* writing a byte, then extracts it
into a private cache folder (``$UNETPP_CACHE/models/<sha256>/``, default
``~/.cache/unetpp/models/``) with a temp folder and a rename, so a half-extracted package is
never used; ``unetpp.load``, ``predict`` and ``evaluate`` then load that folder as a run.

Refused, in one line naming the archive and the member:

- a member whose path leaves the archive (absolute, ``..``, a drive, a backslash) or is a
  link; a member the manifest does not list, or listed but missing;
- a pickle or any file that could carry code (``.pt .pth .pkl .pickle .ckpt .bin .npy .npz
  .py .so``...): only JSON, safetensors, ONNX, Markdown, CSV, text and image/volume files;
- an oversized archive: more than :data:`MAX_MEMBERS` members, a member over
  :data:`MAX_MEMBER_BYTES`, all over :data:`MAX_TOTAL_BYTES`, or a member whose compression
  ratio exceeds :data:`MAX_RATIO` (a zip bomb); sizes are checked again while reading;
- a member whose bytes do not match the manifest's SHA-256 (or size);
- weights that do not fit their ``config.json`` (at load: :func:`unetpp.run.load_model`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import RunError
from ..io import read_json

MANIFEST = "unetpp-package.json"
PACKAGE_FORMAT = "unetpp-package"
PACKAGE_VERSION = 1
MAX_MEMBERS = 2_000
MAX_MEMBER_BYTES = 4 * 2**30
MAX_TOTAL_BYTES = 8 * 2**30
MAX_RATIO = 200
#: members whose names end so are the only ones a package may hold
ALLOWED_SUFFIXES = (".json", ".safetensors", ".onnx", ".md", ".csv", ".txt", ".png", ".tif", ".tiff", ".jpg",
                    ".bmp", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".raw")
#: named in the refusal, so the user knows why
CODE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz", ".joblib", ".py", ".pyc",
                 ".so", ".dll", ".dylib", ".sh", ".exe")


def is_package(path: Any) -> bool:
    """Whether ``path`` names a package file (``.zip``)."""
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(".zip") and Path(path).is_file()


def models_home() -> Path:
    """Where packages are extracted: ``$UNETPP_CACHE/models`` or ``~/.cache/unetpp/models``."""
    env = os.environ.get("UNETPP_CACHE")
    if env:
        return Path(env).expanduser() / "models"
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "unetpp" / "models"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _name_problem(name: str) -> str | None:
    """Why a member name is unsafe or not allowed, or None."""
    if not name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "a path that leaves the archive"
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".", "") for p in parts):
        return "a path that leaves the archive"
    lower = name.lower()
    if lower.endswith(CODE_SUFFIXES):
        return "a pickle or code file; packages hold safetensors and JSON only"
    if not lower.endswith(ALLOWED_SUFFIXES):
        return f"a file type a package does not hold (allowed: {', '.join(ALLOWED_SUFFIXES)})"
    return None


def check_archive(path: Path) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    """The open archive and its manifest, after every check that needs no extraction."""
    where = str(path)
    if not zipfile.is_zipfile(path):
        raise RunError(f"{where}: not a zip archive (a package from 'unetpp package')")
    archive = zipfile.ZipFile(path)
    try:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise RunError(f"{where}: {len(infos)} members, more than the {MAX_MEMBERS} a package may hold")
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            problem = _name_problem(info.filename)
            if problem is None and stat.S_ISLNK(info.external_attr >> 16):
                problem = "a link"
            if problem is None and info.file_size > MAX_MEMBER_BYTES:
                problem = f"{info.file_size} bytes, more than {MAX_MEMBER_BYTES}"
            if problem is None and info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                problem = f"compressed {info.file_size // max(info.compress_size, 1)}:1, a zip bomb"
            if problem is not None:
                raise RunError(f"{where}: {info.filename}: {problem}; refused")
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise RunError(f"{where}: {total} bytes uncompressed, more than {MAX_TOTAL_BYTES}; refused")
        if MANIFEST not in archive.namelist():
            raise RunError(f"{where}: no {MANIFEST}; not a package from 'unetpp package'")
        manifest = _read_manifest(archive, where)
        listed = manifest["files"]
        names = {i.filename for i in infos if not i.is_dir()} - {MANIFEST}
        for name in sorted(names - set(listed)):
            raise RunError(f"{where}: {name}: not listed in {MANIFEST}; refused")
        for name in sorted(set(listed) - names):
            raise RunError(f"{where}: {name}: listed in {MANIFEST} but missing from the archive")
        for name in listed:
            problem = _name_problem(name)
            if problem is not None:
                raise RunError(f"{where}: {MANIFEST} lists {name}: {problem}; refused")
    except BaseException:
        archive.close()
        raise
    return archive, manifest


def _read_manifest(archive: zipfile.ZipFile, where: str) -> dict[str, Any]:
    import json

    info = archive.getinfo(MANIFEST)
    if info.file_size > 2**20:
        raise RunError(f"{where}: {MANIFEST}: over 1 MB; refused")
    try:
        data = json.loads(archive.read(info).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{where}: {MANIFEST}: not valid JSON ({e})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != PACKAGE_FORMAT or not isinstance(files, dict):
        raise RunError(f"{where}: {MANIFEST}: not a unetpp package manifest")
    if int(data.get("format_version", 0)) > PACKAGE_VERSION:
        raise RunError(f"{where}: package format {data.get('format_version')} is newer than this unetpp reads "
                       f"({PACKAGE_VERSION}); upgrade unetpp")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)):
            raise RunError(f"{where}: {MANIFEST}: {name}: needs \"sha256\" and \"bytes\"")
    if data.get("kind") not in ("run", "ensemble"):
        raise RunError(f"{where}: {MANIFEST}: \"kind\" must be run or ensemble")
    return data


def _extract(archive: zipfile.ZipFile, manifest: dict[str, Any], dest: Path, where: str) -> None:
    """Every listed member into ``dest``, its size and SHA-256 checked while reading."""
    for name, entry in manifest["files"].items():
        target = dest.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        h, size = hashlib.sha256(), 0
        with archive.open(name) as src, open(target, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                size += len(block)
                if size > entry["bytes"]:
                    raise RunError(f"{where}: {name}: longer than the {entry['bytes']} bytes the manifest says")
                h.update(block)
                out.write(block)
        if size != entry["bytes"] or h.hexdigest() != entry["sha256"]:
            raise RunError(f"{where}: {name}: does not match its SHA-256 in {MANIFEST} (damaged or altered)")
    (dest / MANIFEST).write_bytes(archive.read(MANIFEST))


def open_package(path: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Check and extract package ``path``; the folder to load as a run (or CV folder).

    ``dest``: extract there (a fresh folder, e.g. for ``check-model``) instead of the cache,
    where a package already extracted (same SHA-256) is reused.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no such package file")
    digest = file_sha256(path)
    final = Path(dest) if dest is not None else models_home() / digest[:32]
    if dest is None and (final / MANIFEST).is_file():
        return final
    archive, manifest = check_archive(path)
    with archive:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            _extract(archive, manifest, tmp, str(path))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an extracted package."""
    return read_json(Path(folder) / MANIFEST)


__all__ = ["MANIFEST", "PACKAGE_FORMAT", "PACKAGE_VERSION", "check_archive", "file_sha256", "is_package",
           "models_home", "open_package", "read_manifest"]
