"""Classification metrics: how good are the predictions, beyond a single accuracy number."""

from __future__ import annotations

import numpy as np


def _column(name: str, what: str, values) -> np.ndarray:
    """`values` as a 1-D array (a column of shape (n, 1) too)."""
    a = np.asarray(values)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name}: {what} must be one value per example, got shape {a.shape}")
    return a


def _paired(name: str, y_true, y_pred, what: str = "y_pred") -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) as 1-D arrays of the same, non-zero length (never broadcast)."""
    y_true, y_pred = _column(name, "y_true", y_true), _column(name, what, y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{name}: y_true has {len(y_true)} examples but {what} has {len(y_pred)}")
    if not len(y_true):
        raise ValueError(f"{name}: no examples")
    return y_true, y_pred


def has_label_dtype(values) -> bool:
    """Whether `values` are class labels by their dtype: integers or booleans. The losses and `fit`
    read floats as targets to regress onto, whole or not (the metrics take whole floats too)."""
    dtype = np.asarray(values).dtype
    return np.issubdtype(dtype, np.integer) or dtype == np.bool_


def _class_labels(name: str, labels: np.ndarray, classes: int | None = None) -> np.ndarray:
    """`labels` as int64 class numbers, checked: whole numbers >= 0 (and < `classes`)."""
    whole = has_label_dtype(labels) or (
        np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)))
    if not whole:
        raise ValueError(f"{name}: class labels must be whole numbers, got {labels.dtype} values such as "
                         f"{labels[:3].tolist()}")
    out = labels.astype(np.int64)
    if out.min() < 0 or (classes is not None and out.max() >= classes):
        raise ValueError(f"{name}: labels must be in [0, {classes if classes is not None else 'classes'}), "
                         f"got {out.min()}..{out.max()}")
    return out


def _binary(name: str, labels: np.ndarray) -> np.ndarray:
    """Binary labels (0/1 or False/True) as bool."""
    return _class_labels(name, labels, 2).astype(bool)


def accuracy(y_true, y_pred) -> float:
    """The share of examples whose prediction equals the label."""
    y_true, y_pred = _paired("accuracy", y_true, y_pred)
    return float((y_true == y_pred).mean())


def confusion_matrix(y_true, y_pred, classes: int | None = None) -> np.ndarray:
    """C[i, j] = number of examples of true class i predicted as class j (labels 0 .. classes - 1;
    by default one more than the largest label seen)."""
    y_true, y_pred = (_class_labels("confusion_matrix", a, classes)
                      for a in _paired("confusion_matrix", y_true, y_pred))
    if classes is None:
        classes = int(max(y_true.max(), y_pred.max())) + 1
    return np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(classes, classes)


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision (of those predicted k, how many are k), recall (of the true k, how many
    were found) and their harmonic mean F1, from a confusion matrix. 0 where undefined."""
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def matthews_corrcoef(y_true, y_pred) -> float:
    """Matthews correlation coefficient for binary labels: +1 perfect, 0 chance, -1 inverted.

    MCC = (TP·TN - FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)); unlike accuracy it stays honest
    when one class is much rarer than the other (spam vs ham).
    """
    y_true, y_pred = _paired("matthews_corrcoef", y_true, y_pred)
    y_true, y_pred = _binary("matthews_corrcoef", y_true), _binary("matthews_corrcoef", y_pred)
    (tn, fp), (fn, tp) = confusion_matrix(y_true, y_pred, 2).astype(np.float64)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0


def _scored(name: str, y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """(y_true as bool, scores as float64), checked: 0/1 labels, one finite score each."""
    y_true, scores = _paired(name, y_true, scores, "scores")
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name}: the scores contain NaN or infinity")
    return _binary(name, y_true), scores


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds that give them (descending).
    With one class only, the rate of the missing class is 0 throughout (it has no examples)."""
    y_true, scores = _scored("roc_curve", y_true, scores)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y_true[order]
    # one point per distinct threshold: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    pos, neg = max(y.sum(), 1), max((~y).sum(), 1)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count half). NaN where there is no pair to compare: one class only."""
    y_true, scores = _scored("roc_auc", y_true, scores)
    if y_true.all() or not y_true.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold (descending thresholds)."""
    y_true, scores = _scored("precision_recall_curve", y_true, scores)
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    pos, neg = y_true.sum(), (~y_true).sum()
    tp, fp = tpr[1:] * pos, fpr[1:] * neg
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    return precision, tpr[1:], thresholds[1:]
