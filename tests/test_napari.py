"""The napari plugin (issue 24), headless: manifest, reader, widget from a run to a Labels layer.

``make test`` installs the ``napari`` extra; without it (a user's bare install) these skip.
Qt runs offscreen (``QT_QPA_PLATFORM=offscreen``, set in conftest.py). napari's
``make_napari_viewer`` needs an OpenGL context for its canvas, which an offscreen Qt on a
machine without a display does not give (vispy: ``glGetString`` returns None), so the widget
is tested on napari's ``ViewerModel`` (the viewer's layers and ``add_*`` without a canvas)
inside a real ``QApplication`` (pytest-qt's ``qtbot``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="the napari extra is not installed (pip install 'unetpp[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from napari.components import ViewerModel  # noqa: E402

import unetpp  # noqa: E402
from unetpp.cli import main  # noqa: E402
from unetpp.data.files.formats import write_file  # noqa: E402
from unetpp.napari._reader import get_reader  # noqa: E402
from unetpp.napari._widget import SegmentWidget, level_choices  # noqa: E402

from test_prune import pruned_run as make_pruned_run  # noqa: E402


def test_npe2_validates_the_manifest():
    npe2 = Path(sys.executable).parent / "npe2"
    r = subprocess.run([str(npe2), "validate", "unetpp"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unetpp" in r.stdout + r.stderr


def test_importing_the_plugin_does_not_import_torch():
    code = ("import sys, unetpp, unetpp.napari, unetpp.napari._reader; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_the_reader_reads_volumes_with_their_spacing(tmp_path, suffix):
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    path = write_file(tmp_path / f"vol{suffix}", volume, {"spacing": [3.0, 1.5, 0.5]})
    reader = get_reader(str(path))
    assert reader is not None
    (data, kwargs, kind), = reader(str(path))
    assert kind == "image" and data.shape == (4, 5, 6) and np.allclose(data, volume[0])
    assert kwargs["scale"] == pytest.approx([3.0, 1.5, 0.5]) and kwargs["metadata"]["unetpp_path"] == str(path)
    assert get_reader(str(tmp_path / "notes.txt")) is None


def test_the_reader_reads_a_dicom_series_folder(tmp_path):
    pytest.importorskip("pydicom")
    from test_dicom import write_series

    stored = (np.arange(3 * 8 * 10).reshape(3, 8, 10) % 200).astype(np.uint16)
    write_series(tmp_path / "series", stored)
    (data, kwargs, _), = get_reader(str(tmp_path / "series"))(str(tmp_path / "series"))
    assert data.shape == (3, 8, 10) and kwargs["name"] == "series"
    assert kwargs["scale"] == pytest.approx([2.5, 0.8, 0.6])


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    return make_pruned_run(tmp_path_factory.mktemp("napari"))


def test_level_choices_carry_prune_json(pruned_run):
    run, _ = pruned_run
    choices, index = level_choices(unetpp.load(run))
    prune = json.loads((run / "prune.json").read_text())
    assert [c[0] for c in choices] == ["1", "2", "3", "accurate"]
    assert f"{prune['levels']['2']['latency_ms']:.1f} ms" in choices[1][2]
    assert f"{prune['levels']['2']['iou'] * 100:.1f} %" in choices[1][2]
    chosen = prune["chosen"]
    assert choices[index][0] == ("accurate" if chosen["mode"] == "accurate" else str(chosen["level"]))


def test_the_widget_segments_a_layer_at_the_slider_level(qtbot, pruned_run):
    run, ds = pruned_run
    viewer = ViewerModel()
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(ds.root / "images" / f"{ds.case_names[3]}.png"))
    viewer.add_image(image, name="tile")
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.load(run)
    assert widget.layer_box.currentText() == "tile" and widget.run_button.isEnabled()
    assert widget.slider.maximum() == 3  # L1, L2, L3, accurate
    prune = json.loads((run / "prune.json").read_text())
    widget.slider.setValue(0)  # the smallest network: its own latency on the label
    assert widget.level_label.text().startswith("L1: ") and f"{prune['levels']['1']['latency_ms']:.1f} ms" in \
        widget.level_label.text()
    widget.uncertainty_box.setChecked(True)
    worker = widget.segment()
    assert worker is not None
    qtbot.waitUntil(lambda: "tile [fast L1]" in [layer.name for layer in viewer.layers], timeout=60_000)
    labels = viewer.layers["tile [fast L1]"]
    expected = unetpp.load(run).predict(image, mode="fast", level=1)
    assert np.array_equal(np.asarray(labels.data), expected)
    assert list(labels.features["name"]) == ["background", "foreground"]
    u = viewer.layers["tile uncertainty [fast L1]"].data
    assert u.shape == image.shape[:2] and 0 <= u.min() and u.max() <= 1
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)


def test_the_widget_opens_a_package(qtbot, pruned_run, tmp_path, monkeypatch):
    run, ds = pruned_run
    monkeypatch.setenv("UNETPP_CACHE", str(tmp_path / "cache"))
    zip_path = tmp_path / "m.zip"
    try:
        main(["package", str(run), "--out", str(zip_path), "--data", str(ds.root)])
    except SystemExit as e:
        assert e.code == 0
    widget = SegmentWidget(ViewerModel())
    qtbot.addWidget(widget)
    widget.load(zip_path)
    assert widget.slider.maximum() == 3 and "m.zip" in widget.model_label.text()
    widget.load(tmp_path / "missing.zip")
    assert widget.status.text().startswith("could not load")
