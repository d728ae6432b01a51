"""unetpp data prepare: plan and preprocess once, read by memory map, resume, stay correct."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unetpp.data import open_dataset
from unetpp.data.planning import prepare as P
from unetpp.data.loading.pipeline import make_train_loader
from unetpp.data.planning.prepared import PreparedDataset
from unetpp.data.samples.synthetic import write_synthetic_dataset
from unetpp.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def vol(tmp_path) -> Path:
    """nnU-Net layout: 4 anisotropic volumes (so they are resampled), binary labels."""
    return write_synthetic_dataset(tmp_path / "vol", layout="nnunet", n_cases=4, size=(10, 24, 24), dims=3,
                                   seed=1, spacing=(2.5, 1.0, 1.0))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def batches(ds, dims: int, patch, n: int = 3, epoch: int = 2):
    loader = make_train_loader(ds, ds.case_names, dims=dims, patch_size=patch, batch_size=2, seed=7,
                               augment=True, samples_per_epoch=2 * n)
    loader.set_epoch(epoch)
    return list(loader)


def test_prepared_batches_equal_the_decoded_path_exactly(vol):
    decoded = open_dataset(vol, prepared=False)
    prepared = open_dataset(vol)
    assert isinstance(prepared, PreparedDataset) and prepared.data_config() == decoded.data_config()
    for name in decoded.case_names:
        a, b = decoded.load_case(name), prepared.load_case(name)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
        assert b.image.dtype == np.float32 and b.label.dtype == np.int64
    for dims, patch in ((3, (8, 16, 16)), (2, (16, 16))):
        for (x1, y1), (x2, y2) in zip(batches(decoded, dims, patch), batches(prepared, dims, patch)):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # batches depend only on (seed, epoch, index): a new loader gives the same epoch (exact resume)
    again = open_dataset(vol)
    for (x1, y1), (x2, y2) in zip(batches(prepared, 3, (8, 16, 16)), batches(again, 3, (8, 16, 16))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_float16_cache_is_within_its_rounding(vol):
    P.prepare_dataset(vol, image_dtype="float16")
    half = open_dataset(vol)
    assert half.image_dtype == "float16"
    exact = open_dataset(vol, prepared=False)
    for name in exact.case_names:
        a, b = exact.load_case(name).image, half.load_case(name).image
        assert np.allclose(a, b, rtol=2**-10, atol=1e-3)


def test_opening_a_prepared_dataset_decodes_nothing(vol, monkeypatch):
    open_dataset(vol)
    import unetpp.data.cases.check as check

    def refuse(*a, **k):
        raise AssertionError("decoded an image")

    monkeypatch.setattr(check, "read_case", refuse)
    monkeypatch.setattr(P, "read_case", refuse)
    ds = open_dataset(vol)
    assert len(ds) == 4 and ds.case_shape(ds.case_names[0]) == (10, 24, 24)
    assert ds.load_case(ds.case_names[0]).image.shape == (1, 10, 24, 24)


def test_new_and_changed_cases_are_prepared_alone(vol, tmp_path):
    lines: list[str] = []
    folder = P.prepare_dataset(vol, log=lines.append)
    assert any("preparing 4 of 4" in s for s in lines)
    lines.clear()
    P.prepare_dataset(vol, log=lines.append)
    assert lines == []  # nothing to do
    extra = write_synthetic_dataset(tmp_path / "more", layout="nnunet", n_cases=5, size=(10, 24, 24), dims=3,
                                    seed=1, spacing=(2.5, 1.0, 1.0))
    for sub in ("imagesTr", "labelsTr"):
        for f in (extra / sub).iterdir():
            if f.name.startswith("case_004"):
                (vol / sub / f.name).write_bytes(f.read_bytes())
    P.prepare_dataset(vol, log=lines.append)
    assert any("preparing 1 of 5" in s for s in lines), lines
    # touched but identical: kept; changed content: prepared again
    lines.clear()
    label = vol / "labelsTr" / "case_000.nii.gz"
    os.utime(label, ns=(time.time_ns(), time.time_ns() + 10**9))
    P.prepare_dataset(vol, log=lines.append)
    assert not any("preparing" in s for s in lines), lines
    image = next((vol / "imagesTr").glob("case_001*"))
    other = next((extra / "imagesTr").glob("case_003*"))
    image.write_bytes(other.read_bytes())
    lines.clear()
    P.prepare_dataset(vol, log=lines.append)
    assert any("preparing 1 of 5" in s for s in lines), lines
    assert (folder / P.PLAN).is_file()


def test_a_damaged_cache_file_is_named_and_prepared_again(vol, capsys):
    ds = open_dataset(vol)
    name = ds.case_names[1]
    want = ds.load_case(name).image.copy()
    path = ds.folder / "cases" / f"{name}.image.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    fresh = open_dataset(vol)
    assert np.array_equal(fresh.load_case(name).image, want)
    assert f"{path}: checksum mismatch" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert np.array_equal(open_dataset(vol).load_case(name).image, want)


def test_a_bad_case_writes_no_plan_and_names_the_file(vol):
    bad = next((vol / "imagesTr").glob("case_002*"))
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="case_002"):
        open_dataset(vol)
    assert not any(P.cache_root(vol).rglob(P.PLAN))


def test_read_only_data_goes_to_the_cache_folder(vol, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETPP_CACHE", str(tmp_path / "cache"))
    ds = open_dataset(vol)
    assert str(ds.folder).startswith(str(tmp_path / "cache")) and not (vol / ".unetpp").exists()


def test_a_full_disk_is_one_line_naming_the_folder(vol, monkeypatch):
    import errno

    def full(path, data, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P, "atomic_write_bytes", full)
    with pytest.raises(DataError, match=r"cannot write the prepared dataset \(the disk is full\)"):
        P.prepare_dataset(vol)


def _prepare_cmd(vol: Path) -> list[str]:
    return [sys.executable, "-m", "unetpp", "data", "prepare", str(vol), "--workers", "1"]


@pytest.mark.slow
def test_killed_prepare_resumes_to_an_identical_cache(vol, tmp_path):
    reference = write_synthetic_dataset(tmp_path / "ref", layout="nnunet", n_cases=4, size=(10, 24, 24), dims=3,
                                        seed=1, spacing=(2.5, 1.0, 1.0))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), UNETPP_CACHE=str(tmp_path / "c1"))
    subprocess.run(_prepare_cmd(reference), env=env, check=True, capture_output=True, timeout=300)
    want = tree(next((tmp_path / "c1").iterdir()))
    env = dict(env, UNETPP_CACHE=str(tmp_path / "c2"))
    rng = np.random.default_rng(0)
    for delay in rng.uniform(1.0, 4.0, size=3):  # killed at random moments (start-up is ~1-2 s)
        proc = subprocess.Popen(_prepare_cmd(vol), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(_prepare_cmd(vol), env=env, check=True, capture_output=True, timeout=300)
    got = tree(next((tmp_path / "c2").iterdir()))
    # the two datasets hold the same bytes in different folders: compare all but paths/mtimes
    assert sorted(got) == sorted(want)
    for key in got:
        if key.endswith(".npy") or key.endswith(".npz"):
            assert got[key] == want[key], key


@pytest.mark.slow
def test_two_prepares_at_once_leave_a_valid_cache(vol):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    procs = [subprocess.Popen(_prepare_cmd(vol), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    ds = open_dataset(vol)
    decoded = open_dataset(vol, prepared=False)
    for name in ds.case_names:
        assert np.array_equal(ds.load_case(name).image, decoded.load_case(name).image)
