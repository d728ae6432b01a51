"""The bad-input corpus: every kind of broken file and dataset gets a clear one-line error
naming the file (``data check``, ``open_dataset``, ``read_input``, ``train``, ``predict``),
never a hang, a traceback or a silent wrong result. Plus round-trip properties of the readers.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import struct
import tempfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from unetpp.cli.app import main
from unetpp.data import DataError, check_dataset, open_dataset
from unetpp.data.files.formats import read_file, write_file
from unetpp.data.io import read_input
from unetpp.data.samples.synthetic import write_synthetic_dataset


@contextmanager
def deadline(seconds: float):
    """Fail instead of hanging."""
    def boom(*_):
        raise TimeoutError(f"took more than {seconds}s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cli(capsys, *args: str, seconds: float = 30) -> tuple[int, str, str]:
    with deadline(seconds), pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def assert_clean_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), err
    for n in needles:
        assert n in err, (n, err)


# ------------------------------------------------------------------ corrupt files, one each
def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR claims width x height (a decompression bomb's header)."""
    png = bytearray(png_bytes(np.zeros((8, 8), np.uint8)))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(png[24:29])
    png[8:33] = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return bytes(png)


def tif_declaring(tmp: Path, side: int) -> bytes:
    p = tmp / "small.tif"
    tifffile.imwrite(p, np.zeros((8, 8), np.uint8))
    b = bytearray(p.read_bytes())
    with tifffile.TiffFile(p) as tf:
        for name in ("ImageWidth", "ImageLength"):
            tag = tf.pages[0].tags[name]
            fmt = {3: "<H", 4: "<I"}[int(tag.dtype)]
            b[tag.valueoffset:tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, side)
    return bytes(b)


def nifti_declaring(shape) -> bytes:
    """A NIfTI-2 header claiming ``shape`` (up to 2^63 per axis) with a 12-byte body."""
    img = nib.Nifti2Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    img.header.set_data_shape(shape)
    return img.header.binaryblock + b"\0" * 16


def tif_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, a)
    return buf.getvalue()


# kind -> (file to replace, how; the needle expected in the error)
CORPUS_2D = {
    "truncated png": ("images/case_001.png", lambda p, t: p.write_bytes(p.read_bytes()[:60]), "truncated"),
    "empty png": ("images/case_001.png", lambda p, t: p.write_bytes(b""), "empty file"),
    "png bomb header": ("images/case_001.png", lambda p, t: p.write_bytes(png_declaring(60000, 60000)),
                        "enormous image"),
    "png large header, tiny body": ("images/case_001.png", lambda p, t: p.write_bytes(png_declaring(12000, 9000)),
                                    "truncated"),
    "tif bomb header": ("masks/case_001.png", None, "allowed"),
    "complex image": ("images/case_001.png", None, "complex"),
    "float mask": ("masks/case_001.png", None, "non-integer"),
    "nan image": ("images/case_001.png", None, "NaN/Inf"),
    "mask values outside labels": ("masks/case_001.png",
                                   lambda p, t: write_file(p, np.full((24, 24), 7, np.uint8), {}), "outside"),
    "shape mismatch": ("masks/case_001.png", lambda p, t: write_file(p, np.zeros((20, 24), np.uint8), {}),
                       "shape"),
    "blank image with a mask": ("images/case_001.png",
                                lambda p, t: write_file(p, np.zeros((24, 24), np.uint8), {}), "blank image"),
    "symlink loop": ("images/case_001.png", lambda p, t: (p.unlink(), os.symlink(p.name, p)),
                     "symbolic link loop"),
    "not an image": ("images/case_001.png", lambda p, t: p.write_bytes(b"hello, world\n" * 10), "unreadable"),
}


def _as_tif(root: Path, rel: str, data: np.ndarray | bytes) -> str:
    """Replace ``rel`` (a .png) by a .tif with ``data``; returns the new relative name."""
    (root / rel).unlink()
    new = rel[:-4] + ".tif"
    (root / new).write_bytes(data if isinstance(data, bytes) else tif_bytes(data))
    return new


@pytest.fixture
def folders(tmp_path):
    return write_synthetic_dataset(tmp_path / "ds", n_cases=3, size=24, seed=4)


@pytest.mark.parametrize("kind", list(CORPUS_2D))
def test_2d_corpus_is_reported_naming_the_file(kind, folders, tmp_path, capsys):
    rel, how, needle = CORPUS_2D[kind]
    if kind == "tif bomb header":
        rel = _as_tif(folders, rel, tif_declaring(tmp_path, 60000))
    elif kind == "complex image":
        rel = _as_tif(folders, rel, np.ones((24, 24), np.complex64))
    elif kind == "float mask":
        rel = _as_tif(folders, rel, np.full((24, 24), 0.5, np.float32))
    elif kind == "nan image":
        a = np.random.default_rng(0).random((24, 24)).astype(np.float32)
        a[3, 4] = np.nan
        rel = _as_tif(folders, rel, a)
    else:
        how(folders / rel, tmp_path)
    t0 = time.perf_counter()
    with deadline(20):
        found = check_dataset(folders)
    assert time.perf_counter() - t0 < 20
    assert any(rel in p and needle in p for p in found), (kind, found)
    assert all("\n" not in p for p in found)
    with pytest.raises(DataError):
        open_dataset(folders)
    code, out, err = cli(capsys, "data", "check", str(folders))
    assert code == 1, (out, err)
    assert_clean_error(err, rel, needle)


def test_good_and_bool_and_odd_names_pass(tmp_path, capsys):
    """Valid but unusual: bool TIF masks, names with spaces and bytes that are not UTF-8."""
    root = write_synthetic_dataset(tmp_path / "ds", n_cases=3, size=24, seed=5)
    mask = read_file(root / "masks" / "case_000.png", mask=True)[0][0] > 0
    (root / "masks" / "case_000.png").unlink()
    tifffile.imwrite(root / "masks" / "case_000.tif", mask)  # bool
    bad = os.fsdecode(b"caf\xe9 scan")  # latin-1 bytes: not UTF-8, with a space
    for sub in ("images", "masks"):
        (root / sub / "case_001.png").rename(root / sub / f"{bad}.png")
    ds = open_dataset(root)
    assert bad in ds.case_names
    assert np.array_equal(ds.load_case("case_000").label, mask.astype(np.int64))
    code, out, err = cli(capsys, "data", "check", str(root))
    assert code == 0 and "ok:" in out, err
    # the same name in an error line is printed, escaped, not crashed on
    (root / "masks" / f"{bad}.png").unlink()
    code, out, err = cli(capsys, "data", "check", str(root))
    assert code == 1
    assert_clean_error(err, "caf", "image without mask")


def test_symlinked_folder_loops_do_not_hang(folders, capsys):
    os.symlink("..", folders / "images" / "loop")
    os.symlink("loop2", folders / "loop2")
    code, _, err = cli(capsys, "data", "check", str(folders), seconds=20)
    assert code == 1
    assert_clean_error(err, "images/loop")
    os.symlink("self", folders.parent / "self")
    code, _, err = cli(capsys, "data", "check", str(folders.parent / "self"))
    assert code == 1
    assert_clean_error(err, "broken or looping symbolic link")


# ------------------------------------------------------------------ volumes
@pytest.fixture
def volumes(tmp_path):
    return write_synthetic_dataset(tmp_path / "vol", layout="nnunet", n_cases=2, size=(4, 8, 8), dims=3, seed=6)


def _nifti(a: np.ndarray, affine=None) -> bytes:
    return gzip.compress(nib.Nifti1Image(a, np.eye(4) if affine is None else affine).to_bytes())


CORPUS_3D = {
    "truncated nifti": ("imagesTr/case_001_0000.nii.gz", lambda p: p.write_bytes(p.read_bytes()[:200]),
                        "unreadable or truncated"),
    "empty nifti": ("imagesTr/case_001_0000.nii.gz", lambda p: p.write_bytes(b""), "empty file"),
    "nifti header 100000^3": ("imagesTr/case_001_0000.nii.gz",
                              lambda p: p.write_bytes(gzip.compress(nifti_declaring((100000,) * 3))), "allowed"),
    "nifti header 1000x1000x500, tiny body": (
        "imagesTr/case_001_0000.nii.gz", lambda p: p.write_bytes(gzip.compress(nifti_declaring((1000, 1000, 500)))),
        "truncated"),
    "4D image where 3D expected": ("imagesTr/case_001_0000.nii.gz",
                                   lambda p: p.write_bytes(_nifti(np.random.default_rng(0).random((8, 8, 4, 3)).astype(np.float32))),
                                   "declares 1"),
    "4D mask": ("labelsTr/case_001.nii.gz", lambda p: p.write_bytes(_nifti(np.zeros((8, 8, 4, 2), np.uint8))),
                "4D mask"),
    "complex volume": ("imagesTr/case_001_0000.nii.gz",
                       lambda p: p.write_bytes(_nifti(np.ones((8, 8, 4), np.complex64))), "complex"),
    "inf in volume": ("imagesTr/case_001_0000.nii.gz",
                      lambda p: p.write_bytes(_nifti(np.full((8, 8, 4), np.inf, np.float32))), "NaN/Inf"),
    "affine mismatch": ("labelsTr/case_001.nii.gz",
                        lambda p: p.write_bytes(_nifti(np.zeros((8, 8, 4), np.uint8), np.diag([1, 1, 2, 1.0]) + 0)),
                        "differs"),
    "nan spacing": ("imagesTr/case_001_0000.nii.gz", None, "invalid voxel spacing"),
}


@pytest.mark.parametrize("kind", list(CORPUS_3D))
def test_3d_corpus_is_reported_naming_the_file(kind, volumes, capsys):
    rel, how, needle = CORPUS_3D[kind]
    path = volumes / rel
    if kind == "nan spacing":
        b = bytearray(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)).to_bytes())
        b[84:88] = struct.pack("<f", float("nan"))  # pixdim[2]
        path.write_bytes(gzip.compress(bytes(b)))
    else:
        how(path)
    with deadline(20):
        found = check_dataset(volumes)
    assert any(rel in p and needle in p for p in found), (kind, found)
    code, _, err = cli(capsys, "data", "check", str(volumes))
    assert code == 1
    assert_clean_error(err, rel, needle)


def test_train_refuses_a_bad_dataset_with_one_line_per_problem(folders, tmp_path, capsys):
    (folders / "images" / "case_001.png").write_bytes(png_declaring(60000, 60000))
    (folders / "masks" / "case_002.png").write_bytes(b"")
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", str(folders), "--out", str(out), "--device", "cpu")
    assert code == 1
    assert_clean_error(err, "images/case_001.png", "masks/case_002.png", "nothing was trained")
    assert not out.exists()


# ------------------------------------------------------------------ read_input (predict's reader)
@pytest.fixture
def vol_config(volumes):
    return open_dataset(volumes).data_config()


def test_read_input_refuses_bad_files_naming_them(vol_config, volumes, tmp_path):
    cases = {
        "trunc.nii.gz": _nifti(np.random.default_rng(1).random((8, 8, 4)).astype(np.float32))[:300],
        "empty.nii.gz": b"",
        "bomb.nii.gz": gzip.compress(nifti_declaring((100000,) * 3)),
        "frames.nii.gz": _nifti(np.ones((8, 8, 4, 3), np.float32)),   # 4D for a 1-channel 3D model
        "complex.nii.gz": _nifti(np.ones((8, 8, 4), np.complex64)),
        "nan.nii.gz": _nifti(np.full((8, 8, 4), np.nan, np.float32)),
        "flat.png": png_bytes(np.zeros((8, 8), np.uint8)),            # 2D for a 3D model
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with deadline(10), pytest.raises(DataError) as e:
            read_input(p, vol_config)
        assert len(e.value.problems) == 1 and name in e.value.problems[0], (name, e.value.problems)
    # a spacing far from the training one would resample to an enormous grid: refused first
    cfg = dict(vol_config, target_spacing=[0.001, 0.001, 0.001])
    p = tmp_path / "coarse.nii.gz"
    p.write_bytes(_nifti(np.ones((64, 64, 64), np.float32), np.diag([5.0, 5.0, 5.0, 1.0])))
    with deadline(10), pytest.raises(DataError, match="resampling .* would give"):
        read_input(p, cfg)


# ------------------------------------------------------------------ readers: round trips
spacings = st.floats(0.1, 5.0, allow_nan=False).map(lambda x: round(x, 3))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_volume_round_trip_keeps_values_shape_spacing_affine(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=3, max_size=3)))
    dtype = data.draw(st.sampled_from([np.uint8, np.int16, np.float32]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    a = (rng.random(shape) * 100).astype(dtype)
    spacing = [data.draw(spacings) for _ in range(3)]
    origin = [data.draw(st.floats(-100, 100).map(lambda x: round(x, 2))) for _ in range(3)]
    affine = np.diag(spacing[::-1] + [1.0])
    affine[:3, 3] = origin
    meta = {"affine": affine.tolist(), "spacing": spacing}
    suffix = data.draw(st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v{suffix}"
        write_file(path, a, meta)
        back, m = read_file(path)
    assert back.shape == (1, *shape) and back.dtype == a.dtype
    assert np.array_equal(back[0], a)
    assert np.allclose(m["spacing"], spacing, rtol=1e-5)
    assert np.allclose(m["affine"], affine, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_2d_round_trip_keeps_values_and_shape(data):
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    fmt = data.draw(st.sampled_from(["png8", "png16", "rgb", "tif", "tiff-float", "bmp"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    a = {"png8": lambda: rng.integers(0, 256, (h, w), dtype=np.uint8),
         "png16": lambda: rng.integers(256, 65536, (h, w)).astype(np.uint16),
         "rgb": lambda: rng.integers(0, 256, (3, h, w), dtype=np.uint8),
         "tif": lambda: rng.integers(0, 65536, (h, w)).astype(np.uint16),
         "tiff-float": lambda: rng.random((h, w)).astype(np.float32),
         "bmp": lambda: rng.integers(0, 256, (h, w), dtype=np.uint8)}[fmt]()
    suffix = {"png8": ".png", "png16": ".png", "rgb": ".png", "tif": ".tif", "tiff-float": ".tif", "bmp": ".bmp"}[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"i{suffix}"
        write_file(path, a, {})
        back, m = read_file(path)
    want = a if a.ndim == 3 else a[None]
    assert back.shape == want.shape and np.array_equal(back, want)
    assert m["shape"] == [h, w] and m["spacing"] == [1.0, 1.0]


@pytest.mark.parametrize("exc, needle", [
    (OSError(28, "No space left on device", "/runs/a/model.safetensors"), "written atomically"),
    (MemoryError(), "out of memory"),
    (KeyError("surprise"), "unexpected KeyError"),
])
def test_cli_turns_any_failure_into_one_line(folders, monkeypatch, capsys, exc, needle):
    import unetpp.data as data_module

    def fail(*_, **__):
        raise exc

    monkeypatch.setattr(data_module, "open_dataset", fail)
    code, _, err = cli(capsys, "data", "check", str(folders))
    assert code == 1
    assert_clean_error(err, needle)
    assert len(err.strip().splitlines()) == 1
