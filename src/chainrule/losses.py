"""Losses: one number that says how wrong the network's output is, and its gradient.

Calling a loss, ``loss(output, target)``, returns ``(value, grad)`` where ``grad`` is
dLoss/dOutput — the starting point of the backward pass. Every loss is a mean, so that its size
does not grow with the batch: over the examples (CrossEntropy; with class weights, weighted by them)
or over every element of the output (MeanSquaredError, BinaryCrossEntropy).
"""

from __future__ import annotations

import math

import numpy as np

from chainrule.checks import is_real, number
from chainrule.functional import log_softmax, sigmoid, softmax
from chainrule.metrics import has_label_dtype


class Loss:
    """Base class: subclasses implement `__call__(output, target) -> (loss, dloss/doutput)`."""

    def __call__(self, output: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def weight(self, target) -> float:
        """How much a batch with these targets counts in a mean over several batches (an epoch's
        loss, a data-parallel batch's shards): its number of examples."""
        return float(len(target))

    def config(self) -> dict:
        """The loss's settings, as its constructor takes them."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _check_batch(name: str, output: np.ndarray, target: np.ndarray) -> None:
    if len(output) != len(target):
        raise ValueError(
            f"{name}: output has {len(output)} examples but target has {len(target)}"
        )


def _empty(output: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss of an empty batch: the mean of nothing, NaN (as NumPy's and PyTorch's), and a
    gradient with no element."""
    return float("nan"), np.zeros_like(output)


class MeanSquaredError(Loss):
    """L = mean over all elements of (output - target)².   dL/doutput = 2 (output - target) / N.

    `target` may be integer class labels for a multi-output network; they are one-hot encoded,
    which is how the textbook sigmoid network (Nielsen's `network.py`) learns digits.
    """

    def __call__(self, output, target):
        _check_batch("MeanSquaredError", output, target)
        target = np.asarray(target)
        if has_label_dtype(target) and target.ndim == 1 and output.ndim == 2 and output.shape[1] > 1:
            target = _one_hot(target, output.shape[1], output.dtype)
        if target.size != output.size:
            raise ValueError(f"MeanSquaredError: target of shape {target.shape} does not match the output's "
                             f"shape {output.shape} (integer labels are one-hot encoded)")
        if not output.size:
            return _empty(output)
        target = target.reshape(output.shape).astype(output.dtype, copy=False)
        diff = output - target
        loss = float(np.mean(diff * diff))
        return loss, diff * np.asarray(2.0 / diff.size, output.dtype)


def _one_hot(labels: np.ndarray, classes: int, dtype) -> np.ndarray:
    labels = np.asarray(labels).astype(np.intp, copy=False)  # (bool labels: indices 0 and 1, not a mask)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes}), got values {labels.min()}..{labels.max()}")
    out = np.zeros((len(labels), classes), dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


class CrossEntropy(Loss):
    """Softmax followed by negative log-likelihood, fused: the network outputs raw scores (logits).

    L = -mean_n log softmax(z_n)[y_n]  with  log softmax(z)_k = z_k - max(z) - log Σ_j e^(z_j - max(z))

    Why fuse: computing softmax and then log(p) loses everything once p underflows to 0 (log 0 =
    -inf); the log-sum-exp form above (`functional.log_softmax`) never exponentiates a positive
    number. And the gradient of the pair collapses to ``(softmax(z) - onehot(y)) / N``, cheaper and
    exact. This pairing is only valid because the last layer feeds raw scores: do not put a
    `Softmax` layer before it.

    Args:
        class_weight: optional weight per class (length = number of classes), to make rare classes
            count more. The loss is then Σ w_y · nll / Σ w_y, like PyTorch's `weight=`.

    Shape: output (batch, classes) float; target (batch,) integer labels in [0, classes).
    """

    def __init__(self, class_weight=None):
        if class_weight is not None:
            weights = np.asarray(class_weight, dtype=object)  # (as given: strings are not read as numbers)
            if weights.ndim != 1 or not all(is_real(w) for w in weights) or \
                    not all(0 <= w < math.inf for w in weights) or not any(weights):
                raise ValueError("CrossEntropy: class_weight must be one finite weight >= 0 per class, "
                                 f"not all 0, got {class_weight!r}")
            class_weight = weights.astype(np.float64)
        self.class_weight = class_weight

    def __call__(self, output, target):
        _check_batch("CrossEntropy", output, target)
        target = np.asarray(target)
        if target.ndim != 1 or not np.issubdtype(target.dtype, np.integer):
            raise ValueError(
                f"CrossEntropy: target must be a 1-D array of integer class labels, "
                f"got dtype {target.dtype} and shape {target.shape}"
            )
        if output.ndim != 2 or output.shape[1] < 2:
            raise ValueError(f"CrossEntropy: output must be (batch, classes) scores for 2 or more classes, got "
                             f"shape {output.shape} (for one output per example use BinaryCrossEntropy)")
        n, classes = output.shape
        if self.class_weight is not None and len(self.class_weight) != classes:
            raise ValueError(f"CrossEntropy: class_weight has {len(self.class_weight)} weights for {classes} classes")
        if n and (target.min() < 0 or target.max() >= classes):
            raise ValueError(
                f"CrossEntropy: labels must be in [0, {classes}), got {target.min()}..{target.max()}"
            )
        if not n:
            return _empty(output)
        rows = np.arange(n)
        nll = -log_softmax(output, axis=1)[rows, target]
        # dL/dz = (softmax(z) - onehot(y)) / N
        grad = softmax(output, axis=1)
        grad[rows, target] -= 1
        if self.class_weight is None:
            grad /= n
            return float(nll.mean()), grad
        w = self.class_weight[target]
        if not w.sum():  # only classes of weight 0 in this batch: nothing here counts
            return 0.0, np.zeros_like(grad)
        grad *= (w / w.sum())[:, None].astype(grad.dtype)
        return float((w * nll).sum() / w.sum()), grad

    def weight(self, target) -> float:
        """With class weights, a batch's loss is Σ w_y · nll / Σ w_y: it counts Σ w_y in a mean
        over batches (the loss of a whole set is not the mean of its batches' losses by size)."""
        if self.class_weight is None:
            return float(len(target))
        return float(self.class_weight[np.asarray(target)].sum())

    def config(self):
        return {} if self.class_weight is None else {"class_weight": self.class_weight.tolist()}


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits: the network outputs one raw score z per example, and
    p = σ(z) is the probability of the positive class.

    L = mean_n [ pos_weight · y · softplus(-z) + (1 - y) · softplus(z) ]   (softplus(t) = log(1 + e^t))

    Written with softplus rather than log σ(z) because σ(z) rounds to exactly 0 or 1 for large |z|
    and its log is then infinite; softplus(t) = max(t, 0) + log1p(e^(-|t|)) never overflows
    (the code calls `np.logaddexp(0, t)`, which computes it that way).
    With pos_weight = 1 the gradient is simply (σ(z) - y) / N.

    Args:
        pos_weight: how much a positive example counts relative to a negative one (class
            imbalance), as in PyTorch's `BCEWithLogitsLoss(pos_weight=...)`.

    Shape: output (batch,) or (batch, 1); target of the same number of elements, 0 or 1.
    """

    def __init__(self, pos_weight: float = 1.0):
        self.pos_weight = number("BinaryCrossEntropy", "pos_weight", pos_weight, lambda v: 0 < v < math.inf,
                                  "positive")

    def __call__(self, output, target):
        _check_batch("BinaryCrossEntropy", output, target)
        if np.size(target) != output.size:
            raise ValueError(f"BinaryCrossEntropy: target of shape {np.shape(target)} does not match the output's "
                             f"shape {output.shape} (one score per example and target)")
        if not output.size:
            return _empty(output)
        z = output.reshape(len(output), -1)
        y = np.asarray(target, dtype=output.dtype).reshape(z.shape)
        softplus_neg = np.logaddexp(0, -z)  # -log σ(z)
        softplus_pos = np.logaddexp(0, z)  # -log(1 - σ(z))
        loss = float(np.mean(self.pos_weight * y * softplus_neg + (1 - y) * softplus_pos))
        p = sigmoid(z)
        # d/dz [w y softplus(-z) + (1-y) softplus(z)] = -w y (1-p) + (1-y) p
        grad = (1 - y) * p - self.pos_weight * y * (1 - p)
        grad /= z.size
        return loss, grad.reshape(output.shape).astype(output.dtype, copy=False)

    def config(self):
        return {"pos_weight": self.pos_weight}
