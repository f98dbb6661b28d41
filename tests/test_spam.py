"""The spam filter: sparse Linear gradients, calibration, train -> save -> load -> classify, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule.apps.spam import (
    SpamModel,
    build_network,
    calibrate,
    classify_message,
    featurize,
    load_spam_model,
    merge_committee,
    train_filter,
    training_features,
)
from chainrule.cli import main
from chainrule.data.mail import read_messages
from chainrule.data.text import HashingConfig, inverse_document_frequency
from chainrule.metrics import matthews_corrcoef

DATA = os.environ.get("CHAINRULE_DATA")


# --- sparse input through Linear ----------------------------------------------------------------

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


# --- calibration --------------------------------------------------------------------------------

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


# --- training and the command line -------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A small labelled corpus from the real SpamAssassin tarballs: spam/ and easy_ham/ folders."""
    if not DATA:
        pytest.skip("CHAINRULE_DATA is not set")
    root = tmp_path_factory.mktemp("corpus")
    held = tmp_path_factory.mktemp("held")
    counts = {}
    for tarball in sorted((Path(DATA) / "spamassassin").glob("*.tar*")):
        for m in read_messages([tarball]):
            folder = m.source.split(":", 1)[1].split("/")[0]
            k = counts.get(folder, 0)
            counts[folder] = k + 1
            limit = {"spam": 160, "easy_ham": 200, "hard_ham": 40}[folder]
            if k >= limit + 40:
                break
            dest = (root if k < limit else held) / folder
            dest.mkdir(exist_ok=True)
            (dest / f"{k:04d}").write_bytes(m.data)
    return root, held


@pytest.fixture(scope="module")
def model_dir(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    rc = main(["spam", "train", str(corpus_dir[0]), "--out", str(out), "--hash-bits", "14", "--hidden", "8",
               "--epochs", "12", "--batch-size", "64", "--quiet"])
    assert rc == 0
    return out


def test_train_writes_model_metrics_and_figures(model_dir):
    for name in ("model.npz", "model.json", "idf.npz", "metrics.json", "replay.npz", "learning_curves.png",
                 "pr_roc.png"):
        assert (model_dir / name).is_file(), name
    doc = json.loads((model_dir / "model.json").read_text())
    meta = doc["metadata"]
    assert meta["task"] == "spam" and meta["hashing"]["n_features"] == 1 << 14 and meta["hashing"]["idf"]
    assert 0 <= meta["cutoffs"]["ham"] <= meta["cutoffs"]["spam"] <= 1
    bundle = load_spam_model(model_dir)
    assert bundle.spam_cutoff == meta["cutoffs"]["spam"]
    assert bundle.idf.shape == (1 << 14,) and bundle.idf.min() >= 1.0 and bundle.idf.max() > bundle.idf.min()
    # the default is a 5-member committee merged into one network, calibrated out of fold on all
    training = meta["training"]
    assert training["folds"] == 5 and training["network_hidden"] == [40] and len(training["epochs_run"]) == 5
    assert training["validation"] == "out-of-fold" and training["validation_examples"] == training["examples"]


def test_training_features_weight_by_the_idf_of_the_training_messages(corpus_dir):
    items = [("mail", p.read_bytes()) for p in sorted((corpus_dir[1] / "spam").iterdir())[:30]]
    items += [("mail", p.read_bytes()) for p in sorted((corpus_dir[1] / "easy_ham").iterdir())[:30]]
    config = HashingConfig(n_features=1 << 12, split_norm=True, idf=True)
    x, problems, idf = training_features(items, config, processes=1)
    plain, _ = featurize(items, HashingConfig(n_features=1 << 12, split_norm=True), processes=1)
    np.testing.assert_array_equal(idf, inverse_document_frequency(plain))
    weighted, _ = featurize(items, config, processes=1, idf=idf)
    assert (x != weighted).nnz == 0 and len(problems) == len(items)
    assert training_features(items, HashingConfig(n_features=1 << 12), processes=1)[2] is None


def test_a_missing_or_bad_idf_file_is_a_one_line_error(model_dir, corpus_dir, tmp_path, capsys):
    import shutil

    msg = str(corpus_dir[1] / "spam" / "0161")
    for name, damage in (("missing", None), ("short", np.ones(8, np.float32)), ("nan", np.full(1 << 14, np.nan))):
        m = tmp_path / name
        shutil.copytree(model_dir, m)
        (m / "idf.npz").unlink()
        if damage is not None:
            np.savez(m / "idf.npz", idf=damage)
        assert main(["spam", "classify", str(m), msg]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "idf.npz" in err and "Traceback" not in err, err


def test_folds_must_be_zero_or_at_least_two(tmp_path, capsys):
    assert main(["spam", "train", "--sms", str(tmp_path / "none.txt"), "--folds", "1"]) == 2
    assert "--folds must be 0" in capsys.readouterr().err


def test_committee_members_train_the_same_in_worker_processes():
    # synthetic hashed rows: spam and ham draw their tokens from overlapping bucket ranges
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(90, int), np.ones(30, int)]
    rows = [rng.choice(np.arange(0, 40) if t == 0 else np.arange(25, 64), 6, replace=False) for t in y]
    x = sp.csr_matrix((np.full(6 * len(y), 0.4, np.float32), np.concatenate(rows), np.arange(0, 6 * len(y) + 1, 6)),
                      shape=(len(y), 64))
    config = HashingConfig(n_features=64)
    kw = dict(hidden=(4,), epochs=3, batch_size=16, folds=3, seed=1)
    one = train_filter(x, y, config, processes=1, **kw)
    two = train_filter(x, y, config, processes=2, **kw)
    np.testing.assert_array_equal(one.bundle.model.flat_params, two.bundle.model.flat_params)
    np.testing.assert_array_equal(one.val_probabilities, two.val_probabilities)
    assert one.bundle.spam_cutoff == two.bundle.spam_cutoff
    assert one.bundle.model.layers[0].out_features == 12 and len(one.val_labels) == len(y)


def test_scoring_on_every_core_matches_one_process(model_dir, corpus_dir):
    # 400 real messages: enough for featurize and score to fork, in chunks of shrinking size
    items = [("mail", p.read_bytes()) for p in sorted(corpus_dir[0].rglob("*")) if p.is_file()][:400]
    bundle = load_spam_model(model_dir)
    x1, problems1 = featurize(items, bundle.config, processes=1, idf=bundle.idf)
    x2, problems2 = featurize(items, bundle.config, processes=2, idf=bundle.idf)
    assert x1.shape == (400, bundle.config.n_features) and (x1 != x2).nnz == 0 and problems1 == problems2
    p1, _ = bundle.score(items, processes=1)
    p2, problems = bundle.score(items, processes=2)
    # the network runs per chunk: float32 sums over batches of other sizes round differently
    np.testing.assert_allclose(p2, p1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p2, bundle.probabilities(x1), rtol=1e-6, atol=1e-9)
    assert problems == problems1


def test_evaluate_beats_the_majority_class_on_held_out_mail(model_dir, corpus_dir, capsys):
    assert main(["spam", "evaluate", str(model_dir), str(corpus_dir[1]), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    majority = max(r["spam"], r["ham"]) / r["messages"]
    assert r["messages"] == 120 and r["accuracy"] > majority and r["roc_auc"] > 0.5


def test_classify_lines_and_json(model_dir, corpus_dir, capsys):
    folder = corpus_dir[1] / "spam"
    assert main(["spam", "classify", str(model_dir), str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 40
    src, v, p = lines[0].split("\t")
    assert src.endswith("0160") and v in ("spam", "ham", "unsure") and 0 <= float(p) <= 1
    assert main(["spam", "classify", str(model_dir), str(folder / "0160"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == v and abs(doc["probability"] - float(p)) < 1e-6
    # the model named by its model.json: the files beside it (idf.npz) are found as well
    assert main(["spam", "classify", str(model_dir / "model.json"), str(folder / "0160"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert load_spam_model(model_dir / "model.json").directory == model_dir


def _run_cli(args, stdin: bytes):
    return subprocess.run([sys.executable, "-m", "chainrule.cli", *args], input=stdin, capture_output=True,
                          check=False, timeout=120)


def test_stdin_exit_codes_like_bogofilter(model_dir, corpus_dir):
    raw = (corpus_dir[1] / "spam" / "0160").read_bytes()
    m = str(model_dir)
    r = _run_cli(["spam", "classify", m, "--json"], raw)
    doc = json.loads(r.stdout)
    assert r.returncode == {"spam": 0, "ham": 1, "unsure": 2}[doc["verdict"]]
    p = doc["probability"]
    assert 0 < p < 1
    # the cut-offs decide, and they can be overridden per run
    assert _run_cli(["spam", "classify", m, "--spam-cutoff", "0", "--ham-cutoff", "0"], raw).returncode == 0
    assert _run_cli(["spam", "classify", m, "--spam-cutoff", "1", "--ham-cutoff", "1"], raw).returncode == 1
    assert _run_cli(["spam", "classify", m, "--spam-cutoff", "1", "--ham-cutoff", "0"], raw).returncode == 2
    bad = _run_cli(["spam", "classify", str(model_dir.parent / "nope")], raw)
    assert bad.returncode == 3 and bad.stderr.count(b"\n") == 1 and b"Traceback" not in bad.stderr


def test_annotate_leaves_the_body_byte_identical(model_dir, corpus_dir):
    raw = (corpus_dir[1] / "easy_ham" / "0200").read_bytes()
    r = _run_cli(["spam", "classify", str(model_dir), "--annotate"], raw)
    assert r.returncode in (0, 1, 2)
    out = r.stdout
    sep = b"\n\n"
    assert out.split(sep, 1)[1] == raw.split(sep, 1)[1]
    head = out.split(sep, 1)[0]
    assert head.startswith(raw.split(sep, 1)[0])
    assert b"\nX-Chainrule-Spam: " in head and b"\nX-Chainrule-Spam-Probability: " in head


def test_bad_messages_are_reported_and_the_run_goes_on(model_dir, tmp_path, capsys):
    d = tmp_path / "inbox"
    d.mkdir()
    (d / "empty").write_bytes(b"")
    (d / "junk").write_bytes(bytes(range(256)) * 50)
    (d / "mime").write_bytes(b"Content-Type: multipart/mixed; boundary=q\n\n--q\nContent-Transfer-Encoding: base64\n\n"
                             b"@@@not base64@@@\n")
    (d / "charset").write_bytes(b"Content-Type: text/plain; charset=no-such\n\n\xff\xfe bad bytes\n")
    (d / "broken.tar.gz").write_bytes(b"this is not a tar archive")
    with open(d / "huge", "wb") as f:
        f.write(b"Subject: huge\n\n")
        f.write(b"spam spam spam\n" * (25 * 1024 * 1024 // 15))
    assert main(["spam", "classify", str(model_dir), str(d)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5  # every message but the unreadable archive
    assert len(err.splitlines()) == 1 and "broken.tar.gz" in err and "Traceback" not in err


def test_learn_moves_the_message_and_saves(model_dir, corpus_dir, tmp_path, capsys):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    msg = corpus_dir[1] / "easy_ham" / "0201"
    replay_before = np.load(m / "replay.npz")["labels"].size
    assert main(["spam", "classify", str(m), str(msg), "--json"]) == 0
    classified = json.loads(capsys.readouterr().out)["probability"]
    assert main(["spam", "learn", str(m), "--spam", str(msg), "--seed", "0"]) == 0
    line = capsys.readouterr().out.strip()
    before, after = (float(v) for v in line.rsplit("P(spam) ", 1)[1].split(" -> "))
    assert abs(before - classified) < 1e-4  # learn reads the message as classify does (idf included)
    assert after > before
    bundle = load_spam_model(m)
    assert bundle.metadata["learned"] == 1
    assert np.load(m / "replay.npz")["labels"].size == replay_before + 1


def test_explain_lists_tokens(model_dir, corpus_dir, capsys):
    assert main(["spam", "explain", str(model_dir), str(corpus_dir[1] / "spam" / "0161"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] in ("spam", "ham", "unsure")
    assert all(t["weight"] > 0 for t in doc["towards_spam"]) and all(t["weight"] < 0 for t in doc["towards_ham"])
    assert doc["towards_spam"] or doc["towards_ham"]


def test_gradcheck_command_on_a_spam_model(model_dir, capsys):
    assert main(["gradcheck", str(model_dir), "--data", DATA, "--samples", "8"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_bad_model_and_bad_sms_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "sms.txt").write_text("ham\tok\nwhat is this\n")
    assert main(["spam", "train", "--sms", str(tmp_path / "sms.txt"), "--out", str(tmp_path / "m")]) == 2
    assert main(["spam", "evaluate", str(tmp_path / "none"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("chainrule: error:") == 2 and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_sms_training_round_trip(tmp_path, capsys):
    if not DATA:
        pytest.skip("CHAINRULE_DATA is not set")
    lines = (Path(DATA) / "sms-spam" / "SMSSpamCollection").read_bytes().splitlines()
    (tmp_path / "train.txt").write_bytes(b"\n".join(lines[:800]) + b"\n")
    (tmp_path / "test.txt").write_bytes(b"\n".join(lines[800:1000]) + b"\n")
    m = tmp_path / "m"
    assert main(["spam", "train", "--sms", str(tmp_path / "train.txt"), "--out", str(m), "--hash-bits", "14",
                 "--hidden", "8", "--char-ngrams", "4", "--epochs", "10", "--batch-size", "32", "--quiet"]) == 0
    capsys.readouterr()
    assert load_spam_model(m).idf is None and not (m / "idf.npz").exists()  # SMS alone: no idf by default
    assert main(["spam", "evaluate", str(m), "--sms", str(tmp_path / "test.txt"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["messages"] == 200 and r["accuracy"] > max(r["spam"], r["ham"]) / 200


# --- property test: random bytes and MIME through reader and classifier --------------------------

_TINY = SpamModel(build_network(1 << 10, (4,), seed=0), {"task": "spam"}, HashingConfig(n_features=1 << 10),
                  spam_cutoff=0.9, ham_cutoff=0.1)


@st.composite
def _mime(draw):
    boundary = draw(st.sampled_from(["a", "", "x y"]))
    parts = draw(st.lists(st.tuples(st.sampled_from(["text/plain", "text/html", "image/png", "multipart/mixed"]),
                                    st.sampled_from(["base64", "quoted-printable", "8bit", "nonsense"]),
                                    st.sampled_from(["utf-8", "latin-1", "x-bogus", "utf-7"]),
                                    st.binary(max_size=200)), max_size=4))
    body = b"".join(f"--{boundary}\nContent-Type: {c}; charset={cs}\nContent-Transfer-Encoding: {e}\n\n".encode()
                    + payload + b"\n" for c, e, cs, payload in parts)
    return f'Subject: x\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode() + body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=3000), _mime()))
def test_property_classifier_never_raises(raw):
    r = classify_message(_TINY, raw)
    assert r["label"] in ("spam", "ham", "unsure") and 0.0 <= r["probability"] <= 1.0


def test_classify_message_tokenises_an_sms_as_training_saw_it():
    """Pasted text with no email headers is an SMS: it must reach the same hashed features as the
    SMS lines the model was trained on, not the features of a header-less email."""
    from chainrule.apps.spam import explain_row, looks_like_email
    from chainrule.data.mail import parse_message
    from chainrule.data.text import message_tokens, sms_tokens

    sms = "URGENT: You have won a £900 prize! Call 09061701461 or visit www.win.example now"
    assert not looks_like_email(sms.encode())
    assert sms_tokens(sms, _TINY.config) != message_tokens(parse_message(sms.encode()), _TINY.config)
    assert classify_message(_TINY, sms.encode())["probability"] == pytest.approx(
        explain_row(_TINY, sms_tokens(sms, _TINY.config))[0], abs=1e-7)

    email = b"Received: from mx.example\nFrom: a@example.com\nSubject: URGENT: call now\n\nhello"
    for raw in (email, b"From a@example.com Mon Jan  1 00:00:00 2024\n" + email, b"X-Spam: no\n\nhi"):
        assert looks_like_email(raw), raw
        assert classify_message(_TINY, raw)["probability"] == pytest.approx(
            explain_row(_TINY, message_tokens(parse_message(raw), _TINY.config))[0], abs=1e-7)
