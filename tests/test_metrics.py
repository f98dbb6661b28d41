"""Classification metrics: small cases worked by hand, then scikit-learn as the oracle on
hypothesis-generated labels and scores (ties included)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from chainrule import metrics as m

SETTINGS = settings(max_examples=60, deadline=None)
# scikit-learn's own warning on one-class cases, which the generated inputs include on purpose
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found")


@st.composite
def predictions(draw, max_classes=6):
    """(y_true, y_pred, classes): labels in [0, classes), at least one example."""
    classes = draw(st.integers(1, max_classes))
    n = draw(st.integers(1, 40))
    labels = st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)
    return np.array(draw(labels)), np.array(draw(labels)), classes


@st.composite
def binary_scores(draw):
    """(y_true, scores) with both classes present; scores on a coarse grid, so that ties occur."""
    n = draw(st.integers(2, 40))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda v: 0 < sum(v) < len(v)))
    scores = draw(st.lists(st.integers(0, 10), min_size=n, max_size=n))
    return np.array(y), np.array(scores) / 10


# -- by hand -----------------------------------------------------------------------------------------


def test_small_cases_by_hand():
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    assert m.accuracy(y_true, y_pred) == 0.6
    cm = m.confusion_matrix(y_true, y_pred)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    precision, recall, f1 = m.precision_recall_f1(cm)
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.0])  # class 2 never predicted: 0, not NaN
    np.testing.assert_allclose(recall, [0.5, 1.0, 0.0])
    np.testing.assert_allclose(f1, [0.5, 0.8, 0.0])
    assert m.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert m.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    assert m.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # undefined: 0
    assert m.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert m.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half


@pytest.mark.parametrize("call, words", [
    (lambda: m.accuracy([1, 2, 3], [1]), "accuracy: y_true has 3 examples but y_pred has 1"),  # (was broadcast)
    (lambda: m.accuracy([], []), "accuracy: no examples"),
    (lambda: m.confusion_matrix([0, 1, 1], [0]), "y_true has 3 examples but y_pred has 1"),
    (lambda: m.confusion_matrix([0, 1], [2, 1], classes=2), r"labels must be in \[0, 2\), got 1..2"),
    (lambda: m.confusion_matrix([0, 1.7], [0, 1]), "class labels must be whole numbers"),  # (was truncated)
    (lambda: m.roc_auc([0, 1, 0], [0.1, 0.9]), "y_true has 3 examples but scores has 2"),
    (lambda: m.roc_auc([-1, 1], [0.1, 0.9]), r"labels must be in \[0, 2\)"),  # (was 0.0)
    (lambda: m.roc_auc([0, 1], [np.nan, 0.9]), "the scores contain NaN or infinity"),  # (was 0.5)
    (lambda: m.matthews_corrcoef([1, 2, 2, 1], [1, 2, 2, 2]), r"labels must be in \[0, 2\)"),
    (lambda: m.accuracy(np.zeros((3, 2)), np.zeros(3)), "one value per example"),
    (lambda: m.confusion_matrix([True, False], [False, False], classes=1), r"labels must be in \[0, 1\)"),
])
def test_inputs_that_cannot_be_scored_are_refused_not_broadcast_or_truncated(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_a_column_of_labels_is_read_as_labels_and_one_class_has_no_auc():
    assert m.accuracy(np.array([[1], [0], [1]]), np.array([1, 1, 1])) == pytest.approx(2 / 3)  # (was 5/9)
    assert np.isnan(m.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))  # undefined (was 0.0, "perfectly inverted")


# -- against scikit-learn ----------------------------------------------------------------------------


@SETTINGS
@given(predictions())
def test_accuracy_and_confusion_matrix_match_sklearn(case):
    y_true, y_pred, classes = case
    assert m.accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    want = sk.confusion_matrix(y_true, y_pred, labels=list(range(classes)))
    np.testing.assert_array_equal(m.confusion_matrix(y_true, y_pred, classes), want)
    # without `classes`: as many as the largest label seen needs
    seen = max(y_true.max(), y_pred.max()) + 1
    np.testing.assert_array_equal(m.confusion_matrix(y_true, y_pred), want[:seen, :seen])


@SETTINGS
@given(predictions())
def test_precision_recall_f1_match_sklearn(case):
    y_true, y_pred, classes = case
    ours = m.precision_recall_f1(m.confusion_matrix(y_true, y_pred, classes))
    theirs = sk.precision_recall_fscore_support(y_true, y_pred, labels=list(range(classes)), average=None,
                                                zero_division=0)[:3]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(predictions(max_classes=2))
def test_matthews_corrcoef_matches_sklearn(case):
    y_true, y_pred, _ = case
    assert m.matthews_corrcoef(y_true, y_pred) == pytest.approx(sk.matthews_corrcoef(y_true, y_pred), abs=1e-12)


@SETTINGS
@given(binary_scores())
def test_roc_curve_and_auc_match_sklearn(case):
    y, scores = case
    fpr, tpr, thresholds = m.roc_curve(y, scores)
    want = sk.roc_curve(y, scores, drop_intermediate=False)
    for a, b in zip((fpr, tpr, thresholds), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert m.roc_auc(y, scores) == pytest.approx(sk.roc_auc_score(y, scores), abs=1e-12)


@SETTINGS
@given(binary_scores())
def test_precision_recall_curve_matches_sklearn(case):
    y, scores = case
    precision, recall, thresholds = m.precision_recall_curve(y, scores)
    # scikit-learn lists thresholds ascending and ends with the point (recall 0, precision 1)
    want_p, want_r, want_t = sk.precision_recall_curve(y, scores)
    np.testing.assert_allclose(thresholds, want_t[::-1], rtol=1e-12)
    np.testing.assert_allclose(precision, want_p[:-1][::-1], rtol=1e-12)
    np.testing.assert_allclose(recall, want_r[:-1][::-1], rtol=1e-12)


@pytest.mark.parametrize("cm, labels, words", [
    (np.array([[0.5, 0.5], [0.2, 0.8]]), None, "the cells must be counts"),  # (a normalised matrix read "0")
    (np.array([[1, np.nan], [0, 1]]), None, "the cells must be counts"),
    (np.array([[1, 0, 0], [0, 1, 0]]), None, "expected a square matrix of counts"),
    (np.eye(2, dtype=int), ["a"], "1 labels for 2 classes"),
])
def test_a_confusion_matrix_figure_is_drawn_of_counts_only(cm, labels, words, tmp_path):
    from chainrule import plots

    with pytest.raises(ValueError, match=words):
        plots.confusion_matrix(cm, tmp_path / "cm.png", labels=labels)
    assert not (tmp_path / "cm.png").exists()
    with pytest.raises(ValueError, match="a figure file ends in one of"):  # (PGF needs LaTeX: was an internal error)
        plots.confusion_matrix(np.eye(2, dtype=int), tmp_path / "cm.pgf")
