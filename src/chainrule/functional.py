"""The squashing functions every part of chainrule shares, written once and overflow-safe.

Layers (`Sigmoid`, `Softmax`), losses (`BinaryCrossEntropy`, `CrossEntropy`), `Sequential`'s
probabilities and the applications all call these, so a logit of ±1000 gives the same finite answer
everywhere. They take NumPy arrays of any shape and keep the dtype (float32 in, float32 out).
"""

from __future__ import annotations

import numpy as np


def _real(x) -> np.ndarray:
    """`x` as an array of floats: integers become float64 (unsigned ones would wrap around in
    -|x| and x - max), and complex numbers are refused rather than cut to their real parts."""
    x = np.asarray(x)
    if x.dtype.kind == "c":
        raise TypeError(f"expected real numbers, got {x.dtype}")
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def sigmoid(x):
    """The logistic function σ(x) = 1 / (1 + e^(-x)), element-wise; values in [0, 1].

    With e = e^(-|x|), which never overflows: σ(x) = 1 / (1 + e) for x ≥ 0, and σ(x) = e / (1 + e)
    for x < 0 (the same fraction multiplied through by e^x). Each side keeps full relative
    precision, down to the smallest positive float: σ(-30) = 9.4e-14, which 1 - σ(30) or
    (1 + tanh(x/2)) / 2 round to 0 in float32 (and get about a tenth of a percent wrong, or less, in float64).
    """
    x = _real(x)
    e = np.exp(-np.abs(x))
    positive = 1.0 / (1.0 + e)  # σ(|x|)
    return np.where(x >= 0, positive, e * positive)[()]  # [()]: a scalar for a scalar, as NumPy's ufuncs


def softmax(x, axis: int = -1):
    """The softmax along `axis`: softmax(x)_i = e^(x_i) / Σ_j e^(x_j), a probability distribution.

    Subtracting m = max_j x_j first changes nothing mathematically (e^(x_i - m) / Σ_j e^(x_j - m):
    the factor e^(-m) cancels) but keeps every exponent ≤ 0, so nothing overflows and the largest
    term is exactly 1, so the sum is never 0.
    """
    x = _real(x)
    if not x.size:  # (nothing to normalise; on an empty axis, max would have no value to start from)
        return x.copy()
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis: int = -1):
    """The logarithm of `softmax` along `axis`, computed without taking the log of a probability:

        log softmax(x)_i = (x_i - m) - log Σ_j e^(x_j - m),   m = max_j x_j

    log(softmax(x)) would give -inf once a probability underflows to 0 (x_i - m below about -745
    in float64); this form stays finite, since the sum is at least 1.
    """
    x = _real(x)
    if not x.size:  # (as in `softmax`)
        return x.copy()
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
