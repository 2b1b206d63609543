"""Training on the image benchmarks (paper Sec. 6.2–6.3): one loop for every method.

- ``TrainConfig`` — every setting of a run; ``presets`` — the paper's Table 1 / Table 2;
- ``train(config, callbacks=()) -> TrainResult`` — run or resume it;
- ``Callback`` / ``CallbackContext`` — measurement hooks (alignment, spectra, …).

Command line: ``sdesam train ...`` or ``python -m sdesam.train ...`` (see
``sdesam.train``); multi-GPU: ``torchrun --nproc_per_node=N -m sdesam.train ...``.
"""
from .callbacks import Callback, CallbackContext
from .config import METHODS, RESUME_MUTABLE_FIELDS, TrainConfig
from .loop import TrainResult, cross_entropy, train
from .presets import PRESETS, official, table1, table1_quick, table2

__all__ = ["TrainConfig", "METHODS", "RESUME_MUTABLE_FIELDS", "train", "TrainResult",
           "cross_entropy", "Callback", "CallbackContext", "PRESETS", "table1", "table2",
           "table1_quick", "official"]
