"""Inference: the sliding-window engine, accurate/fast modes, prediction, evaluation, export.

- :mod:`.engine`: ``predict_probabilities`` / ``predict_with`` (sliding window with Gaussian
  blending, slice-by-slice for 2D models on volumes, mirroring TTA), modes and levels.
- :mod:`.predictor`: ``Predictor`` and ``load(RUN)`` (also ``unetpp.load``).
- :mod:`.evaluate`: per-case Dice/IoU, which cases to score, JSON + CSV.
- :mod:`.prune`: every level and accurate mode scored and measured, the choice, prune.json/png.
- :mod:`.predict`: files, folders and globs to masks in the inputs' geometry.
- :mod:`.export`: ONNX / TorchScript, checked against PyTorch before writing.
- :mod:`.overlay`: PNG overlays.
"""
