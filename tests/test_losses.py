"""Every loss against PyTorch (value and dLoss/dOutput) and against central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule.gradcheck import relative_error

SETTINGS = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**31 - 1)

def _finite_difference(loss, out, target, eps=1e-6):
    numeric = np.zeros_like(out)
    flat, nflat = out.reshape(-1), numeric.reshape(-1)
    for j in range(flat.size):
        orig = flat[j]
        flat[j] = orig + eps
        plus, _ = loss(out, target)
        flat[j] = orig - eps
        minus, _ = loss(out, target)
        flat[j] = orig
        nflat[j] = (plus - minus) / (2 * eps)
    return numeric

def _check(loss, out, target, torch_loss, finite_differences=True):
    """Value and gradient against PyTorch; gradient against central differences where those are
    meaningful: with logits of ±30 a loss term is ~1e-13 and rounding noise in L(w ± ε)/2ε swamps
    the gradient, so the extreme cases are compared with PyTorch only."""
    value, grad = loss(out.copy(), target)
    t = torch.tensor(out, requires_grad=True)
    tv = torch_loss(t)
    tv.backward()
    assert value == pytest.approx(tv.item(), rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)
    if not finite_differences:
        return
    numeric = _finite_difference(loss, out.copy(), target)

    assert relative_error(grad, numeric) < 1e-6

@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), seeds)
def test_mse_matches_torch(n, k, seed):
    rng = np.random.default_rng(seed)
    out, target = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    _check(cr.MeanSquaredError(), out, target, lambda t: F.mse_loss(t, torch.tensor(target)))

@SETTINGS
@given(st.integers(1, 6), st.integers(2, 5), seeds)
def test_mse_one_hot_encodes_integer_labels(n, k, seed):
    rng = np.random.default_rng(seed)
    out, labels = rng.normal(size=(n, k)), rng.integers(0, k, n)
    onehot = F.one_hot(torch.tensor(labels), k).double()
    _check(cr.MeanSquaredError(), out, labels, lambda t: F.mse_loss(t, onehot))

def test_mse_reads_bool_labels_as_classes_0_and_1():
    # (NumPy reads a bool array as an index as a mask: True, False picked row 0 twice)
    out = np.array([[0.2, 0.9], [0.8, 0.1], [0.4, 0.3]])
    for labels in (np.array([True, False, True]), np.array([True, False, True])[:2]):
        expected = cr.MeanSquaredError()(out[: len(labels)], labels.astype(np.int64))
        value, grad = cr.MeanSquaredError()(out[: len(labels)], labels)
        assert value == expected[0] and np.array_equal(grad, expected[1])


@pytest.mark.parametrize("loss, output, target", [
    (cr.MeanSquaredError(), np.zeros((0, 3)), np.zeros((0, 3))),
    (cr.MeanSquaredError(), np.zeros((0, 3)), np.zeros(0, np.int64)),
    (cr.BinaryCrossEntropy(), np.zeros(0), np.zeros(0)),
    (cr.BinaryCrossEntropy(), np.zeros((0, 1)), np.zeros(0)),
    (cr.CrossEntropy(), np.zeros((0, 3)), np.zeros(0, np.int64)),
    (cr.CrossEntropy([1.0, 2.0, 3.0]), np.zeros((0, 3)), np.zeros(0, np.int64)),
])
def test_an_empty_batch_has_the_mean_of_nothing_as_loss(loss, output, target):
    value, grad = loss(output, target)  # NaN, as PyTorch's mean reductions give, and no element of gradient
    assert np.isnan(value) and grad.shape == output.shape and grad.dtype == output.dtype


@SETTINGS
@given(st.integers(1, 6), st.integers(2, 6), seeds, st.sampled_from([1.0, 30.0]), st.booleans())
def test_cross_entropy_matches_torch(n, k, seed, scale, weighted):
    rng = np.random.default_rng(seed)
    out, labels = rng.normal(scale=scale, size=(n, k)), rng.integers(0, k, n)
    w = rng.uniform(0.2, 3.0, k) if weighted else None
    tw = None if w is None else torch.tensor(w)
    _check(cr.CrossEntropy(class_weight=w), out, labels,
           lambda t: F.cross_entropy(t, torch.tensor(labels), weight=tw), finite_differences=scale == 1.0)

@SETTINGS
@given(st.integers(1, 6), seeds, st.sampled_from([1.0, 20.0]), st.sampled_from([1.0, 0.3, 4.0]), st.booleans())
def test_binary_cross_entropy_matches_torch(n, seed, scale, pos_weight, column):
    rng = np.random.default_rng(seed)
    out = rng.normal(scale=scale, size=(n, 1) if column else (n,))
    labels = rng.integers(0, 2, n)
    target = torch.tensor(labels, dtype=torch.float64).reshape(out.shape)
    pw = torch.tensor(pos_weight, dtype=torch.float64)  # a float32 0.3 would differ by 4e-8
    _check(cr.BinaryCrossEntropy(pos_weight=pos_weight), out, labels,
           lambda t: F.binary_cross_entropy_with_logits(t, target, pos_weight=pw),
           finite_differences=scale == 1.0)

def test_losses_stay_finite_on_extreme_logits():
    ce, grad = cr.CrossEntropy()(np.array([[1000.0, -1000.0], [-1000.0, 1000.0]]), np.array([1, 1]))
    assert ce == pytest.approx(1000.0) and np.all(np.isfinite(grad))
    bce, grad = cr.BinaryCrossEntropy()(np.array([[800.0], [-800.0]]), np.array([0, 1]))
    assert bce == pytest.approx(800.0) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[:, 0], [0.5, -0.5])

def test_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must be in"):
        cr.CrossEntropy()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="integer class labels"):
        cr.CrossEntropy()(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="2 examples but target has 3"):
        cr.CrossEntropy()(np.zeros((2, 3)), np.array([0, 1, 2]))
    for bad in (0, np.inf, "2", np.array([1.0, 2.0])):  # (inf: a NaN loss; the others: TypeErrors from inside)
        with pytest.raises(ValueError, match="pos_weight must be positive, got"):
            cr.BinaryCrossEntropy(pos_weight=bad)


@pytest.mark.parametrize("loss,output,target,match", [
    (cr.CrossEntropy(), np.zeros(3), np.array([0, 1, 1]), r"\(batch, classes\) scores for 2 or more classes"),
    (cr.CrossEntropy(), np.zeros((3, 1)), np.array([0, 1, 1]), "use BinaryCrossEntropy"),
    (cr.CrossEntropy(class_weight=[1, 2]), np.zeros((2, 3)), np.array([0, 2]), "2 weights for 3 classes"),
    (cr.BinaryCrossEntropy(), np.zeros((3, 2)), np.array([0, 1, 1]), r"target of shape \(3,\) does not match"),
    (cr.MeanSquaredError(), np.zeros((3, 2)), np.array([0.5, 1.0, 1.0]), r"target of shape \(3,\) does not match"),
])
def test_losses_name_a_shape_mismatch(loss, output, target, match):
    with pytest.raises(ValueError, match=match):
        loss(output, target)


def test_class_weights_are_checked_and_a_batch_of_weight_0_learns_nothing():
    # (strings and None: NumPy's "could not convert string to float", a TypeError, or '1' taken as 1)
    for weights in ([1, -1], [0, 0], [1, np.nan], [[1, 2]], ["a", "b"], ["1", "2"], [1, None], 2.0):
        with pytest.raises(ValueError, match="CrossEntropy: class_weight must be one finite weight >= 0 per class"):
            cr.CrossEntropy(class_weight=weights)
    value, grad = cr.CrossEntropy(class_weight=[0, 0, 1])(np.ones((2, 3)), np.array([0, 1]))
    assert value == 0.0 and not grad.any()

def test_losses_keep_float32():
    out = np.zeros((3, 4), np.float32)
    for loss, y in ((cr.CrossEntropy(), np.array([0, 1, 2])), (cr.MeanSquaredError(), np.array([0, 1, 2]))):
        _, grad = loss(out, y)
        assert grad.dtype == np.float32
    _, grad = cr.BinaryCrossEntropy()(np.zeros((3, 1), np.float32), np.array([0, 1, 1]))
    assert grad.dtype == np.float32


def test_a_loss_shows_its_settings():
    """CrossEntropy(class_weight=[1, 5, 1]) showed as CrossEntropy(), a weighted BCE as an unweighted one."""
    assert repr(cr.CrossEntropy(class_weight=[1, 5, 1])) == "CrossEntropy(class_weight=[1.0, 5.0, 1.0])"
    assert repr(cr.BinaryCrossEntropy(pos_weight=4.0)) == "BinaryCrossEntropy(pos_weight=4.0)"
    assert repr(cr.CrossEntropy()) == "CrossEntropy()" and repr(cr.MeanSquaredError()) == "MeanSquaredError()"
