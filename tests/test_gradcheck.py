"""The gradient checker itself: it passes correct networks and catches a wrong backward pass."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import chainrule as cr
from chainrule.gradcheck import _default_loss, demo_networks, relative_error


@pytest.mark.parametrize("index", range(4))
def test_demo_networks_of_every_layer_type_pass(index):
    title, model, x, y = demo_networks(seed=0)[index]
    errors = cr.gradcheck(model, x, y)
    assert "input" in errors and len(errors) >= 3, title
    for name, err in errors.items():
        assert err < 1e-6, f"{title}: {name} relative error {err:.2e}"


def test_every_layer_type_and_every_loss_is_covered_by_the_demo_networks():
    from chainrule.model_file import LAYER_TYPES

    used = {type(layer).__name__ for _, model, _, _ in demo_networks() for layer in model.layers}
    assert used >= set(LAYER_TYPES)
    losses = {type(_default_loss(model.forward(x), y)).__name__ for _, model, x, y in demo_networks()}
    assert losses == {"MeanSquaredError", "CrossEntropy", "BinaryCrossEntropy"}


def _saturated(sigmoid=cr.Sigmoid) -> cr.Sequential:
    """Sigmoid outputs pushed to ~5e-5 (a bias of -10): gradients ~1e-5 of the loss, as in a trained
    textbook network, so that the loss's rounding noise over ε = 1e-6 is ~1e-5 of the gradients."""
    model = cr.Sequential([cr.Linear(20, 16), cr.Sigmoid(), cr.Linear(16, 10), sigmoid()], seed=0)
    model.layers[2].bias.data[...] = -10
    return model


class BrokenSigmoid(cr.Sigmoid):
    """σ with a derivative 0.1% too large."""

    def backward(self, grad_out):
        return super().backward(grad_out) * 1.001


def test_where_rounding_noise_hides_the_gradients_a_larger_step_judges_them():
    x, y = np.random.default_rng(0).random((4, 20)), np.eye(10)[[0, 1, 2, 3]]
    assert max(cr.gradcheck(_saturated(), x, y, eps=1e-6).values()) > 1e-5  # noise, not a wrong gradient
    steps = {}
    assert max(cr.gradcheck(_saturated(), x, y, steps=steps).values()) < 1e-6
    assert max(steps.values()) > 1e-6
    assert cr.gradcheck(_saturated(BrokenSigmoid), x, y)["2:Linear"] > 1e-4  # wrong at every step


def test_gradcheck_leaves_the_model_untouched():
    model = cr.Sequential([cr.Linear(3, 4), cr.Tanh(), cr.Linear(4, 2)], seed=0)
    before = model.flat_params.copy()
    cr.gradcheck(model, np.ones((2, 3)), np.array([0, 1]))
    assert model.flat_params.dtype == np.float32
    np.testing.assert_array_equal(model.flat_params, before)


def test_gradcheck_refuses_inputs_it_cannot_judge_on():
    """An empty batch came out infinite for every layer, and NaN inputs too: "your backward pass
    is wrong", of inputs; a single number failed inside NumPy."""
    model = cr.Sequential([cr.Linear(3, 4), cr.Tanh(), cr.Linear(4, 2)], seed=0)
    for x, said in ((np.ones((0, 3)), "at least one example"), (np.full((2, 3), np.nan), "NaN or infinity"),
                    (np.float64(1.0), "at least one example")):
        with pytest.raises(ValueError, match=said):
            cr.gradcheck(model, x, np.array([0, 1]))


@pytest.mark.parametrize("count", [0, -1, 2.5])
def test_gradcheck_refuses_a_sample_count_that_is_not_a_positive_integer(count):
    model = cr.Sequential([cr.Linear(3, 4), cr.Tanh(), cr.Linear(4, 2)], seed=0)
    with pytest.raises(ValueError, match="gradcheck: samples_per_param must be a positive integer"):  # (0: all NaN)
        cr.gradcheck(model, np.ones((2, 3)), np.array([0, 1]), samples_per_param=count)


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


class NaNScale(cr.Layer):
    """y = 2x, whose backward pass gives NaN for the inputs at 0 (0/0): a learner's slip."""

    def forward(self, x, training=False):
        self.x = x
        return 2 * x

    def backward(self, grad_out):
        with np.errstate(invalid="ignore"):
            return grad_out * 2 * self.x / self.x


def test_a_nan_gradient_fails_the_check_not_read_as_a_kink():
    """A NaN gradient made the relative error NaN, which read as "every entry crossed a kink"
    (not judged), and the check as a whole passed on the other layers."""
    model = cr.Sequential([cr.Linear(3, 4), cr.ReLU(), NaNScale(), cr.Linear(4, 2)], seed=0)
    kinks = {}
    errors = cr.gradcheck(model, np.random.default_rng(0).normal(size=(5, 3)), np.array([0, 1, 1, 0, 1]), kinks=kinks)
    assert errors["0:Linear"] == errors["input"] == np.inf  # (below the NaN, the gradients are NaN too)
    assert errors["3:Linear"] < 1e-6 and kinks["0:Linear"] == 0
    assert relative_error(np.array([1.0, np.nan]), np.array([1.0, 0.0])) == np.inf


class Scale(cr.Layer):
    """y = x · s, one scale per feature, whose backward stores ds in one of three ways: into the
    parameter's gradient (`write`), as a new array (`rebind`), or added to what is there (`add`)."""

    def __init__(self, n, store):
        super().__init__()
        self.s = self.params["s"] = cr.Parameter(np.ones(n))
        self.store = store

    def initialize(self, rng):
        self.s.data[...] = rng.normal(1, 0.3, self.s.shape)

    def forward(self, x, training=False):
        self.x = x
        return x * self.s.data

    def backward(self, grad_out):
        ds = (grad_out * self.x).sum(axis=0)
        if self.store == "rebind":
            self.s.grad = ds  # (the model's flat buffer, which the optimizer reads, never sees it)
        elif self.store == "add":
            self.s.grad += ds  # (as in PyTorch; nothing zeroes the gradients between `fit`'s steps)
        else:
            self.s.grad[...] = ds
        return grad_out * self.s.data


@pytest.mark.parametrize("store", ["write", "rebind", "add"])
def test_gradcheck_judges_the_gradients_the_optimizer_reads(store):
    """A backward pass that rebinds `.grad` (training then never moves s) or adds to it (training
    runs away with s) passed: the check read `.grad` after zeroing the buffer, not what `fit`'s
    optimizer reads, the parameter's stretch of the model's flat gradient buffer over the last step's."""
    x = np.random.default_rng(0).normal(size=(4, 6))
    model = cr.Sequential([cr.Linear(6, 5), cr.Tanh(), Scale(5, store), cr.Linear(5, 3)], seed=0)
    errors = cr.gradcheck(model, x, np.array([0, 1, 2, 1]))
    assert errors["0:Linear"] < 1e-6 and errors["3:Linear"] < 1e-6  # (the layers that write theirs)
    assert (errors["2:Scale"] < 1e-6) == (store == "write")
    # what `fit` makes of it: a rebound gradient never moves s, an added one (the sum of every step's
    # so far) runs away with it
    moved = _fitted(model)
    right = _fitted(cr.Sequential([cr.Linear(6, 5), cr.Tanh(), Scale(5, "write"), cr.Linear(5, 3)], seed=0))
    assert right > 0.1 and (moved == 0) == (store == "rebind") and (moved > 5 * right) == (store == "add")


def _fitted(model: cr.Sequential) -> float:
    """How far 20 epochs of SGD move the scale of `model`'s layer 2."""
    x = np.random.default_rng(1).normal(size=(64, 6))
    y = (x[:, :3].sum(axis=1) > 0).astype(int) + (x[:, 3] > 1)  # (classes 0, 1, 2)
    before = model.layers[2].s.data.copy()
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.1), epochs=20, batch_size=8, verbose=False,
           seed=0)
    return float(np.abs(model.layers[2].s.data - before).max())


def test_gradcheck_says_how_a_backward_pass_misses_the_optimizer():
    x, y = np.random.default_rng(0).normal(size=(4, 6)), np.array([0, 1, 2, 1])
    for store, problem in (
            ("rebind", "gradient not written into the parameter's buffer (.grad rebound to a new array?)"),
            ("add", "backward adds to the gradient instead of writing it (or leaves some of it unwritten)"),
            ("write", None)):
        problems = {}
        model = cr.Sequential([cr.Linear(6, 5), cr.Tanh(), Scale(5, store), cr.Linear(5, 3)], seed=0)
        cr.gradcheck(model, x, y, problems=problems)
        assert problems == ({} if problem is None else {"2:Scale": problem}), store
    problems = {}  # (a NaN gradient is wrong, but the layer writes it where it belongs)
    model = cr.Sequential([cr.Linear(3, 4), cr.ReLU(), NaNScale(), cr.Linear(4, 2)], seed=0)
    errors = cr.gradcheck(model, x[:, :3], y % 2, problems=problems)
    assert errors["0:Linear"] == np.inf and problems == {}


class TripledLinear(cr.Linear):
    """A Linear whose weight gradient is 3 times too large."""

    def backward(self, grad_out):
        grad = super().backward(grad_out)
        self.weight.grad *= 3
        return grad


def test_a_sample_of_a_layer_most_of_whose_gradient_is_zero_still_judges_the_gradient():
    """Hashed words reach a few of a spam filter's first-layer weights: 30 entries drawn from all of
    them were all 0 on both sides, and a gradient 3 times too large passed."""
    rng = np.random.default_rng(0)
    x = sp.random(4, 4096, density=0.002, format="csr", random_state=0, data_rvs=lambda n: rng.random(n) + 0.5)
    model = cr.Sequential([TripledLinear(4096, 8), cr.ReLU(), cr.Linear(8, 2)], seed=0)
    errors = cr.gradcheck(model, x, np.array([0, 1, 1, 0]), samples_per_param=30)
    assert errors["0:TripledLinear"] > 0.1
    model = cr.Sequential([cr.Linear(4096, 8), cr.ReLU(), cr.Linear(8, 2)], seed=0)
    assert max(cr.gradcheck(model, x, np.array([0, 1, 1, 0]), samples_per_param=30).values()) < 1e-6


def test_sampling_checks_a_subset_and_relative_error_definition():
    model = cr.Sequential([cr.Linear(20, 30), cr.ReLU(), cr.Linear(30, 3)], seed=0)
    x = np.random.default_rng(1).normal(size=(4, 20))
    errors = cr.gradcheck(model, x, np.array([0, 1, 2, 0]), samples_per_param=5)
    assert max(errors.values()) < 1e-6
    assert relative_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert relative_error(np.array([2.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.5)
    # a sample of small entries is measured against the largest gradient of the whole array
    assert relative_error(np.array([1e-4]), np.array([1.1e-4]), scale=1.0) == pytest.approx(1e-5)


def _relu_net(bias: bool = True) -> cr.Sequential:
    """1 input -> one ReLU unit -> 2 outputs, the unit's weight 1 and bias 0: it bends at input 0."""
    model = cr.Sequential([cr.Linear(1, 1, bias=bias), cr.ReLU(), cr.Linear(1, 2)], seed=0)
    model.layers[0].weight.data[...] = 1.0
    if bias:
        model.layers[0].bias.data[...] = 0.0
    return model


def test_entries_whose_nudge_crosses_a_relu_kink_are_left_out_and_counted():
    """The unit's input sits 3e-7 above the kink, closer than ε = 1e-6: nudging the bias or the input
    by ±ε switches the unit off and on, and the finite difference measures a blend of the two slopes."""
    y = np.array([0])
    near, kinks = {}, {}
    # two examples, the first near the kink: its input and the shared bias cross it
    errors = cr.gradcheck(_relu_net(), np.array([[3e-7], [0.5]]), np.array([0, 1]), kinks=near)
    assert near == {"0:Linear": 1, "2:Linear": 0, "input": 1}
    assert max(errors.values()) < 1e-6
    # the finite difference really is wrong there (0.65 of backprop's slope), and right away from it
    model, loss = _relu_net().to(np.float64), cr.CrossEntropy()

    def slopes(x: float) -> tuple[float, float]:
        _, grad = loss(model.forward(np.array([[x]])), y)
        backprop = model.backward(grad)[0, 0]
        plus, minus = (loss(model.forward(np.array([[x + d]])), y)[0] for d in (1e-6, -1e-6))
        return backprop, (plus - minus) / 2e-6

    backprop, numeric = slopes(3e-7)
    assert numeric == pytest.approx(0.65 * backprop, rel=1e-4)
    backprop, numeric = slopes(3e-5)
    assert numeric == pytest.approx(backprop, rel=1e-6)
    # away from the kink, nothing is left out
    cr.gradcheck(_relu_net(), np.array([[3e-5], [0.5]]), np.array([0, 1]), kinks=kinks)
    assert kinks == {"0:Linear": 0, "2:Linear": 0, "input": 0}


def test_a_layer_whose_every_entry_crosses_a_kink_is_not_judged():
    model = _relu_net(bias=False)
    model.layers[0].weight.data[...] = 3e-7  # the only parameter: the unit's input is 0.03, and a
    errors = cr.gradcheck(model, np.array([[1e5]]), np.array([1]))  # nudge of ±ε moves it by ±0.1
    assert np.isnan(errors["0:Linear"]) and errors["2:Linear"] < 1e-6


class BrokenLinear(cr.Linear):
    """A Linear whose first weight's gradient is twice what it is."""

    def backward(self, grad_out):
        grad_in = super().backward(grad_out)
        self.weight.grad.reshape(-1)[0] *= 2
        return grad_in


def test_a_larger_step_never_judges_fewer_entries_than_the_first():
    """The unit's input sits 5e-5 from its kink: judged at ε = 1e-6, the wrong entry crosses the
    kink at 1e-4; had it been left out there, the rest would have passed the layer."""
    model = cr.Sequential([BrokenLinear(2, 1), cr.ReLU(), cr.Linear(1, 1)], seed=0, dtype=np.float64)
    model.layers[0].weight.data[...] = 1
    model.layers[0].bias.data[...] = -1 - 1e-3 + 5e-5
    steps = {}
    errors = cr.gradcheck(model, np.array([[1.0, 1e-3]]), np.array([[0.3]]), steps=steps)
    assert errors["0:BrokenLinear"] > 0.1 and "0:BrokenLinear" not in steps  # (no step note on a failure)


def test_sampled_entries_that_cross_a_kink_are_replaced_by_others():
    """Three of four pooling windows tie: most input entries cannot be judged, and a sample of 2
    drawn among them keeps drawing until 2 can (it was "not judged" with a few samples)."""
    model = cr.Sequential([cr.MaxPool2D(2), cr.Flatten(), cr.Linear(4, 3)], input_shape=(1, 4, 4), seed=0)
    x = np.full((1, 1, 4, 4), 0.5)
    x[0, 0, :2, :2] = np.random.default_rng(0).normal(size=(2, 2))
    for seed in range(5):
        kinks = {}
        errors = cr.gradcheck(model, x, np.array([2]), samples_per_param=2, seed=seed, kinks=kinks)
        assert errors["input"] < 1e-6 and kinks["input"] <= 12


def test_max_pool_ties_are_left_out_of_the_input_check():
    """A 2x2 window of four equal inputs has no derivative in any of them; the other windows do."""
    model = cr.Sequential([cr.MaxPool2D(2), cr.Flatten(), cr.Linear(4, 3)], input_shape=(1, 4, 4), seed=0)
    x = np.random.default_rng(0).normal(size=(1, 1, 4, 4))
    x[0, 0, :2, :2] = 0.5
    kinks = {}
    errors = cr.gradcheck(model, x, np.array([2]), kinks=kinks)
    assert kinks["input"] == 4 and kinks["2:Linear"] == 0
    assert max(errors.values()) < 1e-6


def test_a_bias_whose_true_gradient_is_0_is_judged_against_its_layers_gradients():
    """A bias feeding batch norm has a gradient of exactly 0 in training mode: its finite
    differences are rounding noise (~1e-10), which against the bias's own largest entry would
    read as a 100% error; against the layer's largest gradient they are what they are, noise."""
    rng = np.random.default_rng(0)
    for first, x in ((cr.Linear(4, 3), rng.normal(size=(5, 4))),
                     (cr.Conv2D(1, 3, 3), rng.normal(size=(5, 1, 6, 6)))):
        layers = [first, cr.BatchNorm(3)] + ([cr.Flatten(), cr.Linear(48, 2)] if x.ndim == 4 else [cr.Linear(3, 2)])
        model = cr.Sequential(layers, input_shape=x.shape[1:], seed=0)
        errors = cr.gradcheck(model, x, rng.integers(0, 2, 5))
        assert max(errors.values()) < 1e-6, errors



def test_gradients_negligible_beside_the_rest_of_the_check_are_not_read_as_wrong():
    """A batch of 2 through BatchNorm comes out as ±1 whatever went in: the gradients of what comes
    before it, the input's included, are ~1e-9 on both sides, and their finite differences agree
    to ~1e-13, rounding noise that against their own size read as a failure (1e-5). Against the
    largest gradient of the check they are what they are: negligible."""
    rng = np.random.default_rng(0)
    for layers, x, y in (
        # the bug report's network and data
        ([cr.MaxPool2D(1, stride=1), cr.Flatten(), cr.Linear(3, 1, bias=False), cr.BatchNorm(1), cr.Sigmoid(),
          cr.Linear(1, 1)], np.random.default_rng(293).normal(size=(2, 1, 1, 3)), np.array([0, 1])),
        ([cr.Linear(2, 1, bias=False), cr.BatchNorm(1), cr.ReLU(), cr.Linear(1, 1, bias=False), cr.BatchNorm(1),
          cr.ReLU(), cr.Linear(1, 1)], rng.normal(size=(2, 2)), np.array([0, 1])),
        ([cr.Linear(3, 4), cr.BatchNorm(4), cr.BatchNorm(4), cr.Tanh(), cr.Linear(4, 3)], rng.normal(size=(2, 3)),
         np.array([0, 2])),  # two batch norms in a row
    ):
        model = cr.Sequential(layers, input_shape=x.shape[1:], seed=0)
        errors = cr.gradcheck(model, x, y)
        assert max(errors.values()) < 1e-6, errors


class OnePercentLinear(cr.Linear):
    """A Linear whose weight gradient is 1% too large."""

    def backward(self, grad_out):
        grad = super().backward(grad_out)
        self.weight.grad *= 1.01
        return grad


def test_a_one_percent_error_in_a_gradient_of_ordinary_size_still_fails():
    """What a negligible gradient is allowed, a gradient of ordinary size is not."""
    model = cr.Sequential([cr.Linear(4, 3), cr.Tanh(), OnePercentLinear(3, 3), cr.Tanh(), cr.Linear(3, 2)], seed=0)
    errors = cr.gradcheck(model, np.random.default_rng(0).normal(size=(5, 4)), np.array([0, 1, 1, 0, 1]))
    assert 5e-3 < errors["2:OnePercentLinear"] < 1e-2  # (1% of its weights' largest, against the layer's)
    assert max(error for name, error in errors.items() if name != "2:OnePercentLinear") < 1e-6
