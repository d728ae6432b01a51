"""Every layout and file format, written as small fixtures and read back; geometry survives
into written masks; normalisation and resampling; sample names resolve to fetched folders."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from unetpp.data import DataError, open_dataset
from unetpp.data.files.formats import read_file, write_file
from unetpp.data.io import read_input, write_mask
from unetpp.data.cases.normalize import apply_normalization, fit_channel, modality_of
from unetpp.data.cases.resample import resize, target_spacing
from unetpp.data.samples.synthetic import make_blobs, write_synthetic_dataset


def test_image_folders_gray_binary(synthetic_2d):
    ds = open_dataset(synthetic_2d)
    assert (ds.layout, ds.spatial_dims, ds.channels, ds.classes) == ("image-folders", 2, 1, 1)
    assert ds.labels == {0: "background", 1: "foreground"}
    assert ds.case_names == [f"case_{i:03d}" for i in range(6)] and ds.default_split is None
    case = ds.load_case("case_000")
    assert case.image.shape == (1, 48, 48) and case.image.dtype == np.float32
    assert case.label.dtype == np.int64 and set(np.unique(case.label)) == {0, 1}
    # the 0/255 mask on disk becomes 0/1
    raw, _ = read_file(synthetic_2d / "masks" / "case_000.png")
    assert np.array_equal(case.label, (raw[0] == 255).astype(np.int64))
    # gray microscopy-like images: per-case z-score
    assert ds.normalization == [{"scheme": "zscore"}]
    assert abs(float(case.image.mean())) < 1e-4 and abs(float(case.image.std()) - 1) < 1e-3
    json.dumps(ds.data_config())  # the run stores it as JSON


def test_image_folders_rgb_is_scaled(tmp_path):
    root = write_synthetic_dataset(tmp_path, n_cases=2, size=32, channels=3)
    ds = open_dataset(root)
    assert ds.channels == 3 and ds.modality == "rgb"
    raw, _ = read_file(root / "images" / "case_000.png")
    assert np.allclose(ds.load_case("case_000").image, raw / 255.0)


def test_image_folders_multiclass_and_jpg_masks(tmp_path):
    root = write_synthetic_dataset(tmp_path / "mc", n_cases=2, size=32, classes=3)
    ds = open_dataset(root)
    assert ds.classes == 3 and ds.labels == {0: "background", 1: "class1", 2: "class2"}
    assert set(np.unique(ds.load_case("case_000").label)) <= {0, 1, 2}
    # Kvasir-SEG ships JPG masks: compression noise around 0/255 is thresholded at 128
    jpg = tmp_path / "jpg"
    image, label = make_blobs((32, 32), seed=3)
    write_file(jpg / "images" / "a.jpg", (np.clip(image, 0, 1) * 255).astype(np.uint8), {})
    write_file(jpg / "masks" / "a.jpg", (label * 255).astype(np.uint8), {})
    got = open_dataset(jpg).load_case("a").label
    assert set(np.unique(got)) <= {0, 1} and (got == label).mean() > 0.97


def test_dsb2018_instances_are_merged(tmp_path):
    root = write_synthetic_dataset(tmp_path / "stage1_train", layout="dsb2018", n_cases=2, size=40)
    ds = open_dataset(tmp_path)  # the archive's top folder is found inside
    assert ds.layout == "dsb2018" and ds.root.name == "stage1_train" and ds.channels == 3
    case = ds.load_case("case_001")
    union = np.zeros((40, 40), bool)
    for p in (root / "case_001" / "masks").iterdir():
        union |= read_file(p)[0][0] > 0
    assert np.array_equal(case.label, union.astype(np.int64)) and union.any()


def test_nnunet_multichannel_volumes(tmp_path):
    root = write_synthetic_dataset(tmp_path, layout="nnunet", n_cases=2, size=(8, 16, 16), dims=3,
                                   channels=2, classes=3, spacing=(3.0, 0.5, 0.5), modality="CT")
    ds = open_dataset(root)
    assert (ds.layout, ds.spatial_dims, ds.channels, ds.classes, ds.modality) == ("nnunet", 3, 2, 3, "ct")
    assert ds.target_spacing == [3.0, 0.5, 0.5]
    case = ds.load_case("case_000")
    assert case.image.shape == (2, 8, 16, 16) and case.label.shape == (8, 16, 16)
    assert case.meta["spacing"] == [3.0, 0.5, 0.5] and np.allclose(np.diag(case.meta["affine"]), [0.5, 0.5, 3.0, 1])
    # CT: clipped to the foreground 0.5/99.5 percentiles, z-scored with dataset statistics
    spec = ds.normalization[0]
    assert spec["scheme"] == "ct" and spec["clip"][0] < spec["clip"][1]
    raw = nib.load(str(root / "imagesTr" / "case_000_0000.nii.gz")).get_fdata().transpose(2, 1, 0)
    expected = (np.clip(raw, *spec["clip"]) - spec["mean"]) / spec["std"]
    assert np.allclose(case.image[0], expected, atol=1e-5)


def test_msd_single_file_with_channels(tmp_path):
    """Medical Segmentation Decathlon: liver_0.nii.gz with channels in a 4th axis."""
    image = np.random.default_rng(0).random((6, 7, 5, 2)).astype(np.float32)  # x, y, z, c
    label = (image[..., 0] > 0.5).astype(np.uint8)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "imagesTr" / "brain_0.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "labelsTr" / "brain_0.nii.gz")
    (tmp_path / "imagesTr" / "._brain_0.nii.gz").write_bytes(b"macOS junk")  # shipped in MSD tars
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "tumour"}}))
    ds = open_dataset(tmp_path)
    assert ds.channels == 2 and ds.modality == "mri" and ds.channel_names == ["FLAIR", "T1w"]
    case = ds.load_case("brain_0")
    assert case.image.shape == (2, 5, 7, 6)  # (C, z, y, x)
    assert np.array_equal(case.label, label.transpose(2, 1, 0))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_formats_roundtrip_geometry(tmp_path, suffix):
    rng = np.random.default_rng(1)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.7, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
    data = rng.normal(size=(4, 6, 5)).astype(np.float32)  # (z, y, x)
    src = write_file(tmp_path / f"in{suffix}", data, {"affine": affine.tolist()})
    array, meta = read_file(src)
    assert array.shape == (1, 4, 6, 5) and np.allclose(array[0], data)
    assert np.allclose(meta["affine"], affine) and np.allclose(meta["spacing"], [2.5, 0.8, 0.7])
    labels = (data > 0).astype(np.int64)
    config = {"channels": 1, "spatial_dims": 3, "classes": 1, "target_spacing": None,
              "normalization": [{"scheme": "zscore"}]}
    _, meta = read_input(src, config)
    out = write_mask(tmp_path / f"out{suffix}", labels, meta)
    back, back_meta = read_file(out)
    assert np.array_equal(back[0], labels) and np.allclose(back_meta["affine"], affine)


def test_nifti_mask_keeps_header_codes(tmp_path):
    img = nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), np.diag([0.9, 0.9, 3.0, 1.0]))
    img.header.set_sform(img.affine, code=2)  # aligned to another scan
    img.header.set_qform(img.affine, code=1)
    nib.save(img, tmp_path / "ct.nii.gz")
    config = {"channels": 1, "spatial_dims": 3, "classes": 3, "target_spacing": None,
              "normalization": [{"scheme": "zscore"}]}
    image, meta = read_input(tmp_path / "ct.nii.gz", config)
    write_mask(tmp_path / "seg.nii.gz", np.full(image.shape[1:], 2), meta)
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert seg.shape == (5, 4, 3) and int(seg.header["sform_code"]) == 2
    assert np.allclose(seg.affine, img.affine) and np.all(np.asanyarray(seg.dataobj) == 2)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_2d_masks_written_as_0_255_or_labels(tmp_path, suffix):
    labels = np.zeros((10, 12), np.int64)
    labels[2:5, 3:7] = 1
    meta = {"format": suffix[1:], "shape": [10, 12], "grid_shape": [10, 12], "classes": 1}
    out = write_mask(tmp_path / f"m{suffix}", labels, meta)
    assert set(np.unique(read_file(out)[0])) == {0, 255}
    labels[0, 0] = 2
    out = write_mask(tmp_path / f"k{suffix}", labels, {**meta, "classes": 3})
    assert np.array_equal(read_file(out)[0][0], labels)
    # JPG would blur label edges: a .jpg output is written as PNG
    assert write_mask(tmp_path / "x.jpg", labels, meta).suffix == ".png"


def test_anisotropic_dataset_is_resampled_and_restored(tmp_path):
    """Cases at 2.0 and 4.0 mm slices -> target spacing (nnU-Net rule); predictions on the
    target grid go back to each input's own grid."""
    rng = np.random.default_rng(0)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i, (z, dz) in enumerate([(10, 2.0), (5, 4.0), (10, 2.0)]):
        aff = np.diag([1.0, 1.0, dz, 1.0])
        img = rng.normal(size=(12, 12, z)).astype(np.float32)
        lab = np.zeros((12, 12, z), np.uint8)
        lab[3:8, 3:8, 1:-1] = 1
        nib.save(nib.Nifti1Image(img, aff), tmp_path / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), tmp_path / "labelsTr" / f"c{i}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}))
    ds = open_dataset(tmp_path)
    assert ds.target_spacing == [2.0, 1.0, 1.0]
    case = ds.load_case("c1")  # 5 slices at 4 mm -> 10 slices at 2 mm
    assert case.image.shape == (1, 10, 12, 12) and case.label.shape == (10, 12, 12)
    assert ds.case_shape("c1") == (10, 12, 12)
    assert case.meta["shape"] == [5, 12, 12] and case.meta["grid_shape"] == [10, 12, 12]
    image, meta = read_input(tmp_path / "imagesTr" / "c1_0000.nii.gz", ds.data_config())
    assert np.allclose(image, case.image)
    out = write_mask(tmp_path / "pred.nii.gz", case.label, meta)
    back = nib.load(out)
    assert back.shape == (12, 12, 5) and np.allclose(back.affine, np.diag([1, 1, 4.0, 1]))
    original = np.asanyarray(nib.load(tmp_path / "labelsTr" / "c1.nii.gz").dataobj)
    assert np.array_equal(np.asanyarray(back.dataobj), original)


def test_target_spacing_rules():
    assert target_spacing([[1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [0.8, 1.0, 1.0]]) == [1.0, 1.0, 1.0]
    # anisotropic: the coarse axis takes the 10th percentile, not the median
    spacings = [[5.0, 0.8, 0.8]] * 8 + [[1.0, 0.8, 0.8]] * 2
    assert target_spacing(spacings)[0] < 5.0 and target_spacing(spacings)[1:] == [0.8, 0.8]
    lab = np.zeros((4, 6, 6), np.int64)
    lab[1:3, 2:4, 2:4] = 1
    assert np.array_equal(resize(resize(lab, (8, 12, 12), 0), (4, 6, 6), 0), lab)


def test_normalization_specs():
    assert modality_of("CT") == "ct" and modality_of("T2") == "mri" and modality_of("rgb_to_0_1") == "rgb"
    ct = fit_channel("ct", foreground=np.arange(-500, 500, dtype=float), window=(-100, 200))
    assert ct["clip"] == [-100.0, 200.0]
    x = apply_normalization(np.array([[[-1000.0, 0.0, 1000.0]]]), [ct])
    assert np.allclose(x[0, 0], (np.array([-100, 0, 200]) - ct["mean"]) / ct["std"])
    with pytest.raises(ValueError):
        apply_normalization(np.zeros((2, 3, 3)), [ct])


def test_ct_window_override(tmp_path):
    root = write_synthetic_dataset(tmp_path, layout="nnunet", n_cases=2, size=(6, 12, 12), dims=3, modality="CT")
    ds = open_dataset(root, ct_window=(0.0, 0.5))
    assert ds.data_config()["normalization"][0]["clip"] == [0.0, 0.5]


def test_read_input_matches_channels_and_refuses_other_dims(tmp_path, synthetic_2d):
    ds = open_dataset(synthetic_2d)
    rgb = np.repeat((np.random.default_rng(0).random((1, 20, 24)) * 255).astype(np.uint8), 3, 0)
    write_file(tmp_path / "rgb.png", rgb, {})
    image, meta = read_input(tmp_path / "rgb.png", ds.data_config())  # gray model, RGB input
    assert image.shape == (1, 20, 24) and meta["channels_converted"] == "rgb->gray"
    write_file(tmp_path / "vol.nii.gz", np.zeros((3, 4, 5), np.float32), {})
    with pytest.raises(DataError, match="3D image; the model was trained on 2D"):
        read_input(tmp_path / "vol.nii.gz", ds.data_config())


def test_sample_name_resolves_to_fetched_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETPP_DATA", str(tmp_path))
    with pytest.raises(DataError, match="not fetched yet; run 'unetpp data fetch nuclei-2d'"):
        open_dataset("nuclei-2d")
    root = write_synthetic_dataset(tmp_path / "nuclei-2d", n_cases=2, size=24)
    (root / "dataset.json").write_text(json.dumps({"modality": "microscopy", "sample": {"name": "nuclei-2d"}}))
    assert open_dataset("nuclei-2d").root == root


def test_cache_keeps_decoded_cases(synthetic_2d):
    # the in-memory LRU cache of the unprepared path (prepared datasets read memory maps)
    ds = open_dataset(synthetic_2d, cache_bytes=2 * 48 * 48 * 12, prepared=False)  # room for two cases
    a = ds.load_case("case_000")
    assert ds.load_case("case_000") is a
    ds.load_case("case_001")
    ds.load_case("case_002")
    assert ds.load_case("case_000") is not a  # evicted (least recently used), decoded again


def test_palette_and_bilevel_png_masks(tmp_path):
    """Palette masks hold label values as indices (VOC style); 1-bit masks are 0/1."""
    from PIL import Image

    image, label = make_blobs((24, 24), seed=2, classes=3)
    for name in ("pal", "bit"):
        write_file(tmp_path / name / "images" / "a.png", (np.clip(image, 0, 1) * 255).astype(np.uint8), {})
    pal = Image.fromarray(label.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    (tmp_path / "pal" / "masks").mkdir()
    pal.save(tmp_path / "pal" / "masks" / "a.png")
    (tmp_path / "pal" / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}}))
    assert np.array_equal(open_dataset(tmp_path / "pal").load_case("a").label, label)
    (tmp_path / "bit" / "masks").mkdir()
    Image.fromarray(label > 0).convert("1").save(tmp_path / "bit" / "masks" / "a.png")
    assert np.array_equal(open_dataset(tmp_path / "bit").load_case("a").label, (label > 0).astype(np.int64))


def test_modality_override_and_per_channel_schemes(tmp_path):
    root = write_synthetic_dataset(tmp_path, layout="nnunet", n_cases=2, size=(4, 8, 8), dims=3, channels=2)
    info = json.loads((root / "dataset.json").read_text())
    info["channel_names"] = {"0": "CT", "1": "noNorm"}
    (root / "dataset.json").write_text(json.dumps(info))
    ds = open_dataset(root)
    assert [s["scheme"] for s in ds.normalization] == ["ct", "none"] and ds.modality == "ct"
    ds = open_dataset(root, modality="mri")
    assert [s["scheme"] for s in ds.normalization] == ["zscore", "zscore"] and ds.modality == "mri"
    with pytest.raises(DataError, match="modality 'xray' is not one of"):
        open_dataset(root, modality="xray")


def test_metaimage_as_itk_writes_it(tmp_path):
    """A hand-written ITK-style header: zlib-compressed .mha, and .mhd + .raw; x runs fastest."""
    import zlib

    data = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5)  # (z, y, x)
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "CompressedData = {c}\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 1 2 3\n"
              "CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = 0.5 0.75 2\n"
              "DimSize = 5 6 4\nElementType = MET_SHORT\nElementDataFile = {f}\n")
    (tmp_path / "a.mha").write_bytes(header.format(c="True", f="LOCAL").encode() + zlib.compress(data.tobytes()))
    (tmp_path / "b.mhd").write_text(header.format(c="False", f="b.raw"))
    (tmp_path / "b.raw").write_bytes(data.tobytes())
    for name in ("a.mha", "b.mhd"):
        array, meta = read_file(tmp_path / name)
        assert np.array_equal(array[0], data) and meta["spacing"] == [2.0, 0.75, 0.5]
        assert np.allclose(np.asarray(meta["affine"])[:3, 3], [1, 2, 3])
    (tmp_path / "c.mha").write_bytes(header.format(c="False", f="LOCAL").encode() + data.tobytes()[:50])
    with pytest.raises(DataError, match="truncated MetaImage data"):
        read_file(tmp_path / "c.mha")
