"""Training: losses, the training loop, checkpoints and exact resume, DDP.

    from unetpp.training import TrainConfig, train
    run = train(TrainConfig(data="nuclei-2d", out="runs/a", epochs=50))   # -> Path of RUN
    run = train(data="nuclei-2d", out="runs/a", resume=True)                # go on where it stopped

See :mod:`.loop` for the loop (and how resume is exact), :mod:`.config` for every setting
and how a run's configuration is settled once, :mod:`.validate` for the validation score.
"""

from .config import TrainConfig, read_config_file, resolve_config
from .loop import train
from .stops import TrainingError, TrainingInterrupted

__all__ = ["TrainConfig", "TrainingError", "TrainingInterrupted", "read_config_file", "resolve_config", "train"]
