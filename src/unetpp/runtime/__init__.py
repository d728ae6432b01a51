"""The one place that decides how the hardware is used: device, precision, memory format,
the inference copy of a model, threads and seeding.

Training (:mod:`unetpp.training.loop`), the inference engine, the Predictor, export and the
benchmarks all call this module; none decides these things on its own. Each policy comes
from what the machine reports (CPU flags, CUDA capabilities), or from a measurement on the
model and batch at hand, never from one machine's numbers:

- **Device**: ``auto`` is CUDA (this rank's GPU under torchrun), else MPS, else the CPU.
- **Mixed precision** (:func:`choose_precision`): on CUDA on by default (bf16 where the GPU
  supports it, else fp16 with a GradScaler, the same in training and validation);
  ``--no-amp`` turns it off. On the CPU off by default; ``--amp`` uses bf16 only on a CPU
  with native bf16 (AVX512-BF16 or AMX-BF16) *and* when a few timed training steps of the
  model and batch at hand are faster in bf16 than in fp32. Elsewhere it says why in one line
  and stays fp32: emulated bf16 was measured ~30x slower on an AVX2 CPU.
- **Memory format**: channels_last where it pays (CUDA; CPU inference in 2D), measured in
  ``benchmarks/run.py``.
- **Inference copy** (:func:`optimize_for_inference`): eval mode, BatchNorm folded, no
  autograd, the memory format above.

Training::

    from unetpp import runtime
    device = runtime.pick_device("auto")
    precision, note = runtime.choose_precision(device, amp=None)
    setup = runtime.training_setup(model, device, precision=precision)
    with setup.autocast():
        out = model(setup.prepare(image.to(device)))

Inference::

    fast = runtime.optimize_for_inference(model)         # a copy; the model is untouched
    with runtime.inference_context(device, precision.dtype):
        logits = fast(x)

Every helper keeps outputs equal to the plain computation within the tolerances stated in
``tests/test_perf_equivalence.py``; none changes parameter names, shapes or counts.
"""

from .hardware import (DeviceTarget, Precision, device_target, autocast_dtype, autocast_speedup, choose_precision, cpu_flags,
                       cpu_has_fast_bf16, pick_device)
from .layout import (TrainingSetup, channels_last_pays, compiled, fold_batchnorm, inference_context,
                     memory_format, optimize_for_inference, set_checkpointing, set_split_concat, training_setup)
from .threads import busy_cores, loader_workers, seed_everything, set_determinism, set_threads

__all__ = ["DeviceTarget", "Precision", "device_target", "TrainingSetup", "autocast_dtype", "autocast_speedup", "busy_cores", "channels_last_pays",
           "choose_precision", "compiled", "cpu_flags", "cpu_has_fast_bf16", "fold_batchnorm",
           "inference_context", "loader_workers", "memory_format", "optimize_for_inference", "pick_device",
           "seed_everything", "set_checkpointing", "set_determinism", "set_split_concat", "set_threads",
           "training_setup"]
