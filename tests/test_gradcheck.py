"""The gradient checker itself: it passes correct networks and catches a wrong backward pass."""

from __future__ import annotations

import numpy as np
import pytest

import chainrule as cr
from chainrule.gradcheck import demo_networks, relative_error


@pytest.mark.parametrize("index", range(4))
def test_demo_networks_of_every_layer_type_pass(index):
    title, model, x, y = demo_networks(seed=0)[index]
    errors = cr.gradcheck(model, x, y)
    assert "input" in errors and len(errors) >= 3, title
    for name, err in errors.items():
        assert err < 1e-6, f"{title}: {name} relative error {err:.2e}"


def test_every_layer_type_is_covered_by_the_demo_networks():
    from chainrule.network import LAYER_TYPES

    used = {type(layer).__name__ for _, model, _, _ in demo_networks() for layer in model.layers}
    assert used >= set(LAYER_TYPES)


def test_gradcheck_leaves_the_model_untouched():
    model = cr.Sequential([cr.Linear(3, 4), cr.Tanh(), cr.Linear(4, 2)], seed=0)
    before = model.flat_params.copy()
    cr.gradcheck(model, np.ones((2, 3)), np.array([0, 1]))
    assert model.flat_params.dtype == np.float32
    np.testing.assert_array_equal(model.flat_params, before)


class BrokenTanh(cr.Tanh):
    """tanh with a wrong derivative (1 - y instead of 1 - y²)."""

    def backward(self, grad_out):
        return grad_out * (1 - self.output)


def test_gradcheck_catches_a_wrong_backward_pass():
    model = cr.Sequential([cr.Linear(3, 4), BrokenTanh(), cr.Linear(4, 2)], seed=0)
    x = np.random.default_rng(0).normal(size=(5, 3))
    errors = cr.gradcheck(model, x, np.array([0, 1, 1, 0, 1]))
    assert errors["0:Linear"] > 1e-3  # the layer below the broken one gets wrong gradients
    assert errors["2:Linear"] < 1e-6  # the layer above is unaffected


def test_sampling_checks_a_subset_and_relative_error_definition():
    model = cr.Sequential([cr.Linear(20, 30), cr.ReLU(), cr.Linear(30, 3)], seed=0)
    x = np.random.default_rng(1).normal(size=(4, 20))
    errors = cr.gradcheck(model, x, np.array([0, 1, 2, 0]), samples_per_param=5)
    assert max(errors.values()) < 1e-6
    assert relative_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert relative_error(np.array([2.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.5)
