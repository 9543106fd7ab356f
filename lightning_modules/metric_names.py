"""The metric names a model logs and each history row carries: the one place they are spelled.

Torch-free, so the progress lines and the trial record can read them without importing a model.
"""

from __future__ import annotations

MONITOR = "val/acc"  # the one value the search optimises, prunes on and stops at
VAL_LOSS = "val/loss"
TRAIN_ACC = "train/acc"
TRAIN_LOSS = "train/loss"
TEST_ACC = "test/acc"
TEST_LOSS = "test/loss"
EPOCH = "epoch"
STEP = "step"
HISTORY_KEYS = (EPOCH, STEP, TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, MONITOR)
# Every logged metric is rounded to this many decimals where it is computed: torchmetrics works
# in float32, whose 0.9519 reads 0.9519000053405762 once widened to a Python float, and the
# trial's value, intermediate values and history must show (and compare as) the same number.
# Six decimals separate every accuracy of up to 10^6 rows, and are what reproduce compares (to half the last).
METRIC_DECIMALS = 6
