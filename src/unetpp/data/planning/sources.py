"""The source files of a case, and whether they changed since they were prepared: size and
mtime first (a stat), then the SHA-256 only for a file that was touched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..cases.layouts import CaseFiles


def source_files(case: CaseFiles) -> list[Path]:
    """Every file a case is read from; a DICOM series folder stands for its slice files."""
    paths = list(case.images) + ([case.label] if case.label is not None else []) + list(case.instance_masks)
    return [f for p in map(Path, paths)
            for f in (sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")) if p.is_dir() else [p])]


def stat_sources(case: CaseFiles) -> list[dict[str, Any]]:
    out = []
    for p in source_files(case):
        st = os.stat(p)
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sources_unchanged(stored: list[dict[str, Any]] | None, case: CaseFiles) -> bool:
    """Same files, sizes and (mtime, or failing that content hash) as when prepared."""
    try:
        now = stat_sources(case)
    except OSError:
        return False
    if not stored or [s["path"] for s in stored] != [s["path"] for s in now]:
        return False
    for old, new in zip(stored, now):
        if old["size"] != new["size"]:
            return False
        if old["mtime_ns"] != new["mtime_ns"] and old.get("sha256") != _sha256(new["path"]):
            return False  # touched and changed (a touched but identical file is kept)
    return True


def with_hashes(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(s, sha256=_sha256(s["path"])) for s in sources]
