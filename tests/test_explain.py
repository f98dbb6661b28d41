"""`chainrule explain` prints numbers the engine computed, and they are the right numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import chainrule as cr
from chainrule import explain as E


def _step(seed):
    model = E.build_network(seed)
    untouched = copy.deepcopy(model)
    opt = cr.SGD(model.parameters(), lr=E.LR)
    x, y = E.XOR_X[E.EXAMPLE : E.EXAMPLE + 1], E.XOR_Y[E.EXAMPLE : E.EXAMPLE + 1]
    return untouched, model, x, y, E.one_step(model, x, y, opt)


def _numeric(model, x, y, param, eps=1e-6):
    """dL/dparam by central differences on an untouched copy of the network."""
    flat, out = param.data.reshape(-1), np.empty(param.size)
    for j in range(param.size):
        orig = flat[j]
        flat[j] = orig + eps
        plus, _ = cr.BinaryCrossEntropy()(model.forward(x), y)
        flat[j] = orig - eps
        minus, _ = cr.BinaryCrossEntropy()(model.forward(x), y)
        flat[j] = orig
        out[j] = (plus - minus) / (2 * eps)
    return out.reshape(param.shape)


def test_printed_gradients_equal_finite_differences_and_update_is_w_minus_lr_grad():
    untouched, model, x, y, s = _step(seed=1)
    lin1, _, lin2 = untouched.layers
    names = {"dW1": lin1.weight, "db1": lin1.bias, "dW2": lin2.weight, "db2": lin2.bias}
    for name, param in names.items():
        np.testing.assert_allclose(s[name], _numeric(untouched, x, y, param), rtol=1e-6, atol=1e-9, err_msg=name)
        assert np.any(s[name] != 0) or name == "dW1"
    for name in ("W1", "b1", "W2", "b2"):
        np.testing.assert_allclose(s[f"{name}_new"], s[name] - E.LR * s["d" + name], rtol=0, atol=1e-15)
    # forward numbers: the engine's own layer outputs
    np.testing.assert_allclose(s["a1"], np.tanh(s["z1"]))
    np.testing.assert_allclose(s["z2"], s["a1"] @ s["W2"] + s["b2"])
    np.testing.assert_allclose(s["delta2"], s["p"] - y)  # sigmoid + BCE: delta = p - y
    np.testing.assert_allclose(s["dW1"], s["x"].T @ s["delta1"])


def test_printed_text_shows_those_numbers_and_xor_gets_solved():
    _, _, _, _, s = _step(seed=1)
    text = E.explain(seed=1, epochs=1500)
    for n in range(1, 7):
        assert f"Step {n}." in text
    for key in ("z1", "a1", "z2", "delta2", "delta1", "db1", "db2", "b1_new", "b2_new"):
        assert E.fmt(s[key]) in text, key
    for key in ("W1", "dW1", "dW2", "W1_new", "W2_new"):
        for row in E.fmt(s[key]).splitlines():
            assert row in text, key
    assert f"L = {float(s['loss']):.6f}" in text
    assert "dL/dW = x^T · delta" in text
    losses = [float(line.split("loss")[1]) for line in text.splitlines() if line.strip().startswith("epoch")]
    assert len(losses) >= 4 and losses[-1] < 0.05 < losses[0]
    assert "4/4 correct." in text


def test_explain_uses_the_seed():
    assert E.explain(seed=1, epochs=5) != E.explain(seed=2, epochs=5)
    assert E.explain(seed=3, epochs=5) == E.explain(seed=3, epochs=5)


@pytest.mark.parametrize("epochs", [0, 2.5, "3", True])
def test_explain_lines_refuses_epochs_that_are_no_positive_integer_when_called(epochs):
    """explain_lines is a generator: its own `epochs < 1` ran only at the first next(), let 2.5 train
    for 3 epochs, and raised a TypeError on "3"; now the call itself refuses them, in one line."""
    with pytest.raises(ValueError, match=r"explain: epochs must be a positive integer, got "):
        E.explain_lines(seed=1, epochs=epochs)
