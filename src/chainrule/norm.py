"""Batch normalisation: each feature (or channel) of a batch normalised to mean 0 and variance 1,
then scaled and shifted by learned parameters. It follows a `Linear` as well as a `Conv2D`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from chainrule.checks import number, positive_int
from chainrule.layers import Layer
from chainrule.parallel import in_parts
from chainrule.parameter import Parameter


class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy, 2015), for (N, C) and (N, C, H, W) inputs.

    Training:    x̂ = (x - μ_B) / √(σ²_B + ε),   y = γ · x̂ + β

    with μ_B, σ²_B the mean and (biased) variance of each feature over the batch — and, for images,
    over every position too, so a channel is normalised as a whole. Keeping every layer's inputs
    centred and scaled lets a network train fast at high learning rates. Evaluation cannot depend
    on the batch, so it uses running averages kept during training (PyTorch's conventions):

        running_mean ← (1 - momentum) · running_mean + momentum · μ_B
        running_var  ← (1 - momentum) · running_var  + momentum · σ²_B · m / (m - 1)

    (the unbiased variance, m values per feature). They live in `buffers`, so they are saved with
    the model. Backward, in training mode, differentiates through μ_B and σ²_B as well:

        dL/dx = (1 / (m·σ)) · (m · ĝ - Σ ĝ - x̂ · Σ ĝ·x̂),  with ĝ = γ · dL/dy and σ = √(σ²_B + ε)
        dL/dγ = Σ dL/dy · x̂,   dL/dβ = Σ dL/dy

    In data-parallel training (`fit` with a `chainrule.distributed.World` of several processes)
    `world` is set, and the batch is one process's shard of the global batch: the sums behind μ_B,
    σ²_B, Σ ĝ and Σ ĝ·x̂ are then added up over the processes (synchronised batch norm), so the
    statistics, and the result, are those of the global batch.

    Args:
        num_features: C, the number of features or channels.
        momentum: weight of each new batch in the running statistics.
        eps: added to the variance so a constant feature does not divide by zero.

    Shape: (N, C) -> (N, C), or (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.num_features = positive_int("BatchNorm", "num_features", num_features)
        self.momentum = number("BatchNorm", "momentum", momentum, lambda v: 0 <= v <= 1, "a number in [0, 1]")
        self.eps = number("BatchNorm", "eps", eps, lambda v: 0 < v < math.inf, "a finite number > 0")
        self.weight = Parameter(np.ones(self.num_features, np.float32))  # γ
        self.bias = Parameter(np.zeros(self.num_features, np.float32))  # β
        self.params.update(weight=self.weight, bias=self.bias)
        # Sequential may replace these arrays (to change dtype), so they are always looked up here.
        self.buffers["running_mean"] = np.zeros(self.num_features, np.float32)
        self.buffers["running_var"] = np.ones(self.num_features, np.float32)
        self._xhat = self._x = self._inv_std = None
        self.world = None  # the processes whose shards make up the batch, in data-parallel training

    def _global_sum(self, a: np.ndarray) -> np.ndarray:
        """Σ over the processes of data-parallel training of each one's `a`; alone, `a` itself."""
        return a if self.world is None else self.world.allreduce(a)

    @classmethod
    def array_shapes(cls, num_features, momentum=0.1, eps=1e-5):
        c = positive_int("BatchNorm", "num_features", num_features)
        return {"weight": (c,), "bias": (c,)}, {"running_mean": (c,), "running_var": (c,)}

    def output_shape(self, input_shape):
        if len(input_shape) not in (1, 3) or input_shape[0] != self.num_features:
            c = self.num_features
            raise ValueError(f"BatchNorm: expects examples of shape ({c},) or ({c}, H, W), "
                             f"but receives shape {tuple(input_shape)}")
        return tuple(input_shape)

    def initialize(self, rng):
        self.weight.data[...] = 1.0
        self.bias.data[...] = 0.0
        self.buffers["running_mean"][...] = 0.0
        self.buffers["running_var"][...] = 1.0

    def _shape(self, x) -> tuple[int, ...]:
        """The shape that broadcasts a per-feature vector against the batch x: (1, C) or (1, C, 1, 1)."""
        if x.ndim not in (2, 4):
            raise ValueError(f"BatchNorm: expected a batch of shape (N, C) or (N, C, H, W), got {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm: expected {self.num_features} features, got shape {x.shape}")
        return (1, -1) if x.ndim == 2 else (1, -1, 1, 1)

    def forward(self, x, training=False):
        bshape = self._shape(x)
        x = x.astype(np.result_type(x.dtype, self.weight.data.dtype), copy=False)  # (integers: their values)
        if training:
            # Every pass works a range of features at a time, on every core (see `_by_feature`).
            # m values per feature in the batch; μ_B = Σx / m, then σ²_B = Σ(x - μ_B)² / m (two
            # passes: a one-pass Σx² - m·μ² loses the variance to cancellation in float32)
            sums = self._global_sum(np.append(_per_feature_sum(x), x.size // self.num_features).astype(x.dtype))
            m = int(sums[-1])
            if m < 2:  # σ²_B of one value is 0: every output would be β, and running_var would shrink
                raise ValueError(f"BatchNorm: training needs more than one value per feature, got a batch of shape "
                                 f"{x.shape}")
            mean = (sums[:-1] / m).reshape(bshape)
            xhat = _centred(x, mean)  # x - μ_B, then scaled in place below
            var = self._global_sum(_per_feature_dot(xhat, xhat)) / m  # Σ(x - μ_B)² / m per feature
            inv_std = 1.0 / np.sqrt(var + self.eps)
            mom = self.momentum
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= 1 - mom
            running_mean += mom * mean.ravel()
            running_var *= 1 - mom
            running_var += mom * var * (m / (m - 1))  # (the unbiased variance, as PyTorch keeps)
            self._xhat, self._x, self._inv_std, self._training, self._m = xhat, None, inv_std, True, m
            # x̂ = (x - μ_B)·σ⁻¹, then y = γ·x̂ + β
            return _normalise(xhat, *(a.reshape(bshape) for a in (inv_std, self.weight.data, self.bias.data)))
        # evaluation: a fixed affine map per feature, folded into one scale and one shift
        inv_std = 1.0 / np.sqrt(self.buffers["running_var"] + self.eps)
        scale = self.weight.data * inv_std
        shift = self.bias.data - self.buffers["running_mean"] * scale
        # x̂ is only needed if someone backpropagates through evaluation mode (gradcheck does)
        self._xhat, self._x, self._inv_std, self._training = None, x, inv_std, False
        return (x * scale.reshape(bshape) + shift.reshape(bshape)).astype(x.dtype, copy=False)

    def backward(self, grad_out):
        self._cached(self._inv_std)
        bshape = self._shape(grad_out)
        xhat = self._xhat
        if xhat is None:
            xhat = (self._x - self.buffers["running_mean"].reshape(bshape)) * self._inv_std.reshape(bshape)
        self.bias.grad[...] = _per_feature_sum(grad_out)
        self.weight.grad[...] = _per_feature_dot(grad_out, xhat)  # Σ dL/dy · x̂, per feature
        if not self.needs_input_grad:
            return None
        scale = (self.weight.data * self._inv_std).reshape(bshape)
        if not self._training:  # running statistics are constants: y is affine in x
            return grad_out * scale
        # dL/dx = γσ⁻¹ · (g - mean(g) - x̂ · mean(g·x̂)); the two means are dβ/m and dγ/m, over
        # the global batch (the gradients themselves stay this shard's: `fit` sums them).
        sums = self._global_sum(np.concatenate([self.bias.grad, self.weight.grad]))
        mean_g = (sums[: self.num_features] / self._m).reshape(bshape)
        mean_gx = (sums[self.num_features :] / self._m).reshape(bshape)
        return _batch_norm_input_grad(grad_out, xhat, mean_g, mean_gx, scale)

    def config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}


def _by_feature(fn: Callable[[slice], object], x: np.ndarray) -> None:
    """fn(f) for slices f of the feature axis 1 of x that together cover it, a slice per core, all
    at once (see `in_parts`): each feature's values are independent of the others'."""
    in_parts(lambda _, lo, hi: fn(slice(lo, hi)), x.shape[1], x.size)


def _centred(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """x - mean, a feature range per core; equivalent to x - mean."""
    out = np.empty_like(x)
    _by_feature(lambda f: np.subtract(x[:, f], mean[:, f], out=out[:, f]), x)
    return out


def _normalise(xhat: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """γ·x̂ + β, scaling the centred `xhat` by `inv_std` in place first (it becomes x̂), a feature
    range per core; equivalent to `xhat *= inv_std; return gamma * xhat + beta`."""
    y = np.empty_like(xhat)

    def part(f):
        xhat[:, f] *= inv_std[:, f]
        np.multiply(xhat[:, f], gamma[:, f], out=y[:, f])
        y[:, f] += beta[:, f]

    _by_feature(part, xhat)
    return y


def _batch_norm_input_grad(g, xhat, mean_g, mean_gx, scale) -> np.ndarray:
    """Batch norm's dL/dx in one new array, a feature range per core; equivalent to
    scale * (g - mean_g - xhat * mean_gx)."""
    out = np.empty_like(xhat, g.dtype)

    def part(f):
        np.multiply(xhat[:, f], mean_gx[:, f], out=out[:, f])
        np.subtract(g[:, f], out[:, f], out=out[:, f])
        out[:, f] -= mean_g[:, f]
        out[:, f] *= scale[:, f]

    _by_feature(part, g)
    return out


def _per_feature_sum(a: np.ndarray) -> np.ndarray:
    """Σ a over every axis but the feature axis 1, for (N, C) or (N, C, H, W) arrays."""
    out = np.empty(a.shape[1], a.dtype)
    _by_feature(lambda f: _sum_but_features(a[:, f], out[f]), a)
    return out


def _per_feature_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ a·b over every axis but the feature axis 1, for (N, C) or (N, C, H, W) arrays. Through
    NumPy's sum (einsum, which needs no temporary, adds the terms one after another and drifts to
    ~1e-4 over ~10^5 float32 terms, enough for 1, 2 or 4 processes to train visibly different
    weights)."""
    out = np.empty(a.shape[1], np.result_type(a, b))
    _by_feature(lambda f: _sum_but_features(np.multiply(a[:, f], b[:, f]), out[f]), a)
    return out


def _sum_but_features(a: np.ndarray, out: np.ndarray) -> None:
    """out ← Σ a over every axis but axis 1, to ~1e-7 of the sum in float32 over ~10^5 terms.

    NumPy sums pairwise, which keeps that accuracy, only along the axis contiguous in memory: an
    image's H·W values. Down the batch axis of (N, C) rows it adds one row after another, whose
    error grows with N (raw features near 10⁴ in a batch of 65,536: means off by ~1), so rows are
    summed in float64 (equivalent to `a.sum(axis=0, out=out)`)."""
    if a.ndim == 2:
        out[...] = a.sum(axis=0, dtype=np.float64)
    else:
        a.sum(axis=(0, 2, 3), out=out)
