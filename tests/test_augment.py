"""Training-time augmentation of digit images (`chainrule.data.augment`): the random affine maps
against SciPy's `affine_transform`, and the identity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from chainrule.data.augment import random_affine


def test_random_affine_matches_scipy_affine_transform():
    """Same random draws, same maps: each image equals scipy's bilinear affine_transform of it."""
    rng = np.random.default_rng(5)
    x = rng.random((6, 1, 28, 28))
    out = random_affine(x, np.random.default_rng(9), max_rotation=20, max_scale=0.2, max_shift=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    draws = np.random.default_rng(9)
    angle = np.deg2rad(draws.uniform(-20, 20, 6))
    scale = draws.uniform(0.8, 1.2, 6)
    shift = draws.uniform(-3, 3, (6, 2))
    c = np.full(2, 13.5)
    for k in range(6):
        cos, sin = np.cos(angle[k]) / scale[k], np.sin(angle[k]) / scale[k]
        matrix = np.array([[cos, -sin], [sin, cos]])  # (row, column) coordinates
        offset = c - matrix @ (c + shift[k])
        want = ndimage.affine_transform(x[k, 0], matrix, offset, order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[k, 0], want, atol=1e-9)


def test_random_affine_identity_and_flat_batches():
    x = np.random.default_rng(0).random((3, 784), np.float32)
    out = random_affine(x, np.random.default_rng(0), max_rotation=0, max_scale=0, max_shift=0)
    assert out.shape == (3, 784) and out.dtype == np.float32
    np.testing.assert_array_equal(out, x)
    with pytest.raises(ValueError, match="28x28"):
        random_affine(np.zeros((2, 100)), np.random.default_rng(0))
