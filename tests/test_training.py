"""The training loop: learning XOR and real MNIST digits, the NaN guard, reproducibility,
checkpoint/resume, and the record in History (early stopping and gradient flow: test_callbacks.py)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule.checkpoint import checkpoint_summary
from chainrule.data.mnist import load_mnist
from conftest import blas_threads_now, blobs, damaged, small_mlp

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0])


def test_2_3_1_network_learns_xor():
    model = cr.Sequential([cr.Linear(2, 3, init="glorot"), cr.Tanh(), cr.Linear(3, 1, init="glorot")], seed=1)
    opt = cr.SGD(model.parameters(), lr=0.5)
    history = cr.fit(model, XOR_X, XOR_Y, cr.BinaryCrossEntropy(), opt, epochs=1500, batch_size=4,
                     verbose=False)
    np.testing.assert_array_equal(model.predict(XOR_X), XOR_Y)
    assert history["loss"][-1] < 0.05 < history["loss"][0]
    assert history["accuracy"][-1] == 1.0


def test_float_0_1_labels_of_one_output_count_as_labels():
    """PyTorch's BCE takes float targets; the accuracy is reported for them as for integer labels."""
    runs = []
    for y in (XOR_Y, XOR_Y.astype(np.float32)):
        model = cr.Sequential([cr.Linear(2, 3, init="glorot"), cr.Tanh(), cr.Linear(3, 1, init="glorot")], seed=1)
        history = cr.fit(model, XOR_X, y, cr.BinaryCrossEntropy(), cr.SGD(model.parameters(), lr=0.5), epochs=50,
                         batch_size=4, verbose=False)
        runs.append((history["accuracy"], cr.evaluate(model, XOR_X, y, cr.BinaryCrossEntropy())))
    assert runs[0] == runs[1] and "accuracy" in runs[1][1]
    regression = cr.evaluate(model, XOR_X, np.array([0.5, 1.0, 1.0, 0.0]), cr.BinaryCrossEntropy())
    assert "accuracy" not in regression  # soft targets are not labels
    # nor are 0/1 targets of a regression (MSE on a linear output: no cut-off to read classes by)
    assert "accuracy" not in cr.evaluate(model, XOR_X, XOR_Y.astype(np.float32), cr.MeanSquaredError())


def test_integer_targets_of_a_regression_get_no_accuracy():
    """Counts 0..9 regressed with MSE on one linear output were read as classes by the cut-off
    z > 0: a perfect model scored an accuracy of 0.2. One output is a class only where it is a
    probability, whatever the targets' dtype."""
    y = np.arange(10).repeat(10)
    x = y[:, None].astype(np.float32)
    model = cr.Sequential([cr.Linear(1, 1)], seed=0)
    model.layers[0].weight.data[...], model.layers[0].bias.data[...] = 1.0, 0.0  # a perfect regressor
    assert cr.evaluate(model, x, y, cr.MeanSquaredError()) == {"loss": 0.0}
    history = cr.fit(model, x, y, cr.MeanSquaredError(), cr.SGD(model.parameters(), lr=1e-4), epochs=1,
                     verbose=False)
    assert "accuracy" not in history.epochs[-1]
    assert "accuracy" not in cr.evaluate(model, x, y % 2, cr.MeanSquaredError())  # (0/1 integers too)
    # integer labels are classes for several outputs (MSE one-hot encodes them) and for a probability
    assert "accuracy" in cr.evaluate(cr.Sequential([cr.Linear(1, 3)], seed=0), x, y % 3, cr.MeanSquaredError())
    sigmoid = cr.Sequential([cr.Linear(1, 1), cr.Sigmoid()], seed=0)
    assert "accuracy" in cr.evaluate(sigmoid, x, y % 2, cr.MeanSquaredError())
    assert "accuracy" in cr.evaluate(model, x, y % 2, cr.BinaryCrossEntropy())


def test_small_mlp_fits_a_real_mnist_slice(mnist_dir):
    images, labels = load_mnist("train", mnist_dir)
    test_images, test_labels = load_mnist("test", mnist_dir)
    x = images[:4000].reshape(-1, 784).astype(np.float32) / 255
    y = labels[:4000].astype(np.int64)
    x_test = test_images[:2000].reshape(-1, 784).astype(np.float32) / 255
    y_test = test_labels[:2000].astype(np.int64)
    model = cr.Sequential([cr.Linear(784, 128), cr.ReLU(), cr.Linear(128, 10)], seed=0)
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=2e-3), epochs=12,
                     batch_size=32, validation_split=0.1, verbose=False,
                     early_stopping=cr.EarlyStopping(patience=3))
    held_out = (model.predict(x_test) == y_test).mean()
    assert held_out > 0.90, f"held-out accuracy {held_out:.3f}"
    assert cr.evaluate(model, x_test, y_test, cr.CrossEntropy())["accuracy"] == pytest.approx(held_out)
    assert len(history["val_loss"]) == len(history["loss"]) and None not in history["val_loss"]


def test_nan_guard_stops_on_an_absurd_learning_rate_and_keeps_finite_weights():
    x, y = blobs()
    model = small_mlp()
    with np.errstate(all="ignore"), pytest.raises(cr.TrainingDiverged, match=r"epoch \d+, batch \d+"):
        cr.fit(model, x, y, cr.MeanSquaredError(), cr.SGD(model.parameters(), lr=1e12), epochs=5,
               batch_size=16, verbose=False)
    assert np.all(np.isfinite(model.flat_params))
    value, _ = cr.MeanSquaredError()(model.forward(x[:16]), y[:16])
    assert np.isfinite(value)


def test_a_diverging_fit_says_so_in_its_exception_alone():
    """Gradients past float32's range: the gradient statistics (GradientFlow's norms) printed
    NumPy's overflow warning before TrainingDiverged said what happened."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype(np.float32) * 1e30, rng.integers(0, 2, 64)
    model = cr.Sequential([cr.Linear(4, 8), cr.ReLU(), cr.Linear(8, 2)], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(cr.TrainingDiverged):
            cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=1e10), epochs=2, batch_size=16,
                   verbose=False)


def test_a_seed_is_an_integer_and_a_gradient_flow_of_ones_own_is_the_only_one():
    """A seed of several numbers (NumPy takes them) was accepted, and the run failed at its first
    checkpoint, which keeps an integer; a GradientFlow passed in `callbacks` ran beside fit's own,
    and each epoch's statistics came twice (the CSV's rows shifted)."""
    x, y = blobs()
    for seed in ([1, 2], -1, 2.0, True):
        with pytest.raises(ValueError, match="seed must be an integer >= 0 or None"):
            cr.Sequential([cr.Linear(10, 3)], seed=seed)
        model = small_mlp()
        with pytest.raises(ValueError, match="fit: seed must be an integer >= 0 or None"):
            cr.fit(model, x, y, cr.MeanSquaredError(), cr.SGD(model.parameters(), lr=0.1), epochs=1, seed=seed,
                   verbose=False)
    model = small_mlp()
    history = cr.fit(model, x, y, cr.MeanSquaredError(), cr.SGD(model.parameters(), lr=0.1), epochs=3, batch_size=16,
                     verbose=False, callbacks=[cr.GradientFlow()])
    assert len(history.gradient_flow) == 3


def test_gradients_that_overflow_inside_adam_are_a_divergence_though_the_loss_stays_finite():
    """With Adam, a gradient whose square overflows float32 makes v infinite for good: the step of
    those weights is m / inf = 0, they stop moving, and the loss (CrossEntropy's log-softmax stays
    finite on huge scores) never shows it. The epoch's end finds it in the optimizer's moments."""
    x, y = blobs()
    model = cr.Sequential([cr.Linear(10, 32), cr.ReLU(), cr.Linear(32, 32), cr.ReLU(), cr.Linear(32, 32), cr.ReLU(),
                           cr.Linear(32, 3)], seed=0)
    with np.errstate(all="ignore"), pytest.raises(cr.TrainingDiverged, match=r"the gradients \(the optimizer's v\) "
                                                                            r"became inf at epoch 1 \(lr=1e\+08\)"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=1e8), epochs=3, batch_size=16,
               verbose=False, callbacks=[before := _WeightsBeforeEachStep(model)])
    assert np.all(np.isfinite(model.flat_params))
    # as the message says, the weights whose loss was last seen finite: those before the last step
    np.testing.assert_array_equal(model.flat_params, before.seen[-1])


class _WeightsBeforeEachStep(cr.Callback):
    def __init__(self, model):
        self.model, self.seen = model, []

    def on_batch_begin(self, batch):
        self.seen.append(self.model.flat_params.copy())


def test_nan_guard_restores_the_weights_of_the_last_finite_loss_exactly():
    """The weights the guard keeps are those the last batch with a finite loss ran on: the weights
    before the step that made the loss NaN."""
    x, y = blobs()
    model = small_mlp()
    seen = []

    class Before(cr.Callback):
        def on_batch_begin(self, batch):
            seen.append(model.flat_params.copy())

    with np.errstate(all="ignore"), pytest.raises(cr.TrainingDiverged):
        cr.fit(model, x, y, cr.MeanSquaredError(), cr.SGD(model.parameters(), lr=1e12), epochs=5,
               batch_size=16, verbose=False, callbacks=[Before()])
    assert len(seen) >= 2
    np.testing.assert_array_equal(model.flat_params, seen[-2])


def test_nan_guard_restores_batch_norm_running_statistics_with_the_weights():
    """The forward pass whose loss is NaN has folded NaN into BatchNorm's running statistics
    already: the guard puts back those of the last batch with a finite loss (as they stood when the
    NaN batch began), so the model predicts, saves and loads again."""
    x, y = blobs()
    model = cr.Sequential([cr.Linear(10, 8), cr.BatchNorm(8), cr.ReLU(), cr.Linear(8, 3)], seed=0)
    seen = []

    class Before(cr.Callback):
        def on_batch_begin(self, batch):
            seen.append(model.state())

    with np.errstate(all="ignore"), pytest.raises(cr.TrainingDiverged):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=1e30), epochs=5, batch_size=16,
               verbose=False, callbacks=[Before()])
    assert len(seen) >= 2
    np.testing.assert_array_equal(model.flat_params, seen[-2]["params"])
    for key in ("layer1.running_mean", "layer1.running_var"):
        np.testing.assert_array_equal(model.layers[1].buffers[key.split(".")[1]], seen[-1][key])
    assert np.isfinite(model.predict_proba(x[:3])).all()


class AbsurdLastStep(cr.Callback):
    """Takes the run's very last step at learning rate `lr`, keeping the weights it started from."""

    def __init__(self, optimizer, lr: float):
        self.optimizer, self.lr, self.before = optimizer, lr, None

    def on_train_begin(self, model, history, epochs, batches):
        self.model, self.last = model, (epochs - 1, batches - 1)

    def on_epoch_begin(self, epoch):
        self.epoch = epoch

    def on_batch_begin(self, batch):
        if (self.epoch, batch) == self.last:
            self.optimizer.lr = self.lr
            self.before = self.model.flat_params.copy()


@pytest.mark.parametrize("lr,validation,said", [
    (1e30, True, "the validation loss became (nan|inf) at epoch 2"),  # finite but huge weights
    (1e39, False, "the weights became (nan|-?inf) at epoch 2"),  # lr·g overflows float32: no loss saw them
])
def test_a_last_step_that_makes_the_loss_infinite_is_a_divergence_too(lr, validation, said):
    """The guard checks each batch's loss before its step, so the step of the run's last batch went
    unchecked: fit returned a model whose loss was infinite (or whose weights were NaN), and one
    epoch more raised TrainingDiverged. The epoch's end checks the weights and the validation loss."""
    x, y = blobs()
    model = small_mlp()
    optimizer = cr.SGD(model.parameters(), lr=0.1)
    last = AbsurdLastStep(optimizer, lr)
    with np.errstate(all="ignore"), pytest.raises(cr.TrainingDiverged, match=said):
        cr.fit(model, x, y, cr.CrossEntropy(), optimizer, epochs=2, batch_size=64, verbose=False,
               validation_data=(x[:50], y[:50]) if validation else None, callbacks=[last])
    np.testing.assert_array_equal(model.flat_params, last.before)  # the weights before that step
    assert np.isfinite(cr.evaluate(model, x, y, cr.CrossEntropy())["loss"])


def test_fit_refuses_options_it_would_ignore():
    """resume=True without a checkpoint started afresh, and validation_split beside validation_data
    was dropped (the model trained on every example), both without a word."""
    x, y = blobs()
    model = small_mlp()
    for kwargs, message in [
        ({"resume": True}, r"fit: resume=True needs the checkpoint to resume from \(checkpoint=path.npz\)"),
        ({"validation_split": 0.5, "validation_data": (x[:5], y[:5])},
         "fit: validation_split and validation_data both given: hold out a fraction of the training data with "
         "validation_split, or pass validation_data, not both"),
    ]:
        with pytest.raises(ValueError, match=message):
            cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=1, verbose=False, **kwargs)


def test_fit_rejects_nan_inputs_and_bad_arguments():
    x, y = blobs()
    model = small_mlp()
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), verbose=False)
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=0, verbose=False)
    with pytest.raises(ValueError, match="200 examples but y has 10"):
        cr.fit(model, x, y[:10], cr.CrossEntropy(), cr.SGD(model.parameters()), verbose=False)
    x, y = blobs()
    for args, kwargs, message in [
        ((x[:0], y[:0]), {}, "fit: no examples"),
        ((x, y), {"validation_data": (np.where(x > 1, np.inf, x), y)}, "validation_data: the inputs contain NaN"),
        ((x, y), {"validation_data": (x, y[:5])}, "validation_data: x has 200 examples but y has 5"),
        ((x, np.where(y == 1, 7, y)), {}, r"labels must be in \[0, 3\) for the network's 3 outputs, got 0..7"),
        ((x, y), {"lr_schedule": lambda epoch: -0.1}, "lr_schedule gave lr=-0.1 for epoch 1"),
        # refused before training, in a line that says what is wrong (were TypeErrors from inside,
        # or a whole epoch of training before the validation labels were looked at)
        ((x, y), {"epochs": 2.5}, "epochs must be a positive integer, got 2.5"),
        ((x, y), {"batch_size": True}, "batch_size must be a positive integer, got True"),
        ((x, y), {"validation_split": float("nan")}, "validation_split must be a fraction between 0 and 1"),
        ((x, y), {"validation_data": (x,)}, r"validation_data must be a pair \(x_val, y_val\), got a tuple of 1"),
        ((x, y), {"validation_data": x}, r"must be a pair \(x_val, y_val\), got an array of shape \(200, 10\)"),
        ((x, y), {"validation_data": (x, np.where(y == 1, 9, y))}, r"validation_data: labels must be in \[0, 3\)"),
        ((x, y), {"validation_data": (x, y.astype(float))}, "CrossEntropy's targets are integer class labels"),
        ((x, y > 0), {}, "CrossEntropy's targets are integer class labels, got bool values"),  # (not in batch 1)
        # (were AttributeErrors from inside fit)
        ((x, y), {"early_stopping": "val_loss"}, "early_stopping must be an EarlyStopping, got a str"),
        ((x, y), {"callbacks": [3]}, "callbacks must be a list of Callback objects, got a list of 1"),
        ((x, y), {"callbacks": cr.GradientFlow()}, "callbacks must be a list of Callback objects, got a GradientFlow"),
    ]:
        with pytest.raises(ValueError, match=message):
            cr.fit(model, *args, cr.CrossEntropy(), cr.SGD(model.parameters()), verbose=False, **kwargs)
    with pytest.raises(ValueError, match="the targets contain NaN"):
        cr.fit(model, x, np.full((200, 3), np.nan), cr.MeanSquaredError(), cr.SGD(model.parameters()), verbose=False)
    one = cr.Sequential([cr.Linear(10, 1)], seed=0)  # BCE's targets are probabilities of class 1
    with pytest.raises(ValueError, match=r"BinaryCrossEntropy's targets are from 0 to 1 \(the probability of "
                                         r"class 1\), got 0..2"):
        cr.fit(one, x, (y > 0) * 2, cr.BinaryCrossEntropy(), cr.SGD(one.parameters()), verbose=False)


def test_inputs_the_models_dtype_cannot_hold_and_targets_the_loss_cannot_score_are_refused_before_training():
    """Refused in a line before the first step, where they were blamed on the learning rate (a
    float64 value beyond float32's range, a None among the inputs), or found mid-epoch after
    weights had changed (an MSE label past the outputs), or crashed in the accuracy count (0/1
    integer targets of several outputs are not class labels)."""
    x, y = blobs()
    model = small_mlp()
    before = model.flat_params.copy()
    big = x.astype(np.float64)
    big[5, 1] = 1e39  # (finite in float64, inf in the model's float32)
    with pytest.raises(ValueError, match="fit: the inputs hold values beyond the model's float32"):
        cr.fit(model, big, y, cr.CrossEntropy(), cr.SGD(model.parameters()), verbose=False)
    with pytest.raises(ValueError, match="evaluate: the inputs hold values beyond the model's float32"):
        cr.evaluate(model, big, y, cr.CrossEntropy())
    listed = x.tolist()
    listed[0][0] = None  # (a missing value)
    with pytest.raises(ValueError, match="fit: the inputs must be numbers, got None"):
        cr.fit(model, listed, y, cr.CrossEntropy(), cr.SGD(model.parameters()), verbose=False)
    listed[0][0] = "a"
    with pytest.raises(ValueError, match="fit: the inputs must be numbers"):
        cr.fit(model, listed, y, cr.CrossEntropy(), cr.SGD(model.parameters()), verbose=False)
    with pytest.raises(ValueError, match=r"fit: labels must be in \[0, 3\) for the network's 3 outputs, got 0..7"):
        cr.fit(model, x, np.where(y == 1, 7, y), cr.MeanSquaredError(), cr.SGD(model.parameters()), verbose=False)
    np.testing.assert_array_equal(model.flat_params, before)
    # several 0/1 targets per example (multi-label, BCE on each output) train, with no accuracy
    multi = cr.Sequential([cr.Linear(10, 3)], seed=0)
    targets = (x[:, :3] > 0).astype(np.int64)
    history = cr.fit(multi, x, targets, cr.BinaryCrossEntropy(), cr.Adam(multi.parameters()), epochs=2,
                     verbose=False)
    assert "accuracy" not in history.epochs[-1] and "accuracy" not in cr.evaluate(multi, x, targets,
                                                                                  cr.BinaryCrossEntropy())


class _CountBatches(cr.Callback):
    def __init__(self):
        self.batches = 0

    def on_batch_end(self, batch, logs):
        self.batches += 1


_X, _Y = blobs()
WRONG_BEFORE_THE_FIRST_STEP = {
    # (the training x was named by its first batch's shape, (16, 9); validation data and a folder
    # were found after the first epoch, its training lost)
    "training x": ((_X[:, :9], _Y), {}, r"fit: x: expected a batch of shape \(N, 10\), got shape \(200, 9\)$"),
    "validation x": ((_X, _Y), {"validation_data": (_X[:20, :9], _Y[:20])},
                     r"fit: validation_data: x: expected a batch of shape \(N, 10\), got shape \(20, 9\)$"),
    "validation labels": ((_X, _Y), {"validation_data": (_X[:20], np.stack([_Y[:20]] * 2, 1))},
                          r"fit: validation_data: CrossEntropy's targets are one class label per example, "
                          r"shape \(N,\), got shape \(20, 2\)$"),
    "validation targets": ((_X, np.eye(3)[_Y]), {"validation_data": (_X[:20], np.ones((20, 2))),
                                                 "loss": cr.MeanSquaredError()},
                           r"fit: validation_data: MeanSquaredError's targets must have the network's output "
                           r"shape \(N, 3\) \(or be integer class labels, shape \(N,\)\), got shape \(20, 2\)$"),
    "training targets": ((_X, np.ones((200, 2))), {"loss": cr.MeanSquaredError()},
                         r"fit: MeanSquaredError's targets must have the network's output shape \(N, 3\) "
                         r"\(or be integer class labels, shape \(N,\)\), got shape \(200, 2\)$"),
    "a folder": ((_X, _Y), {"checkpoint": "."}, r"fit: checkpoint must be the path of a file \(run.npz, say\), "
                                                r"got the folder '.'$"),
    "a named folder": ((_X, _Y), {"checkpoint": Path("runs")}, r"fit: checkpoint must be the path of a file "
                                                               r"\(run.npz, say\), got the folder 'runs'$"),
    "no path": ((_X, _Y), {"checkpoint": 3}, r"fit: checkpoint must be the path of a file \(run.npz, say\), "
                                             r"got 3$"),
}


@pytest.mark.parametrize("wrong", WRONG_BEFORE_THE_FIRST_STEP)
def test_what_can_be_checked_before_the_first_step_is(wrong, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (x, y), kwargs, said = WRONG_BEFORE_THE_FIRST_STEP[wrong]
    model, counted = small_mlp(), _CountBatches()
    before = model.flat_params.copy()
    loss = kwargs.pop("loss", cr.CrossEntropy())
    with pytest.raises(ValueError, match=said):
        cr.fit(model, x, y, loss, cr.SGD(model.parameters()), batch_size=16, callbacks=[counted], verbose=False,
               **kwargs)
    assert counted.batches == 0
    np.testing.assert_array_equal(model.flat_params, before)
    assert [p.name for p in tmp_path.rglob("*")] == ["runs"]  # (nothing written)


def test_a_checkpoint_that_could_never_be_written_is_refused_before_the_first_step(tmp_path):
    # (a file where its folder should be was found when the first epoch's checkpoint was written:
    # NotADirectoryError, that epoch's training lost)
    (tmp_path / "notes.txt").write_text("mine")
    model, counted = small_mlp(), _CountBatches()
    for checkpoint, problem in ((tmp_path / "notes.txt" / "run.npz", "exists and is not a folder"),
                                (tmp_path / "notes.txt" / "runs" / "run.npz", f"{tmp_path / 'notes.txt'} is a file, "
                                                                              "not a folder")):
        with pytest.raises(ValueError, match=f"^fit: checkpoint {re.escape(str(checkpoint))}: its folder "
                                             f"{re.escape(problem)}$"):
            cr.fit(model, _X, _Y, cr.CrossEntropy(), cr.SGD(model.parameters()), batch_size=16,
                   callbacks=[counted], verbose=False, checkpoint=checkpoint)
    assert counted.batches == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_evaluate_names_data_of_the_wrong_shape_by_its_shape():
    x, y = blobs()
    model = small_mlp()
    with pytest.raises(ValueError, match=r"evaluate: x: expected a batch of shape \(N, 10\), got shape \(200, 9\)"):
        cr.evaluate(model, x[:, :9], y, cr.CrossEntropy())
    with pytest.raises(ValueError, match=r"evaluate: CrossEntropy's targets are one class label per example"):
        cr.evaluate(model, x, y[:, None], cr.CrossEntropy())


NOT_NUMBERS = {  # (NumPy's errors from inside, "ufunc 'minimum' did not contain a loop ...", "'<=' not
    # supported between instances of 'NoneType' and 'int'", or complex targets' imaginary parts dropped)
    "text": (np.array(["0", "1"] * 100), r"the targets must be numbers, got text \(<U1\): class labels are "
                                         r"numbers 0, 1, \.\.\.$"),
    "None": ([None, 1] * 100, r"the targets must be numbers, got None \(a missing value: fill or drop it first\)$"),
    "objects": (np.array(["a", 1] * 100, dtype=object), r"the targets must be numbers \(could not convert string"),
    "complex": (np.ones(200, complex), "the targets must be real numbers, got complex128$"),
    "masked": (np.ma.masked_equal(np.tile([0.0, 1.0], 100), 0),
               "the targets are a masked array: fill or drop the masked values first$"),
    # (blamed on the learning rate: the loss became inf in the model's float32)
    "too large": (np.tile([0.0, 1e39], 100),
                  r"the targets hold values beyond the model's float32 range \(0\.\.1e\+39\)$"),
}


@pytest.mark.parametrize("kind", NOT_NUMBERS)
def test_targets_that_are_not_numbers_the_model_holds_are_refused_in_a_line(kind):
    x, _ = blobs()
    targets, said = NOT_NUMBERS[kind]
    loss = cr.MeanSquaredError() if kind == "too large" else cr.BinaryCrossEntropy()
    model = cr.Sequential([cr.Linear(10, 1)], seed=0)
    before = model.flat_params.copy()
    with pytest.raises(ValueError, match=f"^fit: {said}"):
        cr.fit(model, x, targets, loss, cr.SGD(model.parameters()), verbose=False)
    with pytest.raises(ValueError, match=f"^fit: validation_data: {said}"):
        cr.fit(model, x, np.tile([0, 1], 100), loss, cr.SGD(model.parameters()), verbose=False,
               validation_data=(x, targets))
    with pytest.raises(ValueError, match=f"^evaluate: {said}"):
        cr.evaluate(model, x, targets, loss)
    np.testing.assert_array_equal(model.flat_params, before)


def test_evaluate_refuses_a_batch_size_that_is_not_a_positive_integer():
    x, y = blobs()
    model = small_mlp()
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"evaluate: batch_size must be a positive integer, got {bad!r}"):
            cr.evaluate(model, x, y, cr.CrossEntropy(), batch_size=bad)


@pytest.mark.parametrize("option", ["shuffle", "resume", "verbose"])
def test_fit_refuses_a_flag_that_is_no_flag(option, tmp_path):
    """shuffle="no" shuffled, and resume="no" resumed: any value Python counts as true was True."""
    x, y = blobs()
    model = small_mlp()
    options = {"verbose": False, "checkpoint": tmp_path / "run.npz", option: "no"}
    with pytest.raises(ValueError, match=f"fit: {option} must be True or False, got 'no'"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), **options)


def test_fit_and_evaluate_name_a_loss_an_optimizer_or_a_schedule_of_the_wrong_kind():
    """A loss class, None or a loss's name failed inside the loop ("'NoneType' object is not
    callable", "takes from 1 to 2 positional arguments"); the class Adam was said not to be built on
    the model's parameters; lr_schedule=0.1 failed at the first epoch ("'float' object is not callable")."""
    x, y = blobs()
    model = small_mlp()
    for loss, shown in ((cr.CrossEntropy, "<class 'chainrule.losses.CrossEntropy'>"), (None, "None"),
                        ("cross_entropy", "'cross_entropy'")):
        said = f"loss must be a loss object, e.g. CrossEntropy(), or a function (output, target) -> (value, grad), " \
               f"got {shown}"
        with pytest.raises(ValueError, match=f"fit: {re.escape(said)}"):
            cr.fit(model, x, y, loss, cr.SGD(model.parameters()), verbose=False)
        with pytest.raises(ValueError, match=f"evaluate: {re.escape(said)}"):
            cr.evaluate(model, x, y, loss)
    with pytest.raises(ValueError, match=re.escape("fit: optimizer must be an optimizer built on the model's "
                                                   "parameters, e.g. Adam(model.parameters()), got "
                                                   "<class 'chainrule.optim.Adam'>")):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam, verbose=False)
    with pytest.raises(ValueError, match=re.escape("fit: lr_schedule must be a function epoch -> lr, e.g. "
                                                   "step_decay(0.1, 10), got 0.1")):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), lr_schedule=0.1, verbose=False)


def test_fit_seeds_the_dropout_of_a_model_that_has_no_seed_of_its_own(tmp_path):
    """A loaded model's generator is unseeded: two runs of fit(seed=5) drew other dropout masks."""
    x, y = blobs()
    cr.Sequential([cr.Linear(10, 16), cr.ReLU(), cr.Dropout(0.5), cr.Linear(16, 3)], seed=0).save(tmp_path / "m")
    weights = []
    for _ in range(2):
        model, _ = cr.load_model(tmp_path / "m")
        cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=2, seed=5, verbose=False)
        weights.append(model.flat_params.copy())
    assert np.array_equal(*weights)


def test_fit_refuses_an_optimizer_that_does_not_move_this_models_weights():
    """Built on another model, or on this one before `to(dtype)` repacked its weights: such an
    optimizer would step other arrays, and the model would silently not learn."""
    x, y = blobs()
    model = small_mlp()
    stale = cr.Adam(model.parameters())
    model.to(np.float64)
    for optimizer in (stale, cr.Adam(small_mlp().parameters())):
        with pytest.raises(ValueError, match="optimizer was not built on this model's parameters"):
            cr.fit(model, x, y, cr.CrossEntropy(), optimizer, verbose=False)


def test_evaluate_checks_its_data_like_fit():
    x, y = blobs()
    model = small_mlp()
    with pytest.raises(ValueError, match="evaluate: x has 200 examples but y has 400"):
        cr.evaluate(model, x, np.concatenate([y, y]), cr.CrossEntropy())
    with pytest.raises(ValueError, match="evaluate: no examples"):
        cr.evaluate(model, x[:0], y[:0], cr.CrossEntropy())
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="evaluate: the inputs contain NaN or infinity"):
        cr.evaluate(model, x, y, cr.CrossEntropy())


def test_a_class_weighted_loss_of_a_whole_set_does_not_depend_on_the_batches():
    # Σ w_y · nll / Σ w_y over the set, however it is cut: a batch counts by its weight, not its size
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    model = cr.Sequential([cr.Linear(3, 3)], seed=0, dtype=np.float64)
    loss = cr.CrossEntropy(class_weight=[1.0, 5.0, 0.2])
    whole, _ = loss(model.forward(x), y)
    for batch_size in (1000, 7, 1):
        assert cr.evaluate(model, x, y, loss, batch_size=batch_size)["loss"] == pytest.approx(whole, rel=1e-12)
    # an epoch's loss too (a learning rate so small that no weight moves in float64)
    history = cr.fit(model, x, y, loss, cr.SGD(model.parameters(), lr=1e-300), epochs=1, batch_size=7,
                     shuffle=False, verbose=False)
    assert history["loss"][0] == pytest.approx(whole, rel=1e-12)
    with pytest.raises(ValueError, match=r"evaluate: labels must be in \[0, 3\)"):  # (checked like fit's)
        cr.evaluate(model, x, np.full(50, 3), loss)
    # a loss that is a plain function still works, its batches counted by their examples
    plain = cr.CrossEntropy()
    assert cr.evaluate(model, x, y, lambda out, target: plain(out, target), batch_size=7)["loss"] == \
        pytest.approx(cr.evaluate(model, x, y, plain)["loss"], rel=1e-12)


def test_one_example_left_over_joins_the_last_batch_so_batch_norm_can_train_on_it():
    """33 examples in batches of 32: one step of 33 (a batch of one would make batch norm's
    variance 0 and its output β); 34: steps of 32 and 2."""
    rng = np.random.default_rng(0)
    sizes = []

    class Sizes(cr.Callback):
        def on_batch_end(self, batch, logs):
            sizes.append(logs["examples"])

    for n in (33, 34):
        x = (rng.normal(size=(n, 4)) * 3 + 2).astype(np.float32)
        model = cr.Sequential([cr.BatchNorm(4), cr.Linear(4, 2)], input_shape=(4,), seed=0)
        cr.fit(model, x, rng.integers(0, 2, n), cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=1,
               batch_size=32, verbose=False, callbacks=[Sizes()])
    assert sizes == [33, 32, 34]


def _train(model_seed, epochs=3, **kw):
    x, y = blobs()
    model = small_mlp(seed=model_seed, dropout=0.3)
    cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=epochs, batch_size=16,
           validation_split=0.2, verbose=False, **kw)
    return model


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = _train(5), _train(5), _train(6)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.allclose(a.flat_params, c.flat_params)
    # the same initialisation but a different shuffling/dropout seed also changes the result
    d = _train(5, seed=7)
    assert not np.allclose(a.flat_params, d.flat_params)


def test_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path):
    x, y = blobs()

    def run(epochs, checkpoint=None, resume=False):
        model = small_mlp(seed=3, dropout=0.2)
        opt = cr.Adam(model.parameters(), lr=0.01)
        history = cr.fit(model, x, y, cr.CrossEntropy(), opt, epochs=epochs, batch_size=16, validation_split=0.2,
                         lr_schedule=cr.cosine(0.01, 6), early_stopping=cr.EarlyStopping(patience=100),
                         checkpoint=checkpoint, resume=resume, verbose=False)
        return model, history

    straight, straight_history = run(6)
    ckpt = tmp_path / "run.npz"
    run(3, checkpoint=ckpt)
    assert ckpt.exists()
    resumed, resumed_history = run(6, checkpoint=ckpt, resume=True)
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)
    assert resumed_history["loss"] == straight_history["loss"]
    assert resumed_history["val_loss"] == straight_history["val_loss"]
    assert resumed_history.best_epoch == straight_history.best_epoch


class _StopAfterOne(cr.Callback):
    def on_epoch_end(self, epoch, logs, model):
        return True


def _stopped_early_run(checkpoint, resume=False):
    x, y = blobs()
    model = small_mlp(seed=0)
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=5, batch_size=16,
                     callbacks=[_StopAfterOne()], checkpoint=checkpoint, resume=resume, verbose=False)
    return model, history


def test_a_run_that_stopped_early_resumes_as_finished_whatever_its_stop_reason_says(tmp_path):
    """Resuming told a run that had stopped early by the words of its stop reason ("early stopping
    after epoch 1"): reworded, the run would have trained on. `History.stopped_early` says it, saved
    in the checkpoint; a checkpoint written before the field is read from its stop reason."""
    checkpoint = tmp_path / "run.npz"
    model, history = _stopped_early_run(checkpoint)
    assert history.stopped_early and history.to_dict()["stopped_early"] is True
    assert checkpoint_summary(checkpoint)["stopped_early"] is True
    for change in (lambda d: d["history"].__setitem__("stop_reason", "stopped by a callback"),  # reworded
                   lambda d: d["history"].pop("stopped_early")):  # a checkpoint from before the field
        _stopped_early_run(checkpoint)  # (afresh)
        _edit_doc(checkpoint, change)
        resumed, history = _stopped_early_run(checkpoint, resume=True)
        assert len(history) == 1 and history.stopped_early  # no epoch more
        np.testing.assert_array_equal(resumed.flat_params, model.flat_params)
    assert not _fit_with_checkpoint(tmp_path / "other.npz").stopped_early  # (the epoch limit)


def _fit_with_checkpoint(checkpoint, epochs=2, resume=False, width=16):
    x, y = blobs()
    model = cr.Sequential([cr.Linear(10, width), cr.ReLU(), cr.Linear(width, 3)], seed=0)
    return cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=epochs,
                  batch_size=16, validation_split=0.2, early_stopping=cr.EarlyStopping(patience=100),
                  checkpoint=checkpoint, resume=resume, verbose=False)


def _rewrite(checkpoint, json_bytes=None, **arrays):
    """The checkpoint with some arrays replaced (None: removed) or its JSON part replaced."""
    with np.load(checkpoint, allow_pickle=False) as npz:
        saved = {k: npz[k] for k in npz.files}
    if json_bytes is not None:
        saved["json"] = np.frombuffer(json_bytes, np.uint8)
    saved.update(arrays)
    np.savez(checkpoint, **{k: v for k, v in saved.items() if v is not None})


def _edit_doc(checkpoint, change):
    with np.load(checkpoint, allow_pickle=False) as npz:
        doc = json.loads(npz["json"].tobytes())
    change(doc)
    _rewrite(checkpoint, json.dumps(doc).encode())


DAMAGED_CHECKPOINTS = {
    "not a zip": lambda c: c.write_bytes(b"PK\x03\x04 and nothing else"),
    "truncated": lambda c: c.write_bytes(c.read_bytes()[:-300]),
    "not json": lambda c: _rewrite(c, b"{not json"),
    "json nested deep": lambda c: _rewrite(c, b"[" * 100_000 + b"]" * 100_000),
    "epochs as text": lambda c: _edit_doc(c, lambda d: d.__setitem__("epochs_done", "2")),
    "history not an object": lambda c: _edit_doc(c, lambda d: d.__setitem__("history", [1, 2])),
    "epochs not dicts": lambda c: _edit_doc(c, lambda d: d["history"].__setitem__("epochs", [1, 2])),
    "stop reason a number": lambda c: _edit_doc(c, lambda d: d["history"].__setitem__("stop_reason", 3)),
    "stopped early a string": lambda c: _edit_doc(c, lambda d: d["history"].__setitem__("stopped_early", "yes")),
    "epochs_done beyond its history": lambda c: _edit_doc(c, lambda d: d.__setitem__("epochs_done", 3)),
    "random state garbage": lambda c: _edit_doc(c, lambda d: d.__setitem__("shuffle_rng", {"state": 1})),
    "early stopping garbage": lambda c: _edit_doc(c, lambda d: d.__setitem__("early_stopping", {"best": "x"})),
    "no optimizer state": lambda c: _rewrite(c, **{"optim.m": None}),
    "no json": lambda c: _rewrite(c, json=None),
    "another network's": lambda c: _fit_with_checkpoint(c, width=17),
    "50 MB of parameters": lambda c: _rewrite(c, **{"model.params": np.zeros(12_500_000, np.float32)}),
    "NaN weights": lambda c: _rewrite(c, **{"model.params": np.load(c)["model.params"] * np.nan}),
    "integer weights": lambda c: _rewrite(c, **{"model.params": np.load(c)["model.params"].astype(np.int32)}),
    # (finite as float64, infinite once cast into the float32 network: it loaded, and training diverged)
    "weights beyond float32": lambda c: _rewrite(c, **{"model.params": np.load(c)["model.params"] * np.float64(1e300)}),
}



def test_a_resumed_unseeded_run_holds_out_the_same_validation_examples(tmp_path):
    """Without a seed (a loaded model has none), a resumed run split the data afresh: it trained on
    15 of the 20 examples the first run had held out for validation."""
    rng = np.random.default_rng(0)
    x = np.column_stack([np.arange(100), rng.normal(size=100)]).astype(np.float32)  # column 0: each example's id
    y = (x[:, 1] > 0).astype(np.int64)
    seen: list[set] = []

    def record(xb, rng):  # augment sees every training batch
        seen[-1].update(xb[:, 0].astype(int).tolist())
        return xb

    def run(epochs: int) -> None:
        seen.append(set())
        model = cr.Sequential([cr.Linear(2, 4), cr.ReLU(), cr.Linear(4, 2)])  # no seed, and none given to fit
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.01), epochs=epochs, batch_size=10,
               validation_split=0.2, augment=record, verbose=False, checkpoint=tmp_path / "run.npz", resume=True)

    run(2)
    run(4)  # epochs 3 and 4, from the checkpoint
    assert len(seen[0]) == 80 and seen[1] == seen[0]

def test_resuming_with_fewer_epochs_than_the_checkpoint_holds_is_refused_before_anything_runs(tmp_path):
    """Resumed with epochs=2 from a checkpoint of 3 epochs, fit trained nothing and returned the 3
    epochs, the stop reason of a run still going on (""), the checkpoint left unfinished."""
    checkpoint = tmp_path / "run.npz"
    _fit_with_checkpoint(checkpoint, epochs=3)
    before = checkpoint.read_bytes()
    x, y = blobs()
    model = cr.Sequential([cr.Linear(10, 16), cr.ReLU(), cr.Linear(16, 3)], seed=0)
    initial = model.flat_params.copy()
    with pytest.raises(ValueError, match=r"^fit: the checkpoint .*run\.npz holds 3 epochs, more than epochs=2: "
                                         r"resume it with epochs >= 3, or delete it to start afresh$"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=2, batch_size=16,
               validation_split=0.2, checkpoint=checkpoint, resume=True, verbose=False)
    np.testing.assert_array_equal(model.flat_params, initial)  # nothing restored
    assert checkpoint.read_bytes() == before
    assert len(_fit_with_checkpoint(checkpoint, epochs=3, resume=True)) == 3  # (as many: the run, finished)


@pytest.mark.parametrize("damage", DAMAGED_CHECKPOINTS)
def test_resuming_from_a_damaged_checkpoint_is_a_model_file_error(tmp_path, damage):
    checkpoint = tmp_path / "checkpoint.npz"
    _fit_with_checkpoint(checkpoint)
    DAMAGED_CHECKPOINTS[damage](checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(cr.ModelFileError, match="checkpoint.npz: not a .*delete it to start afresh"):
        _fit_with_checkpoint(checkpoint, epochs=3, resume=True)
    assert checkpoint.read_bytes() == before  # refused, not overwritten


@pytest.mark.parametrize("damage", DAMAGED_CHECKPOINTS)
def test_a_damaged_checkpoints_summary_is_none_or_what_resuming_reads(tmp_path, damage):
    """`checkpoint_summary` (how `images train` tells a finished run from an unfinished one, and where
    an unseeded run's seed comes from) reads no more than resuming does: JSON nested too deep for the
    parser raised RecursionError through it, an internal error of `images train --out`."""
    checkpoint = tmp_path / "checkpoint.npz"
    _fit_with_checkpoint(checkpoint)
    DAMAGED_CHECKPOINTS[damage](checkpoint)
    summary = checkpoint_summary(checkpoint)
    assert summary is None or set(summary) == {"epochs_done", "stop_reason", "stopped_early", "seed"}


def test_callbacks_given_as_a_generator_are_called():
    """A generator of callbacks was used up by the check that they are callbacks, and none was called."""
    ends = []

    class Count(cr.Callback):
        def on_epoch_end(self, epoch, logs, model):
            ends.append(epoch)

    x, y = blobs()
    model = cr.Sequential([cr.Linear(10, 8), cr.ReLU(), cr.Linear(8, 3)], seed=0)
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.01), epochs=2, verbose=False,
           callbacks=(cb for cb in [Count()]))
    assert ends == [0, 1]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_damage_to_a_checkpoints_bytes_is_refused_or_resumed(tmp_path_factory, data):
    """Bytes of a checkpoint cut, changed or inserted at random: resuming raises ModelFileError
    (leaving the file as it was) or trains on; never another exception."""
    checkpoint = tmp_path_factory.mktemp("ck") / "checkpoint.npz"
    _fit_with_checkpoint(checkpoint)
    checkpoint.write_bytes(damaged(checkpoint.read_bytes(), data))  # (its length varies: it records times)
    before = checkpoint.read_bytes()
    try:
        history = _fit_with_checkpoint(checkpoint, epochs=3, resume=True)
    except cr.ModelFileError:
        assert checkpoint.read_bytes() == before
        return
    except cr.TrainingDiverged:  # (changed weights may be huge: the maths blew up, as it may)
        return
    assert len(history.epochs) == 3


def test_history_records_metrics_and_gradient_flow():
    x, y = blobs()
    model = small_mlp()
    schedule = cr.step_decay(0.05, 2, 0.5)
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     epochs=4, batch_size=20, validation_split=0.25, lr_schedule=schedule, verbose=False)
    assert len(history) == 4 and len(history.gradient_flow) == 4
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "samples_per_s"):
        assert None not in history[key], key
    assert history["lr"] == [schedule(e) for e in range(4)]
    assert history["loss"][-1] < history["loss"][0]
    flow = history.gradient_flow[-1]
    assert set(flow) == {"0:Linear", "1:ReLU", "2:Linear"}
    for layer in ("0:Linear", "2:Linear"):
        assert flow[layer]["grad_norm"] > 0 and 0 < flow[layer]["update_ratio"] < 1
    assert 0 <= flow["1:ReLU"]["dead_fraction"] <= 1
    csv = history.to_csv().splitlines()
    assert len(csv) == 5 and "grad_norm" in csv[0]
    report = history.gradient_report()
    assert "0:Linear" in report and "EXPLODING" not in report


class _MetricsOfOnesOwn(cr.Callback):
    """Adds metrics as NumPy computes them, as EarlyStopping's docstring invites (a "val_f1")."""

    def __init__(self, **values):
        self.values = values

    def on_epoch_end(self, epoch, logs, model):
        logs.update(self.values)
        logs["val_f1"] = np.mean(np.array([0.5, 0.25 * epoch], np.float32))  # a NumPy float32
        logs["val_errors"] = np.sum(np.arange(3) > epoch)  # a NumPy int64
        logs["improved"] = np.bool_(epoch > 0)


def test_metrics_a_callback_adds_as_numpy_scalars_are_kept_as_python_numbers(tmp_path):
    """A callback's metric computed with NumPy (a float32 F1, an int64 count of errors) failed the
    epoch's checkpoint: "TypeError: Object of type float32 is not JSON serializable", the epoch's
    training lost. An epoch's logs hold Python numbers, whatever a callback put there."""
    x, y = blobs()
    checkpoint = tmp_path / "run.npz"

    def run(epochs, resume=False):
        model = small_mlp()
        return cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=epochs,
                      batch_size=32, validation_split=0.2, callbacks=[_MetricsOfOnesOwn(val_auc=np.array(0.75))],
                      early_stopping=cr.EarlyStopping(monitor="val_f1", patience=5), checkpoint=checkpoint,
                      resume=resume, verbose=False)

    history = run(2)
    assert history["val_f1"] == [0.25, 0.375] and history["val_errors"] == [2, 1]
    assert history["improved"] == [False, True] and history["val_auc"] == [0.75, 0.75]
    assert {type(v) for e in history for k, v in e.items() if k != "improved"} <= {int, float}
    assert {type(v) for v in history["improved"]} == {bool} and history.best_epoch == 1
    assert checkpoint_summary(checkpoint)["epochs_done"] == 2
    json.dumps(history.to_dict(), allow_nan=False)
    history.save_csv(tmp_path / "history.csv")
    with open(tmp_path / "history.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert [first[k] for k in ("val_auc", "val_f1", "val_errors", "improved")] == ["0.75", "0.25", "2", "False"]
    assert run(3, resume=True)["val_f1"] == [0.25, 0.375, 0.5]


@pytest.mark.parametrize("value,kind", [("0.9", "a str"), (None, "a NoneType"), (np.array([0.5, 0.6]),
                                        r"an array of shape \(2,\)"), (1j, "a complex"), ([0.5], "a list of 1")])
def test_an_epoch_log_that_is_no_number_is_refused_in_a_line_that_names_it(tmp_path, value, kind):
    """What is no number would fail the checkpoint (or later, the progress line or a reader of the
    history): refused at the end of the epoch, naming the key and the callback that put it there."""
    x, y = blobs()
    model = small_mlp()
    checkpoint = tmp_path / "run.npz"
    with pytest.raises(ValueError, match=rf"^fit: _MetricsOfOnesOwn put 'val_note' in the epoch logs as {kind}; "
                                         r"epoch logs are numbers \(int, float or bool\), kept in the History "
                                         r"and its checkpoints$"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.01), epochs=2, verbose=False,
               callbacks=[_MetricsOfOnesOwn(val_note=value)], checkpoint=checkpoint)
    assert not checkpoint.exists()


def test_float64_training_keeps_float64():
    x, y = blobs()
    model = small_mlp(dtype=np.float64)
    cr.fit(model, x.astype(np.float64), y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=2,
           verbose=False)
    assert model.flat_params.dtype == np.float64
    assert model.forward(x[:3]).dtype == np.float64
    assert all(p.data.dtype == np.float64 for p in model.parameters())


def test_a_callback_can_stop_training_and_augment_sees_each_batch():
    class StopAfterTwo(cr.Callback):
        def on_epoch_end(self, epoch, logs, model):
            return epoch == 1

    seen = []

    def augment(xb, rng):
        seen.append(len(xb))
        return xb + rng.normal(scale=0.01, size=xb.shape).astype(xb.dtype)

    x, y = blobs()
    model = small_mlp()
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=10, batch_size=64,
                     callbacks=[StopAfterTwo()], augment=augment, verbose=False)
    assert len(history) == 2
    assert seen == [64, 64, 64, 8] * 2


def test_verbose_training_prints_epochs_and_the_gradient_report(capsys):
    x, y = blobs()
    model = small_mlp()
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=2, verbose=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "epoch 2/2" in text and "gradient flow" in text


class _BlasThreadsSeen(cr.Callback):
    """Records NumPy's BLAS thread count at every batch; stops training after `seconds`."""

    def __init__(self, seconds: float):
        self.seconds, self.seen, self.start = seconds, set(), None

    def on_batch_end(self, batch, logs):
        self.seen.add(blas_threads_now())

    def on_epoch_end(self, epoch, logs, model):
        self.start = self.start or time.monotonic()
        return time.monotonic() - self.start > self.seconds


def test_fit_gives_blas_the_cores_another_process_leaves_and_restores_them(mnist_dir):
    """On 2 cores with a competing process, OpenBLAS's two spinning threads stall each step; fit
    lets BLAS keep to the one free core meanwhile, and gives back its count at the end."""
    start = blas_threads_now()
    if not os.path.exists("/proc/stat") or (os.cpu_count() or 1) != 2 or start != 2:
        pytest.skip("needs Linux's /proc/stat, 2 cores and a BLAS with 2 threads")
    images, labels = load_mnist("train", mnist_dir)
    x, y = images[:2000].reshape(-1, 784).astype(np.float32) / 255, labels[:2000].astype(np.int64)
    model = cr.Sequential([cr.Linear(784, 256), cr.ReLU(), cr.Linear(256, 10)], seed=0)
    seen = _BlasThreadsSeen(seconds=2.0)
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters()), epochs=1000, batch_size=64,
               verbose=False, callbacks=[seen])
    finally:
        competitor.kill()
        competitor.wait()
    assert 1 in seen.seen
    assert blas_threads_now() == start


_PAGE_FAULTS_PER_STEP = """
import resource, sys
import numpy as np
import chainrule as cr
from chainrule.data.mnist import load_mnist

images, labels = load_mnist("train", sys.argv[1])
x, y = images[:1280, None].astype(np.float32), labels[:1280].astype(np.int64)
x /= 255  # (in place: a temporary freed here would change glibc's thresholds before fit does)
model = cr.Sequential([cr.Conv2D(1, 6, 5, padding=2), cr.ReLU(), cr.MaxPool2D(2), cr.Conv2D(6, 16, 5), cr.ReLU(),
                       cr.MaxPool2D(2), cr.Flatten(), cr.Linear(400, 10)], input_shape=(1, 28, 28), seed=0)
faults = []

class Faults(cr.Callback):
    def on_batch_end(self, batch, logs):
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters()), epochs=2, batch_size=128, verbose=False,
       callbacks=[Faults()])
print(int(np.median(np.diff(faults)[5:])))
"""


def test_training_steps_reuse_the_memory_the_steps_before_them_freed(mnist_dir):
    """Each step allocates its layers' outputs and gradients afresh; with glibc's default
    thresholds the freed top of the heap went back to the kernel and came back a page fault per
    4 KB page (hundreds a step for a small LeNet). Run in a fresh process: the thresholds are
    process-wide, and other tests have trained in this one already."""
    if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        pytest.skip("glibc's malloc only")
    run = subprocess.run([sys.executable, "-c", _PAGE_FAULTS_PER_STEP, str(mnist_dir)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 20  # minor page faults in a median step


def test_a_prediction_in_another_thread_changes_nothing_of_a_training():
    """The layers keep what backward (and GradientFlow, after it) reads: a prediction between the
    two passes replaced it (the loss went 0.67 -> 10.1, and dead units read 0% where half were)."""
    import sys
    import threading

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)

    def train(reader: bool):
        model = cr.Sequential([cr.Linear(20, 64), cr.ReLU(), cr.Linear(64, 2)], seed=0)
        model.layers[0].bias.data[32:] = -100  # half the hidden units dead
        stop = threading.Event()
        thread = threading.Thread(target=lambda: [model.predict(x[:32] * 100) for _ in iter(stop.is_set, True)])
        if reader:
            thread.start()
        try:
            history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.05), epochs=2,
                             batch_size=32, verbose=False)
        finally:
            stop.set()
            if reader:
                thread.join()
        return history["loss"], [e["1:ReLU"]["dead_fraction"] for e in history.gradient_flow], model.flat_params

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        alone, shared = train(False), train(True)
    finally:
        sys.setswitchinterval(interval)
    assert alone[0] == shared[0] and alone[1] == shared[1] == [0.5, 0.5]
    assert np.array_equal(alone[2], shared[2])
