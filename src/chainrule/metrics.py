"""Classification metrics: how good are the predictions, beyond a single accuracy number."""

from __future__ import annotations

import numpy as np


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else 0.0


def confusion_matrix(y_true, y_pred, classes: int | None = None) -> np.ndarray:
    """C[i, j] = number of examples of true class i predicted as class j."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if classes is None:
        classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
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
    (tn, fp), (fn, tp) = confusion_matrix(y_true, y_pred, 2).astype(np.float64)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and the thresholds that give them (descending)."""
    y_true, scores = np.asarray(y_true).astype(bool), np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y_true[order]
    # one point per distinct threshold: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], int)
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    pos, neg = max(y.sum(), 1), max((~y).sum(), 1)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count half)."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold (descending thresholds)."""
    y_true, scores = np.asarray(y_true).astype(bool), np.asarray(scores, np.float64)
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    pos, neg = y_true.sum(), (~y_true).sum()
    tp, fp = tpr[1:] * pos, fpr[1:] * neg
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    return precision, tpr[1:], thresholds[1:]
