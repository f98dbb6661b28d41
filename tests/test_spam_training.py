"""Training a spam filter (chainrule.apps.spam.training): the committee is the same whether its
members train here or in worker processes; one network on a held-out split."""

import numpy as np

from chainrule.apps.spam import stratified_split, train_filter
from chainrule.data.text import HashingConfig


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
