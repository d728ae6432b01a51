"""DICOM series in (read_file of a folder, layouts, predict) and DICOM-SEG out, on tiny
synthetic series written here with pydicom; the real ct-dicom sample when it is fetched."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import sys
import tarfile

import nibabel as nib
import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid  # noqa: E402

from unetpp.data import DataError, check_dataset, open_dataset  # noqa: E402
from unetpp.data.files import dicom as D  # noqa: E402
from unetpp.data.samples import catalog as S  # noqa: E402
from unetpp.data.files.formats import read_file, write_file  # noqa: E402

ROW, COL = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)


def write_series(folder, stored, spacing=(2.5, 0.8, 0.6), origin=(-20.0, 30.0, 100.0), row=ROW, col=COL,
                 slope=1.0, intercept=0.0, positions=None, names=None, series_uid=None, study_uid=None):
    """Slices ``stored[k]`` (uint16) at ``origin + k * spacing[0] * normal`` (or ``positions``),
    file names scrambled and InstanceNumber reversed: only the positions give the order."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(row, float), np.asarray(col, float)
    n = len(stored)
    if positions is None:
        positions = [np.asarray(origin) + k * spacing[0] * np.cross(row, col) for k in range(n)]
    names = names or [f"IM{(5 * k + 3) % 97:04d}.dcm" for k in range(n)]
    study, series, frame = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "CT", "p1", "Test^S", "", "O"
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "20240101", "120000", "", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, n - k
        ds.ImagePositionPatient = [f"{v:.6g}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row, *col)]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = 5.0  # deliberately not the spacing
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[k], dtype="<u2").tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return folder


def volume(shape=(4, 6, 5), seed=0):
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)


def world_of(k, r, c, origin, spacing, row, col):
    """RAS world point of voxel (slice k, row r, column c) by the DICOM standard's formula."""
    row, col = np.asarray(row), np.asarray(col)
    lps = np.asarray(origin) + k * spacing[0] * np.cross(row, col) + c * spacing[2] * row + r * spacing[1] * col
    return lps * [-1, -1, 1]


def test_order_spacing_rescale_and_world_geometry(tmp_path):
    stored = volume()
    row, col = (np.cos(0.5), np.sin(0.5), 0.0), (0.0, 0.0, -1.0)  # oblique, non-square pixels
    origin, spacing = (-20.0, 30.0, 100.0), (2.5, 0.8, 0.6)
    write_series(tmp_path / "s", stored, spacing, origin, row, col, slope=2, intercept=-1024)
    array, meta = read_file(tmp_path / "s")
    # order by position (not by name, not by InstanceNumber), rescale applied, integers kept
    assert array.shape == (1, 4, 6, 5) and array.dtype == np.int16
    assert np.array_equal(array[0], stored.astype(np.int32) * 2 - 1024)
    assert meta["format"] == "dicom" and meta["shape"] == [4, 6, 5]
    assert np.allclose(meta["spacing"], [2.5, 0.8, 0.6])  # from the positions, not SliceThickness (5)
    affine = np.asarray(meta["affine"])
    for k, r, c in [(0, 0, 0), (3, 5, 4), (1, 2, 3)]:
        assert np.allclose(affine @ [c, r, k, 1], [*world_of(k, r, c, origin, spacing, row, col), 1], atol=1e-4)
    # the same image as NIfTI (RAS, x y z = column row slice) reads back identical
    nifti = nib.Nifti1Image(np.transpose(array[0], (2, 1, 0)), affine)
    nib.save(nifti, str(tmp_path / "same.nii.gz"))
    array2, meta2 = read_file(tmp_path / "same.nii.gz")
    assert np.array_equal(array2, array) and np.allclose(meta2["affine"], meta["affine"], atol=1e-5)
    assert np.allclose(meta2["spacing"], meta["spacing"])
    assert np.allclose(D.world_to_index(meta, [world_of(3, 5, 4, origin, spacing, row, col)]), [[3, 5, 4]])


def test_fractional_rescale_gives_float(tmp_path):
    stored = volume((2, 3, 3))
    array, _ = read_file(write_series(tmp_path / "s", stored, slope=0.5, intercept=-10.25))
    assert array.dtype == np.float32 and np.allclose(array[0], stored * 0.5 - 10.25)


def _bad(tmp_path, kind, monkeypatch):
    """A series folder with one kind of problem; returns (folder, words the one line must hold)."""
    folder, stored = tmp_path / kind, volume()
    z = [np.array([-20.0, 30.0, 100.0 + 2.5 * k]) for k in range(4)]
    names = [f"s{k}.dcm" for k in range(4)]
    if kind == "mixed":
        a, b = "1.2.826.0.1.1", "1.2.826.0.1.2"
        write_series(folder, stored[:2], series_uid=a, names=["a0", "a1"])
        write_series(folder, stored[:3], series_uid=b, names=["b0", "b1", "b2"])
        return folder, [str(folder), f"{a}: 2 file(s)", f"{b}: 3 file(s)", "series.txt"]
    if kind == "missing":
        z[3] = z[3] + [0, 0, 2.5]
        return write_series(folder, stored, positions=z, names=names), ["1 slice(s) missing between s2.dcm and s3.dcm"]
    if kind == "non-uniform":
        z[3] = z[3] + [0, 0, 1.0]
        return write_series(folder, stored, positions=z, names=names), ["non-uniform slice spacing", "s2.dcm and s3.dcm"]
    if kind == "duplicate":
        z[2] = z[1]
        return write_series(folder, stored, positions=z, names=names), ["at the same position as s1.dcm", str(folder / "s2.dcm")]
    if kind == "tilt":
        z = [p + [0, k * 1.0, 0] for k, p in enumerate(z)]  # 1 mm shift per 2.5 mm slice: 21.8 degrees
        return write_series(folder, stored, positions=z, names=names), [str(folder), "gantry tilt", "21.80 degrees"]
    write_series(folder, stored, names=names)
    if kind == "not-dicom":
        (folder / "notes.txt").write_text("scan notes")
        return folder, [str(folder / "notes.txt"), "not a DICOM file"]
    ds = pydicom.dcmread(folder / "s2.dcm")
    if kind == "multi-frame":
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2
    else:  # compressed with a syntax no installed decoder reads
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not really jpeg \xff\xd9"])
        ds["PixelData"].VR = "OB"
        if D._decoder_available(JPEGLosslessSV1):  # e.g. pylibjpeg-libjpeg installed: pretend it is not
            monkeypatch.setattr(D, "_decoder_available", lambda syntax: False)
    ds.save_as(folder / "s2.dcm", enforce_file_format=True)
    words = ["multi-frame", "2 frames"] if kind == "multi-frame" else ["JPEG Lossless", "no decoder", "pylibjpeg"]
    return folder, [str(folder / "s2.dcm"), *words]


@pytest.mark.parametrize("kind", ["mixed", "missing", "non-uniform", "duplicate", "tilt", "not-dicom",
                                  "multi-frame", "compressed"])
def test_bad_series_is_one_line_naming_it(tmp_path, kind, monkeypatch):
    folder, words = _bad(tmp_path, kind, monkeypatch)
    with pytest.raises(DataError) as err:
        read_file(folder)
    assert len(err.value.problems) == 1 and "\n" not in err.value.problems[0]
    for w in words:
        assert w in err.value.problems[0], (w, err.value.problems[0])
    if kind == "mixed":  # a case may name its series
        (folder / "series.txt").write_text("1.2.826.0.1.2\n")
        assert read_file(folder)[0].shape == (1, 3, 6, 5)


def test_missing_pydicom_is_one_line(tmp_path, monkeypatch):
    folder = write_series(tmp_path / "s", volume((2, 3, 3)))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(DataError) as err:
        read_file(folder)
    assert err.value.problems == [f"{folder}: reading DICOM needs pydicom: pip install 'unetpp[dicom]'"]
    with pytest.raises(DataError, match="without DICOM files"):
        read_file(tmp_path)  # a folder of folders is no series (and needs no pydicom to say so)


def series_dataset(root, layout="nnunet", n=2):
    """n cases of 8x16x16 CT-like series with a bright 'liver' box; labels on the series' grid."""
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:6, 4:12, 3:10] = 1
    for i in range(n):
        stored = np.random.default_rng(i).integers(900, 1000, (8, 16, 16)).astype(np.uint16)
        stored[labels == 1] += 1100
        folder = root / ("imagesTr" if layout == "nnunet" else "images") / (f"c{i}_0000" if layout == "nnunet" else f"c{i}")
        write_series(folder, stored, intercept=-1024)
        _, meta = read_file(folder)
        write_file(root / ("labelsTr" if layout == "nnunet" else "masks") / f"c{i}.nii.gz", labels, meta)
    info = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
            "file_ending": ".nii.gz"} if layout == "nnunet" else {"modality": "CT", "labels": {"0": "background", "1": "liver"}}
    (root / "dataset.json").write_text(json.dumps(info))
    return root, labels


@pytest.mark.parametrize("layout", ["nnunet", "image-folders"])
def test_layouts_take_series_folders(tmp_path, layout):
    root, labels = series_dataset(tmp_path / layout, layout)
    assert check_dataset(root) == []
    ds = open_dataset(root, prepared=False)
    assert (ds.layout, ds.spatial_dims, ds.modality, len(ds)) == (layout, 3, "ct", 2)
    from unetpp.data.cases.check import read_case
    from unetpp.data.cases.orientation import reorientation, to_canonical

    image, label, meta = read_case(ds._files["c1"], ds.labels)
    assert image.shape == (1, 8, 16, 16) and np.array_equal(label, labels) and meta["format"] == "dicom"
    case = ds.load_case("c1")  # as training sees it: in the canonical (S, A, R) order
    assert np.array_equal(case.label, to_canonical(labels, reorientation(meta)))
    (root / ("imagesTr" if layout == "nnunet" else "images") / "stray").mkdir()
    (root / ("imagesTr" if layout == "nnunet" else "images") / "stray" / "x.txt").write_text("")
    assert any("stray: unexpected folder" in p and "no DICOM files" in p for p in check_dataset(root))


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    from unetpp import create_model
    from unetpp.run import make_run_config, save_weights, write_run_config

    root, labels = series_dataset(tmp_path_factory.mktemp("dcm") / "ds")
    ds = open_dataset(root, prepared=False)
    torch.manual_seed(0)
    model = create_model("unetpp", dims=3, depth=2, base_filters=4, in_channels=1, classes=ds.classes)
    run = root.parent / "run"
    run.mkdir()
    write_run_config(run, make_run_config(model.config, data=ds.data_config(), train={"patch_size": [8, 16, 16]}))
    save_weights(run / "model.safetensors", model)
    return run, root


def test_predict_series_as_nifti_and_dicom_seg(tmp_path, series_run, capsys):
    import unetpp
    from unetpp.cli import main
    from unetpp.data.files.dicom_seg import read_dicom_seg
    from unetpp.inference.predict import predict_inputs

    run, root = series_run
    series = root / "imagesTr" / "c0_0000"
    predictor = unetpp.load(run)
    out = predict_inputs(predictor, [str(root / "imagesTr")], tmp_path / "o", mode="fast", level=1)
    assert [o.error for o in out] == [None, None]  # a folder of series folders: each one
    mask = nib.load(str(tmp_path / "o" / "c0.nii.gz"))  # nnU-Net name: c0_0000/ -> c0
    _, meta = read_file(series)
    assert mask.shape == (16, 16, 8) and np.allclose(mask.affine, meta["affine"], atol=1e-5)
    expected = np.transpose(np.asarray(mask.dataobj), (2, 1, 0))
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(series), "--out", str(tmp_path / "seg"), "--format", "dicom-seg",
              "--mode", "fast", "--level", "1"])
    assert e.value.code in (0, None), capsys.readouterr().err
    back, names = read_dicom_seg(tmp_path / "seg" / "c0.dcm", meta)
    assert names == {1: "liver", 2: "spleen"} and np.array_equal(back, expected)
    seg = pydicom.dcmread(tmp_path / "seg" / "c0.dcm")
    first = pydicom.dcmread(series / meta["dicom"]["files"][0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    # DICOM-SEG for a NIfTI input: that input fails in one line; a bad --format before any work
    nii = tmp_path / "x_0000.nii.gz"
    write_file(nii, np.zeros((8, 16, 16), np.int16), meta)
    bad = predict_inputs(predictor, [str(nii)], tmp_path / "o2", mode="fast", level=1, mask_format="dicom-seg")
    assert bad[0].error == f"{nii}: --format dicom-seg needs a DICOM series folder as input, not a nifti file"
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), str(series), "--out", str(tmp_path / "x"), "--format", "dicomseg"])
    assert e.value.code == 1 and "--format must be one of nifti, dicom-seg" in capsys.readouterr().err


def test_dicom_seg_round_trip_of_a_known_mask(tmp_path):
    from unetpp.data.files.dicom_seg import read_dicom_seg, write_dicom_seg

    folder = write_series(tmp_path / "s", volume((5, 6, 7)))
    _, meta = read_file(folder)
    labels = np.zeros((5, 6, 7), np.int64)
    labels[1:3, 2:5, 1:4] = 1
    labels[3, 0:2, 5:7] = 2  # slices 0 and 4 empty
    write_dicom_seg(tmp_path / "m.dcm", labels, meta, {0: "background", 1: "liver", 2: "kidney tumour"})
    back, names = read_dicom_seg(tmp_path / "m.dcm", meta)
    assert np.array_equal(back, labels) and names == {1: "liver", 2: "kidney tumour"}
    seg = pydicom.dcmread(tmp_path / "m.dcm")
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    write_dicom_seg(tmp_path / "empty.dcm", np.zeros_like(labels), meta, {0: "background", 1: "liver"})
    assert not read_dicom_seg(tmp_path / "empty.dcm", meta)[0].any()


# ----------------------------------------------------------------------------- ct-dicom sample

def fake_ct_dicom(tmp_path, monkeypatch):
    """The ct-dicom sample's member names with a tiny synthetic series whose label map is stored
    rows-flipped (LAS, as in the real archive); liver voxels hold 89 HU."""
    ref, names = "tests/reference_files/", [p for p in S.SAMPLES["ct-dicom"].files if "example_ct_dicom/" in p]
    stored = np.full((20, 6, 5), 1024 - 50, np.uint16)
    liver = np.zeros((20, 6, 5), bool)
    liver[:, 1:3, 2:5] = True
    stored[liver] = 1024 + 89
    folder = write_series(tmp_path / "src", stored, spacing=(2.0, 0.98, 0.98), origin=(-249.5, -437.5, -804.5),
                          names=[p.rsplit("/", 1)[1] for p in names][::-1], intercept=-1024)
    _, meta = read_file(folder)
    seg = np.transpose(liver * 5, (2, 1, 0))[:, ::-1, :].astype(np.uint8)  # x, y (flipped), z
    flip = np.asarray(meta["affine"]) @ np.array([[1, 0, 0, 0], [0, -1, 0, 5], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    members = {p: (folder / p.rsplit("/", 1)[1]).read_bytes() for p in names}
    members[ref + "example_seg_dicom.nii.gz"] = gzip.compress(nib.Nifti1Image(seg, flip).to_bytes())
    members["totalsegmentator/map_to_binary.py"] = b"class_map = {'total': {5: 'liver'}}\n"
    pinned = {p: hashlib.sha256(b).hexdigest() for p, b in members.items()}
    monkeypatch.setitem(S.SAMPLES, "ct-dicom", dataclasses.replace(S.SAMPLES["ct-dicom"], files=pinned))

    def download(sample, where):
        path = where / "totalsegmentator-2.18.0.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            for p, b in members.items():
                info = tarfile.TarInfo(f"totalsegmentator-2.18.0/{p}")
                info.size = len(b)
                tf.addfile(info, io.BytesIO(b))
        return path

    monkeypatch.setattr(S, "download", download)


def liver_hu_per_slice(root):
    from unetpp.data.cases.check import read_case
    from unetpp.data.cases.layouts import scan

    image, label, meta = read_case(scan(root).cases[0], {0: "background", 1: "liver"})
    return [float(image[0, k][label[k] == 1].mean()) for k in range(image.shape[1]) if (label[k] == 1).any()], meta


def test_fetch_ct_dicom_lines_up_in_world_space(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETPP_DATA", str(tmp_path / "home"))
    fake_ct_dicom(tmp_path, monkeypatch)
    root = S.fetch("ct-dicom", tmp_path / "ct")
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["ctdicom_0000"]
    assert len(list((root / "imagesTr" / "ctdicom_0000").iterdir())) == 20
    assert check_dataset(root) == []
    hu, _ = liver_hu_per_slice(root)
    assert len(hu) == 20 and np.allclose(hu, 89)


def test_real_ct_dicom_liver_is_89_hu_on_every_slice(tmp_path, monkeypatch):
    """Runs when ``unetpp data fetch ct-dicom`` has put the real files in the cache."""
    from unetpp.data.samples.home import data_home
    from unetpp.data.samples.pypi import _cached

    cache = data_home() / "_files"
    if _cached(S.SAMPLES["ct-dicom"].files, cache) is None:
        pytest.skip("the ct-dicom sample is not fetched (unetpp data fetch ct-dicom)")
    monkeypatch.setattr(S, "download", lambda *a: pytest.fail("must not download"))
    monkeypatch.setattr(S, "_remember", lambda *a: None)
    hu, meta = liver_hu_per_slice(S.fetch("ct-dicom", tmp_path / "ct"))
    assert meta["shape"] == [20, 512, 512] and np.allclose(meta["spacing"], [2.0, 0.9765625, 0.9765625])
    assert len(hu) == 20 and all(80 < v < 100 for v in hu), hu
