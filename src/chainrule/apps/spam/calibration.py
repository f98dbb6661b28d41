"""Choosing a filter's cut-offs from scored, labelled messages (`calibrate`), and the numbers that
judge a cut-off (`binary_report`: accuracy, spam caught, blocked ham, MCC, ROC AUC, ...).

Losing a real message costs more than letting a spam through, so the spam cut-off is not 0.5:
it is the cut-off with the best Matthews correlation among those that block at most a target
share of the ham.
"""

from __future__ import annotations

import numpy as np

from chainrule import metrics
from chainrule.data.corpora import SPAM
from chainrule.functional import sigmoid


def calibrate(y: np.ndarray, p: np.ndarray, target_blocked_ham: float,
              max_missed_as_ham: float = 0.02) -> tuple[float, float]:
    """(spam cut-off, ham cut-off) from validation labels and probabilities.

    Spam cut-off: of the cut-offs that block at most `target_blocked_ham` of the validation ham,
    the one with the highest Matthews correlation on the validation messages (ties: the highest,
    which blocks the fewest). The blocked-ham target alone would pick the lowest allowed cut-off
    and catch the most spam whatever it costs; maximising MCC under it stops lower than that when
    the extra spam caught is bought with ham, and does not stay far above the ham (as the highest
    ham score plus a margin would) when most errors are missed spam — the case of short messages.
    The cut-off sits halfway, in log-odds, between the lowest score called spam and the highest
    called ham, so it does not rest on one validation message's score.

    Ham cut-off: the highest level below which at most `max_missed_as_ham` of validation spam
    fall (capped at the spam cut-off); between the two a message is `unsure`.
    """
    y = np.asarray(y, np.int64)
    p = np.asarray(p, np.float64)
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    n = len(ps)
    n_spam = int(ys.sum())
    n_ham = n - n_spam
    # candidate j calls the j highest-scoring messages spam; it is a cut-off only where the score
    # drops between message j-1 and message j
    tp = np.concatenate([[0], np.cumsum(ys)]).astype(np.float64)
    fp = np.arange(n + 1) - tp
    fn, tn = n_spam - tp, n_ham - fp
    separable = np.ones(n + 1, bool)
    separable[1:n] = ps[:-1] > ps[1:]
    allowed = np.floor(target_blocked_ham * n_ham + 1e-9)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1.0), 0.0)
    mcc = np.where(separable & (fp <= allowed), mcc, -np.inf)
    j = int(np.flatnonzero(mcc >= mcc.max() - 1e-12)[0])
    if j == 0:
        spam_cut = float(np.nextafter(ps[0], 2.0)) if n else 0.5
    elif j == n:
        spam_cut = float(ps[-1])
    else:
        hi, lo = np.clip(ps[[j - 1, j]], 1e-15, 1 - 1e-15)
        mid = 0.5 * (np.log(hi / (1 - hi)) + np.log(lo / (1 - lo)))  # log-odds midpoint
        spam_cut = float(sigmoid(mid))
        if not ps[j] < spam_cut <= ps[j - 1]:  # (scores closer than float precision)
            spam_cut = float(ps[j - 1])
    spam_cut = min(max(spam_cut, 0.0), 1.0)
    spam = np.sort(p[y == SPAM])
    k = int(np.floor(max_missed_as_ham * len(spam)))
    ham_cut = float(spam[k]) if len(spam) > k else spam_cut
    return spam_cut, float(min(ham_cut, spam_cut))


def binary_report(y: np.ndarray, p: np.ndarray, spam_cutoff: float) -> dict:
    """The bench/evaluate numbers; a message is called spam at p >= spam cut-off (unsure = ham)."""
    y = np.asarray(y, np.int64)
    pred = (p >= spam_cutoff).astype(np.int64)
    cm = metrics.confusion_matrix(y, pred, 2)
    (tn, fp), (fn, tp) = cm
    precision, recall, f1 = metrics.precision_recall_f1(cm)
    return {
        "messages": int(len(y)), "spam": int(y.sum()), "ham": int((1 - y).sum()),
        "accuracy": metrics.accuracy(y, pred),
        # None where a set has no spam (or no ham): there is nothing to catch (or block), and no
        # ranking of one class above the other (JSON has no NaN)
        "spam_caught": float(tp / (tp + fn)) if tp + fn else None,
        "blocked_ham": float(fp / (tn + fp)) if tn + fp else None,
        "precision": float(precision[1]) if tp + fp else None,  # (None: no message called spam)
        "f1": float(f1[1]) if 2 * tp + fp + fn else None,
        "mcc": metrics.matthews_corrcoef(y, pred) if 0 < y.sum() < len(y) else None,  # (one class: none to tell)
        "roc_auc": metrics.roc_auc(y, p) if 0 < y.sum() < len(y) else None,
        "confusion_matrix": cm.tolist(),
    }
