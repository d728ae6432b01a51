"""Inference: the sliding-window engine, accurate/fast modes, prediction, evaluation, export."""
