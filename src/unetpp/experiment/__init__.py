"""Experiments: the paper's comparison (:mod:`.compare`, its report :mod:`.report`, its
``--jobs`` runner :mod:`.jobs`) and the end-to-end demo (:mod:`.demo`).

    from unetpp.experiment import CompareConfig, compare
    results = compare(CompareConfig(data="nuclei-2d", out="runs/cmp", width=0.25, seeds=3, epochs=30))
"""

from .compare import CompareConfig, compare

__all__ = ["CompareConfig", "compare"]
