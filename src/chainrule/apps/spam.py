"""`chainrule spam`: a neural spam filter for email and SMS — train, evaluate, classify, learn, explain.

The network reads a message as a sparse vector of hashed tokens (`chainrule.data.text`) and
outputs one logit:

    x (2^16 hashed features, CSR) -> Linear -> ReLU -> Dropout -> Linear -> 1 logit,  p = σ(logit)

trained with `BinaryCrossEntropy(pos_weight = #ham / #spam)` (so both classes weigh the same in
the loss), Adam, and early stopping on a validation split. By default five such networks are
trained by 5-fold cross-validation and merged into one five times as wide (`train_filter`,
`merge_committee`). Losing a real message costs more than letting a spam through, so the
decision threshold is not 0.5: it is **calibrated** on the out-of-fold scores, as the cut-off
with the best MCC among those that block at most `target_blocked_ham` (default 0.5%) of the
ham (`calibrate`). Like bogofilter and SpamBayes there are three verdicts: `spam` at or above the spam
cut-off, `ham` below the ham cut-off, `unsure` between. Both cut-offs live in the model's metadata
and can be overridden per run.

For other programs (the web app): `load_spam_model(dir)` and `classify_message(bundle, raw_bytes)`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import chainrule as cr
from chainrule import metrics
from chainrule.data.mail import (
    HAM,
    MAX_BYTES,
    SPAM,
    RawMessage,
    annotate,
    parse_message,
    read_messages,
    read_sms,
)
from chainrule.data.text import Hasher, HashingConfig, inverse_document_frequency, message_tokens, sms_tokens
from chainrule.errors import UserError
from chainrule.files import atomic_write_bytes, atomic_write_npz
from chainrule.network import model_directory
from chainrule.parallel import fork_map

TASK = "spam"
SPAM_FORMAT = 1
REPLAY_FILE = "replay.npz"
IDF_FILE = "idf.npz"  # the hashing's idf weights, when the model's hashing config has `idf` on
REPLAY_SIZE = 2000  # examples kept for `learn` to rehearse, so new mail does not overwrite old lessons
VERDICT_EXIT = {"spam": 0, "ham": 1, "unsure": 2}  # bogofilter's exit codes; 3 is an error


# ---------------------------------------------------------------------------------------------
# Features, in parallel.

def sigmoid(z):
    """P(spam) from a logit: σ(z) = (1 + tanh(z/2)) / 2, which never overflows, unlike 1/(1 + e^-z)."""
    return 0.5 * (1 + np.tanh(0.5 * z))


def _featurize_chunk(hasher: Hasher, items: list[tuple[str, bytes | str]]) -> tuple[sp.csr_matrix, list]:
    """(CSR rows, problems) of a run of messages: ("mail", raw bytes) or ("sms", text).

    One call per chunk rather than per message, so that hashing runs once over the chunk and the
    result crosses the process boundary as three arrays, not as one pickled tuple per message.
    """
    tokens, problems = [], []
    for kind, data in items:
        if kind == "sms":
            tokens.append(sms_tokens(data, hasher.config))
            problems.append(None)
        else:
            parsed = parse_message(data)
            tokens.append(message_tokens(parsed, hasher.config))
            problems.append(parsed.problem)
    return hasher.matrix(tokens), problems


def _guided_chunks(items: list, workers: int, smallest: int = 16, largest: int = 500) -> list[list]:
    """`items` cut into chunks of shrinking size: each chunk is 1/(3·workers) of what is left, so
    the first chunks are big (little overhead per chunk) and the last ones small, and the workers
    finish at nearly the same time although one message can cost 100x another ("guided"
    scheduling). At most `largest` messages per chunk bound what one worker holds."""
    chunks, i = [], 0
    while i < len(items):
        size = min(largest, max(smallest, (len(items) - i) // (3 * workers)))
        chunks.append(items[i:i + size])
        i += size
    return chunks


def _map_chunks(fn, items: list, processes: int | None, min_parallel: int = 256) -> list:
    """[fn(chunk)] over `items` in order: in chunks on every core (`fork_map`) for a batch of
    `min_parallel` or more, in one chunk here for a smaller one, where forking would cost more
    than it saves."""
    processes = processes or os.cpu_count() or 1
    if processes == 1 or len(items) < min_parallel:
        return [fn(items)]
    return fork_map(fn, _guided_chunks(items, processes), processes)


def featurize(items: list[tuple[str, bytes | str]], config: HashingConfig, processes: int | None = None,
              idf: np.ndarray | None = None) -> tuple[sp.csr_matrix, list[str | None]]:
    """Parse, tokenise and hash messages -> (CSR matrix of shape (n, n_features), problems: None
    or why a message was read as plain text, per message).

    `items` are ("mail", raw bytes) or ("sms", text). A batch of 256 or more is spread over
    every core (`processes`, default all). `idf`: the buckets' weights (`Hasher`).
    """
    parts = _map_chunks(functools.partial(_featurize_chunk, Hasher(config, idf)), items, processes)
    return sp.vstack([x for x, _ in parts], format="csr"), [q for _, problems in parts for q in problems]


def training_features(items: list[tuple[str, bytes | str]], config: HashingConfig,
                      processes: int | None = None) -> tuple[sp.csr_matrix, list[str | None], np.ndarray | None]:
    """`featurize` for the messages a filter is trained on -> (features, problems, idf or None).

    With `config.idf` the messages are hashed twice: first without weights, to count in how many
    of them each bucket occurs, then weighted by the idf those counts give (a bucket's weight
    scales its tokens before the row is normalised, so it cannot be applied to finished rows).
    """
    x, problems = featurize(items, replace(config, idf=False), processes)
    if not config.idf:
        return x, problems, None
    idf = inverse_document_frequency(x)
    return featurize(items, config, processes, idf)[0], problems, idf


# ---------------------------------------------------------------------------------------------
# The model bundle.


@dataclass
class SpamModel:
    """A loaded filter: the network, its metadata, the hashing that feeds it, and its cut-offs."""

    model: cr.Sequential
    metadata: dict
    config: HashingConfig
    spam_cutoff: float
    ham_cutoff: float
    directory: Path | None = None
    idf: np.ndarray | None = None  # the hashing's bucket weights (`HashingConfig.idf`)

    @property
    def hasher(self) -> Hasher:
        return Hasher(self.config, self.idf)

    def logits(self, x: sp.csr_matrix, batch_size: int = 2048) -> np.ndarray:
        """The network's logit, log(P(spam) / P(ham)), for every row of `x`."""
        if x.shape[0] == 0:
            return np.zeros(0)
        return np.concatenate([self.model.forward(x[i:i + batch_size]).reshape(-1)
                               for i in range(0, x.shape[0], batch_size)]).astype(np.float64)

    def probabilities(self, x: sp.csr_matrix, batch_size: int = 2048) -> np.ndarray:
        """P(spam) for every row of `x`."""
        return sigmoid(self.logits(x, batch_size))

    def score(self, items: list[tuple[str, bytes | str]],
              processes: int | None = None) -> tuple[np.ndarray, list[str | None]]:
        """(P(spam), problems) of raw ("mail", bytes) / ("sms", text) items: `featurize` and the
        forward pass together, chunk by chunk, so that the network runs on every core too."""
        hasher = self.hasher

        def chunk(part):
            x, problems = _featurize_chunk(hasher, part)
            return self.probabilities(x), problems

        parts = _map_chunks(chunk, items, processes)
        return np.concatenate([p for p, _ in parts]), [q for _, problems in parts for q in problems]

    def verdicts(self, p: np.ndarray) -> list[str]:
        return [verdict(float(q), self.spam_cutoff, self.ham_cutoff) for q in p]


def verdict(p: float, spam_cutoff: float, ham_cutoff: float) -> str:
    if p >= spam_cutoff:
        return "spam"
    if p < ham_cutoff:
        return "ham"
    return "unsure"


def build_network(n_features: int, hidden: tuple[int, ...] = (32,), dropout: float = 0.2,
                  seed: int | None = 0) -> cr.Sequential:
    """x (n_features, sparse) -> [Linear -> ReLU -> Dropout] per hidden width -> Linear -> 1 logit."""
    layers: list = []
    width = n_features
    for h in hidden:
        layers += [cr.Linear(width, h), cr.ReLU()]
        if dropout:
            layers.append(cr.Dropout(dropout))
        width = h
    layers.append(cr.Linear(width, 1, init="glorot"))
    return cr.Sequential(layers, input_shape=(n_features,), seed=seed)


def merge_committee(nets: list[cr.Sequential], n_features: int, hidden: tuple[int, ...],
                    dropout: float) -> cr.Sequential:
    """One network whose logit is the mean of the logits of `nets` (all built by `build_network`
    with the same `hidden`), exactly.

    Side by side, k networks are one network k times as wide: the first layer's weights are
    concatenated column-wise, every further hidden layer is block-diagonal (unit j of member i
    sees only member i's units), and the output layer stacks the members' output weights, divided
    by k, with the mean bias:  logit = Σ_i (h_i · w_i + b_i) / k.  Dropout is off at inference, so
    the merged network computes exactly the committee's mean — at the cost of one forward pass.
    """
    k = len(nets)
    merged = build_network(n_features, tuple(k * h for h in hidden), dropout, seed=None)
    linears = [[layer for layer in net.layers if isinstance(layer, cr.Linear)] for net in nets]
    target = [layer for layer in merged.layers if isinstance(layer, cr.Linear)]
    last = len(target) - 1
    for depth, layer in enumerate(target):
        members = [m[depth] for m in linears]
        if depth == 0:
            layer.weight.data[...] = np.hstack([m.weight.data for m in members])
        elif depth < last:
            layer.weight.data[...] = 0.0
            r = c = 0
            for m in members:
                rows, cols = m.weight.shape
                layer.weight.data[r:r + rows, c:c + cols] = m.weight.data
                r, c = r + rows, c + cols
        else:
            layer.weight.data[...] = np.vstack([m.weight.data for m in members]) / k
        if depth < last:
            layer.bias.data[...] = np.concatenate([m.bias.data for m in members])
        else:
            layer.bias.data[...] = np.mean([m.bias.data for m in members], axis=0)
    return merged


def load_spam_model(directory, spam_cutoff: float | None = None, ham_cutoff: float | None = None) -> SpamModel:
    """Load a model saved by `spam train`; raises ModelFileError if it is not a spam model."""
    directory = model_directory(directory)  # (files beside model.json: idf, replay)
    model, metadata = cr.load_model(directory)
    if metadata.get("task") != TASK:
        raise cr.ModelFileError(f"{directory}: not a spam model (task {metadata.get('task')!r})")
    try:
        config = HashingConfig.from_dict(metadata["hashing"])
        cut = metadata["cutoffs"]
        spam_c = float(cut["spam"] if spam_cutoff is None else spam_cutoff)
        ham_c = float(cut["ham"] if ham_cutoff is None else ham_cutoff)
    except (KeyError, TypeError, ValueError) as exc:
        raise cr.ModelFileError(f"{directory}: invalid spam metadata ({exc})") from exc
    if not (0.0 <= ham_c <= spam_c <= 1.0):
        raise cr.ModelFileError(f"cut-offs must satisfy 0 <= ham ({ham_c}) <= spam ({spam_c}) <= 1")
    if model.layers[0].in_features != config.n_features:
        raise cr.ModelFileError(f"{directory}: network input {model.layers[0].in_features} != "
                                f"{config.n_features} hash buckets")
    return SpamModel(model, metadata, config, spam_c, ham_c, directory, load_idf(directory, config))


def load_idf(directory, config: HashingConfig) -> np.ndarray | None:
    """The idf weights saved beside a model whose hashing uses them (None if it does not);
    validated, never unpickled."""
    if not config.idf:
        return None
    n_features = config.n_features
    path = Path(directory) / IDF_FILE
    if not path.is_file():
        raise cr.ModelFileError(f"{path}: not found (the model's hashing weights buckets by idf)")
    try:
        with np.load(path, allow_pickle=False) as z:
            idf = z["idf"]
    except Exception as exc:  # zip/KeyError/ValueError: all mean "not a valid idf file"
        raise cr.ModelFileError(f"{path}: not a valid idf file ({exc})") from exc
    if idf.shape != (n_features,) or idf.dtype.kind != "f" or not np.all(np.isfinite(idf)) or idf.min() < 1:
        raise cr.ModelFileError(f"{path}: expected {n_features} finite idf weights >= 1, "
                                f"got shape {idf.shape}, dtype {idf.dtype}")
    return idf.astype(np.float32)


def explain_row(bundle: SpamModel, tokens: list[str], top: int = 10) -> tuple[float, list, list]:
    """(P(spam), tokens towards spam, tokens towards ham) by gradient × input on the hashed features.

    The logit's gradient with respect to every input bucket is backpropagated through the layers
    above the first `Linear`: dlogit/dx_j = Σ_k W1[j, k] · dlogit/dh_k, where h = x·W1 + b1.
    A token's share is sign(token) · x_j · dlogit/dx_j, split evenly among the tokens that
    share its bucket and sign (they are indistinguishable to the network).
    """
    hasher = bundle.hasher
    idx, val = hasher.row(tokens)
    x = sp.csr_matrix((val, idx, [0, len(idx)]), shape=(1, bundle.config.n_features), dtype=np.float32)
    net = bundle.model
    first = net.layers[0]
    out = net.forward(x)
    grad = np.ones_like(out)
    for layer in reversed(net.layers[1:]):
        grad = layer.backward(grad)
    dlogit_dx = first.weight.data[idx] @ grad[0]  # (nnz,)
    contribution = dict(zip(idx.tolist(), (val * dlogit_dx).tolist(), strict=True))
    feats = hasher.token_features(tokens)
    sharing: dict[int, int] = {}
    for b, _ in feats.values():
        sharing[b] = sharing.get(b, 0) + 1
    scored = [(tok, contribution.get(b, 0.0) / sharing[b]) for tok, (b, _) in feats.items()]
    scored.sort(key=lambda t: t[1])
    p = float(sigmoid(float(out[0, 0])))
    towards_spam = [(t, s) for t, s in reversed(scored[-top:]) if s > 0]
    towards_ham = [(t, s) for t, s in scored[:top] if s < 0]
    return p, towards_spam, towards_ham


# The first line of an email: a header that mail software writes (or an mbox "From " line). A bare
# "Name: text" is not enough — an SMS such as "URGENT: call now" has that shape too.
_EMAIL_START = re.compile(
    rb"(?i)\A\s*(?:from \S|(?:from|to|cc|subject|date|received|return-path|delivered-to|message-id|"
    rb"mime-version|content-type|reply-to|sender|envelope-to|x-[\w-]+)[ \t]*:)")


def looks_like_email(raw: bytes) -> bool:
    """Whether pasted text is an email with headers (else it is treated as an SMS or a bare note)."""
    return bool(_EMAIL_START.match(raw[:1024]))


def classify_message(bundle: SpamModel, raw: bytes, top: int = 5) -> dict:
    """Classify one message for programs such as the web app: an email with its headers, or the
    text of an SMS (anything that does not start like an email), tokenised as training saw each.

    Returns {"label": "spam"|"ham"|"unsure", "probability": P(spam), "top_tokens":
    [{"token", "weight"}...] (the strongest in either direction), "problem": str|None}.
    """
    if looks_like_email(raw):
        parsed = parse_message(raw[:MAX_BYTES])
        tokens, problem = message_tokens(parsed, bundle.config), parsed.problem
    else:
        tokens, problem = sms_tokens(raw[:MAX_BYTES].decode("utf-8", "replace"), bundle.config), None
    p, to_spam, to_ham = explain_row(bundle, tokens, top)
    strongest = sorted(to_spam + to_ham, key=lambda t: -abs(t[1]))[:top]
    return {"label": verdict(p, bundle.spam_cutoff, bundle.ham_cutoff), "probability": p,
            "top_tokens": [{"token": t, "weight": round(w, 6)} for t, w in strongest],
            "problem": problem}


# ---------------------------------------------------------------------------------------------
# Training.


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) index arrays: `fraction` of each class goes to `second`, at random by `seed`."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction))
        second.append(idx[:k])
        first.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


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
        "spam_caught": float(tp / max(tp + fn, 1)),
        "blocked_ham": float(fp / max(tn + fp, 1)),
        "precision": float(precision[1]), "f1": float(f1[1]),
        "mcc": metrics.matthews_corrcoef(y, pred),
        "roc_auc": metrics.roc_auc(y, p) if 0 < y.sum() < len(y) else float("nan"),
        "confusion_matrix": cm.tolist(),
    }


@dataclass
class TrainResult:
    bundle: SpamModel
    history: cr.History  # the first member's (with folds), for the learning-curve figure
    validation: dict
    val_labels: np.ndarray
    val_probabilities: np.ndarray
    replay: tuple[sp.csr_matrix, np.ndarray]
    histories: list[cr.History] | None = None


def kfold_assignments(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of every example, stratified: each class shuffled by `seed` and dealt
    round-robin, so every fold has the same share of spam to within one message."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def _train_member(x_tr, y_tr, x_va, y_va, n_features, hidden, dropout, epochs, batch_size, lr, weight_decay,
                  patience, seed, verbose) -> tuple[cr.Sequential, cr.History]:
    n_spam, n_ham = int(y_tr.sum()), int(len(y_tr) - y_tr.sum())
    model = build_network(n_features, hidden, dropout, seed)
    # pos_weight = #ham/#spam: both classes weigh the same in the loss
    loss = cr.BinaryCrossEntropy(pos_weight=n_ham / max(n_spam, 1))
    optimizer = cr.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay else \
        cr.Adam(model.parameters(), lr=lr)
    history = cr.fit(model, x_tr, y_tr, loss, optimizer, epochs=epochs, batch_size=batch_size,
                     validation_data=(x_va, y_va),
                     early_stopping=cr.EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
                     verbose=verbose, seed=seed)
    return model, history


def _train_job(x, y, args: tuple, job: tuple[np.ndarray, np.ndarray, int],
               verbose: bool) -> tuple[cr.Sequential, cr.History, np.ndarray]:
    """Train one committee member on the rows `job` names: (network, History, held-out logits)."""
    tr, va, seed = job
    model, history = _train_member(x[tr], y[tr], x[va], y[va], *args, seed, verbose)
    return model, history, model.forward(x[va]).reshape(-1).astype(np.float64)


def _train_members(x, y, jobs: list, args: tuple, processes: int, verbose: bool) -> list:
    """[(network, History, held-out logits)] for each (train rows, held-out rows, seed) job.

    The members are independent, so they train on `processes` cores at once (`fork_map`: the
    data reaches the children through fork, not pickling; only the trained weights come back).
    Each member's result depends only on its seed, so it is the same in a child as here.
    """
    if processes <= 1 or len(jobs) <= 1:
        out = [_train_job(x, y, args, job, verbose) for job in jobs]
    else:
        def member(job):  # the weights travel back from a child as arrays
            model, history, logits = _train_job(x, y, args, job, False)
            return model.state(), history.to_dict(), logits

        out = []
        for state, hist, logits in fork_map(member, jobs, processes):
            model = build_network(*args[:3], seed=None)
            model.load_state(state)
            out.append((model, cr.History.from_dict(hist), logits))
    if verbose:
        for i, (_, h, _) in enumerate(out):
            best = None if h.best_epoch is None else h.best_epoch + 1
            print(f"committee member {i + 1}/{len(out)}: {len(h)} epochs, best {best} "
                  f"(val_loss {min(h['val_loss']):.4f})")
    return out


def train_filter(x: sp.csr_matrix, y: np.ndarray, config: HashingConfig, hidden: tuple[int, ...] = (32,),
                 dropout: float = 0.2, epochs: int = 30, batch_size: int = 256, lr: float = 3e-3,
                 weight_decay: float = 0.0, validation: float = 0.2, patience: int = 3,
                 target_blocked_ham: float = 0.005, seed: int = 0, verbose: bool = False,
                 inputs: tuple[str, ...] = ("mail",), folds: int = 0,
                 processes: int | None = None, idf: np.ndarray | None = None) -> TrainResult:
    """Train a filter on hashed features `x` and labels `y` (1 spam, 0 ham) and calibrate it.
    (`x`, `idf`: from `training_features`; the idf weights go into the model.)

    With `folds` = 0 or 1: one network; a stratified `validation` share (by `seed`) drives early
    stopping and the cut-offs and is never trained on.

    With `folds` = k >= 2, a **cross-validation committee**: the messages are dealt into k
    stratified folds; member i trains on the other k-1 folds with early stopping on fold i. Every
    message then has an out-of-fold score from a member that never trained on it, so the cut-offs
    are calibrated on all the training messages rather than on a fifth of them (with 1,674 SMS, a
    fifth holds ~290 ham: too few to place a 0.3% blocked-ham cut-off), and every message is
    still trained on by k-1 members. The filter is the members' mean logit, merged into one
    network k times as wide (`merge_committee`), so it classifies in one forward pass. Members
    train on `processes` cores at once (`fork_map`; default: every core).
    """
    y = np.asarray(y, np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError(f"training needs both spam and ham, got {int(y.sum())} spam and {int((1 - y).sum())} ham")
    hidden = tuple(hidden)
    n_features = config.n_features
    args = (n_features, hidden, dropout, epochs, batch_size, lr, weight_decay, patience)
    if folds >= 2:
        if min(int(y.sum()), int((1 - y).sum())) < folds:
            raise ValueError(f"{folds} folds need at least {folds} spam and {folds} ham")
        fold = kfold_assignments(y, folds, seed)
        jobs = [(np.flatnonzero(fold != i), np.flatnonzero(fold == i), seed + i) for i in range(folds)]
        trained = _train_members(x, y, jobs, args, processes or os.cpu_count() or 1, verbose)
        logits = np.zeros(len(y))
        for (_, va, _), (_, _, member_logits) in zip(jobs, trained, strict=True):
            logits[va] = member_logits
        histories = [h for _, h, _ in trained]
        model = merge_committee([m for m, _, _ in trained], n_features, hidden, dropout)
        y_va, p_va = y, sigmoid(logits)
        history, tr_all = histories[0], np.arange(len(y))
        n_val = len(y)
    else:
        tr_all, va = stratified_split(y, validation, seed)
        model, history = _train_member(x[tr_all], y[tr_all], x[va], y[va], *args, seed, verbose)
        histories = [history]
        y_va = y[va]
        p_va = SpamModel(model, {}, config, 0.5, 0.5).probabilities(x[va])
        n_val = len(va)
    y_tr = y[tr_all]
    n_spam, n_ham = int(y_tr.sum()), int(len(y_tr) - y_tr.sum())
    spam_cut, ham_cut = calibrate(y_va, p_va, target_blocked_ham)
    bundle = SpamModel(model, {}, config, spam_cut, ham_cut, idf=idf)
    report = binary_report(y_va, p_va, spam_cut)
    bundle.metadata = {
        "task": TASK, "spam_format": SPAM_FORMAT, "inputs": list(inputs),
        "hashing": config.to_dict(),
        "cutoffs": {"spam": spam_cut, "ham": ham_cut, "target_blocked_ham": target_blocked_ham},
        "training": {"examples": int(len(tr_all)), "spam": n_spam, "ham": n_ham, "validation_examples": n_val,
                     "validation": "out-of-fold" if folds >= 2 else "held out",
                     "folds": folds if folds >= 2 else 0, "hidden": list(hidden),
                     "network_hidden": [layer.out_features for layer in model.layers[:-1]
                                        if isinstance(layer, cr.Linear)],
                     "dropout": dropout, "epochs_run": [len(h) for h in histories],
                     "best_epoch": [None if h.best_epoch is None else h.best_epoch + 1 for h in histories],
                     "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                     "pos_weight": n_ham / max(n_spam, 1), "seed": seed},
        "validation": {k: v for k, v in report.items() if k != "confusion_matrix"},
    }
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(tr_all))[:REPLAY_SIZE])
    return TrainResult(bundle, history, report, y_va, p_va, (x[tr_all[keep]], y_tr[keep]), histories)


def save_replay(directory, x: sp.csr_matrix, y: np.ndarray) -> None:
    x = x.tocsr()
    atomic_write_npz(Path(directory) / REPLAY_FILE, {
        "data": x.data.astype(np.float32), "indices": x.indices.astype(np.int32),
        "indptr": x.indptr.astype(np.int64), "shape": np.array(x.shape, np.int64),
        "labels": np.asarray(y, np.int64)})


def load_replay(directory, n_features: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The replay sample (empty if there is none); validated, never unpickled."""
    path = Path(directory) / REPLAY_FILE
    if not path.is_file():
        return sp.csr_matrix((0, n_features), dtype=np.float32), np.zeros(0, np.int64)
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(s) for s in z["shape"])
            x = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            y = z["labels"].astype(np.int64)
        x.check_format(full_check=True)
    except Exception as exc:  # zip/KeyError/ValueError: all mean "not a valid replay file"
        raise cr.ModelFileError(f"{path}: not a valid replay sample ({exc})") from exc
    if shape[1] != n_features or shape[0] != len(y) or not set(np.unique(y)) <= {0, 1}:
        raise cr.ModelFileError(f"{path}: replay sample does not match the model")
    return x.astype(np.float32), y


def save_model(bundle: SpamModel, directory) -> None:
    """Write the network and its metadata, and the idf weights if the hashing has them; each file
    atomically, the idf first, so a model.json that asks for one never lacks it."""
    if bundle.config.idf:
        if bundle.idf is None:
            raise ValueError("the model's hashing config has idf on but it holds no idf weights")
        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write_npz(Path(directory) / IDF_FILE, {"idf": np.asarray(bundle.idf, np.float32)})
    bundle.model.save(directory, bundle.metadata)
    bundle.directory = Path(directory)


def learn(bundle: SpamModel, x_new: sp.csr_matrix, y_new: np.ndarray, epochs: int = 4, lr: float = 5e-4,
          replay_per_new: int = 8, seed: int | None = None) -> dict:
    """Incremental training on corrected messages, like `bogofilter -s/-n`.

    A few epochs of Adam on the new messages mixed with a random sample of the replay set (up to
    `replay_per_new` old examples per new one, so the network rehearses what it knew instead of
    bending entirely towards the new mail), then the new messages join the replay set. Saves the
    model and the replay set, each file atomically. The idf weights stay those of the training
    messages: a few new messages say little about how common a word is. Returns the new messages'
    probabilities before and after.
    """
    directory = bundle.directory
    x_old, y_old = load_replay(directory, bundle.config.n_features)
    rng = np.random.default_rng(seed)
    take = rng.permutation(x_old.shape[0])[: replay_per_new * x_new.shape[0]]
    x = sp.vstack([x_new, x_old[take]]).tocsr().astype(np.float32)
    y = np.concatenate([np.asarray(y_new, np.int64), y_old[take]])
    before = bundle.probabilities(x_new)
    pos_weight = float(bundle.metadata.get("training", {}).get("pos_weight", 1.0))
    optimizer = cr.Adam(bundle.model.parameters(), lr=lr)
    cr.fit(bundle.model, x, y, cr.BinaryCrossEntropy(pos_weight=pos_weight), optimizer, epochs=epochs,
           batch_size=32, verbose=False, seed=int(rng.integers(1 << 31)))
    after = bundle.probabilities(x_new)
    x_keep = sp.vstack([x_old, x_new]).tocsr()
    y_keep = np.concatenate([y_old, y_new])
    if x_keep.shape[0] > REPLAY_SIZE:  # forget the oldest first
        x_keep, y_keep = x_keep[-REPLAY_SIZE:], y_keep[-REPLAY_SIZE:]
    meta = bundle.metadata
    meta["learned"] = int(meta.get("learned", 0)) + int(x_new.shape[0])
    save_model(bundle, directory)
    save_replay(directory, x_keep, y_keep)
    return {"before": before.tolist(), "after": after.tolist()}


# ---------------------------------------------------------------------------------------------
# Reading corpora for the commands.


def _report_problem(source: str, reason: str) -> None:
    print(f"chainrule: skipped {source}: {reason}", file=sys.stderr)


def collect(corpora: list[str], sms: list[str] | None = None, labelled: bool = True,
            max_bytes: int = MAX_BYTES, label: int | None = None) -> tuple[list, list[str], np.ndarray]:
    """(items for `featurize`, sources, labels) from mail corpora and SMS files.

    Unreadable messages are reported on stderr (one line each) and skipped. With `labelled`, a
    message whose label cannot be told from its path is a user error.
    """
    items, sources, labels = [], [], []
    for msg in read_messages(corpora, max_bytes=max_bytes, label=label):
        if msg.error:
            _report_problem(msg.source, msg.error)
            continue
        if labelled and msg.label is None:
            raise UserError(f"{msg.source}: cannot tell whether it is spam or ham "
                            "(put messages under folders whose names contain 'spam' or 'ham')")
        items.append(("mail", msg.data))
        sources.append(msg.source)
        labels.append(-1 if msg.label is None else msg.label)
    for path in sms or []:
        try:
            texts, labs = read_sms(path)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        items += [("sms", t) for t in texts]
        sources += [f"{path}:{i + 1}" for i in range(len(texts))]
        labels += labs
    return items, sources, np.asarray(labels, np.int64)


# ---------------------------------------------------------------------------------------------
# Commands.


def _cmd_train(args) -> int:
    from chainrule import plots
    if not args.corpus and not args.sms:
        raise UserError("nothing to train on: give mail corpora and/or --sms FILE")
    if args.folds == 1 or args.folds < 0:
        raise UserError(f"--folds must be 0 (one network) or at least 2, got {args.folds}")
    out = Path(args.out)
    t0 = time.perf_counter()
    items, _, y = collect(args.corpus, args.sms, max_bytes=args.max_bytes)
    if len(np.unique(y)) < 2:
        raise UserError(f"training needs both spam and ham; found {int(y.sum())} spam, {int((y == 0).sum())} ham")
    config = HashingConfig(n_features=1 << args.hash_bits, bigrams=args.bigrams, char_ngrams=args.char_ngrams,
                           split_norm=bool(args.corpus),  # (mail has headers to keep apart; SMS has none)
                           idf=bool(args.corpus) if args.idf is None else args.idf)  # (mail: see --idf)
    x, problems, idf = training_features(items, config)
    t_feat = time.perf_counter() - t0
    print(f"{len(y)} messages ({int(y.sum())} spam, {int((y == 0).sum())} ham), "
          f"{sum(p is not None for p in problems)} read as plain text; features in {t_feat:.1f}s")
    inputs = tuple(sorted({k for k, _ in items}))
    result = train_filter(x, y, config, hidden=tuple(args.hidden), dropout=args.dropout, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          validation=args.validation, target_blocked_ham=args.target_blocked_ham,
                          seed=args.seed, verbose=not args.quiet, inputs=inputs, folds=args.folds, idf=idf)
    seconds = time.perf_counter() - t0
    bundle = result.bundle
    bundle.metadata["training"]["seconds"] = round(seconds, 2)
    save_model(bundle, out)
    save_replay(out, *result.replay)
    v = result.validation
    atomic_write_bytes(out / "metrics.json", json.dumps({"validation": v, "cutoffs": bundle.metadata["cutoffs"],
                                                         "training": bundle.metadata["training"]}, indent=2).encode())
    atomic_write_bytes(out / "history.json", json.dumps(result.history.to_dict()).encode())
    plots.learning_curves(result.history, out / "learning_curves.png", title="Spam filter: learning curves")
    plots.pr_roc_curves(result.val_labels, result.val_probabilities, out / "pr_roc.png",
                        cutoff=bundle.spam_cutoff, title="Spam filter on the validation split")
    print(f"validation: accuracy {100 * v['accuracy']:.2f}%  spam caught {100 * v['spam_caught']:.2f}%  "
          f"blocked ham {100 * v['blocked_ham']:.2f}%  MCC {v['mcc']:.4f}  ROC AUC {v['roc_auc']:.4f}")
    print(f"cut-offs: spam >= {bundle.spam_cutoff:.4f}, ham < {bundle.ham_cutoff:.4f}; "
          f"trained in {seconds:.1f}s; model written to {out}")
    return 0


def _format_metrics(r: dict) -> str:
    (tn, fp), (fn, tp) = r["confusion_matrix"]
    return "\n".join([
        f"messages      {r['messages']} ({r['spam']} spam, {r['ham']} ham)",
        f"accuracy      {100 * r['accuracy']:.2f}%",
        f"spam caught   {100 * r['spam_caught']:.2f}%",
        f"blocked ham   {100 * r['blocked_ham']:.2f}%",
        f"precision     {r['precision']:.4f}",
        f"F1            {r['f1']:.4f}",
        f"MCC           {r['mcc']:.4f}",
        f"ROC AUC       {r['roc_auc']:.4f}",
        "confusion matrix (rows: true, columns: predicted)",
        "               ham    spam",
        f"  ham    {tn:>8} {fp:>7}",
        f"  spam   {fn:>8} {tp:>7}",
    ])


def _cmd_evaluate(args) -> int:
    bundle = load_spam_model(args.model, args.spam_cutoff, args.ham_cutoff)
    items, _, y = collect(args.corpus, args.sms, max_bytes=args.max_bytes)
    if len(y) == 0:
        raise UserError("no messages to evaluate")
    t0 = time.perf_counter()
    p, _ = bundle.score(items)
    seconds = time.perf_counter() - t0
    report = binary_report(y, p, bundle.spam_cutoff)
    verdicts = bundle.verdicts(p)
    report["unsure"] = int(sum(v == "unsure" for v in verdicts))
    report["messages_per_s"] = len(y) / max(seconds, 1e-9)
    if args.json:
        print(json.dumps(report))
    else:
        print(_format_metrics(report))
        print(f"unsure        {report['unsure']} (counted as ham above)")
        print(f"speed         {report['messages_per_s']:,.0f} messages/s (parsing included)")
    return 0


CLASSIFY_BATCH = 4096  # messages held in memory at once by `spam classify` (each at most --max-bytes)


def _classify_batches(args):
    """Batches of (sources, items, raw messages or None) to classify, read lazily."""
    paths = args.paths or ["-"]
    if args.sms:
        for path in paths:
            stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
            with stream:
                texts = [(f"{path}:{i + 1}", line.decode("utf-8", "replace").rstrip("\r\n"))
                         for i, line in enumerate(stream) if line.strip()]
            for i in range(0, len(texts), CLASSIFY_BATCH):
                chunk = texts[i:i + CLASSIFY_BATCH]
                yield [s for s, _ in chunk], [("sms", t) for _, t in chunk], None
        return
    batch: list[RawMessage] = []
    for m in read_messages(paths, max_bytes=args.max_bytes):
        if m.error:
            _report_problem(m.source, m.error)
            continue
        batch.append(m)
        if len(batch) == CLASSIFY_BATCH:
            yield [m.source for m in batch], [("mail", m.data) for m in batch], batch
            batch = []
    if batch:
        yield [m.source for m in batch], [("mail", m.data) for m in batch], batch


def _classify(args) -> int:
    bundle = load_spam_model(args.model, args.spam_cutoff, args.ham_cutoff)
    single_stdin = (args.paths or ["-"]) == ["-"]
    seen, last = 0, None
    for sources, items, raws in _classify_batches(args):
        seen += len(items)
        if args.annotate and (seen != 1 or raws is None):
            raise UserError("--annotate needs exactly one email message (a file or standard input)")
        p, _ = bundle.score(items)
        verdicts = bundle.verdicts(p)
        last = verdicts[-1]
        if args.annotate:
            if raws[0].truncated:
                raise UserError(f"{sources[0]}: larger than --max-bytes; not annotated (the body must stay whole)")
            sys.stdout.buffer.write(annotate(raws[0].data, verdicts[0] == "spam", float(p[0]), verdicts[0]))
            sys.stdout.buffer.flush()
            continue
        if args.json:
            lines = [json.dumps({"source": src, "verdict": v, "probability": round(float(q), 6)})
                     for src, v, q in zip(sources, verdicts, p, strict=True)]
        else:
            lines = [f"{src}\t{v}\t{q:.6f}" for src, v, q in zip(sources, verdicts, p, strict=True)]
        sys.stdout.write("\n".join(lines) + "\n")
    if args.annotate and seen != 1:
        raise UserError("--annotate needs exactly one email message (a file or standard input)")
    if seen == 1 and (single_stdin or args.annotate):
        return VERDICT_EXIT[last]
    return 0


def _cmd_classify(args) -> int:
    # With one message on stdin the exit code is the verdict (0/1/2), so errors must be 3, not
    # the CLI's usual 2; they are still reported on one line.
    if (args.paths or ["-"]) == ["-"] or args.annotate:
        try:
            return _classify(args)
        except (UserError, cr.ModelFileError, OSError, ValueError) as exc:
            msg = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
            print(f"chainrule: error: {msg}", file=sys.stderr)
            return 3
    return _classify(args)


def _cmd_learn(args) -> int:
    bundle = load_spam_model(args.model)
    label = SPAM if args.spam else HAM
    items, sources, y = collect(args.paths, None, labelled=False, max_bytes=args.max_bytes, label=label)
    if not items:
        raise UserError("no messages to learn from")
    x, _ = featurize(items, bundle.config, idf=bundle.idf)
    result = learn(bundle, x, y, epochs=args.epochs, seed=args.seed)
    name = "spam" if label == SPAM else "ham"
    for src, b, a in zip(sources, result["before"], result["after"], strict=True):
        print(f"{src}\tlearned as {name}\tP(spam) {b:.4f} -> {a:.4f}")
    return 0


def _cmd_explain(args) -> int:
    bundle = load_spam_model(args.model)
    msg = next(iter(read_messages([args.message], max_bytes=args.max_bytes)), None)
    if msg is None or msg.error:
        raise UserError(f"{args.message}: {msg.error if msg else 'no message'}")
    parsed = parse_message(msg.data)
    tokens = message_tokens(parsed, bundle.config)
    p, to_spam, to_ham = explain_row(bundle, tokens, args.top)
    v = verdict(p, bundle.spam_cutoff, bundle.ham_cutoff)
    if args.json:
        print(json.dumps({"verdict": v, "probability": p,
                          "towards_spam": [{"token": t, "weight": w} for t, w in to_spam],
                          "towards_ham": [{"token": t, "weight": w} for t, w in to_ham]}))
        return 0
    print(f"{args.message}: {v} (P(spam) {p:.4f}; cut-offs: spam >= {bundle.spam_cutoff:.4f}, "
          f"ham < {bundle.ham_cutoff:.4f})")
    print("gradient x input on the hashed features, per token (positive: towards spam)")
    print("towards spam:")
    for t, w in to_spam:
        print(f"  {w:+.4f}  {t}")
    print("towards ham:")
    for t, w in to_ham:
        print(f"  {w:+.4f}  {t}")
    return 0


def _cutoff_args(p) -> None:
    p.add_argument("--spam-cutoff", type=float,
                   help="P(spam) at or above which a message is spam (default: the model's)")
    p.add_argument("--ham-cutoff", type=float, help="P(spam) below which a message is ham (default: the model's)")


def add_commands(subparsers) -> None:
    """`chainrule spam train|evaluate|classify|learn|explain`."""
    spam = subparsers.add_parser("spam", help="a neural spam filter for email and SMS")
    sub = spam.add_subparsers(dest="spam_command", required=True, metavar="COMMAND")
    max_bytes = {"type": int, "default": MAX_BYTES, "help": f"bytes read per message at most (default {MAX_BYTES})"}

    p = sub.add_parser("train", help="train a filter on labelled mail and/or SMS")
    p.add_argument("corpus", nargs="*", help="files, directories, mbox, Maildir or .tar[.gz|.bz2]; labels from "
                   "folder names containing 'spam' or 'ham'")
    p.add_argument("--sms", action="append", help="an SMS collection (label<TAB>text lines); repeatable")
    p.add_argument("--out", default="runs/spam", help="model directory to write (default runs/spam)")
    p.add_argument("--hidden", type=int, nargs="+", default=[32], help="hidden layer widths (default 32)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=30, help="at most this many epochs (early stopping)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay (default 0)")
    p.add_argument("--validation", type=float, default=0.2, help="held-out fraction for early stopping and "
                   "the cut-offs, without --folds (default 0.2)")
    p.add_argument("--folds", type=int, default=5, help="train a committee of this many networks, each "
                   "validated on its own fold, cut-offs from the out-of-fold scores (default 5; 0: one "
                   "network and a --validation split)")
    p.add_argument("--target-blocked-ham", type=float, default=0.005,
                   help="largest share of validation ham the spam cut-off may block (default 0.005)")
    p.add_argument("--hash-bits", type=int, default=16, help="2^bits hash buckets (default 16: as accurate as "
                   "18 on SpamAssassin and SMS out of fold, 4x smaller)")
    p.add_argument("--bigrams", action="store_true",
                   help="also hash adjacent word pairs (default off: no gain out of fold)")
    p.add_argument("--char-ngrams", type=int, default=0, help="also hash character 3..N-grams (default off)")
    p.add_argument("--idf", action=argparse.BooleanOptionalAction, default=None,
                   help="weight each hash bucket by its inverse document frequency in the training "
                   "messages (default: on with mail, where it helped out of fold; off for SMS only, "
                   "where it did not)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-bytes", **max_bytes)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, spam caught, blocked ham, MCC, ROC AUC on labelled messages")
    p.add_argument("model")
    p.add_argument("corpus", nargs="*")
    p.add_argument("--sms", action="append", help="an SMS collection (label<TAB>text lines)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-bytes", **max_bytes)
    _cutoff_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("classify", help="spam/ham/unsure for each message; one stdin message sets the exit "
                       "code (0 spam, 1 ham, 2 unsure, 3 error)")
    p.add_argument("model")
    p.add_argument("paths", nargs="*", help="messages, folders, mbox, Maildir, archives; '-' or nothing: stdin")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--annotate", action="store_true",
                   help="write the message back with X-Chainrule-Spam headers added (body untouched)")
    p.add_argument("--sms", action="store_true", help="inputs are SMS texts, one per line")
    p.add_argument("--max-bytes", **max_bytes)
    _cutoff_args(p)
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("learn", help="teach the filter messages it got wrong (incremental training)")
    p.add_argument("model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--spam", action="store_true", help="the messages are spam")
    which.add_argument("--ham", action="store_true", help="the messages are ham")
    p.add_argument("paths", nargs="+", help="messages ('-' for stdin)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-bytes", **max_bytes)
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("explain", help="the tokens that pushed a message towards spam and towards ham")
    p.add_argument("model")
    p.add_argument("message", help="a message file, or '-' for stdin")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-bytes", **max_bytes)
    p.set_defaults(func=_cmd_explain)
