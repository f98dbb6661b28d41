"""Sequential: passes, prediction, summary, dtype, and safe save/load with validation."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule import files as files_module
from chainrule import model_file, network
from chainrule.model_file import FORMAT_VERSION, LAYER_TYPES, model_files
from conftest import damaged


def _model(dtype=np.float32):
    return cr.Sequential([cr.Flatten(), cr.Linear(12, 8), cr.ReLU(), cr.Dropout(0.2), cr.Linear(8, 3)],
                         input_shape=(3, 4), seed=0, dtype=dtype)


def test_parameters_are_views_into_one_flat_buffer():
    model = _model()
    assert model.num_parameters() == 12 * 8 + 8 + 8 * 3 + 3
    assert model.flat_params.dtype == np.float32 and model.flat_params.flags.c_contiguous
    for p in model.parameters():
        assert np.shares_memory(p.data, model.flat_params) and np.shares_memory(p.grad, model.flat_grads)
    model.flat_params[...] = 0.5
    assert np.all(model.layers[1].weight.data == 0.5)


def test_a_deep_copy_has_parameters_that_are_views_of_its_own_flat_buffer():
    # copied array by array, the copy's layers were cut loose from its flat_params: an optimizer
    # of the copy was refused by fit, and state()/save kept numbers its layers no longer used
    model = cr.Sequential([cr.Conv2D(1, 2, 3), cr.BatchNorm(2), cr.ReLU(), cr.Flatten(), cr.Linear(2 * 6 * 6, 2)],
                          input_shape=(1, 8, 8), seed=0)
    model.flat_grads[...] = np.arange(model.flat_grads.size)
    twin = copy.deepcopy(model)
    assert all(np.shares_memory(p.data, twin.flat_params) and np.shares_memory(p.grad, twin.flat_grads)
               for p in twin.parameters())
    assert not np.shares_memory(twin.flat_params, model.flat_params)
    assert np.array_equal(twin.flat_params, model.flat_params) and np.array_equal(twin.flat_grads, model.flat_grads)
    x, y = np.random.default_rng(0).random((6, 1, 8, 8), np.float32), np.arange(6) % 2
    cr.fit(twin, x, y, cr.CrossEntropy(), cr.SGD(twin.parameters(), lr=0.1), epochs=1, batch_size=3, verbose=False)
    assert np.array_equal(twin.state()["params"], np.concatenate([p.data.ravel() for p in twin.parameters()]))
    assert not np.array_equal(twin.flat_params, model.flat_params)  # the original untouched


def test_odd_metadata_is_saved_as_it_reads_back_or_refused_before_anything_is_written(tmp_path):
    model = cr.Sequential([cr.Linear(3, 2)], seed=0)
    model.save(tmp_path / "m", {"accuracy": np.float32(0.5), "counts": np.arange(3), "best": np.int64(4)})
    assert cr.load_model(tmp_path / "m")[1] == {"accuracy": 0.5, "counts": [0, 1, 2], "best": 4}
    # (a key 1 was written as "1" and read back so; in a nested dict too)
    for bad, words in (({"loss": float("nan")}, "NaN or infinity"), ({"when": object()}, "holds a object"),
                       ({1: "a"}, "metadata keys must be strings, got 1"),
                       ({"runs": [{"best": {2.5: 1}}]}, "metadata keys must be strings, got 2.5")):
        with pytest.raises((ValueError, TypeError), match=words):
            model.save(tmp_path / "n", bad)
        assert not (tmp_path / "n").exists()  # (a NaN was written as NaN, which JSON readers refuse)
    for shape in ((), 3):
        with pytest.raises(ValueError, match="input_shape must be a tuple of positive integers"):
            cr.Sequential([cr.ReLU()], input_shape=shape)
    for x, words in ((None, "got NoneType"), (3.0, "got a single number")):  # (were IndexErrors)
        with pytest.raises(ValueError, match=f"expected a batch of shape \\(N, 3\\), {words}"):
            model.predict(x)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):  # (was accepted)
        model.predict(np.zeros((2, 3)), batch_size=0)


def test_a_model_with_nan_or_infinite_arrays_is_refused_before_anything_is_written(tmp_path):
    """A load refuses such arrays, so a save that wrote them would leave a model that no longer
    loads, over the one that did."""
    model = cr.Sequential([cr.Linear(3, 4), cr.BatchNorm(4), cr.Linear(4, 2)], seed=0)
    model.save(tmp_path / "m")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    for array, value, key in ((model.flat_params, np.nan, "params"),
                              (model.layers[1].buffers["running_var"], np.inf, "layer1.running_var")):
        kept = array[0]
        array[0] = value
        with pytest.raises(ValueError, match=f"{key} holds NaN or infinite values"):
            model.save(tmp_path / "m")
        with pytest.raises(ValueError, match=key):
            model.save(tmp_path / "n")
        array[0] = kept
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before and not (tmp_path / "n").exists()
    cr.load_model(tmp_path / "m")


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_pickled_model_is_whole_again_when_unpickled_with_its_optimizer(protocol):
    # (what multiprocessing does with a model): its layers were cut loose from its flat_params
    model = _model()
    optimizer = cr.SGD(model.parameters(), lr=0.1)
    twin, twin_optimizer = pickle.loads(pickle.dumps((model, optimizer), protocol=protocol))
    assert all(np.shares_memory(p.data, twin.flat_params) for p in twin.parameters())
    x = np.random.default_rng(0).normal(size=(4, 3, 4)).astype(np.float32)
    assert np.array_equal(twin.predict_proba(x), model.predict_proba(x))
    cr.fit(twin, x, np.arange(4) % 3, cr.CrossEntropy(), twin_optimizer, epochs=1, verbose=False)  # (was refused)
    assert not np.array_equal(twin.predict_proba(x), model.predict_proba(x))
    again, again_optimizer = copy.deepcopy((twin, twin_optimizer))
    assert again_optimizer.params is again.flat_params


def test_a_layer_belongs_to_one_model_once():
    shared = cr.Linear(3, 2)
    first = cr.Sequential([shared], seed=0)
    before = first.flat_params.copy()
    with pytest.raises(ValueError, match="layer 0 \\(Linear\\) already belongs to another model"):
        cr.Sequential([shared], seed=1)  # (it re-drew the first model's weights, then trained them)
    assert np.array_equal(first.flat_params, before)
    twice = cr.Linear(3, 3)
    with pytest.raises(ValueError, match="layer 2 \\(Linear\\) appears twice"):
        cr.Sequential([twice, cr.Tanh(), twice], seed=0)  # (its parameters counted twice, gradients wrong)
    relu = cr.ReLU()  # (no weights, but it keeps its forward pass's output for backward: gradients were wrong)
    with pytest.raises(ValueError, match="layer 3 \\(ReLU\\) appears twice"):
        cr.Sequential([cr.Linear(3, 3), relu, cr.Linear(3, 3), relu], seed=0)
    with pytest.raises(TypeError, match="use copy.deepcopy"):  # (a shallow copy moved the layers into it)
        copy.copy(first)
    fresh = pickle.loads(pickle.dumps(cr.Linear(3, 2), protocol=5))  # a layer of no model, unpickled: free
    assert cr.Sequential([fresh], seed=0).num_parameters() == 8
    # a layer without weights in two models: a Dropout drew the first model's masks from the
    # second's generator (the same seed no longer gave the same run); a copy of it is free
    dropout = cr.Dropout(0.5)
    cr.Sequential([cr.Linear(3, 3), dropout], seed=0)
    with pytest.raises(ValueError, match="layer 1 \\(Dropout\\) already belongs to another model"):
        cr.Sequential([cr.Linear(3, 3), dropout], seed=1)
    assert cr.Sequential([cr.Linear(3, 3), copy.deepcopy(dropout)], seed=1).layers[1].rng is not None
    # one Parameter in two layers (tied weights): counted twice, and its gradient was one layer's
    tied = cr.Linear(3, 3)
    other = cr.Linear(3, 3)
    other.params["weight"] = other.weight = tied.weight
    with pytest.raises(ValueError, match="layer 1 \\(Linear\\) has a Parameter of an earlier layer"):
        cr.Sequential([tied, other], seed=0)


def test_a_model_with_a_layer_a_model_file_cannot_name_is_refused_before_saving(tmp_path):
    """A layer type of one's own, not registered: the model was saved, and then did not load
    ("unknown layer type")."""
    class Scale(cr.Layer):
        def forward(self, x, training=False):
            return 2 * x

        def backward(self, grad_out):
            return 2 * grad_out

    model = cr.Sequential([cr.Linear(3, 3), Scale()], seed=0)
    with pytest.raises(ValueError, match="layer 1 \\(Scale\\) is not a type a model file may name"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_layers_buffer_stays_the_array_it_holds():
    """A layer of one's own that keeps a buffer as an attribute too, and updates it in place, was cut
    off from what the model saves: the model put a copy in its `buffers`, even of the same type."""
    class Running(cr.Layer):
        def __init__(self):
            super().__init__()
            self.mean = self.buffers["mean"] = np.zeros(3, np.float32)

        def forward(self, x, training=False):
            if training:
                self.mean += x.mean(axis=0)
            return x

        def backward(self, grad_out):
            return grad_out

    layer = Running()
    model = cr.Sequential([cr.Linear(3, 3), layer], seed=0)
    model.forward(np.ones((2, 3), np.float32), training=True)
    np.testing.assert_array_equal(model.state()["layer1.mean"], layer.mean)


def test_threads_may_share_a_model_for_predictions():
    """The layers keep what backward needs (ReLU its output, Linear its input): two predictions
    at once returned each other's arrays, of other shapes too. They take turns on the model's lock."""
    rng = np.random.default_rng(0)
    model = cr.Sequential([cr.Linear(20, 64), cr.ReLU(), cr.Linear(64, 5)], seed=0)
    xs = [rng.normal(size=(int(rng.integers(1, 300)), 20)).astype(np.float32) for _ in range(8)]
    serial = [model.predict_proba(x) for x in xs]
    wrong = []

    def predict(i):
        for _ in range(200):
            out = model.predict_proba(xs[i])
            if out.shape != serial[i].shape or not np.array_equal(out, serial[i]):
                wrong.append(i)

    threads = [threading.Thread(target=predict, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_backward_fills_every_gradient_and_returns_the_input_gradient():
    model = _model(np.float64)
    x = np.random.default_rng(0).normal(size=(5, 3, 4))
    out = model.forward(x, training=True)
    _, grad = cr.CrossEntropy()(out, np.array([0, 1, 2, 0, 1]))
    dx = model.backward(grad)
    assert dx.shape == x.shape
    assert np.all(model.flat_grads != 0)
    assert model.backward(grad, input_grad=False) is None


def test_backward_needs_a_forward_and_a_gradient_of_its_output_shape():
    """Before any forward, or with a gradient of another batch or width, it failed deep inside
    NumPy ("'NoneType' object has no attribute 'T'", "matmul: ... mismatch in its core dimension 0")."""
    model = cr.Sequential([cr.Linear(4, 8), cr.ReLU(), cr.Linear(8, 3)], seed=0)
    with pytest.raises(RuntimeError, match="^Linear: backward called before forward$"):
        model.backward(np.ones((5, 3), np.float32))
    model.forward(np.ones((5, 4), np.float32), training=True)
    with pytest.raises(ValueError, match=re.escape("Linear: the gradient has shape (2, 3), the last forward's "
                                                   "output had (5, 3)")):
        model.backward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=re.escape("Sequential: the gradient has shape (5, 4), the network's "
                                                   "output has (N, 3)")):
        model.backward(np.ones((5, 4), np.float32))
    assert model.backward(np.ones((5, 3), np.float32)).shape == (5, 4)
    conv = cr.Sequential([cr.Conv2D(1, 2, 3), cr.Flatten(), cr.ReLU()], input_shape=(1, 4, 4), seed=0)
    with pytest.raises(RuntimeError, match="^ReLU: backward called before forward$"):
        conv.backward(np.ones((5, 8), np.float32))


@pytest.mark.parametrize("first", ["dense", "conv"])
def test_backward_without_input_gradient_gives_the_same_parameter_gradients(first):
    """Training skips dL/dx below the first layer with parameters; the weights' gradients must not change,
    and the next full backward must compute dL/dx again."""
    if first == "dense":
        head, shape = [cr.Flatten(), cr.Linear(12, 8)], (3, 4)
    else:
        head, shape = [cr.Conv2D(3, 2, 2), cr.Flatten(), cr.Linear(18, 8)], (3, 4, 4)
    model = cr.Sequential([*head, cr.ReLU(), cr.Dropout(0.2), cr.Linear(8, 3)], input_shape=shape, seed=0,
                          dtype=np.float64)
    x = np.random.default_rng(1).normal(size=(5, *model.input_shape))
    y = np.array([0, 1, 2, 0, 1])
    grads, state = [], model.rng.bit_generator.state
    for input_grad in (True, False, True):
        model.rng.bit_generator.state = state  # the same dropout mask every pass
        _, grad = cr.CrossEntropy()(model.forward(x, training=True), y)
        model.flat_grads[...] = 0
        dx = model.backward(grad, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append(model.flat_grads.copy())
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_array_equal(grads[0], grads[2])
    assert dx.shape == x.shape
    # and called on its own after a training pass, the layer that skipped dL/dx returns it again
    _, grad = cr.CrossEntropy()(model.forward(x, training=True), y)
    model.backward(grad, input_grad=False)
    k = next(i for i, layer in enumerate(model.layers) if layer.params)
    below = model.layer_outputs(x)[k - 1] if k else x
    lowest = model.layers[k]
    out = lowest.forward(below, training=True)
    assert lowest.backward(np.ones_like(out)).shape == below.shape


def test_predict_and_predict_proba():
    model = _model()
    x = np.random.default_rng(0).normal(size=(7, 3, 4)).astype(np.float32)
    p = model.predict_proba(x, batch_size=3)
    assert p.shape == (7, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(model.predict(x), p.argmax(axis=1))
    binary = cr.Sequential([cr.Linear(2, 1)], seed=0)
    xb = np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32)
    z = binary.forward(xb)[:, 0]
    np.testing.assert_allclose(binary.predict_proba(xb)[:, 0], 1 / (1 + np.exp(-z)), rtol=1e-6)
    np.testing.assert_array_equal(binary.predict(xb), (z > 0).astype(int))
    # predict decides on raw scores; with a probability layer on top it must agree with predict_proba
    for head in ([cr.Linear(2, 1), cr.Sigmoid()], [cr.Linear(2, 4), cr.Softmax()]):
        net = cr.Sequential(head, seed=1)
        xs = np.random.default_rng(2).normal(size=(50, 2)).astype(np.float32)
        p = net.predict_proba(xs)
        expected = (p[:, 0] > 0.5).astype(int) if p.shape[1] == 1 else p.argmax(axis=1)
        np.testing.assert_array_equal(net.predict(xs, batch_size=7), expected)
    assert model.predict(np.zeros((0, 3, 4), np.float32)).shape == (0,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])
@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_predict_refuses_inputs_it_cannot_score(bad, method):
    """A NaN would go through every layer and come out as a confident class 0."""
    model = _model()
    x = np.zeros((4, 3, 4))
    x[2, 1, 1] = bad
    with pytest.raises(ValueError, match="Sequential: the inputs (contain NaN or infinity|hold values beyond)"):
        getattr(model, method)(x)
    sparse = pytest.importorskip("scipy.sparse")
    flat = cr.Sequential([cr.Linear(12, 2)], seed=0)
    with pytest.raises(ValueError, match="Sequential: the inputs"):
        getattr(flat, method)(sparse.csr_matrix(x.reshape(4, 12)))
    with pytest.raises(ValueError, match="Sequential: the inputs must be numbers"):
        getattr(flat, method)([["a"] * 12])
    with pytest.raises(ValueError, match="Sequential: the inputs must be numbers, got None"):  # (was "NaN")
        getattr(flat, method)(np.array([[None] + [0.0] * 11], dtype=object))
    # (the imaginary parts were dropped, with a warning)
    with pytest.raises(ValueError, match="the inputs must be real numbers, got complex128"):
        getattr(model, method)(x + 1j)
    with pytest.raises(ValueError, match=r"the inputs must be real numbers, got datetime64\[D\]"):  # (day counts)
        getattr(flat, method)(np.zeros((1, 12), "datetime64[D]"))
    with pytest.raises(ValueError, match="the inputs are a masked array"):  # (the mask was dropped)
        getattr(model, method)(np.ma.masked_array(np.zeros((4, 3, 4)), mask=np.zeros((4, 3, 4), bool)))


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
def test_predict_refuses_scores_that_overflow_in_one_line(method):
    """Finite inputs can overflow inside the network (3e38 is a float32, 3·3e38 is not); the NaN
    scores came out as class 0. (NumPy's own overflow warnings are left to the caller's errstate:
    setting one around the pass cost a single image's prediction ~9 µs of ~100.)"""
    model = cr.Sequential([cr.Linear(3, 4), cr.ReLU(), cr.Linear(4, 2)], seed=0)
    with np.errstate(over="ignore", invalid="ignore"):  # (as the command line runs: NumPy's warnings are its own)
        with pytest.raises(cr.ModelFileError, match=re.escape(OVERFLOWED)):
            getattr(model, method)(np.full((2, 3), 3e38, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="beyond the model's float32 range"):  # (not an overflow warning first)
            getattr(model, method)(np.array([[1e300, 1.0, 1.0]]))


OVERFLOWED = "the model's outputs overflowed to NaN or infinity: its weights, or its inputs, are too large for float32"


@pytest.mark.parametrize("method", ["predict", "predict_proba", "layer_outputs"])
def test_weights_finite_but_huge_make_every_pass_a_model_file_error(method):
    """Weights that are finite pass a model file's checks, and ×1e30 they overflow the outputs:
    the ValueError was an internal error to the command line, and `layer_outputs` (the web app's
    explained prediction) gave its NaN to the page as a 200. It is a ModelFileError, the user's."""
    model = cr.Sequential([cr.Linear(3, 4), cr.ReLU(), cr.Linear(4, 2)], seed=0)
    model.flat_params[:] *= np.float32(1e30)
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(cr.ModelFileError, match=re.escape(OVERFLOWED)):
            getattr(model, method)(np.ones((2, 3), np.float32))


def test_predict_and_evaluate_run_large_convolutions_in_smaller_passes(monkeypatch):
    """Where `batch_size` examples would make an X_col over PASS_BYTES, predict and evaluate run
    fewer at a time, with the same results as one pass."""
    model = cr.Sequential([cr.Conv2D(1, 4, 3, padding=1), cr.ReLU(), cr.Flatten(), cr.Linear(4 * 8 * 8, 3)],
                          input_shape=(1, 8, 8), seed=0)
    x = np.random.default_rng(0).normal(size=(50, 1, 8, 8)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 50)
    whole = model.forward(x)
    assert model.examples_per_pass(1000) == 1000  # X_col: 10 rows · 64 pixels · 4 bytes an example
    mlp = cr.Sequential([cr.Linear(784, 512), cr.ReLU(), cr.Linear(512, 10)], seed=0)
    assert mlp.examples_per_pass(1000) == 1000
    wide_input = cr.Sequential([cr.Linear(1 << 16, 16), cr.ReLU(), cr.Linear(16, 1)], seed=0)
    assert wide_input.examples_per_pass(1000) == 1000  # the input (a spam filter's sparse rows) is not made by the pass
    monkeypatch.setattr(network, "PASS_BYTES", 10 * 64 * 4 * 8)  # eight examples' X_col
    assert model.examples_per_pass(1000) == 8
    assert model.examples_per_pass(5) == 5
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda xb, training=False: calls.append(len(xb)) or forward(xb, training))
    np.testing.assert_allclose(model.predict_proba(x, batch_size=1000), model.probabilities(whole), rtol=1e-6)
    assert calls == [8] * 6 + [2]
    logs = cr.evaluate(model, x, y, cr.CrossEntropy(), batch_size=1000)
    value, _ = cr.CrossEntropy()(whole, y)
    assert logs["loss"] == pytest.approx(value, rel=1e-6)
    assert logs["accuracy"] == np.mean(whole.argmax(axis=1) == y)


LOOK_INSIDE = {
    "dense": ([cr.Flatten(), cr.Linear(12, 8), cr.ReLU(), cr.Dropout(0.2), cr.Linear(8, 3)], (3, 4)),
    "one output": ([cr.Linear(5, 4), cr.Tanh(), cr.Linear(4, 1)], (5,)),
    "softmax head": ([cr.Linear(5, 4), cr.Sigmoid(), cr.Linear(4, 3), cr.Softmax()], (5,)),
    "conv": ([cr.Conv2D(1, 3, 3, padding=1), cr.MaxPool2D(2), cr.BatchNorm(3), cr.ReLU(), cr.Flatten(),
              cr.Linear(3 * 3 * 3, 4)], (1, 6, 6)),
}


@pytest.mark.parametrize("name", LOOK_INSIDE)
def test_layer_outputs_come_from_one_pass_and_give_predict_proba(name):
    layers, shape = LOOK_INSIDE[name]
    model = cr.Sequential(layers, input_shape=shape, seed=0)
    x = np.random.default_rng(1).normal(size=(5, *shape)).astype(np.float32)
    outputs = model.layer_outputs(x)
    assert len(outputs) == len(model.layers)
    # the same arrays as running the layers one by one, in evaluation mode
    h = x
    for layer, out in zip(model.layers, outputs, strict=True):
        h = layer.forward(h, training=False)
        np.testing.assert_array_equal(out, h)
    np.testing.assert_array_equal(outputs[-1], model.forward(x))
    # the last one is all predict_proba and predict need: no second pass
    np.testing.assert_array_equal(model.probabilities(outputs[-1]), model.predict_proba(x))
    np.testing.assert_array_equal(model.predicted_classes(outputs[-1]), model.predict(x))
    # a later pass does not overwrite the arrays handed out
    kept = [o.copy() for o in outputs]
    model.layer_outputs(np.ones_like(x))
    for before, out in zip(kept, outputs, strict=True):
        np.testing.assert_array_equal(before, out)


def test_summary_lists_layers_shapes_and_parameter_counts():
    text = _model().summary()
    assert "Output shape" in text and "Params" in text
    assert "1: Linear" in text and "(None, 8)" in text and "104" in text
    assert "(None, 12)" in text  # Flatten's output
    assert f"Total parameters: {_model().num_parameters():,} (float32)" in text


def test_float64_mode_and_conversion():
    model = _model(np.float64)
    assert model.flat_params.dtype == np.float64
    assert model.forward(np.zeros((2, 3, 4))).dtype == np.float64
    m32 = _model()
    before = m32.flat_params.astype(np.float64)
    m32.to(np.float64)
    np.testing.assert_array_equal(m32.flat_params, before)
    assert all(np.shares_memory(p.data, m32.flat_params) for p in m32.parameters())


def test_shape_mismatch_fails_at_construction():
    with pytest.raises(ValueError, match=r"Sequential: layer 2 Linear: expects 5 input features, but receives "
                                         r"shape \(6,\)"):
        cr.Sequential([cr.Linear(4, 6), cr.ReLU(), cr.Linear(5, 2)])
    # Linear checks its input shape itself, as every layer does (Sequential special-cased it), and
    # Sequential names the layer whatever its kind
    with pytest.raises(ValueError, match=r"^Linear: expects 4 input features, but receives shape \(1, 2, 2\)$"):
        cr.Linear(4, 2).output_shape((1, 2, 2))
    with pytest.raises(ValueError, match=r"Sequential: layer 2 Conv2D: expects examples of shape \(3, H, W\)"):
        cr.Sequential([cr.Conv2D(1, 2, 3), cr.ReLU(), cr.Conv2D(3, 4, 3)], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="input_shape is required"):
        cr.Sequential([cr.ReLU()])
    with pytest.raises(TypeError, match="expected Layer instances"):
        cr.Sequential([cr.Linear(2, 2), "relu"])
    with pytest.raises(ValueError, match=r"BatchNorm: expects examples of shape \(4,\) or \(4, H, W\)"):
        cr.Sequential([cr.Linear(2, 3), cr.BatchNorm(4)])
    with pytest.raises(ValueError, match="dtype must be float32 or float64, got int32"):
        cr.Sequential([cr.Linear(2, 2)], dtype=np.int32)
    for dtype in (None, "3", -1):  # (None built a float64 model; the others failed inside NumPy)
        with pytest.raises(ValueError, match=f"Sequential: dtype must be float32 or float64, got {dtype!r}"):
            cr.Sequential([cr.Linear(2, 2)], dtype=dtype)
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive integers"):
        cr.Sequential([cr.Flatten(), cr.Linear(16, 2)], input_shape=(2, 8.5))


def test_a_batch_of_another_shape_is_refused_not_reshaped():
    model = cr.Sequential([cr.Flatten(), cr.Linear(64, 2)], input_shape=(8, 8))
    for x in (np.zeros((2, 4, 16)), np.zeros(64), np.zeros((2, 64))):
        with pytest.raises(ValueError, match=r"expected a batch of shape \(N, 8, 8\), got shape"):
            model.predict(x)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(N, 8, 8\), got shape \(0, 7\)"):
        model.predict(np.zeros((0, 7)))  # (an empty batch was scored as [], whatever its shape)
    assert model.predict(np.zeros((2, 8, 8)).tolist()).shape == (2,)


def test_sparse_input_of_any_format_and_dtype():
    """COO (no row slices) is read as CSR, and float64 values give the model's float32."""
    model = cr.Sequential([cr.Linear(6, 3)], seed=0)
    x = np.random.default_rng(0).normal(size=(5, 6))
    expected = model.predict_proba(x)
    for matrix in (sp.coo_matrix(x), sp.csr_matrix(x), sp.csc_matrix(x)):
        proba = model.predict_proba(matrix)
        assert proba.dtype == np.float32
        np.testing.assert_allclose(proba, expected, rtol=1e-6)
        np.testing.assert_allclose(model.layer_outputs(matrix)[-1], model.forward(x), rtol=1e-5, atol=1e-6)
    for first in (cr.Dropout(0.2), cr.ReLU()):  # (failed inside NumPy and SciPy)
        net = cr.Sequential([first, cr.Linear(6, 2)], input_shape=(6,), seed=0)
        with pytest.raises(ValueError, match=f"a sparse matrix can be the input of a first Linear layer only, "
                                             f"not of {type(first).__name__}"):
            cr.fit(net, sp.csr_matrix(x), np.arange(5) % 2, cr.CrossEntropy(), cr.SGD(net.parameters(), lr=0.1),
                   epochs=1, batch_size=5, verbose=False)


def test_same_seed_same_initial_weights():
    np.testing.assert_array_equal(_model().flat_params, _model().flat_params)
    other = cr.Sequential([cr.Flatten(), cr.Linear(12, 8), cr.ReLU(), cr.Dropout(0.2), cr.Linear(8, 3)],
                          input_shape=(3, 4), seed=1)
    assert not np.array_equal(_model().flat_params, other.flat_params)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, dtype):
    model = _model(dtype)
    model.save(tmp_path / "m", metadata={"task": "test", "classes": [0, 1, 2]})
    loaded, meta = cr.load_model(tmp_path / "m")
    assert meta == {"task": "test", "classes": [0, 1, 2]}
    assert loaded.flat_params.dtype == dtype
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    x = np.random.default_rng(0).normal(size=(4, 3, 4))
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert loaded.layers[3].p == 0.2
    # a path to one of the two files works as well as the directory
    again, _ = cr.load_model(tmp_path / "m" / "model.json")
    np.testing.assert_array_equal(again.flat_params, model.flat_params)
    np.load(model_files(tmp_path / "m")["model"], allow_pickle=False)  # plain arrays, no pickles
    with pytest.raises(cr.ModelFileError, match="model.json: not found"):  # (was a raw FileNotFoundError)
        model_files(tmp_path / "no-such-model")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # (was "not found")
    with pytest.raises(cr.ModelFileError, match="loop/model.json: a loop of symbolic links$"):
        cr.load_model(tmp_path / "loop")


def _saved(tmp_path):
    d = tmp_path / "m"
    _model().save(d)
    return d


def _edit_json(d, change):
    doc = json.loads((d / "model.json").read_text())
    change(doc)
    (d / "model.json").write_text(json.dumps(doc))


def _set(key, value):
    return lambda doc: doc.__setitem__(key, value)


def _first_layer(key, value):
    return lambda doc: doc["layers"][1].__setitem__(key, value)


def _weights(d):
    return model_files(d)["model"]


def _write_npz(d, **arrays):
    np.savez(_weights(d), **arrays)


def _zip_flag(d, bit: int):
    """Set a flag bit of the weights' zip directory entries (0: encrypted; 6: strong encryption)."""
    raw = bytearray(_weights(d).read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        raw[at + 8] |= 1 << bit
        at = raw.find(b"PK\x01\x02", at + 4)
    _weights(d).write_bytes(bytes(raw))


@pytest.mark.parametrize("corrupt,match", [
    (lambda d: _weights(d).write_bytes(b"not a zip file"), "not a readable .npz"),
    (lambda d: _weights(d).write_bytes(_weights(d).read_bytes()[:100]), "not a readable .npz"),
    (lambda d: _weights(d).unlink(), "not found"),
    (lambda d: (d / "model.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "model.json").write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
    (lambda d: (d / "model.json").write_text('{"format": ' + "9" * 5000 + "}"), "not valid JSON"),  # (int limit)
    (lambda d: (d / "model.json").write_text("[1, 2]"), "not a chainrule model"),
    # (Python's json reads NaN and Infinity, which `save` never writes: a model loaded with them in its
    # metadata could not be saved again, and `spam learn` failed as an internal error)
    (lambda d: _edit_json(d, _set("metadata", {"validation": {"accuracy": float("nan")}})),
     "not valid JSON .*NaN"),
    (lambda d: _edit_json(d, _set("metadata", {"lr": float("inf")})), "not valid JSON .*Infinity"),
    (lambda d: _edit_json(d, _set("format_version", FORMAT_VERSION + 1)), "format version"),
    (lambda d: _edit_json(d, _first_layer("type", "Pickle")), "unknown layer type 'Pickle'"),
    (lambda d: _edit_json(d, _first_layer("args", [1, 2])), "expected an object"),
    (lambda d: _edit_json(d, _first_layer("args", {"in_features": 12, "out_features": 0})), "invalid architecture"),
    (lambda d: _edit_json(d, _first_layer("args", {"bogus": 1})), "invalid architecture"),
    (lambda d: _edit_json(d, _set("dtype", "float16")), "dtype must be float32 or float64, got 'float16'"),
    (lambda d: _edit_json(d, _set("dtype", ["float32"])), r"dtype must be float32 or float64, got \['float32'\]"),
    (lambda d: _edit_json(d, lambda doc: doc.pop("input_shape")), "invalid architecture: no 'input_shape'"),
    (lambda d: _edit_json(d, lambda doc: doc["layers"].__setitem__(1, "Linear")),
     "layer 1 is not an object with a 'type'"),
    (lambda d: _edit_json(d, _first_layer("args", {"in_features": 12, "out_features": 8, "bias": "no"})),
     "bias must be True or False"),
    (lambda d: _edit_json(d, _set("input_shape", [12.5])), "input_shape must be a tuple of positive integers"),
    (lambda d: _write_npz(d, params=np.zeros(5, np.float32)), "expected 131 parameters"),
    (lambda d: _write_npz(d, params=np.full(131, np.nan, np.float32)), "NaN, infinity or values beyond float32"),
    # (finite as float64, infinite once cast into the float32 network: it loaded and predicted NaN)
    (lambda d: _write_npz(d, params=np.full(131, 1e300)), "params contains NaN, infinity or values beyond float32"),
    (lambda d: _write_npz(d, params=np.zeros(131, np.int32)), "expected floats"),
    (lambda d: _write_npz(d, other=np.zeros(131, np.float32)), "expected 131 parameters"),
    (lambda d: _zip_flag(d, 0), "encrypted"),  # (zipfile's RuntimeError)
    (lambda d: _zip_flag(d, 6), "strong encryption"),  # (its NotImplementedError)
])
def test_load_rejects_broken_model_files(tmp_path, corrupt, match):
    d = _saved(tmp_path)
    corrupt(d)
    with pytest.raises(cr.ModelFileError, match=match):
        cr.load_model(d)


@pytest.mark.parametrize("change,match", [
    (_first_layer("type", "Evil"), "layer 1: unknown layer type 'Evil'"),
    (_first_layer("args", {"in_features": 12, "out_features": -5}), "out_features must be a positive integer, got -5"),
    (_first_layer("args", {"in_features": 12, "out_features": "8"}), "out_features must be a positive integer"),
    (lambda doc: doc["layers"][2].__setitem__("args", {"foo": 1}),
     r"layer 2 \(ReLU\): got an unexpected keyword argument 'foo'"),
    (_set("layers", []), "'layers' must be a non-empty list"),
    (lambda doc: doc.pop("layers"), "'layers' must be a non-empty list"),
    (_set("layers", {}), "'layers' must be a non-empty list"),
    (lambda doc: doc["layers"].__setitem__(1, "Linear"), "layer 1 is not an object with a 'type'"),
])
def test_every_problem_with_the_layers_names_model_json(tmp_path, change, match):
    """The layers' shapes were checked before the step that names the file: "unknown layer type
    'Evil'" said nothing of where, and an unknown argument named the internal `_Activation`."""
    d = _saved(tmp_path)
    _edit_json(d, change)
    with pytest.raises(cr.ModelFileError) as info:
        cr.load_model(d)
    assert str(info.value).startswith(f"{d / 'model.json'}: invalid architecture: ")
    assert re.search(match, str(info.value)) and "_Activation" not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(target=st.sampled_from(["model.json", "weights"]), data=st.data())
def test_any_damage_to_a_model_file_is_a_model_file_error_or_the_same_model(tmp_path_factory, target, data):
    """Whatever is done to the bytes of model.json or of the weights it names (cut short, bytes
    changed, bytes inserted), loading gives a ModelFileError or a model of the same shapes: never
    another exception."""
    d = tmp_path_factory.mktemp("m")
    _model().save(d)
    path = d / "model.json" if target == "model.json" else model_files(d)["model"]
    path.write_bytes(damaged(path.read_bytes(), data))
    try:
        model, _ = cr.load_model(d)
    except cr.ModelFileError:
        return
    assert [p.shape for p in model.parameters()] == [p.shape for p in _model().parameters()]


def _peak_bytes(fn) -> int:
    """The most memory Python and NumPy held at once while `fn()` ran (it may raise)."""
    tracemalloc.start()
    try:
        fn()
    except cr.ModelFileError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_description_asking_for_huge_layers_is_refused_before_allocating(tmp_path):
    # 16 million weights (a hidden layer of 10^6 units) claimed by a few hundred bytes of JSON: 64 MB
    # that must never be allocated, since the .npz header already says the file holds 131 parameters
    d = _saved(tmp_path)
    _edit_json(d, lambda doc: (doc["layers"][1]["args"].update(out_features=10**6),
                               doc["layers"][4]["args"].update(in_features=10**6)))
    with pytest.raises(cr.ModelFileError, match="expected 16000003 parameters .* got shape \\(131,\\)"):
        cr.load_model(d)
    assert _peak_bytes(lambda: cr.load_model(d)) < 4 << 20


def test_an_architecture_whose_passes_need_huge_arrays_is_refused_before_allocating(tmp_path):
    """A model file is untrusted: 22 parameters, a Conv2D padded by 80,000 zeros on every side,
    make one 28x28 image's output 160028x160028 values, and the check `serve` makes of an image
    model (a pass on a blank image) asked for 95 GiB. The layers' shapes tell before any pass; a
    model whose arrays stay within the limit loads."""
    def hostile(padding: int) -> cr.Sequential:
        side = 28 + 2 * padding
        return cr.Sequential([cr.Conv2D(1, 1, 1, padding=padding), cr.MaxPool2D(side), cr.Flatten(), cr.Linear(1, 10)],
                             input_shape=(1, 28, 28))

    d = tmp_path / "hostile"
    hostile(80_000).save(d)
    with pytest.raises(cr.ModelFileError, match=r"model\.json: invalid architecture: one example's pass needs an "
                       r"array of 204,871,686,272 bytes \(a model file may ask for 268,435,456 at most\)"):
        cr.load_model(d)
    with pytest.raises(cr.ModelFileError, match="invalid architecture"):  # (as `serve` scans its runs)
        network.check_model_files(d)
    assert _peak_bytes(lambda: cr.load_model(d)) < 4 << 20
    hostile(100).save(d)
    assert cr.load_model(d)[0].num_parameters() == 22


def test_an_architecture_whose_arrays_together_are_huge_is_refused(tmp_path):
    """Each array within the limit, a model file could still ask for any amount in all: a Conv2D
    padded by 2,700 zeros, then 1x1 convolutions, each holding its 236 MB X_col and a 118 MB output
    (16 KB files; 10 of them made `digits predict` take 4.1 GB). What one example's pass holds in
    all layers is bounded too, well above VGG-16's 422 MB on a 224x224 photo."""
    def deep(convs: int) -> cr.Sequential:
        side = 28 + 2 * 2700
        return cr.Sequential([cr.Conv2D(1, 1, 1, padding=2700)] + [cr.Conv2D(1, 1, 1) for _ in range(convs)]
                             + [cr.MaxPool2D(side), cr.Flatten(), cr.Linear(1, 10)], input_shape=(1, 28, 28))

    d = tmp_path / "deep"
    deep(4).save(d)
    with pytest.raises(cr.ModelFileError, match=r"model\.json: invalid architecture: one example's pass holds "
                       r"[\d,]+ bytes in all its layers \(a model file may ask for 1,073,741,824 at most\)"):
        cr.load_model(d)
    assert _peak_bytes(lambda: cr.load_model(d)) < 4 << 20
    deep(1).save(d)
    assert len(cr.load_model(d)[0].layers) == 5


def test_a_big_array_in_the_npz_is_not_read_before_it_is_refused(tmp_path):
    # 50 MB of parameters where 131 are expected, and a 50 MB array no model has: neither is read
    d = _saved(tmp_path)
    _write_npz(d, params=np.zeros(12_500_000, np.float32))
    assert _peak_bytes(lambda: cr.load_model(d)) < 4 << 20
    good = _model().state()
    _write_npz(d, params=good["params"], junk=np.zeros(12_500_000, np.float32))
    assert _peak_bytes(lambda: cr.load_model(d)) < 4 << 20
    np.testing.assert_array_equal(cr.load_model(d)[0].flat_params, good["params"])


def test_a_compressed_npz_is_refused_unread(tmp_path):
    # a compressed member can claim gigabytes in a few bytes; chainrule writes plain np.savez files
    d = _saved(tmp_path)
    np.savez_compressed(_weights(d), params=np.zeros(131, np.float32))
    with pytest.raises(cr.ModelFileError, match="compressed"):
        cr.load_model(d)


def test_a_description_nested_100000_deep_is_a_model_file_error(tmp_path):
    d = _saved(tmp_path)
    (d / "model.json").write_text('{"format": "chainrule-model", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(cr.ModelFileError, match="nested too deeply"):
        cr.load_model(d)


LAYER_ARGS = {
    "Linear": st.fixed_dictionaries({"in_features": st.integers(1, 40), "out_features": st.integers(1, 40),
                                     "bias": st.booleans()}),
    "Conv2D": st.fixed_dictionaries({"in_channels": st.integers(1, 4), "out_channels": st.integers(1, 4),
                                     "kernel_size": st.integers(1, 5) | st.lists(st.integers(1, 5), min_size=2,
                                                                                 max_size=2),
                                     "bias": st.booleans()}),
    "BatchNorm": st.fixed_dictionaries({"num_features": st.integers(1, 40)}),
    "MaxPool2D": st.fixed_dictionaries({"kernel_size": st.integers(1, 3)}),
    "AvgPool2D": st.fixed_dictionaries({"kernel_size": st.integers(1, 3)}),
}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(LAYER_TYPES)).flatmap(
    lambda kind: st.tuples(st.just(kind), LAYER_ARGS.get(kind, st.just({})))))
def test_array_shapes_are_those_of_the_layer_built(kind_args):
    # what the loader checks a file against is exactly what building the layer allocates
    kind, args = kind_args
    params, buffers = LAYER_TYPES[kind].array_shapes(**args)
    layer = LAYER_TYPES[kind](**args)
    assert params == {name: p.shape for name, p in layer.params.items()}
    assert buffers == {name: b.shape for name, b in layer.buffers.items()}


def test_each_save_keeps_the_model_it_replaced_and_deletes_older_ones(tmp_path):
    # a reader that has just read the old model.json still finds the old weights; nothing piles up
    d = tmp_path / "m"
    names = []
    for seed in range(3):
        cr.Sequential([cr.Linear(4, 3)], seed=seed).save(d)
        names.append(model_files(d)["model"].name)
    assert len(set(names)) == 3 and all(n.startswith("model-") for n in names)
    assert sorted(p.name for p in d.iterdir()) == sorted(["model.json", "model.lock", names[1], names[2]])


def _two_saves_at_the_first_header_read(monkeypatch, d):
    """Makes a load see what a reader descheduled between model.json and its weights sees while two
    saves complete: the first weights header it reads, two other models are saved over `d` (the
    second deletes the weights the reader's model.json names). Returns the paths first read."""
    real, read = model_file.npz_headers, []

    def two_saves_meanwhile(path):
        if not read:
            read.append(path)
            for seed in (7, 8):
                cr.Sequential([cr.Linear(4, 3)], seed=seed).save(d)
        return real(path)

    monkeypatch.setattr(model_file, "npz_headers", two_saves_meanwhile)
    return read


def test_a_model_loaded_while_two_saves_complete_is_the_newer_one_whole(tmp_path, monkeypatch):
    """The weights model.json named were gone by the time the reader opened them: load_model said
    "model-....npz: not a readable .npz file (No such file or directory)" of a model that was there
    all along (spam classify exited 3, the daemon kept its old model). It reads model.json again."""
    d = tmp_path / "m"
    cr.Sequential([cr.Linear(4, 3)], seed=0).save(d)
    read = _two_saves_at_the_first_header_read(monkeypatch, d)
    loaded, _ = cr.load_model(d)
    assert not read[0].exists()  # the reader's first model.json named weights that were deleted
    np.testing.assert_array_equal(loaded.flat_params, cr.Sequential([cr.Linear(4, 3)], seed=8).flat_params)


def test_weights_missing_from_a_model_no_save_replaced_are_not_found_at_once(tmp_path, monkeypatch):
    """Reading again is for a model.json that changed: one that names a missing file is the error."""
    d = _saved(tmp_path)
    weights = _weights(d)
    weights.unlink()
    reads = []
    monkeypatch.setattr(model_file, "_read_description",
                        lambda path, real=model_file._read_description: reads.append(path) or real(path))
    with pytest.raises(cr.ModelFileError, match=f"^{re.escape(str(weights))}: not found"):
        cr.load_model(d)
    assert len(reads) == 1


def test_a_model_replaced_at_every_read_is_an_error_after_a_few(tmp_path, monkeypatch):
    """Saves that keep replacing the model faster than it can be read: the reader gives up."""
    d = tmp_path / "m"
    cr.Sequential([cr.Linear(4, 3)], seed=0).save(d)
    real, seeds = model_file.npz_headers, iter(range(1, 1000))

    def two_saves_meanwhile(path):
        for _ in range(2):
            cr.Sequential([cr.Linear(4, 3)], seed=next(seeds)).save(d)
        return real(path)

    monkeypatch.setattr(model_file, "npz_headers", two_saves_meanwhile)
    with pytest.raises(cr.ModelFileError, match=r"model-[0-9a-f]{16}\.npz: No such file or directory"):
        cr.load_model(d)
    assert next(seeds) == 2 * model_file.READ_ATTEMPTS + 1


def test_a_model_saved_over_one_with_more_files_leaves_no_orphans(tmp_path):
    """A spam filter retrained into the directory of one that had learned lessons: once nothing can
    read the old model, its lessons file goes too, although the new model has no lessons group."""
    d = tmp_path / "m"
    cr.Sequential([cr.Linear(4, 3)], seed=0).save(d, arrays={"lessons": {"digests": np.zeros((2, 16), np.uint8)}})
    lessons = model_files(d)["lessons"].name
    (d / "notes.npz").write_bytes(b"the user's, not a model file")
    cr.Sequential([cr.Linear(4, 3)], seed=1).save(d)
    assert (d / lessons).is_file()  # the model just replaced names it: a reader may be loading it
    cr.Sequential([cr.Linear(4, 3)], seed=2).save(d)
    assert not (d / lessons).exists() and (d / "notes.npz").is_file()
    assert set(model_files(d)) == {"model"}


def test_a_model_saved_into_a_folder_that_held_no_model_deletes_none_of_its_files(tmp_path):
    """Names like a model's (model.npz, weights-<16 hex digits>.npz) in a folder that held no model
    are someone else's files: training with --out pointing there deleted them."""
    d = tmp_path / "mine"
    d.mkdir()
    theirs = ["model.npz", "weights-0123456789abcdef.npz", "notes.npz"]
    for name in theirs:
        np.savez(d / name, w=np.ones(3))
    cr.Sequential([cr.Linear(4, 3)], seed=0).save(d)
    assert all((d / name).is_file() for name in theirs)
    assert cr.load_model(d)[0].layers[0].weight.shape == (4, 3)


@pytest.mark.parametrize("replace,said", [
    (lambda w: w.symlink_to(w.parent / "gone.npz"), "a broken symbolic link"),
    (lambda w: w.symlink_to(w), "a loop of symbolic links"),
    (lambda w: os.mkfifo(w), "not a regular file"),
    (lambda w: w.symlink_to("/dev/zero"), "not a regular file"),
    (lambda w: w.mkdir(), "a folder, not a file"),
])
def test_weights_that_are_no_regular_file_are_named_for_what_they_are(tmp_path, replace, said):
    """A link loop, a FIFO, a folder... where the weights should be were all "not found"."""
    d = _saved(tmp_path)
    weights = _weights(d)
    weights.unlink()
    replace(weights)
    with pytest.raises(cr.ModelFileError, match=f"^{re.escape(str(weights))}: {said} "
                                                r"\(model.json names it as the model's weights\)$"):
        cr.load_model(d)


def test_a_model_argument_that_is_a_file_is_named_as_a_file_not_a_folder(tmp_path):
    """It said "picture.png/model.json: not found"."""
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    with pytest.raises(cr.ModelFileError, match=r"picture.png: a file, not a model folder"):
        cr.load_model(tmp_path / "picture.png")


def test_files_named_in_model_json_stay_inside_its_directory(tmp_path):
    d = _saved(tmp_path)
    (tmp_path / "outside.npz").write_bytes(_weights(d).read_bytes())
    _edit_json(d, lambda doc: doc["files"].update(model="../outside.npz"))
    with pytest.raises(cr.ModelFileError, match="'files' must name"):
        cr.load_model(d)


def test_a_version_1_model_directory_loads_and_is_replaced_whole(tmp_path):
    model = _model()
    d = tmp_path / "v1"
    d.mkdir()
    np.savez(d / "model.npz", **model.state())
    doc = {"format": "chainrule-model", "format_version": 1, **model.config(), "metadata": {"task": "test"}}
    (d / "model.json").write_text(json.dumps(doc))
    (d / "checkpoint.npz").write_bytes(b"a training checkpoint: not the model's to delete")
    loaded, meta = cr.load_model(d)
    assert meta == {"task": "test"}
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    loaded.save(d)
    assert (d / "model.npz").is_file()  # still the model just replaced, for readers of the old model.json
    loaded.save(d)
    assert not (d / "model.npz").exists() and (d / "checkpoint.npz").is_file()
    np.testing.assert_array_equal(cr.load_model(d)[0].flat_params, model.flat_params)


# Saves a model with seed 1 over the one in argv[1], killed with SIGKILL at the last moment before
# its commit: its weights are written, its model.json is written too, but not yet renamed into place.
KILLED_SAVE = """
import os, signal, sys
import chainrule as cr
real_replace = os.replace
def replace(src, dst):
    if os.path.basename(dst) == "model.json":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
cr.Sequential([cr.Linear(4, 3)], seed=1).save(sys.argv[1])
"""


def test_a_save_killed_before_its_commit_leaves_the_old_model(tmp_path):
    d = tmp_path / "m"
    cr.Sequential([cr.Linear(4, 3)], seed=0).save(d)
    old, old_name = cr.load_model(d)[0].flat_params.copy(), model_files(d)["model"].name
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(d)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list(d.glob("model-*.npz"))) == 2 and list(d.glob(".model.json.*.tmp"))  # what it left
    np.testing.assert_array_equal(cr.load_model(d)[0].flat_params, old)
    # the next save clears up after it: no temporaries, no weights that no model.json names
    new = cr.Sequential([cr.Linear(4, 3)], seed=2)
    new.save(d)
    np.testing.assert_array_equal(cr.load_model(d)[0].flat_params, new.flat_params)
    assert sorted(p.name for p in d.iterdir()) == sorted(["model.json", "model.lock", model_files(d)["model"].name,
                                                         old_name])


def test_a_save_interrupted_just_after_its_commit_keeps_the_new_model_whole(tmp_path, monkeypatch):
    """Ctrl-C landing right after model.json was renamed into place: the save, taking it for a
    failed write, deleted the weights the new model.json names (train, spam learn: "not found")."""
    d = tmp_path / "m"
    cr.Sequential([cr.Linear(4, 3)], seed=0).save(d)
    replace = os.replace

    def interrupted_after(src, dst):
        replace(src, dst)
        if Path(dst).name == "model.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(files_module.os, "replace", interrupted_after)
    new = cr.Sequential([cr.Linear(4, 3)], seed=2)
    with pytest.raises(KeyboardInterrupt):
        new.save(d)
    monkeypatch.undo()
    np.testing.assert_array_equal(cr.load_model(d)[0].flat_params, new.flat_params)


def test_load_never_unpickles(tmp_path):
    d = _saved(tmp_path)
    np.savez(_weights(d), params=np.array([object()], dtype=object))
    with pytest.raises(cr.ModelFileError, match="not a readable .npz"):
        cr.load_model(d)


def test_state_round_trip_and_validation():
    a, b = _model(), cr.Sequential([cr.Flatten(), cr.Linear(12, 8), cr.ReLU(), cr.Dropout(0.2), cr.Linear(8, 3)],
                                   input_shape=(3, 4), seed=9)
    b.load_state(a.state())
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    with pytest.raises(cr.ModelFileError, match="expected 131 parameters"):
        b.load_state({"params": np.zeros(3)})
