"""Shared fixtures and helpers. Tests that need real data skip only when $CHAINRULE_DATA is unset (CI sets it).

Helpers used by several test modules are plain functions here, imported as `from conftest import ...`
(pytest puts this directory on sys.path).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$CHAINRULE_DATA, the folder holding mnist/, spamassassin/ and sms-spam/."""
    root = os.environ.get("CHAINRULE_DATA")
    if not root:
        pytest.skip("CHAINRULE_DATA is not set")
    return Path(root)


@pytest.fixture(scope="session")
def mnist_dir(data_root: Path) -> Path:
    """$CHAINRULE_DATA/mnist, the four gzipped IDX files."""
    return data_root / "mnist"


def blobs(n: int = 200, d: int = 10, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per class: an easy problem for the training loop's bookkeeping tests."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(scale=2.0, size=(classes, d))
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def small_mlp(seed: int = 0, d: int = 10, classes: int = 3, dropout: float = 0.0, dtype=np.float32) -> cr.Sequential:
    """d-16-classes with a ReLU (and optional dropout): the network `blobs` is learned with."""
    layers = [cr.Linear(d, 16), cr.ReLU()]
    if dropout:
        layers.append(cr.Dropout(dropout))
    return cr.Sequential(layers + [cr.Linear(16, classes)], seed=seed, dtype=dtype)


class WeightRecorder(cr.Callback):
    """Keeps a copy of the weights after every epoch."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, epoch, logs, model):
        self.states.append(model.flat_params.copy())
