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
