"""Calibrating a spam filter's cut-offs (chainrule.apps.spam.calibration)."""

import numpy as np
import pytest

from chainrule.apps.spam import calibrate
from chainrule.metrics import matthews_corrcoef


def test_calibration_respects_the_blocked_ham_target():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1000, int), np.ones(300, int)]
    p = np.r_[rng.beta(1, 8, 1000), rng.beta(8, 1, 300)]
    for target in (0.0, 0.005, 0.05):
        spam_cut, ham_cut = calibrate(y, p, target)
        assert ((p[y == 0] >= spam_cut).mean()) <= target
        assert 0 <= ham_cut <= spam_cut <= 1
        # no other cut-off within the target has a higher MCC (brute force over every score)
        best = max(matthews_corrcoef(y, (p >= c).astype(int)) for c in np.r_[p, 1.1]
                   if (p[y == 0] >= c).mean() <= target)
        assert matthews_corrcoef(y, (p >= spam_cut).astype(int)) == pytest.approx(best, abs=1e-12)


def test_calibration_prefers_mcc_to_the_lowest_allowed_cutoff():
    # 200 ham at 0.1..0.3, two ham at 0.6 and 0.62, one spam at 0.55 and 39 at 0.9: a 1% target
    # allows blocking both high ham, which would catch one more spam for two blocked ham; the best
    # MCC stops above them
    y = np.r_[np.zeros(202, int), np.ones(40, int)]
    p = np.r_[np.linspace(0.1, 0.3, 200), 0.6, 0.62, 0.55, np.full(39, 0.9)]
    spam_cut, _ = calibrate(y, p, 0.01)
    assert 0.62 < spam_cut <= 0.9
    # short-message case: most errors are missed spam, the ham all score low; the cut-off goes
    # down to the spam instead of staying near the highest validation ham
    y = np.r_[np.zeros(300, int), np.ones(40, int)]
    p = np.r_[np.linspace(0.001, 0.05, 300), np.linspace(0.2, 0.99, 40)]
    spam_cut, _ = calibrate(y, p, 0.003)
    assert 0.05 < spam_cut <= 0.2
