"""sigmoid, softmax and log_softmax against PyTorch and SciPy: any shape, float32 and float64,
finite for inputs as large as ±1000 (where the textbook formulas overflow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special

import chainrule as cr
from chainrule.functional import log_softmax, sigmoid, softmax

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-6, np.float64: 1e-14}


def _arrays(dtype):
    """Arrays of 1-4 axes, values anywhere in [-1000, 1000]."""
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
                      elements=st.floats(-1000, 1000, allow_nan=False, width=32))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_match_torch_and_scipy_on_any_shape(dtype, data):
    x = data.draw(_arrays(dtype))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    t = torch.from_numpy(x)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow to 0 is fine
        pairs = [
            (sigmoid(x), torch.sigmoid(t).numpy(), special.expit(x)),
            (softmax(x, axis), torch.softmax(t, dim=axis).numpy(), special.softmax(x, axis=axis)),
            (log_softmax(x, axis), torch.log_softmax(t, dim=axis).numpy(), special.log_softmax(x, axis=axis)),
        ]
    for ours, theirs, scipys in pairs:
        assert ours.shape == x.shape and ours.dtype == dtype
        assert np.all(np.isfinite(ours))
        np.testing.assert_allclose(ours, theirs, rtol=TOL[dtype], atol=TOL[dtype])
        np.testing.assert_allclose(ours, scipys, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_extremes_are_exact_and_finite(dtype):
    x = np.array([[-1000.0, 0.0, 1000.0]], dtype)
    np.testing.assert_array_equal(sigmoid(x), [[0.0, 0.5, 1.0]])
    np.testing.assert_array_equal(softmax(x), [[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(log_softmax(x), [[-2000.0, -1000.0, 0.0]])
    # a probability that underflows to 0 still has a finite log
    assert np.isfinite(log_softmax(np.array([0.0, 800.0], dtype))).all()
    assert sigmoid(np.float32(3.0)).dtype == np.float32


def test_integers_are_numbers_and_complex_ones_are_refused():
    """Unsigned integers wrapped around in -|x| and x - max (sigmoid(255) came out 0.27), and a
    complex input lost its imaginary part without a word."""
    x = np.array([255, 0], np.uint8)
    np.testing.assert_allclose(sigmoid(x), [1.0, 0.5])
    np.testing.assert_allclose(softmax(x), [1.0, 0.0], atol=1e-100)
    np.testing.assert_allclose(log_softmax(x), [0.0, -255.0])
    np.testing.assert_allclose(sigmoid([2, -2]), sigmoid(np.array([2.0, -2.0])))
    for f in (sigmoid, softmax, log_softmax):
        with pytest.raises(TypeError, match="expected real numbers, got complex128"):
            f(np.array([1j]))


@pytest.mark.parametrize("shape,axis", [((3, 0), -1), ((0,), 0), ((2, 0, 4), 1), ((0, 3), 0)])
def test_softmax_of_an_empty_axis_is_empty_as_torchs(shape, axis):
    """A zero-length axis has no max to subtract: NumPy's "zero-size array to reduction operation
    maximum which has no identity", where torch gives an empty result (and sigmoid did)."""
    x = np.zeros(shape, np.float32)
    t = torch.from_numpy(x)
    with np.errstate(all="raise"):
        for ours, theirs in ((softmax(x, axis), torch.softmax(t, dim=axis)),
                             (log_softmax(x, axis), torch.log_softmax(t, dim=axis)), (sigmoid(x), torch.sigmoid(t))):
            assert ours.shape == tuple(theirs.shape) == shape and ours.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_keeps_its_relative_precision_far_into_the_tail(dtype):
    """σ(x) ≈ e^x for very negative x, down to the smallest floats: (1 + tanh(x/2)) / 2 or
    1 - σ(-x) would round σ(-30) to 0 and zero the gradients that flow through it."""
    x = np.array([-15.0, -30.0, -80.0, -700.0], dtype)[: 3 if dtype == np.float32 else 4]
    exact = np.exp(x.astype(np.float64)) / (1 + np.exp(x.astype(np.float64)))
    np.testing.assert_allclose(sigmoid(x), exact, rtol=TOL[dtype])
    np.testing.assert_allclose(sigmoid(-x), 1 - exact, rtol=TOL[dtype])


def test_public_api_and_layers_use_them():
    assert cr.sigmoid is sigmoid and cr.softmax is softmax and cr.log_softmax is log_softmax
    x = np.random.default_rng(0).normal(scale=30, size=(4, 5))
    np.testing.assert_array_equal(cr.Sigmoid().forward(x), sigmoid(x))
    np.testing.assert_array_equal(cr.Softmax().forward(x), softmax(x))
