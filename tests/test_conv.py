"""Conv2D, MaxPool2D, AvgPool2D and BatchNorm: outputs and gradients against PyTorch autograd and
against central finite differences, over random shapes, strides and paddings (float64)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule import conv as conv_module
from chainrule.conv import _times, _times_transposed
from chainrule.data.mnist import load_mnist
from chainrule.model_file import LAYER_TYPES

FEW = settings(max_examples=25, deadline=None)
GRADCHECK_TOL = 1e-6  # float64 central differences agree with a correct backward pass to ~1e-8


def float64(layer):
    """Move a loose layer's parameters and buffers to float64 (as Sequential.to does)."""
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
        p.grad = np.zeros_like(p.data)
    for name, buf in layer.buffers.items():
        layer.buffers[name] = buf.astype(np.float64)
    return layer


def tensor(a, grad=False):
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, requires_grad=grad)


def close(ours, theirs, tol=1e-10):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol)


@st.composite
def conv_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)), o=draw(st.integers(1, 4)), h=h, w=w,
                kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)), h=draw(st.integers(kh, 9)),
                w=draw(st.integers(kw, 9)), kernel=(kh, kw), stride=stride, seed=draw(st.integers(0, 2**16)))


# -- Conv2D --------------------------------------------------------------------------------------


@FEW
@given(conv_case())
def test_conv2d_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    conv = float64(cr.Conv2D(case["c"], case["o"], case["kernel"], case["stride"], case["padding"], case["bias"]))
    conv.initialize(rng)
    if conv.bias is not None:
        conv.bias.data[...] = rng.normal(size=case["o"])
    x = rng.normal(size=(case["n"], case["c"], case["h"], case["w"]))
    y = conv.forward(x, training=True)
    g = rng.normal(size=y.shape)
    dx = conv.backward(g)

    xt, wt = tensor(x, True), tensor(conv.weight.data, True)
    bt = tensor(conv.bias.data, True) if conv.bias is not None else None
    yt = F.conv2d(xt, wt, bt, stride=case["stride"], padding=case["padding"])
    yt.backward(tensor(g))
    close(y, yt)
    close(dx, xt.grad)
    close(conv.weight.grad, wt.grad)
    if bt is not None:
        close(conv.bias.grad, bt.grad)


@pytest.mark.parametrize("c,kernel,stride,padding", [(3, 3, 1, 1), (5, (2, 3), (2, 1), (0, 2)), (1, 5, 1, 2)])
def test_conv2d_copies_in_parts_match_torch(c, kernel, stride, padding, parts):
    """im2col's copies (of channels, then of kernel offsets) and col2im's sums (of channels) cut
    into ranges, one per core, as in `fit`; the input arrives batch-last, as from a Conv2D."""
    rng = np.random.default_rng(c)
    conv = float64(cr.Conv2D(c, 4, kernel, stride, padding))
    conv.initialize(rng)
    conv.bias.data[...] = rng.normal(size=4)
    x = rng.normal(size=(c, 11, 9, 6)).transpose(3, 0, 1, 2)
    y = conv.forward(x, training=True)
    g = rng.normal(size=y.shape)
    dx = conv.backward(g)
    xt, wt, bt = tensor(x, True), tensor(conv.weight.data, True), tensor(conv.bias.data, True)
    yt = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    yt.backward(tensor(g))
    close(y, yt)
    close(dx, xt.grad)
    close(conv.weight.grad, wt.grad)
    close(conv.bias.grad, bt.grad)


@pytest.fixture(params=[True, False], ids=["direct-kernel", "general-kernel"])
def direct_kernel(request, monkeypatch):
    """Both ways of taking the products with few rows, on any machine: in pieces, as on OpenBLAS's
    SkylakeX-family kernels, and whole, as everywhere else."""
    monkeypatch.setattr(conv_module, "_direct_kernel", lambda: request.param)
    return request.param


@pytest.mark.parametrize("o,c,bias", [(6, 1, True), (32, 1, False), (4, 3, True)])
def test_conv2d_products_in_pieces_match_torch(o, c, bias, direct_kernel):
    """A first layer on a batch of 24 digits: W_mat · X_col and dY_mat · X_colᵀ have few rows and
    18,816 columns, which the layer takes in pieces (`_times`, `_times_transposed`) where OpenBLAS
    has its direct kernel; the output and the gradient are still torch's."""
    rng = np.random.default_rng(o)
    conv = float64(cr.Conv2D(c, o, 5, padding=2, bias=bias))
    conv.initialize(rng)
    x = rng.normal(size=(24, c, 28, 28))
    y = conv.forward(x, training=True)
    g = rng.normal(size=y.shape)
    conv.needs_input_grad = False
    assert conv.backward(g) is None
    xt, wt = tensor(x), tensor(conv.weight.data, True)
    bt = tensor(np.zeros(o), True) if bias else None
    yt = F.conv2d(xt, wt, bt, padding=2)
    yt.backward(tensor(g))
    close(y, yt, tol=1e-9)
    close(conv.weight.grad, wt.grad, tol=1e-9)
    if bias:
        close(conv.bias.grad, bt.grad, tol=1e-9)


def test_products_in_pieces_equal_the_one_product(direct_kernel):
    rng = np.random.default_rng(0)
    for m, n, k in [(6, 26, 100_000), (32, 25, 20_000), (16, 151, 12_800), (6, 26, 500)]:
        a, b = rng.normal(size=(m, k)), rng.normal(size=(n, k))
        np.testing.assert_allclose(_times_transposed(a, b), a @ b.T, rtol=1e-12, atol=1e-9)
        w = rng.normal(size=(m, n))  # filters times X_col: (m, n) · (n, k)
        np.testing.assert_allclose(_times(w, b), w @ b, rtol=1e-12, atol=1e-9)


def test_conv2d_same_weights_as_torch_module():
    """nn.Conv2d holds weights in the same (out, in, kh, kw) layout, so they copy across as is."""
    rng = np.random.default_rng(0)
    conv = float64(cr.Conv2D(3, 5, 3, stride=2, padding=1))
    module = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(conv.weight.data))
        module.bias.copy_(torch.from_numpy(rng.normal(size=5)))
    conv.bias.data[...] = module.bias.detach().numpy()
    x = rng.normal(size=(2, 3, 11, 10))
    close(conv.forward(x), module(tensor(x)))


@settings(max_examples=10, deadline=None)
@given(conv_case())
def test_conv2d_gradcheck(case):
    rng = np.random.default_rng(case["seed"])
    conv = cr.Conv2D(case["c"], case["o"], case["kernel"], case["stride"], case["padding"], case["bias"])
    model = cr.Sequential([conv, cr.Tanh(), cr.Flatten()], input_shape=(case["c"], case["h"], case["w"]),
                          seed=case["seed"])
    x = rng.normal(size=(case["n"], case["c"], case["h"], case["w"]))
    y = rng.normal(size=(case["n"],) + model.output_shape)
    errors = cr.gradcheck(model, x, y, loss=cr.MeanSquaredError())
    assert max(errors.values()) < GRADCHECK_TOL, errors


def test_conv2d_output_is_nchw_and_float32():
    model = cr.Sequential([cr.Conv2D(1, 4, 5, padding=2), cr.ReLU(), cr.Conv2D(4, 3, 3, stride=2)],
                          input_shape=(1, 28, 28), seed=0)
    out = model.forward(np.random.default_rng(0).random((7, 1, 28, 28), np.float32))
    assert out.shape == (7, 3, 13, 13) == (7,) + model.output_shape
    assert out.dtype == np.float32


def test_conv2d_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="kernel_size must be an integer >= 1"):
        cr.Conv2D(1, 4, 0)
    with pytest.raises(ValueError, match="out_channels must be a positive integer, got -2"):
        cr.Conv2D(1, -2, 3)
    with pytest.raises(ValueError, match="padding must be an integer >= 0"):
        cr.Conv2D(1, 2, 3, padding=-1)
    conv = cr.Conv2D(3, 4, 3)
    with pytest.raises(ValueError, match="expected 3 input channels, got shape"):
        conv.forward(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="4-D batch"):
        conv.forward(np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        conv.forward(np.zeros((2, 3, 2, 8), np.float32))
    with pytest.raises(ValueError, match=r"expects examples of shape \(3, H, W\)"):
        cr.Sequential([conv], input_shape=(1, 28, 28))


# -- pooling ---------------------------------------------------------------------------------------


@FEW
@given(pool_case(), st.booleans())
def test_max_pool_matches_torch(case, ties):
    rng = np.random.default_rng(case["seed"])
    shape = (case["n"], case["c"], case["h"], case["w"])
    # small integers make ties common: the gradient must go to the first maximum, as in PyTorch
    x = rng.integers(0, 3, shape).astype(np.float64) if ties else rng.normal(size=shape)
    pool = cr.MaxPool2D(case["kernel"], case["stride"])
    y = pool.forward(x, training=True)
    g = rng.normal(size=y.shape)
    xt = tensor(x, True)
    stride = case["stride"] or case["kernel"]
    yt = F.max_pool2d(xt, case["kernel"], stride)
    yt.backward(tensor(g))
    close(y, yt)
    close(pool.backward(g), xt.grad)


@pytest.mark.parametrize("shape, kernel", [((2, 3, 1, 300), (1, 300)), ((2, 1, 257, 3), (257, 1)),
                                           ((1, 2, 5, 600), (2, 257))])
def test_max_pool_windows_wider_than_256_match_torch(shape, kernel):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, shape).astype(np.float64)  # ties too
    pool = cr.MaxPool2D(kernel)
    y = pool.forward(x, training=True)
    g = rng.normal(size=y.shape)
    xt = tensor(x, True)
    yt = F.max_pool2d(xt, kernel)
    yt.backward(tensor(g))
    close(y, yt)
    close(pool.backward(g), xt.grad)


def test_an_empty_batch_goes_through_a_convolutional_network():
    model = cr.Sequential([cr.Conv2D(1, 2, 3), cr.ReLU(), cr.MaxPool2D(2), cr.Flatten(), cr.Linear(2 * 13 * 13, 3)],
                          input_shape=(1, 28, 28), seed=0)
    assert model.forward(np.zeros((0, 1, 28, 28), np.float32)).shape == (0, 3)


@FEW
@given(pool_case())
def test_avg_pool_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.normal(size=(case["n"], case["c"], case["h"], case["w"]))
    pool = cr.AvgPool2D(case["kernel"], case["stride"])
    y = pool.forward(x, training=True)
    g = rng.normal(size=y.shape)
    xt = tensor(x, True)
    yt = F.avg_pool2d(xt, case["kernel"], case["stride"] or case["kernel"])
    yt.backward(tensor(g))
    close(y, yt)
    close(pool.backward(g), xt.grad)


@settings(max_examples=10, deadline=None)
@given(pool_case(), st.sampled_from(["max", "avg"]))
def test_pool_gradcheck(case, kind):
    rng = np.random.default_rng(case["seed"])
    layer = (cr.MaxPool2D if kind == "max" else cr.AvgPool2D)(case["kernel"], case["stride"])
    model = cr.Sequential([layer, cr.Flatten()], input_shape=(case["c"], case["h"], case["w"]))
    x = rng.normal(size=(case["n"], case["c"], case["h"], case["w"]))
    y = rng.normal(size=(case["n"],) + model.output_shape)
    errors = cr.gradcheck(model, x, y, loss=cr.MeanSquaredError())
    assert errors["input"] < GRADCHECK_TOL, errors


def test_pool_output_shapes_and_errors():
    assert cr.MaxPool2D(2).output_shape((6, 28, 28)) == (6, 14, 14)
    assert cr.AvgPool2D(3, stride=2).output_shape((2, 7, 8)) == (2, 3, 3)
    assert cr.MaxPool2D(2).output_shape((16, 5, 5)) == (16, 2, 2)  # the last row and column drop out
    with pytest.raises(ValueError, match="does not fit"):
        cr.MaxPool2D(3).output_shape((1, 2, 8))
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        cr.AvgPool2D(2, stride=0)


@pytest.mark.parametrize("order", ["CHWN", "HWCN", "WNCH"])
@pytest.mark.parametrize("kernel,ties", [(2, False), (2, True), (3, True)])
def test_max_pool_of_any_memory_order_in_parts_matches_torch(order, kernel, ties, parts):
    """A batch whose memory is ordered other than (N, C, H, W): a Conv2D's output is (C, H, W, N),
    and a data set stored image-last, such as SVHN's (H, W, C, N), keeps its order in the slices
    fit validates on. Cut into ranges, one per core, in `fit`, only along images or channels (the
    pooled arrays are shorter along rows and columns); rows and columns left over with the 3×3
    windows."""
    rng = np.random.default_rng(kernel)
    sizes = dict(N=6, C=7, H=13, W=12)
    memory = tuple(sizes[a] for a in order)
    x = rng.integers(0, 3, memory).astype(np.float64) if ties else rng.normal(size=memory)
    x = x.transpose([order.index(a) for a in "NCHW"])  # the (N, C, H, W) view
    pool = cr.MaxPool2D(kernel)
    y = pool.forward(x, training=True)
    g = np.empty_like(y)  # the next layer's gradient, in the output's memory order
    g[...] = rng.normal(size=y.shape)
    xt = tensor(x, True)
    yt = F.max_pool2d(xt, kernel)
    yt.backward(tensor(g))
    close(y, yt)
    close(pool.backward(g), xt.grad)
    close(pool.backward(np.ascontiguousarray(g)), xt.grad)  # and after a Flatten, in NCHW order


# -- BatchNorm -------------------------------------------------------------------------------------


def _batch_norm_matches_torch(rng, shape, modes, momentum=0.1):
    """A float64 BatchNorm beside F.batch_norm through `modes` (True: a training step, False: an
    evaluation), comparing outputs, gradients and running statistics after each."""
    c = shape[1]
    bn = float64(cr.BatchNorm(c, momentum=momentum))
    bn.weight.data[...] = rng.normal(size=c)
    bn.bias.data[...] = rng.normal(size=c)
    wt, bt = tensor(bn.weight.data, True), tensor(bn.bias.data, True)
    running_mean, running_var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    for training in modes:
        x = rng.normal(2.0, 3.0, size=shape) if training else rng.normal(size=shape)
        g = rng.normal(size=shape)
        y = bn.forward(x, training=training)
        dx = bn.backward(g)
        xt = tensor(x, True)
        wt.grad = bt.grad = None
        yt = F.batch_norm(xt, running_mean, running_var, wt, bt, training=training, momentum=momentum, eps=bn.eps)
        yt.backward(tensor(g))
        close(y, yt)
        close(dx, xt.grad, 1e-9 if training else 1e-10)
        close(bn.weight.grad, wt.grad)
        close(bn.bias.grad, bt.grad)
        close(bn.buffers["running_mean"], running_mean)
        close(bn.buffers["running_var"], running_var)  # unbiased variance, as PyTorch keeps


@pytest.mark.parametrize("images", [False, True])
def test_batch_norm_in_parts_matches_torch(images, parts):
    """Training and evaluation over 7 features, cut into ranges of features (one per core, in `fit`)."""
    _batch_norm_matches_torch(np.random.default_rng(5), (9, 7, 5, 6) if images else (9, 7), (True, True, False))


@FEW
@given(st.integers(0, 2**16), st.booleans(), st.integers(1, 4), st.integers(2, 5),
       st.sampled_from([0.1, 0.3, 1.0]))
def test_batch_norm_matches_torch_in_training_and_evaluation(seed, images, c, n, momentum):
    # two training steps, so the running statistics are compared after updates, then evaluation
    _batch_norm_matches_torch(np.random.default_rng(seed), (n, c, 3, 4) if images else (n, c), (True, True, False),
                              momentum)


@pytest.mark.parametrize("images", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(images, training):
    rng = np.random.default_rng(3)
    shape = (3, 2, 4) if images else (3,)
    model = cr.Sequential([cr.BatchNorm(3), cr.Tanh(), cr.Flatten()], input_shape=shape, seed=0)
    model.layers[0].weight.data[...] = rng.normal(size=3)
    model.layers[0].bias.data[...] = rng.normal(size=3)
    model.forward(rng.normal(1.0, 2.0, size=(6,) + shape), training=True)  # non-trivial running stats
    x = rng.normal(size=(5,) + shape)
    y = rng.normal(size=(5, int(np.prod(shape))))
    errors = cr.gradcheck(model, x, y, loss=cr.MeanSquaredError(), training=training)
    assert max(errors.values()) < GRADCHECK_TOL, errors


def test_batch_norm_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="expected 4 features"):
        cr.BatchNorm(4).forward(np.zeros((2, 3)), training=True)
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\)"):
        cr.BatchNorm(4).forward(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\], got 1.5"):
        cr.BatchNorm(4, momentum=1.5)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        cr.BatchNorm(4, eps=float("inf"))


def test_batch_norm_refuses_to_train_on_one_value_per_feature():
    """Its variance would be 0, every output β, and the running variance pulled towards 0; one
    image still has H·W values per channel."""
    bn = cr.BatchNorm(4)
    with pytest.raises(ValueError, match="more than one value per feature, got a batch of shape \\(1, 4\\)"):
        bn.forward(np.ones((1, 4)), training=True)
    np.testing.assert_array_equal(bn.buffers["running_var"], 1.0)
    assert bn.forward(np.arange(8.0).reshape(1, 2, 2, 2).repeat(2, axis=1), training=True).shape == (1, 4, 2, 2)
    assert bn.forward(np.ones((1, 4))).shape == (1, 4)  # evaluation: the running statistics


def test_batch_norm_of_a_large_batch_of_rows_sums_as_accurately_as_of_images():
    """Per-feature sums down the batch axis of an (N, C) array were added one row after another
    (NumPy sums pairwise only along the axis contiguous in memory): raw features near 10⁴ in a batch
    of 65,536 came out with means of ~0.95 and spreads of ~0.33, errors of up to 4 against the exact
    result, and the running mean with them. PyTorch's float32 BatchNorm1d errs by 0.04 there."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(65536, 4)) + 10000).astype(np.float32)
    g = (rng.normal(size=x.shape) + 3).astype(np.float32)
    bn = cr.BatchNorm(4, momentum=1.0)
    y = bn.forward(x, training=True)
    bn.backward(g)
    exact = x.astype(np.float64)
    mean = exact.mean(axis=0)
    xhat = (exact - mean) / np.sqrt(exact.var(axis=0) + bn.eps)
    assert np.abs(y - xhat).max() < 1e-2
    np.testing.assert_allclose(bn.buffers["running_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(bn.bias.grad, g.astype(np.float64).sum(axis=0), rtol=1e-5)
    # (dL/dγ = Σ g·x̂ carries the float32 rounding of μ_B, ~5e-4 here, times Σ g: judged against Σ |g·x̂|)
    assert (np.abs(bn.weight.grad - (g * xhat).sum(axis=0)) < 1e-3 * np.abs(g * xhat).sum(axis=0)).all()


def test_average_pooling_and_batch_norm_of_integers_give_the_means_of_their_values():
    """Used on their own (as `Linear` can be), AvgPool2D kept an integer input's dtype: the window
    sums wrapped round (four uint8 200s) and the mean was multiplied by int(1/4) = 0; BatchNorm
    failed inside NumPy ("Cannot cast ufunc 'subtract' output")."""
    pixels = np.arange(16).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(cr.AvgPool2D(2).forward(pixels).ravel(), [2.5, 4.5, 10.5, 12.5])
    np.testing.assert_array_equal(cr.AvgPool2D(2).forward(np.full((1, 1, 2, 2), 200, np.uint8)).ravel(), [200.0])
    rows = np.arange(12).reshape(4, 3)
    np.testing.assert_allclose(cr.BatchNorm(3).forward(rows, training=True),
                               cr.BatchNorm(3).forward(rows.astype(np.float32), training=True), rtol=1e-6)


# -- whole networks ----------------------------------------------------------------------------------


def small_cnn(seed=0):
    return cr.Sequential(
        [cr.Conv2D(1, 4, 3, padding=1, bias=False), cr.BatchNorm(4), cr.ReLU(), cr.MaxPool2D(2),
         cr.Conv2D(4, 6, 3), cr.ReLU(), cr.AvgPool2D(2), cr.Flatten(), cr.Linear(24, 10)],
        input_shape=(1, 12, 12), seed=seed,
    )


def test_every_layer_type_is_registered_and_in_the_gradcheck_demo():
    from chainrule.gradcheck import demo_networks

    for cls in (cr.Conv2D, cr.MaxPool2D, cr.AvgPool2D, cr.BatchNorm):
        assert LAYER_TYPES[cls.__name__] is cls
    used = {type(layer) for _, model, _, _ in demo_networks() for layer in model.layers}
    assert set(LAYER_TYPES.values()) <= used


def test_conv_network_gradcheck_and_save_load(tmp_path):
    rng = np.random.default_rng(1)
    model = small_cnn()
    x = rng.random((4, 1, 12, 12))
    y = rng.integers(0, 10, 4)
    errors = cr.gradcheck(model, x, y)
    assert max(errors.values()) < GRADCHECK_TOL, errors

    # train a little so the batch-norm running statistics move away from (0, 1), then round-trip
    xs = rng.random((64, 1, 12, 12)).astype(np.float32)
    ys = rng.integers(0, 10, 64)
    cr.fit(model, xs, ys, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=1e-2), epochs=2, batch_size=16,
           verbose=False)
    assert not np.allclose(model.layers[1].buffers["running_mean"], 0)
    model.save(tmp_path / "m")
    loaded, _ = cr.load_model(tmp_path / "m")
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    np.testing.assert_array_equal(loaded.layers[1].buffers["running_var"], model.layers[1].buffers["running_var"])
    np.testing.assert_array_equal(loaded.predict_proba(xs), model.predict_proba(xs))


def test_conv_network_learns_a_real_digit_slice(mnist_dir):
    """A few epochs on 1,000 real MNIST images must beat chance by far on 500 held-out ones."""
    images, labels = load_mnist("train", mnist_dir)
    x = np.asarray(images[:1500])
    x = (x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)).reshape(-1, 1, 28, 28)
    y = np.asarray(labels[:1500], np.int64)
    model = cr.Sequential(
        [cr.Conv2D(1, 8, 5, padding=2, bias=False), cr.MaxPool2D(2), cr.BatchNorm(8), cr.ReLU(),
         cr.Conv2D(8, 16, 3, padding=1), cr.ReLU(), cr.MaxPool2D(2), cr.Flatten(), cr.Linear(784, 10)],
        input_shape=(1, 28, 28), seed=0,
    )
    cr.fit(model, x[:1000], y[:1000], cr.CrossEntropy(), cr.Adam(model.parameters(), lr=3e-3), epochs=4,
           batch_size=50, verbose=False)
    assert np.mean(model.predict(x[1000:]) == y[1000:]) > 0.85


# -- the digits presets ------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["lenet5", "cnn"])
def test_conv_presets_train_evaluate_predict_show_and_gradcheck(preset, tmp_path, capsys):
    """The conv presets go through the same `digits` commands as the dense ones: train (a tiny
    run), evaluate, predict a PNG, draw the first conv layer's filters; then gradcheck the saved model."""
    import os

    if not os.environ.get("CHAINRULE_DATA"):
        pytest.skip("CHAINRULE_DATA is not set")
    from PIL import Image

    from chainrule.cli import main
    from chainrule.data.mnist import load_mnist

    out = tmp_path / preset
    assert main(["digits", "train", "--model", preset, "--train-size", "1500", "--epochs", "1", "--quiet",
                 "--out", str(out)]) == 0
    model, metadata = cr.load_model(out)
    assert isinstance(model.layers[0], cr.Conv2D) and metadata["preprocessing"]["layout"] == "image"
    assert main(["digits", "evaluate", str(out), "--top", "3"]) == 0
    assert "test accuracy:" in capsys.readouterr().out

    images, labels = load_mnist("test", None)
    png = tmp_path / "digit.png"
    Image.fromarray(255 - np.asarray(images[0])).save(png)  # dark ink on white, as people draw
    assert main(["digits", "predict", str(out), str(png), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert len(result["probabilities"]) == 10 and result["digit"] == int(np.argmax(result["probabilities"]))

    assert main(["digits", "show", str(out), "--out", str(tmp_path / "filters.png")]) == 0
    assert "kernels" in capsys.readouterr().out
    with Image.open(tmp_path / "filters.png") as im:
        assert im.format == "PNG"
    # Every parameter and the input of the trained model on real images, through the command a user
    # runs (pixels where max-pooling windows tie, as on a blank background, are left out of the
    # input row: the loss has no derivative there).
    assert main(["gradcheck", str(out), "--samples", "10"]) == 0
    printed = capsys.readouterr().out
    assert "gradcheck: PASS" in printed and "Conv2D" in printed and "\n  input  " in printed
