"""The network as plain torch, built from plain numbers: no Lightning, no Optuna, no settings.

The linear (softmax) model is the network with no hidden layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import nn


def build_network(n_inputs: int, hidden_units: Sequence[int], n_classes: int, dropout: float) -> nn.Sequential:
    """n_inputs -> hidden... -> n_classes logits; ReLU, then dropout if > 0, after each hidden layer."""
    layers: list[nn.Module] = []
    width = n_inputs
    for units in hidden_units:
        layers += [nn.Linear(width, units), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def multiply_adds(n_inputs: int, hidden_units: Sequence[int], n_classes: int) -> int:
    """Multiply-adds of one image's forward pass: what an epoch of an MLP costs, up to a factor
    (backward is about twice the forward; per-batch overheads come on top)."""
    widths = [n_inputs, *hidden_units, n_classes]
    return sum(a * b for a, b in pairwise(widths))
