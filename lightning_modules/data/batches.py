"""Batches sliced from in-memory tensors: no per-sample collation, reproducible shuffles.

The whole of MNIST is 55 MB as uint8, so slicing pre-shuffled tensors per batch is far faster
than a DataLoader that collates sample by sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends on the pair (seed, epoch).

    Not on seed + epoch: trials with seeds s and s + 1 would then see the same shuffles, one
    epoch apart.
    """
    state = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TensorBatches:
    """Batches sliced from (optionally) pre-shuffled tensors: no per-sample collation.

    Epoch e is shuffled by a generator seeded from (seed, e) alone, so setting `epoch = e`
    on a fresh instance (a run restarted at epoch e) gives the same batches.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x, self.y
        if self.shuffle:
            # drawn on the CPU (the same shuffle on every device), then used where the rows are
            perm = torch.randperm(len(y), generator=_epoch_generator(self.seed, self.epoch)).to(x.device)
            x, y = x[perm], y[perm]
            self.epoch += 1
        for start in range(0, len(y), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]
