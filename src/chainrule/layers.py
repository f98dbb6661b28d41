"""Layers: the building blocks of a network, each with its own forward and backward pass.

Every layer follows one contract:

* ``forward(x, training=False)`` computes the layer's output and *caches* what backward will need;
* ``backward(grad_out)`` receives dLoss/dOutput, stores dLoss/dParameter in each parameter's
  ``grad`` and returns dLoss/dInput, which becomes the ``grad_out`` of the layer below.

That second step is the chain rule: if ``y = f(x; W)`` then ``dL/dx = dL/dy · dy/dx`` and
``dL/dW = dL/dy · dy/dW``. Arrays are batch-first: ``x`` has shape ``(batch, features)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from chainrule.checks import flag, number, positive_int
from chainrule.functional import sigmoid, softmax
from chainrule.parallel import by_outer_axis
from chainrule.parameter import Parameter


class Layer:
    """Base class. A layer without parameters only needs `forward` and `backward`."""

    # Whether `backward` must return dLoss/dInput. `Sequential.backward(grad, input_grad=False)`
    # turns it off, for that pass, in the lowest layer it runs (the first with parameters: nothing
    # needs the data's gradient); a layer for which dL/dx is costly (`Linear`: a matrix product)
    # then skips it and returns None.
    needs_input_grad = True

    def __init__(self):
        self.params: dict[str, Parameter] = {}
        # Non-trainable state saved with the model (e.g. batch-norm running statistics).
        self.buffers: dict[str, np.ndarray] = {}
        self.in_a_model = False  # set by the `Sequential` it belongs to (a layer belongs to one)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.in_a_model = False  # (a copy is no model's; a model copied with it claims it again)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The layer's output for the batch `x`; keeps what `backward` will need."""
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """dLoss/dInput from `grad_out` = dLoss/dOutput of the last forward; fills the parameters' `grad`."""
        raise NotImplementedError

    def _cached(self, value):
        """`value`, what forward kept for backward: None there means no forward has run yet (a
        backward then failed deep inside NumPy, "'NoneType' object has no attribute 'T'")."""
        if value is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        return value

    def initialize(self, rng: np.random.Generator) -> None:
        """(Re)draw initial parameter values and set the layer's random generator."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one example's output, given one example's input shape (no batch axis)."""
        return input_shape

    def scratch_size(self, input_shape: tuple[int, ...]) -> int:
        """Values per example that a forward pass holds besides its output (Conv2D's X_col), which
        `Sequential.predict` keeps in bounds; 0 for most layers."""
        return 0

    @classmethod
    def array_shapes(cls, *args, **kwargs) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """(parameter shapes, buffer shapes) of the layer these constructor arguments would build,
        worked out without building it: a model loader checks a file's claims against them before
        allocating anything. A layer without parameters or buffers has none."""
        return {}, {}

    def config(self) -> dict:
        """Constructor arguments, so a saved model can be rebuilt from JSON."""
        return {}

    def parameters(self) -> list[Parameter]:
        return list(self.params.values())

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self.forward(x, training)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def checked_init(where: str, init) -> str:
    """`init`, if it names a weight initialisation that `init_std` knows: "he" or "glorot"."""
    if init not in ("he", "glorot"):
        raise ValueError(f"{where}: init must be 'he' or 'glorot', got {init!r}")
    return init


def init_std(init: str, fan_in: int, fan_out: int) -> float:
    """The standard deviation of a layer's initial weights, for `fan_in` inputs to each unit and
    `fan_out` outputs from each input: He's, Var(W) = 2 / fan_in, for ReLU-family activations, or
    Glorot's, Var(W) = 2 / (fan_in + fan_out), for sigmoid and tanh. Both keep the signal's
    variance roughly constant from layer to layer, so deep stacks neither blow up nor fade out."""
    var = 2.0 / fan_in if init == "he" else 2.0 / (fan_in + fan_out)
    return float(np.sqrt(var))


class Linear(Layer):
    """Fully connected layer: every input feature feeds every output neuron.

    y = x · W + b

    Args:
        in_features: size of each input example.
        out_features: number of neurons (size of each output example).
        bias: whether to learn an additive bias `b`.
        init: "he" (for ReLU-family activations, Var(W) = 2/in) or "glorot"
            (for sigmoid/tanh, Var(W) = 2/(in+out)); both keep the signal's variance roughly
            constant from layer to layer, so deep stacks neither blow up nor fade out.

    Shape: x (batch, in_features) -> y (batch, out_features); W is (in_features, out_features).
    `x` may also be a SciPy sparse CSR matrix (e.g. hashed text features); then the products
    below are sparse-times-dense, and dL/dx is not computed (sparse input is always the first layer).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he"):
        super().__init__()
        self.in_features = positive_int("Linear", "in_features", in_features)
        self.out_features = positive_int("Linear", "out_features", out_features)
        self.init = checked_init("Linear", init)
        bias = flag("Linear", "bias", bias)
        self.weight = Parameter(np.zeros((self.in_features, self.out_features), np.float32))
        self.params["weight"] = self.weight
        self.bias = None
        if bias:
            self.bias = Parameter(np.zeros(self.out_features, np.float32))
            self.params["bias"] = self.bias
        # Usable on its own, like torch.nn.Linear. This unseeded draw is made the cheap way (float32,
        # in place): a Sequential re-draws every layer from its seeded generator, and `load_model`
        # overwrites the weights, where drawing 8 million float64 normals would double a load's time.
        np.random.default_rng().standard_normal(dtype=np.float32, out=self.weight.data)
        self.weight.data *= init_std(self.init, self.in_features, self.out_features)
        self._x = None

    @classmethod
    def array_shapes(cls, in_features, out_features, bias=True, init="he"):
        n_in = positive_int("Linear", "in_features", in_features)
        n_out = positive_int("Linear", "out_features", out_features)
        return ({"weight": (n_in, n_out), "bias": (n_out,)} if bias else {"weight": (n_in, n_out)}), {}

    def initialize(self, rng):
        self.weight.data[...] = rng.normal(0.0, init_std(self.init, self.in_features, self.out_features),
                                           self.weight.shape)
        if self.bias is not None:
            self.bias.data[...] = 0.0

    def forward(self, x, training=False):
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: expected inputs with {self.in_features} features, got shape {x.shape}"
            )
        self._x = x
        y = x @ self.weight.data
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_out):
        # y = x·W + b, so with g = dL/dy:
        #   dL/dW = xᵀ · g      (each weight's gradient: its input times its neuron's error)
        #   dL/db = Σ_batch g
        #   dL/dx = g · Wᵀ      (the error handed down to the layer below)
        x = self._cached(self._x)
        if grad_out.shape != (x.shape[0], self.out_features):
            raise ValueError(f"Linear: the gradient has shape {grad_out.shape}, the last forward's output had "
                             f"{(x.shape[0], self.out_features)}")
        if hasattr(x, "tocsr"):  # SciPy sparse input: first layer, no dL/dx needed
            self.weight.grad[...] = (x.T @ grad_out).astype(self.weight.grad.dtype, copy=False)
            grad_in = None
        else:
            np.matmul(x.T, grad_out, out=self.weight.grad)
            # As costly as the forward product, so skipped when the input is the data.
            grad_in = grad_out @ self.weight.data.T if self.needs_input_grad else None
        if self.bias is not None:
            grad_out.sum(axis=0, out=self.bias.grad)
        return grad_in

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"Linear: expects {self.in_features} input features, but receives shape "
                             f"{tuple(input_shape)}")
        return (self.out_features,)

    def config(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "init": self.init,
        }


class _Activation(Layer):
    """An element-wise function; no parameters, output shape equals input shape.

    `forward` keeps its result in `output`: backward computes the derivative from it (relu': y > 0,
    σ': y·(1 - y), tanh': 1 - y²), and observers of training (`GradientFlow`'s dead-unit count)
    read it there too.
    """

    def __init__(self):
        super().__init__()
        self.output = None


class ReLU(_Activation):
    """Rectified linear unit: y = max(0, x). Its derivative is 1 where the output is positive, else 0.

    A unit whose output is 0 for every example passes no gradient back and stops learning
    ("dead"); `fit` reports the fraction of such units per epoch (see `GradientFlow`).
    """

    def forward(self, x, training=False):
        self.output = _relu(x)  # y = max(0, x)
        return self.output

    def backward(self, grad_out):
        # dL/dx = dL/dy · (y > 0): dy/dx is 1 where y > 0, else 0
        return _relu_grad(self._cached(self.output), grad_out)


_FEW = 4096  # values in an element-wise pass below which it is done by one NumPy call, as it is


def _relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0), in x's memory order, on every core; equivalent to np.maximum(x, 0)."""
    if x.size <= _FEW:  # (one example's, say: the calls that cut a pass up cost more than they save)
        return np.maximum(x, 0)
    out = np.empty_like(x)
    by_outer_axis(_max0_into, x, out)
    return out


def _relu_grad(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """g where y > 0, else 0, on every core; equivalent to g * (y > 0)."""
    out = np.empty_like(y, g.dtype)
    by_outer_axis(lambda y, g, into: np.multiply(g, y > 0, out=into), y, g, out)
    return out


def _max0_into(x: np.ndarray, out: np.ndarray) -> None:
    """out ← max(x, 0); equivalent to np.maximum(x, 0, out=out), 2-3x faster (NumPy 2.4).

    NumPy's loop for two contiguous arrays is vectorised and its scalar-broadcast loop is not, so
    x, seen in its memory order and cut into rows, is compared with a row of zeros instead of with 0.
    """
    if x.ndim > 1 and not x.flags.c_contiguous:  # e.g. batch-last: axes in memory order, outermost first
        order = sorted(range(x.ndim), key=lambda axis: -x.strides[axis])
        x, out = x.transpose(order), out.transpose(order)
    if x.ndim < 2 or x.size == 0 or not (x.flags.c_contiguous and out.flags.c_contiguous):
        np.maximum(x, 0, out=out)
        return
    rows = x.reshape(len(x), -1)
    np.maximum(rows, _zero_row(rows.shape[1], x.dtype), out=out.reshape(rows.shape))


@functools.lru_cache(maxsize=32)
def _zero_row(length: int, dtype: np.dtype) -> np.ndarray:
    zeros = np.zeros(length, dtype)
    zeros.flags.writeable = False  # shared by every ReLU that sees rows of this length
    return zeros


class LeakyReLU(ReLU):
    """Leaky ReLU: y = x for x > 0, else `negative_slope` · x. Never fully dead, since the slope
    below zero still lets a little gradient through."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = number("LeakyReLU", "negative_slope", negative_slope, lambda v: 0 <= v < 1,
                                      "a number in [0, 1)")

    def forward(self, x, training=False):
        self.output = np.where(x > 0, x, x * np.asarray(self.negative_slope, x.dtype))
        return self.output

    def backward(self, grad_out):
        # the output has the sign of the input, so the cached output tells which slope applies
        slope = np.where(self._cached(self.output) > 0, 1, self.negative_slope).astype(grad_out.dtype)
        return grad_out * slope

    def config(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(_Activation):
    """Logistic sigmoid: y = σ(x) = 1 / (1 + e^(-x)), squashing to (0, 1). Derivative: y · (1 - y)."""

    def forward(self, x, training=False):
        self.output = sigmoid(x)
        return self.output

    def backward(self, grad_out):
        y = self._cached(self.output)
        return grad_out * y * (1 - y)


class Tanh(_Activation):
    """Hyperbolic tangent: y = tanh(x), squashing to (-1, 1). Derivative: 1 - y²."""

    def forward(self, x, training=False):
        self.output = np.tanh(x)
        return self.output

    def backward(self, grad_out):
        return grad_out * (1 - self._cached(self.output) ** 2)


class Softmax(_Activation):
    """Softmax over the last axis: y_i = e^(x_i) / Σ_j e^(x_j), a probability distribution.

    For training a classifier prefer `CrossEntropy` on the raw scores (it fuses softmax with the
    loss); this layer is for networks whose output must be probabilities, e.g. with MSE.
    """

    def forward(self, x, training=False):
        self.output = softmax(x, axis=-1)
        return self.output

    def backward(self, grad_out):
        # Jacobian dy_i/dx_j = y_i (δ_ij - y_j), so dL/dx = y ⊙ (g - Σ_j g_j y_j)
        y = self._cached(self.output)
        return y * (grad_out - (grad_out * y).sum(axis=-1, keepdims=True))


class Dropout(Layer):
    """Inverted dropout: during training, zero each value with probability `p` and scale the
    survivors by 1/(1-p), so the expected output is unchanged and evaluation needs no rescaling.

    A different random subset of neurons is switched off on every batch, which stops neurons from
    relying on each other (co-adaptation) and acts as a strong regulariser. Off in evaluation.

    `batch_rows = (first, total)` says that the batch is rows first.. of a global batch of `total`
    rows, split over the processes of data-parallel training (`fit` sets it). The layer then draws
    the random bits of all `total` rows and keeps its own, so that every example gets the mask it
    would get in one process, and every process's generator stays in step.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = number("Dropout", "p", p, lambda v: 0 <= v < 1, "a number in [0, 1)")
        self.rng = np.random.default_rng()
        self.batch_rows: tuple[int, int] | None = None
        self._mask = None

    def initialize(self, rng):
        self.rng = rng

    def forward(self, x, training=False):
        if not training or self.p == 0:
            self._mask = 1.0  # (nothing dropped: the gradient passes unchanged)
            return x
        keep = 1.0 - self.p
        # Keep a value when a uniform 32-bit random integer falls below keep·2³², i.e. with
        # probability `keep` (to within 2⁻³²). Raw integers straight from the bit generator cost
        # half as much as uniform floats, and a float32 uniform is coarser anyway (2⁻²⁴ steps).
        row = x.size // max(x.shape[0], 1)
        first, total = self.batch_rows or (0, x.shape[0])
        bits = self.rng.bit_generator.random_raw((total * row + 1) // 2).view(np.uint32)
        bits = bits[first * row : first * row + x.size]
        threshold = np.uint32(min(round(keep * 2.0**32), 2**32 - 1))
        # mask holds 0 or 1/keep, so forward and backward are one multiply each
        self._mask = (bits.reshape(x.shape) < threshold) * np.asarray(1.0 / keep, x.dtype)
        return x * self._mask

    def backward(self, grad_out):
        return grad_out * self._cached(self._mask)

    def config(self):
        return {"p": self.p}


class Flatten(Layer):
    """Reshape (batch, d1, d2, ...) to (batch, d1·d2·...), e.g. between convolutional and dense
    layers. Backward reshapes the gradient back."""

    _x = None  # (the last input: backward hands the gradient back in its shape and memory order)

    def forward(self, x, training=False):
        self._x = x
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (not -1: a batch may be empty)

    def backward(self, grad_out):
        grad = grad_out.reshape(self._cached(self._x).shape)
        if self._x.flags.c_contiguous:
            return grad
        # Handed back in the memory order the input had (batch-last after a Conv2D), one copy: the
        # element-wise passes of the layers below then run over arrays of one layout, which NumPy
        # does a contiguous stretch at a time, instead of element by element (the cnn preset's last
        # ReLU, BatchNorm and max-pooling backward: 3.2 ms -> 1.25 ms a batch, the copy included).
        dx = np.empty_like(self._x, dtype=grad.dtype)
        dx[...] = grad
        return dx

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)
