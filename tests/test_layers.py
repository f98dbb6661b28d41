"""Every layer against central finite differences (float64) and against PyTorch autograd.

For each layer we draw random shapes and values (hypothesis picks the shapes and a seed), run
forward and backward with a random upstream gradient g, and compare the output, dL/dx and every
parameter gradient with the same layer in PyTorch holding the same weights; dL/d· of L = Σ out·g.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule as cr

SETTINGS = settings(max_examples=12, deadline=None)
TOL = 1e-6  # relative error, float64


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def _run(layer, x, g, training=False):
    out = layer.forward(x, training=training)
    grad_in = layer.backward(g.copy())
    return out, grad_in


def _fd_check(layer, x, training=False):
    """cr.gradcheck on a one-layer float64 network of a copy of `layer`, its weights as they are:
    every parameter and the input."""
    net = cr.Sequential([copy.deepcopy(layer)], input_shape=x.shape[1:], seed=0, dtype=np.float64,
                        initialize=False)
    out = net.forward(x)
    # A target 1 to 2 below the output, so that no dL/d(out) is near 0 (where a relative error means
    # nothing). A random target could match: drawn from the generator that drew x, it once equalled x.
    target = out - 1 - np.random.default_rng(1).random(out.shape)
    errors = cr.gradcheck(net, x, target, loss=cr.MeanSquaredError(), training=training)
    assert errors, "gradcheck checked nothing"
    for name, err in errors.items():
        assert err < TOL, f"{name}: relative error {err:.2e}"
    return errors


shapes = st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**31 - 1))


@SETTINGS
@given(shapes, st.booleans(), st.sampled_from(["he", "glorot"]))
def test_linear_matches_torch_and_finite_differences(shape, bias, init):
    n, fin, fout, seed = shape
    rng = np.random.default_rng(seed)
    layer = cr.Linear(fin, fout, bias=bias, init=init)
    net = cr.Sequential([layer], seed=seed, dtype=np.float64)
    if bias:
        layer.bias.data[...] = rng.normal(size=fout)  # zero-initialised; make it count
    x, g = rng.normal(size=(n, fin)), rng.normal(size=(n, fout))
    out, grad_in = _run(layer, x, g)

    t = torch.nn.Linear(fin, fout, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(layer.weight.data.T))
        if bias:
            t.bias.copy_(torch.tensor(layer.bias.data))
    tx = _tensor(x)
    tout = t(tx)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_in, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, t.weight.grad.numpy().T, rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, t.bias.grad.numpy(), rtol=1e-12, atol=1e-12)
    _fd_check(net.layers[0], x)


ACTIVATIONS = [
    (cr.ReLU, lambda: cr.ReLU(), torch.relu),
    (cr.LeakyReLU, lambda: cr.LeakyReLU(0.1), lambda t: torch.nn.functional.leaky_relu(t, 0.1)),
    (cr.Sigmoid, lambda: cr.Sigmoid(), torch.sigmoid),
    (cr.Tanh, lambda: cr.Tanh(), torch.tanh),
    (cr.Softmax, lambda: cr.Softmax(), lambda t: torch.softmax(t, dim=-1)),
    (cr.Flatten, lambda: cr.Flatten(), lambda t: torch.flatten(t, 1)),
]


@pytest.mark.parametrize("cls,make,torch_fn", ACTIVATIONS, ids=[a[0].__name__ for a in ACTIVATIONS])
@SETTINGS
@given(st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 5)), st.integers(0, 2**31 - 1),
       st.sampled_from([1.0, 5.0]))
def test_activation_matches_torch_and_finite_differences(cls, make, torch_fn, shape, seed, scale):
    rng = np.random.default_rng(seed)
    # Flatten takes (batch, d1, d2); the element-wise layers take (batch, features)
    x = rng.normal(scale=scale, size=shape if cls is cr.Flatten else shape[:2])
    layer = make()
    out = layer.forward(x, training=True)
    g = rng.normal(size=out.shape)
    grad_in = layer.backward(g.copy())
    tx = _tensor(x)
    tout = torch_fn(tx)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_in, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    # Finite differences at unit scale: at scale 5 a tanh or sigmoid can saturate on every entry
    # (x = 10.2: slope 7e-9), where a nudge of 1e-6 moves the output by less than its float64
    # resolution allows measuring to 1e-6. The exact comparison with PyTorch above covers that range.
    _fd_check(make(), x / scale)


def test_flatten_hands_the_gradient_back_in_its_inputs_memory_order():
    """After a Conv2D the batch axis is innermost in memory; the gradient Flatten returns must have
    that layout too (element-wise backward passes below it then see one layout) and the same values
    as a plain reshape. A C-contiguous input gets the reshape itself, no copy."""
    rng = np.random.default_rng(0)
    batch_last = rng.normal(size=(3, 4, 4, 5)).astype(np.float32).transpose(3, 0, 1, 2)  # (N=5, C, H, W)
    for x in (batch_last, np.ascontiguousarray(batch_last)):
        flatten = cr.Flatten()
        out = flatten.forward(x, training=True)
        g = rng.normal(size=out.shape).astype(np.float32)
        grad_in = flatten.backward(g)
        np.testing.assert_array_equal(grad_in, g.reshape(x.shape))
        assert grad_in.strides == x.strides
    assert np.shares_memory(grad_in, g)  # the C-contiguous case: a view


def test_sigmoid_and_softmax_do_not_overflow():
    x = np.array([[-1000.0, 0.0, 1000.0]])
    s = cr.Sigmoid().forward(x)
    np.testing.assert_allclose(s, [[0.0, 0.5, 1.0]])
    p = cr.Softmax().forward(x)
    assert np.all(np.isfinite(p)) and p[0, 2] == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_fast_path_equals_np_maximum_in_every_layout(dtype, parts):
    """The zero-row trick must give exactly np.maximum(x, 0): C-contiguous batches, transposed
    (batch-last, as after a Conv2D), strided and 1-D inputs, with signed zeros, infinities and NaN,
    whole and cut into ranges of the outermost axis in memory (as inside `fit`); backward too."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 4, 5)).astype(dtype)
    x.flat[:5] = [-0.0, 0.0, np.inf, -np.inf, np.nan]
    batch_last = x.transpose(3, 0, 1, 2).copy().transpose(1, 2, 3, 0)
    for case in (x, batch_last, x[:, ::2], x.reshape(6, -1), x.reshape(-1), x[:0]):
        relu = cr.ReLU()
        out = relu.forward(case)
        want = np.maximum(case, 0)
        assert out.dtype == want.dtype and out.shape == want.shape
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(np.signbit(out), np.signbit(want))
        assert relu.output is out  # kept for backward, and for observers such as GradientFlow
        g = rng.normal(size=case.shape).astype(dtype)
        np.testing.assert_array_equal(relu.backward(g), g * (want > 0))


@SETTINGS
@given(st.integers(1, 8), st.integers(1, 9), st.sampled_from([0.0, 0.1, 0.5, 0.9]), st.integers(0, 2**31 - 1))
def test_dropout_is_inverted_and_its_gradient_uses_the_same_mask(n, d, p, seed):
    rng = np.random.default_rng(seed)
    layer = cr.Dropout(p)
    layer.initialize(np.random.default_rng(seed))
    x, g = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    np.testing.assert_array_equal(layer.forward(x, training=False), x)  # off in evaluation
    out = layer.forward(x, training=True)
    kept = out != 0
    # survivors are scaled by 1/(1-p), dropped values are 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p))
    grad_in = layer.backward(g)
    np.testing.assert_allclose(grad_in, np.where(kept, g / (1 - p), 0.0))
    # PyTorch: the same masked product, differentiated by autograd
    tx = _tensor(x)
    mask = np.ones_like(x) if layer._mask is None else layer._mask  # p = 0: no mask at all
    tout = tx * torch.tensor(mask)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(grad_in, tx.grad.numpy())
    _fd_check(cr.Dropout(p), x, training=True)


def test_dropout_keeps_the_expected_fraction_and_mean():
    layer = cr.Dropout(0.3)
    layer.initialize(np.random.default_rng(0))
    x = np.ones((200, 500))
    out = layer.forward(x, training=True)
    assert abs((out != 0).mean() - 0.7) < 0.01
    assert abs(out.mean() - 1.0) < 0.02


def test_dropout_same_seed_same_mask_different_seed_different_mask():
    masks = []
    for seed in (3, 3, 4):
        layer = cr.Dropout(0.5)
        layer.initialize(np.random.default_rng(seed))
        masks.append(layer.forward(np.ones((10, 10)), training=True))
    np.testing.assert_array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], masks[2])


def test_linear_initialisation_has_the_right_scale():
    he = cr.Linear(400, 300)
    he.initialize(np.random.default_rng(0))
    assert he.weight.data.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    glorot = cr.Linear(400, 300, init="glorot")
    glorot.initialize(np.random.default_rng(0))
    assert glorot.weight.data.std() == pytest.approx(np.sqrt(2 / 700), rel=0.02)
    assert np.all(he.bias.data == 0)


def test_linear_accepts_sparse_input():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(4, 6)) * (rng.random((4, 6)) < 0.4)
    layer = cr.Linear(6, 3)
    cr.Sequential([layer], seed=0, dtype=np.float64)
    g = rng.normal(size=(4, 3))
    out_dense, _ = _run(layer, dense, g)
    grad_dense = layer.weight.grad.copy()
    out_sparse = layer.forward(scipy_sparse.csr_matrix(dense))
    assert layer.backward(g.copy()) is None
    np.testing.assert_allclose(out_sparse, out_dense)
    np.testing.assert_allclose(layer.weight.grad, grad_dense)


@pytest.mark.parametrize("make,match", [
    (lambda: cr.Linear(0, 3), "in_features must be a positive integer, got 0"),
    (lambda: cr.Linear(2, 3, init="xavier"), "init must be"),
    (lambda: cr.Dropout(1.0), r"Dropout: p must be a number in \[0, 1\), got 1.0"),
    (lambda: cr.Dropout(None), r"Dropout: p must be a number in \[0, 1\), got None"),
    (lambda: cr.Dropout(float("nan")), "got nan"),
    (lambda: cr.LeakyReLU(-0.1), "negative_slope"),
    (lambda: cr.LeakyReLU("a"), "LeakyReLU: negative_slope must be a number in .*, got 'a'"),
    (lambda: cr.BatchNorm(4, momentum="0.1"), "BatchNorm: momentum must be a number in .*, got '0.1'"),
    (lambda: cr.BatchNorm(4, eps=0), "BatchNorm: eps must be a finite number > 0, got 0"),
])
def test_bad_layer_arguments_quote_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_linear_rejects_wrong_feature_count():
    with pytest.raises(ValueError, match="expected inputs with 3 features"):
        cr.Linear(3, 2).forward(np.zeros((2, 4)))


def test_backward_before_forward_names_the_layer():
    """It failed deep inside NumPy ("'NoneType' object has no attribute 'T'"), and Dropout handed
    the gradient back as if nothing had been dropped."""
    rows, images = np.ones((5, 3), np.float32), np.ones((5, 1, 4, 4), np.float32)
    for layer, grad in ((cr.Linear(4, 3), rows), (cr.ReLU(), rows), (cr.LeakyReLU(), rows), (cr.Sigmoid(), rows),
                        (cr.Tanh(), rows), (cr.Softmax(), rows), (cr.Dropout(0.5), rows), (cr.Flatten(), rows),
                        (cr.BatchNorm(3), rows), (cr.Conv2D(1, 1, 1), images), (cr.MaxPool2D(2), images),
                        (cr.MaxPool2D(2, stride=1), images), (cr.AvgPool2D(2), images)):
        with pytest.raises(RuntimeError, match=f"^{type(layer).__name__}: backward called before forward$"):
            layer.backward(grad)
    dropout = cr.Dropout(0.5)  # (after a forward in evaluation mode, nothing was dropped: the gradient passes)
    dropout.forward(rows)
    np.testing.assert_array_equal(dropout.backward(rows), rows)
