"""The spam filter's network and its files (chainrule.apps.spam.model): sparse Linear gradients
against finite differences and PyTorch, the merged committee, a save/load round trip."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule as cr
import chainrule.model_file
from chainrule.apps.spam import (
    build_network,
    learn,
    load_idf,
    load_replay,
    load_spam_model,
    merge_committee,
    row_digests,
    save_model,
    train_filter,
    training_features,
    verdict,
)
from chainrule.apps.spam.features import featurize_chunk
from chainrule.data.corpora import read_sms
from chainrule.data.text import HashingConfig
from conftest import damaged


def _sparse_batch(rng, n=6, d=40, density=0.15):
    return sp.random(n, d, density=density, format="csr", random_state=np.random.RandomState(0),
                     data_rvs=lambda k: rng.normal(size=k)).astype(np.float64)


def test_sparse_linear_gradients_vs_finite_differences():
    rng = np.random.default_rng(0)
    net = cr.Sequential([cr.Linear(40, 7), cr.ReLU(), cr.Linear(7, 1)], seed=0)
    x = _sparse_batch(rng)
    y = rng.integers(0, 2, 6)
    errors = cr.gradcheck(net, x, y, loss=cr.BinaryCrossEntropy(pos_weight=3.0))
    assert set(errors) == {"0:Linear", "2:Linear"}
    assert max(errors.values()) < 1e-6, errors


def test_sparse_linear_matches_pytorch_dense():
    rng = np.random.default_rng(1)
    net = cr.Sequential([cr.Linear(40, 5), cr.ReLU(), cr.Linear(5, 1)], seed=1).to(np.float64)
    x = _sparse_batch(rng)
    y = rng.integers(0, 2, 6)
    loss = cr.BinaryCrossEntropy(pos_weight=2.5)
    out = net.forward(x, training=True)
    _, grad = loss(out, y)
    net.backward(grad, input_grad=False)

    w1, b1 = (torch.tensor(p.data, requires_grad=True) for p in net.layers[0].parameters())
    w2, b2 = (torch.tensor(p.data, requires_grad=True) for p in net.layers[2].parameters())
    xt = torch.tensor(x.toarray())
    logits = torch.relu(xt @ w1 + b1) @ w2 + b2
    torch_loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.5, dtype=torch.float64))(
        logits, torch.tensor(y, dtype=torch.float64).reshape(-1, 1))
    torch_loss.backward()
    np.testing.assert_allclose(out, logits.detach().numpy(), rtol=1e-12, atol=1e-12)
    for p, t in zip([*net.layers[0].parameters(), *net.layers[2].parameters()], [w1, b1, w2, b2], strict=True):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_merged_committee_computes_the_mean_logit_exactly():
    rng = np.random.default_rng(0)
    x = sp.random(20, 64, density=0.2, format="csr", random_state=1, dtype=np.float32)
    hidden = (4, 3)
    nets = [build_network(64, hidden, dropout=0.2, seed=s) for s in range(3)]
    for net in nets:  # non-zero biases, so that their merging is checked too
        for layer in net.layers:
            if isinstance(layer, cr.Linear):
                layer.bias.data[...] = rng.normal(size=layer.bias.shape)
    merged = merge_committee(nets, 64, hidden, dropout=0.2)
    assert [layer.out_features for layer in merged.layers if isinstance(layer, cr.Linear)] == [12, 9, 1]
    mean = np.mean([net.forward(x) for net in nets], axis=0)
    np.testing.assert_allclose(merged.forward(x), mean, rtol=1e-5, atol=1e-6)
    # linear members (no hidden layer): one layer, the mean of theirs
    nets = [build_network(64, (), seed=s) for s in range(3)]
    for net in nets:
        net.layers[0].bias.data[...] = rng.normal(size=1)
    merged = merge_committee(nets, 64, (), dropout=0.2)
    assert [layer.out_features for layer in merged.layers if isinstance(layer, cr.Linear)] == [1]
    mean = np.mean([net.forward(x) for net in nets], axis=0)
    np.testing.assert_allclose(merged.forward(x), mean, rtol=1e-5, atol=1e-6)


def test_a_saved_filter_loads_back_the_same(synthetic_spam_rows, tmp_path):
    x, y = synthetic_spam_rows
    config = HashingConfig(n_features=64, idf=True)
    idf = np.linspace(1, 3, 64).astype(np.float32)
    result = train_filter(x, y, config, hidden=(4,), epochs=2, batch_size=16, seed=0, idf=idf)
    save_model(result.bundle, tmp_path / "m", replay=result.replay)
    loaded = load_spam_model(tmp_path / "m")
    assert (loaded.spam_cutoff, loaded.ham_cutoff) == (result.bundle.spam_cutoff, result.bundle.ham_cutoff)
    assert loaded.config == config and loaded.directory == tmp_path / "m"
    np.testing.assert_array_equal(loaded.idf, idf)
    np.testing.assert_array_equal(loaded.probabilities(x), result.bundle.probabilities(x))
    x_replay, y_replay = load_replay(loaded.files["replay"], 64)
    assert (x_replay != result.replay[0]).nnz == 0 and list(y_replay) == list(result.replay[1])
    # the cut-offs can be overridden per load, and decide the verdicts
    assert load_spam_model(tmp_path / "m", spam_cutoff=0.0, ham_cutoff=0.0).verdicts(np.array([0.3])) == ["spam"]
    assert [verdict(p, 0.8, 0.2) for p in (0.8, 0.5, 0.19)] == ["spam", "unsure", "ham"]


@pytest.mark.parametrize(("change", "match"), [
    ({"spam_format": 99}, "spam_format 99 is not one this chainrule reads"),
    ({"spam_format": "1"}, "spam_format '1' is not one"),
    ({"inputs": "mail"}, "inputs must be a list of mail and/or sms"),
    ({"inputs": ["mail", "fax"]}, "inputs must be a list"),
    ({"inputs": [["mail"]]}, "inputs must be a list"),  # (was a TypeError: a list is unhashable)
    ({"cutoffs": {"spam": 0.2, "ham": 0.8}}, r"m: its ham cut-off \(0.8\) is above its spam cut-off \(0.2\)"),
    ({"cutoffs": {"spam": 1.5, "ham": 0.8}}, r"m: its spam cut-off 1.5 is not a probability"),
])
def test_damaged_spam_metadata_is_refused_naming_the_model(synthetic_spam_rows, tmp_path, change, match):
    x, y = synthetic_spam_rows
    result = train_filter(x, y, HashingConfig(n_features=64), hidden=(4,), epochs=1, batch_size=16, seed=0)
    save_model(result.bundle, tmp_path / "m", replay=result.replay)
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    doc["metadata"].update(change)
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(cr.ModelFileError, match=match):
        load_spam_model(tmp_path / "m")


def test_cut_offs_asked_for_that_cannot_work_blame_the_request_not_the_model(synthetic_spam_rows, tmp_path):
    x, y = synthetic_spam_rows
    result = train_filter(x, y, HashingConfig(n_features=64), hidden=(4,), epochs=1, batch_size=16, seed=0)
    save_model(result.bundle, tmp_path / "m", replay=result.replay)
    spam = result.bundle.spam_cutoff
    for asked, said in (({"spam_cutoff": 2.0}, "the spam cut-off asked for must be a probability from 0 to 1, got 2.0"),
                        ({"ham_cutoff": -0.1}, "the ham cut-off asked for must be a probability"),
                        ({"ham_cutoff": 1.0}, f"the ham cut-off (1.0, asked for) is above the spam cut-off ({spam!r}, "
                                              "the model's)"),
                        ({"spam_cutoff": 0.2, "ham_cutoff": 0.3}, "(0.3, asked for) is above the spam cut-off (0.2, "
                                                                  "asked for)")):
        with pytest.raises(cr.UserError) as caught:
            load_spam_model(tmp_path / "m", **asked)
        assert not isinstance(caught.value, cr.ModelFileError) and said in str(caught.value)


@pytest.fixture(scope="module")
def saved_filter(data_root, tmp_path_factory):
    """A small filter with idf weights and a replay sample, trained on 300 real SMS and saved once;
    each example copies it."""
    texts, labels = read_sms(data_root / "sms-spam" / "SMSSpamCollection")
    config = HashingConfig(n_features=256, idf=True, min_df=1)
    x, _, idf = training_features([("sms", t) for t in texts[:300]], config, processes=1)
    result = train_filter(x, np.asarray(labels[:300]), config, hidden=(4,), epochs=1, batch_size=32, seed=0, idf=idf)
    d = tmp_path_factory.mktemp("filter") / "m"
    save_model(result.bundle, d, replay=result.replay)
    return d


@settings(max_examples=150, deadline=None)
@given(target=st.sampled_from(["model.json", "model", "idf", "replay"]), data=st.data())
def test_any_damage_to_a_filter_s_files_is_a_model_file_error(saved_filter, tmp_path_factory, target, data):
    """Bytes of a spam filter's model.json or of one of its arrays cut, changed or inserted: loading
    it raises ModelFileError or gives a filter that scores; never another exception."""
    d = tmp_path_factory.mktemp("damaged") / "m"
    shutil.copytree(saved_filter, d)
    path = d / "model.json" if target == "model.json" else cr.model_files(d)[target]
    path.write_bytes(damaged(path.read_bytes(), data))
    try:
        bundle = load_spam_model(d)
        x_replay, y_replay = load_replay(bundle.files.get("replay"), bundle.config.n_features)  # (read when it learns)
    except cr.ModelFileError:
        return
    assert x_replay.shape[0] == len(y_replay)
    p, _ = bundle.score([("sms", "win a free prize now")], processes=1)
    assert p.shape == (1,) and 0 <= p[0] <= 1


def test_a_filter_loaded_while_two_learns_save_is_the_newer_one_whole(saved_filter, data_root, tmp_path,
                                                                      monkeypatch):
    """A reader descheduled between model.json and the weights it names while two `learn`s saved
    (each deletes the files of the model before the one it replaces): spam classify exited 3,
    "model-....npz: not a readable .npz file (No such file or directory)", and the daemon kept its
    old model. It reads the new model.json again and loads that model, whole."""
    d = tmp_path / "m"
    shutil.copytree(saved_filter, d)
    writer = load_spam_model(d)
    texts, _ = read_sms(data_root / "sms-spam" / "SMSSpamCollection")
    x, _ = featurize_chunk(writer.hasher, [("sms", t) for t in texts[300:302]])
    real, read = chainrule.model_file.npz_headers, []

    def two_learns_meanwhile(path):
        if not read:
            read.append(path)
            for row in (0, 1):
                learn(writer, x[row:row + 1], np.array([1]), seed=0)
        return real(path)

    monkeypatch.setattr(chainrule.model_file, "npz_headers", two_learns_meanwhile)
    bundle = load_spam_model(d)
    assert not read[0].exists()  # what its first model.json named was deleted
    assert bundle.metadata["learned"] == 2 and bundle.files == cr.model_files(d)
    np.testing.assert_array_equal(bundle.probabilities(x), writer.probabilities(x))


@pytest.mark.parametrize("role", ["idf", "replay"])
@pytest.mark.parametrize("replace,said", [
    (lambda p: p.symlink_to(p), "a loop of symbolic links"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
    (lambda p: p.mkdir(), "a folder, not a file"),
])
def test_a_filter_s_arrays_that_are_no_regular_file_are_named_for_what_they_are(saved_filter, tmp_path, role,
                                                                                 replace, said):
    """They were all "not found (model.json names it as ...)"."""
    d = tmp_path / "m"
    shutil.copytree(saved_filter, d)
    path = cr.model_files(d)[role]
    path.unlink()
    replace(path)
    with pytest.raises(cr.ModelFileError, match=f"^{re.escape(str(path))}: {said} \\(model.json names it"):
        bundle = load_spam_model(d)
        load_replay(bundle.files["replay"], bundle.config.n_features)


def test_idf_weights_of_0_load_only_for_a_model_with_min_df(tmp_path):
    """0 is the weight `min_df` gives a rare bucket; in a model without it, a 0 is damage."""
    path = tmp_path / "idf.npz"
    idf = np.linspace(1, 3, 64).astype(np.float32)
    idf[::3] = 0
    np.savez(path, idf=idf)
    np.testing.assert_array_equal(load_idf(path, HashingConfig(n_features=64, idf=True, min_df=3)), idf)
    with pytest.raises(cr.ModelFileError, match="finite idf weights >= 1"):
        load_idf(path, HashingConfig(n_features=64, idf=True))
    idf[1] = 0.5  # neither left out nor an idf
    np.savez(path, idf=idf)
    with pytest.raises(cr.ModelFileError, match="finite idf weights 0 or >= 1"):
        load_idf(path, HashingConfig(n_features=64, idf=True, min_df=3))


def test_idf_weights_beyond_float32_are_refused_at_load(tmp_path):
    """Weights saved in float64 were checked finite before the cast to the filter's float32, where
    1e300 is infinite: verdicts came out NaN, and `spam learn` saved a model then refused."""
    path = tmp_path / "idf.npz"
    idf = np.linspace(1, 3, 64)
    np.savez(path, idf=idf)
    np.testing.assert_allclose(load_idf(path, HashingConfig(n_features=64, idf=True)), idf, rtol=1e-7)
    idf[5] = 1e300
    np.savez(path, idf=idf)
    with pytest.raises(cr.ModelFileError, match="finite idf weights >= 1"):
        load_idf(path, HashingConfig(n_features=64, idf=True))


def test_one_message_scores_as_in_a_batch(spam_model, spamassassin_messages, data_root):
    """`score` of one message (SpamModel._score_one: no CSR matrix, the first layer reading only
    the row's rows of W1) gives the probability and problem of the batch path (`featurize_chunk`,
    then `probabilities`) on every SpamAssassin message and on SMS."""
    bundle = load_spam_model(spam_model)
    texts, _ = read_sms(data_root / "sms-spam" / "SMSSpamCollection")
    items = [("mail", m.data) for m in spamassassin_messages] + [("sms", t) for t in texts[:300]]
    hasher = bundle.hasher
    fast, slow, fast_problems, slow_problems = [], [], [], []
    for item in items:
        p, problems = bundle.score([item])
        fast.append(p[0])
        fast_problems += problems
        x, problems = featurize_chunk(hasher, [item])
        slow.append(bundle.probabilities(x)[0])
        slow_problems += problems
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
    assert bundle.verdicts(np.array(fast)) == bundle.verdicts(np.array(slow))
    assert fast_problems == slow_problems


def _trained(rows, tmp_path) -> Path:
    x, y = rows
    config = HashingConfig(n_features=64, idf=True)
    result = train_filter(x, y, config, hidden=(4,), epochs=2, batch_size=16, seed=0,
                          idf=np.linspace(1, 3, 64).astype(np.float32))
    save_model(result.bundle, tmp_path / "m", replay=result.replay)
    return tmp_path / "m"


def test_a_crash_before_the_commit_leaves_the_old_filter_with_its_replay(synthetic_spam_rows, tmp_path,
                                                                         monkeypatch):
    # `learn` writes new weights, idf and replay files, then model.json: the disk fills up just then
    x, y = synthetic_spam_rows
    m = _trained(synthetic_spam_rows, tmp_path)
    old = load_spam_model(m)
    p_old, (_, y_old) = old.probabilities(x), load_replay(old.files["replay"], 64)
    files_before = sorted(p.name for p in m.iterdir())
    real_write = chainrule.model_file.atomic_write_bytes

    def write(path, data):
        if Path(path).name == "model.json":
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(chainrule.model_file, "atomic_write_bytes", write)
    with pytest.raises(OSError, match="No space left"):
        learn(load_spam_model(m), x[:5], y[:5], seed=0)
    assert sorted(p.name for p in m.iterdir()) == files_before  # the new files are gone again
    again = load_spam_model(m)
    np.testing.assert_array_equal(again.probabilities(x), p_old)
    assert list(load_replay(again.files["replay"], 64)[1]) == list(y_old)


def test_a_version_1_filter_directory_loads_and_learns(synthetic_spam_rows, tmp_path):
    # idf.npz and replay.npz beside model.npz, as chainrule wrote them before model.json named its files
    x, y = synthetic_spam_rows
    new = load_spam_model(_trained(synthetic_spam_rows, tmp_path))
    d = tmp_path / "v1"
    d.mkdir()
    for name, path in new.files.items():
        (d / f"{name}.npz").write_bytes(path.read_bytes())
    doc = {"format": "chainrule-model", "format_version": 1, **new.model.config(), "metadata": new.metadata}
    (d / "model.json").write_text(json.dumps(doc))
    old = load_spam_model(d)
    np.testing.assert_array_equal(old.probabilities(x), new.probabilities(x))
    np.testing.assert_array_equal(old.idf, new.idf)
    old_rows = load_replay(old.files["replay"], 64)[0]
    learn(old, x[:3], y[:3], seed=0)
    learned = load_spam_model(d)
    assert learned.metadata["learned"] == 3
    # the replay sample: the old rows, then the rows learned, each message once
    taught = [bytes(r) for r in row_digests(x[:3])]
    kept = [bytes(r) for r in row_digests(old_rows) if bytes(r) not in taught]
    assert [bytes(r) for r in row_digests(load_replay(learned.files["replay"], 64)[0])] == kept + taught
    np.testing.assert_array_equal(learned.idf, new.idf)


def test_a_replay_sample_of_rows_longer_than_hashing_makes_is_refused(saved_filter, tmp_path):
    """Hashed rows are unit length (√2 at most with split_norm: `Hasher.matrix`); a sample of values
    near float32's largest (3e38) was read, and learning said "learning diverged" of a model whose
    replay file is what is damaged. A row at √2, as float32 rounds it, is one hashing makes."""
    x, y = load_replay(cr.model_files(saved_filter)["replay"], 256)
    path = tmp_path / "replay.npz"

    def saved(data):
        np.savez(path, data=data.astype(np.float32), indices=x.indices, indptr=x.indptr,
                 shape=np.array(x.shape), labels=y)
        return path

    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    norms = np.sqrt(np.bincount(rows, weights=x.data.astype(np.float64) ** 2))
    at_most = x.data * np.float32(np.sqrt(2.0)) / norms[rows].astype(np.float32)  # every row √2 long
    assert load_replay(saved(at_most), 256)[0].shape == x.shape
    for data in (x.data * 2, np.full_like(x.data, 3e38)):
        with pytest.raises(cr.ModelFileError, match=f"^{re.escape(str(path))}: .*longer than"):
            load_replay(saved(data), 256)


@pytest.mark.parametrize(("arrays", "match"), [
    ({"data": np.zeros(10**6, np.float32), "indices": np.zeros(10**6, np.int32), "indptr": np.zeros(2, np.int64),
      "shape": np.array([1, 64]), "labels": np.zeros(1, np.int64)}, "not a replay sample"),
    ({"data": np.zeros(1, np.float32), "indices": np.zeros(1, np.int32), "indptr": np.array([0, 1]),
      "shape": np.array([1, 64]), "labels": np.zeros(1, np.int64)}, None),  # a good one, for contrast
    ({"data": np.zeros(1, np.float32), "indices": np.array([99], np.int32), "indptr": np.array([0, 1]),
      "shape": np.array([1, 64]), "labels": np.zeros(1, np.int64)}, "not a valid replay sample"),
    ({"labels": np.zeros(1, np.int64)}, "not a replay sample"),
    # (an OverflowError from inside SciPy: `spam learn` and TELL failed as internal errors)
    ({"data": np.zeros(1, np.float32), "indices": np.zeros(1, np.int32), "indptr": np.array([0, 1]),
      "shape": np.array([2**63, 64], np.uint64), "labels": np.zeros(1, np.int64)}, "replay sample"),
])
def test_a_replay_sample_is_checked_from_its_headers(tmp_path, arrays, match):
    np.savez(tmp_path / "replay.npz", **arrays)
    if match is None:
        assert load_replay(tmp_path / "replay.npz", 64)[0].shape == (1, 64)
    else:
        with pytest.raises(cr.ModelFileError, match=match):
            load_replay(tmp_path / "replay.npz", 64)
