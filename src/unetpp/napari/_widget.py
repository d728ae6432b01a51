"""napari widget: open a run folder or a ``MODEL.zip``, pick the speed/accuracy operating point
on a slider (each level labelled with its validation IoU and latency from ``prune.json``), and
segment the selected image layer in a worker thread; the mask comes back as a Labels layer with
the run's label names (and, on request, the uncertainty map as an image layer).

No other segmentation plugin offers the slider: UNet++'s pruned levels are real, smaller
networks, so moving it left trades accuracy for speed, by the amounts measured on validation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                            QPushButton, QSlider, QVBoxLayout, QWidget)


def level_choices(predictor: Any) -> tuple[list[tuple[str, Any, str]], int]:
    """``([(key, Mode, label text)], index of prune's choice)``: one entry per level, then
    accurate mode when the run has several heads; the text carries prune.json's IoU and
    latency for that entry."""
    from ..inference.predictor import read_prune_choice
    from ..io import read_json
    from ..models.mode import Mode

    levels = list(predictor.levels)
    entries = [(str(lv), Mode.fast(lv)) for lv in levels] + ([("accurate", Mode.accurate())] if len(levels) > 1 else [])
    run = getattr(predictor, "run", None)
    prune = read_json(Path(run) / "prune.json") if run is not None and (Path(run) / "prune.json").is_file() else None
    out = []
    for key, mode in entries:
        name = "accurate" if key == "accurate" else f"L{key}"
        stats = (prune or {}).get("accurate" if key == "accurate" else "levels", {})
        stats = stats if key == "accurate" else stats.get(key)
        text = (f"{name}: validation IoU {stats['iou'] * 100:.1f} %, {stats['latency_ms']:.1f} ms a patch"
                if stats else f"{name} (not pruned: no validation scores)")
        out.append((key, mode, text))
    chosen = read_prune_choice(run) if run is not None else None
    index = next((i for i, (_, m, _) in enumerate(out) if chosen is not None and m == chosen), len(out) - 1)
    return out, index


class SegmentWidget(QWidget):
    """The dock widget (npe2 contribution ``unetpp.segment_widget``)."""

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.predictor: Any = None
        self.choices: list[tuple[str, Any, str]] = []
        self.worker: Any = None

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("run folder, cross-validation folder or MODEL.zip")
        browse = QPushButton("Open...")
        browse.clicked.connect(self._browse)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(lambda: self.load(self.path_edit.text()))
        self.model_label = QLabel("no model loaded")
        self.layer_box = QComboBox()
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._show_level)
        self.level_label = QLabel("")
        self.uncertainty_box = QCheckBox("uncertainty map")
        self.run_button = QPushButton("Segment")
        self.run_button.setEnabled(False)
        self.run_button.clicked.connect(self.segment)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("")

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        for w in (self.path_edit, browse, self.load_button):
            row.addWidget(w)
        layout.addLayout(row)
        for w in (self.model_label, QLabel("image layer"), self.layer_box, QLabel("level (left: faster)"),
                  self.slider, self.level_label, self.uncertainty_box, self.run_button, self.progress, self.status):
            layout.addWidget(w)
        layout.addStretch()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ model
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "MODEL.zip", "", "unetpp package (*.zip)")
        path = path or QFileDialog.getExistingDirectory(self, "run folder")
        if path:
            self.path_edit.setText(path)
            self.load(path)

    def load(self, path: str | Path) -> None:
        """Load a run folder, a CV folder or a MODEL.zip; set the slider to prune's choice."""
        import unetpp

        try:
            self.predictor = unetpp.load(str(path))
        except Exception as e:  # noqa: BLE001 - shown in the widget, napari stays up
            self.status.setText(f"could not load {path}: {e}")
            return
        self.choices, index = level_choices(self.predictor)
        self.slider.setRange(0, len(self.choices) - 1)
        self.slider.setValue(index)
        self.slider.setEnabled(len(self.choices) > 1)
        self._show_level(index)
        p = self.predictor
        self.model_label.setText(f"{Path(str(path)).name}: {p.dims}D, {p.classes} class(es), levels "
                                 f"{', '.join(map(str, p.levels))}")
        self.run_button.setEnabled(True)
        self.status.setText("")

    def _show_level(self, index: int) -> None:
        if 0 <= index < len(self.choices):
            self.level_label.setText(self.choices[index][2])

    @property
    def mode(self) -> Any:
        return self.choices[self.slider.value()][1]

    # ------------------------------------------------------------------ layers
    def _image_layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if type(layer).__name__ == "Image"]

    def _refresh_layers(self, *_: Any) -> None:
        current = self.layer_box.currentText()
        self.layer_box.clear()
        names = [layer.name for layer in self._image_layers()]
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)

    # ------------------------------------------------------------------ prediction
    def segment(self) -> Any:
        """Segment the selected image layer in a worker thread; returns the worker."""
        from napari.qt.threading import create_worker

        layers = {layer.name: layer for layer in self._image_layers()}
        layer = layers.get(self.layer_box.currentText())
        if self.predictor is None or layer is None:
            self.status.setText("load a model and open an image first")
            return None
        path = (layer.metadata or {}).get("unetpp_path") or getattr(getattr(layer, "source", None), "path", None)
        mode, uncertainty = self.mode, self.uncertainty_box.isChecked()
        self.run_button.setEnabled(False)
        self.progress.setRange(0, 0)  # busy: the sliding window reports no fraction
        self.progress.setVisible(True)
        self.status.setText(f"segmenting {layer.name} ({mode}) ...")
        worker = create_worker(predict_layer, self.predictor, np.asarray(layer.data), path, mode, uncertainty)
        worker.returned.connect(lambda result: self._add_result(layer, mode, result))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._done)
        self.worker = worker
        worker.start()
        return worker

    def _add_result(self, layer: Any, mode: Any, result: dict[str, Any]) -> None:
        from ..inference.predict import label_names

        names = label_names(self.predictor)
        top = max(names)
        features = {"name": [names.get(v, f"label{v}") for v in range(top + 1)]}
        scale = list(layer.scale)[-result["labels"].ndim:]
        self.viewer.add_labels(result["labels"].astype(np.int32), name=f"{layer.name} [{mode}]", scale=scale,
                               features=features)
        if result.get("uncertainty") is not None:
            self.viewer.add_image(result["uncertainty"], name=f"{layer.name} uncertainty [{mode}]", scale=scale,
                                  colormap="magma", opacity=0.5, contrast_limits=(0.0, 1.0), blending="additive")
        self.status.setText(f"{layer.name}: {mode} in {result['seconds']:.1f} s")

    def _failed(self, error: Exception) -> None:
        self.status.setText(f"failed: {error}")

    def _done(self) -> None:
        self.progress.setVisible(False)
        self.run_button.setEnabled(True)


def predict_layer(predictor: Any, data: np.ndarray, path: str | None, mode: Any,
                  uncertainty: bool) -> dict[str, Any]:
    """``{"labels", "uncertainty", "seconds"}`` of a layer: from its file when it has one
    (read exactly as ``predict`` reads it; the mask on the file's own grid, as the reader shows
    it), else from the array as given (raw values, normalised with the run's statistics)."""
    import torch

    from ..inference.engine import probabilities_to_labels
    from ..inference.postprocess import apply as apply_postprocess
    from ..inference.uncertainty import calibrated_uncertainty

    t0 = time.perf_counter()
    if path and Path(path).exists():
        labels, probs, _ = predictor.predict_file(path, mode)
        probs_t = torch.from_numpy(np.asarray(probs))
    else:
        probs_t = predictor.predict_tensor(predictor.prepare(data), mode)
        labels = apply_postprocess(probabilities_to_labels(probs_t, predictor.classes).numpy(),
                                   getattr(predictor, "postprocess", None))
    u = None
    if uncertainty:
        trust = getattr(predictor, "trust", None)
        u = calibrated_uncertainty(probs_t, float(trust["temperature"]) if trust else 1.0).numpy()
    return {"labels": np.asarray(labels), "uncertainty": u, "seconds": time.perf_counter() - t0}
