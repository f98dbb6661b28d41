"""Training a spam filter (chainrule.apps.spam.training): the committee is the same whether its
members train here or in worker processes; one network on a held-out split."""

import re

import numpy as np
import pytest
import scipy.sparse as sp

from chainrule import plots
from chainrule.apps.spam import calibrate, check_labels, load_spam_model, stratified_split, train_filter, write_run
from chainrule.apps.spam.training import RUN_FILES
from chainrule.data.text import HashingConfig
from chainrule.errors import DataError


def test_committee_members_train_the_same_in_worker_processes(synthetic_spam_rows):
    x, y = synthetic_spam_rows
    config = HashingConfig(n_features=64)
    kw = dict(hidden=(4,), epochs=3, batch_size=16, folds=3, seed=1)
    one = train_filter(x, y, config, processes=1, **kw)
    two = train_filter(x, y, config, processes=2, **kw)
    np.testing.assert_array_equal(one.bundle.model.flat_params, two.bundle.model.flat_params)
    np.testing.assert_array_equal(one.val_probabilities, two.val_probabilities)
    assert one.bundle.spam_cutoff == two.bundle.spam_cutoff
    assert one.bundle.model.layers[0].out_features == 12 and len(one.val_labels) == len(y)


def test_one_network_calibrates_on_a_held_out_split(synthetic_spam_rows):
    x, y = synthetic_spam_rows
    train, held = stratified_split(y, 0.25, seed=3)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(y)
    assert y[held].sum() == 8 and (y[held] == 0).sum() == 22  # a quarter of each class, rounded
    result = train_filter(x, y, HashingConfig(n_features=64), hidden=(4,), epochs=3, batch_size=16, folds=0,
                          validation=0.25, seed=3)
    np.testing.assert_array_equal(result.val_labels, y[held])
    training = result.bundle.metadata["training"]
    assert training["validation"] == "held out" and training["examples"] == len(train)
    assert training["validation_examples"] == len(held) and len(result.histories) == 1
    assert result.bundle.model.layers[0].out_features == 4


def test_without_balance_every_message_weighs_the_same_and_even_odds_are_spam(synthetic_spam_rows):
    """balance (default): the loss weighs spam by #ham/#spam and the cut-offs are the calibrated
    ones; without it the weight is 1 and the cut-offs are the calibrated ones capped at P(spam)
    0.5, the ham cut-off never above the spam cut-off. (The rows' labels flipped: 90 spam, 30 ham,
    so that ham scores high enough after a few epochs for both caps to matter.)"""
    x, y = synthetic_spam_rows
    y = 1 - y
    kw = dict(hidden=(4,), epochs=8, batch_size=16, folds=3, seed=1, target_blocked_ham=0.0)
    balanced = train_filter(x, y, HashingConfig(n_features=64), **kw)
    plain = train_filter(x, y, HashingConfig(n_features=64), balance=False, **kw)
    assert balanced.bundle.metadata["training"]["pos_weight"] == 30 / 90
    assert balanced.bundle.metadata["training"]["balance"] is True
    assert plain.bundle.metadata["training"]["pos_weight"] == 1.0
    assert plain.bundle.metadata["training"]["balance"] is False
    spam_cut, ham_cut = calibrate(y, plain.val_probabilities, 0.0)  # the same out-of-fold scores
    assert spam_cut > 0.5 and ham_cut > 0.5  # (so both caps decide here)
    assert (plain.bundle.spam_cutoff, plain.bundle.ham_cutoff) == (0.5, 0.5)
    assert (balanced.bundle.spam_cutoff, balanced.bundle.ham_cutoff) == calibrate(y, balanced.val_probabilities, 0.0)
    assert not np.allclose(plain.bundle.model.flat_params, balanced.bundle.model.flat_params)


@pytest.mark.parametrize(("spam", "ham", "folds", "validation", "said"), [
    (0, 50, 0, 0.2, "needs both spam and ham; found 0 spam, 50 ham"),
    (3, 100, 0, 0.1, "holds out 0 spam and 10 ham"),  # (3 x 0.1 rounds to no spam: no cut-off to place)
    (3, 100, 0, 0.9, "holds out 3 spam and 90 ham"),  # (no spam left to train on)
    (3, 100, 5, 0.2, "5 folds need at least 5 spam and 5 ham messages, found 3 spam, 100 ham"),
])
def test_labels_a_filter_cannot_be_trained_or_calibrated_on_are_refused_first(spam, ham, folds, validation, said):
    y = np.array([1] * spam + [0] * ham)
    with pytest.raises(DataError, match=re.escape(said)):
        check_labels(y, folds, validation)
    with pytest.raises(DataError, match=re.escape(said)):
        train_filter(sp.csr_matrix((len(y), 16), dtype=np.float32), y, HashingConfig(n_features=16), folds=folds,
                     validation=validation)
    check_labels(np.array([1] * 20 + [0] * 100), folds, 0.2)  # (enough of both: nothing to say)


def test_a_run_is_written_whole_or_not_at_all(synthetic_spam_rows, tmp_path, monkeypatch):
    x, y = synthetic_spam_rows
    config = HashingConfig(n_features=64)
    first = train_filter(x, y, config, hidden=(4,), epochs=2, batch_size=16, seed=0)
    write_run(first, tmp_path / "m", seconds=1.0)
    assert all((tmp_path / "m" / name).is_file() for name in RUN_FILES)
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}
    second = train_filter(x, y, config, hidden=(4,), epochs=2, batch_size=16, seed=1)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # (Ctrl-C while the last figure is drawn)

    monkeypatch.setattr(plots, "pr_roc_curves", broken)
    with pytest.raises(KeyboardInterrupt):
        write_run(second, tmp_path / "m", seconds=1.0)
    after = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}
    assert after == before  # the earlier filter, with its own numbers and figures
    assert not [p for p in (tmp_path / "m").iterdir() if p.is_dir()]  # (nor a staging folder)
    assert load_spam_model(tmp_path / "m").spam_cutoff == first.bundle.spam_cutoff
