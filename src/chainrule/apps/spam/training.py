"""Training a spam filter: one network, or a cross-validation committee merged into one
(`train_filter`), calibrated on messages it was not trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import chainrule as cr
from chainrule import plots
from chainrule.apps.spam.calibration import binary_report, calibrate
from chainrule.apps.spam.learning import row_digests
from chainrule.apps.spam.model import (
    REPLAY_SIZE,
    SPAM_FORMAT,
    TASK,
    SpamModel,
    build_network,
    merge_committee,
    save_model,
)
from chainrule.data.text import HashingConfig
from chainrule.distributed import World
from chainrule.errors import DataError, UserError
from chainrule.files import atomic_write_bytes, folder_problem, written_together
from chainrule.functional import sigmoid
from chainrule.model_file import saved_metadata
from chainrule.parallel import fork_map


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


VALIDATION = 0.2  # the held-out share of one network's training messages (`folds=0`), by default


def check_labels(y: np.ndarray, folds: int = 0, validation: float = VALIDATION) -> None:
    """Refuse labels (1 spam, 0 ham) that `train_filter` cannot train and calibrate a filter on,
    before any work: both classes; for a committee of `folds`, one of each per fold; for one
    network, a `validation` share that holds out both (the cut-offs are placed on it) and leaves
    some of each to train on. Raises DataError saying what was found."""
    y = np.asarray(y)
    n_spam, n_ham = int(np.sum(y == 1)), int(np.sum(y == 0))
    found = f"found {n_spam} spam, {n_ham} ham"
    if not n_spam or not n_ham:
        raise DataError(f"training needs both spam and ham; {found}")
    if folds >= 2:
        if folds > min(n_spam, n_ham):
            raise DataError(f"{folds} folds need at least {folds} spam and {folds} ham messages, {found}: use fewer "
                            "folds, or one network")
        return
    held_spam, held_ham = (int(round(n * validation)) for n in (n_spam, n_ham))  # (as `stratified_split` deals)
    if not 0 < held_spam < n_spam or not 0 < held_ham < n_ham:
        raise DataError(f"a validation share of {validation:g} holds out {held_spam} spam and {held_ham} ham of the "
                        f"{n_spam} spam and {n_ham} ham found; the cut-offs need both held out, and training some of "
                        "each: choose another share, or a committee (folds)")


def repeated_messages(x: sp.csr_matrix, y: np.ndarray) -> tuple[int, int]:
    """(how many messages repeat an earlier one, how many distinct messages appear under both
    labels), a message being its hashed features (`row_digests`)."""
    _, group = np.unique(row_digests(x), axis=0, return_inverse=True)  # the same features, the same group
    groups = int(group.max()) + 1 if len(y) else 0
    both = len(np.unique(np.column_stack([group.ravel(), y]), axis=0)) - groups  # groups with two labels
    return len(y) - groups, both


def kfold_assignments(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of every example, stratified: each class shuffled by `seed` and dealt
    round-robin, so every fold has the same share of spam to within one message."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % k
    return fold


@dataclass
class TrainResult:
    """A trained, calibrated filter and how it got there."""

    bundle: SpamModel
    history: cr.History  # the first member's (with folds), for the learning-curve figure
    validation: dict
    val_labels: np.ndarray
    val_probabilities: np.ndarray
    replay: tuple[sp.csr_matrix, np.ndarray]
    histories: list[cr.History] | None = None


def _pos_weight(y: np.ndarray, balance: bool) -> float:
    """The loss's weight on spam: #ham/#spam with `balance` (both classes weigh the same), else 1
    (P(spam) then estimates the odds at the training mail's own mix of spam and ham)."""
    n_spam = int(y.sum())
    return (len(y) - n_spam) / max(n_spam, 1) if balance else 1.0


def _train_member(x_tr, y_tr, x_va, y_va, n_features, hidden, dropout, epochs, batch_size, lr, weight_decay,
                  patience, balance, seed, verbose, world=None) -> tuple[cr.Sequential, cr.History]:
    model = build_network(n_features, hidden, dropout, seed)
    loss = cr.BinaryCrossEntropy(pos_weight=_pos_weight(y_tr, balance))
    optimizer = cr.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay else \
        cr.Adam(model.parameters(), lr=lr)
    history = cr.fit(model, x_tr, y_tr, loss, optimizer, epochs=epochs, batch_size=batch_size,
                     validation_data=(x_va, y_va),
                     early_stopping=cr.EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
                     verbose=verbose, seed=seed, world=world)
    return model, history


def _train_job(x, y, args: tuple, job: tuple[np.ndarray, np.ndarray, int],
               verbose: bool) -> tuple[cr.Sequential, cr.History, np.ndarray]:
    """Train one committee member on the rows `job` names: (network, History, held-out logits)."""
    tr, va, seed = job
    model, history = _train_member(x[tr], y[tr], x[va], y[va], *args, seed, verbose)
    return model, history, model.forward(x[va]).reshape(-1).astype(np.float64)


def _train_members(x, y, jobs: list, args: tuple, processes: int, verbose: bool, world: World) -> list | None:
    """[(network, History, held-out logits)] for each (train rows, held-out rows, seed) job.

    The members are independent, so they train on `processes` cores at once (`fork_map`: the
    data reaches the children through fork, not pickling; only the trained weights come back).
    With a `world` of several processes, job i goes to rank i mod N, each rank trains its jobs on
    its cores, and rank 0 gathers them all (the other ranks get None). Each member's result
    depends only on its seed, so it is the same wherever it was trained.
    """
    if world.size == 1 and (processes <= 1 or len(jobs) <= 1):
        return [_train_job(x, y, args, job, verbose) for job in jobs]

    def member(job):  # the weights travel back from a child, or to rank 0, as arrays
        model, history, logits = _train_job(x, y, args, job, False)
        return model.state(), history.to_dict(), logits

    gathered = world.gather(fork_map(member, jobs[world.rank :: world.size], processes))
    if gathered is None:
        return None
    out = []
    for i in range(len(jobs)):
        state, hist, logits = gathered[i % world.size][i // world.size]
        model = build_network(*args[:3], seed=None)
        model.load_state(state)
        out.append((model, cr.History.from_dict(hist), logits))
    return out


def train_filter(x: sp.csr_matrix, y: np.ndarray, config: HashingConfig, hidden: tuple[int, ...] = (32,),
                 dropout: float = 0.2, epochs: int = 30, batch_size: int = 256, lr: float = 3e-3,
                 weight_decay: float = 0.0, validation: float = VALIDATION, patience: int = 3,
                 target_blocked_ham: float = 0.005, seed: int = 0, verbose: bool = False,
                 inputs: tuple[str, ...] = ("mail",), folds: int = 0,
                 processes: int | None = None, idf: np.ndarray | None = None,
                 world: World | None = None, balance: bool = True) -> TrainResult | None:
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
    train on `processes` cores at once (`fork_map`; default: every core). `verbose` shows
    `fit`'s progress (of the members trained in this process). `result.histories` says how each
    member's training went.

    With a `world` of several processes (every rank calling it with the same `x` and `y`): a
    committee's members are dealt out to the ranks, one network is trained data-parallel
    (`fit(world=...)`, `batch_size` the global batch), and rank 0 gets the result; the other
    ranks get None.

    `balance`: weigh spam by #ham/#spam in the loss, so that both classes count the same (the
    default; SMS). Without it the loss weighs every message the same, P(spam) estimates the odds
    at the training mix, and the spam cut-off is at most 0.5: a message the filter finds more
    likely spam than ham is called spam even where the out-of-fold scores would set the cut-off
    higher. Trained on older mail and tested on newer, that made fewer errors:
    the out-of-fold scores of last season's spam sit higher than next season's will.
    """
    world = world or World()
    y = np.asarray(y, np.int64)
    check_labels(y, folds, validation)
    hidden = tuple(hidden)
    n_features = config.n_features
    args = (n_features, hidden, dropout, epochs, batch_size, lr, weight_decay, patience, balance)
    if folds >= 2:
        fold = kfold_assignments(y, folds, seed)
        jobs = [(np.flatnonzero(fold != i), np.flatnonzero(fold == i), seed + i) for i in range(folds)]
        trained = _train_members(x, y, jobs, args, processes or world.cores(), verbose and world.rank == 0, world)
        if trained is None:
            return None
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
        model, history = _train_member(x[tr_all], y[tr_all], x[va], y[va], *args, seed, verbose, world)
        if world.rank != 0:
            return None
        histories = [history]
        y_va = y[va]
        p_va = SpamModel(model, {}, config, 0.5, 0.5).probabilities(x[va])
        n_val = len(va)
    y_tr = y[tr_all]
    n_spam, n_ham = int(y_tr.sum()), int(len(y_tr) - y_tr.sum())
    spam_cut, ham_cut = calibrate(y_va, p_va, target_blocked_ham)
    if not balance:  # even odds or better are spam (see the docstring)
        spam_cut = min(spam_cut, 0.5)
        ham_cut = min(ham_cut, spam_cut)
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
                     "pos_weight": _pos_weight(y_tr, balance), "balance": balance, "seed": seed},
        "validation": {k: v for k, v in report.items() if k != "confusion_matrix"},
    }
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(tr_all))[:REPLAY_SIZE])
    return TrainResult(bundle, history, report, y_va, p_va, (x[tr_all[keep]], y_tr[keep]), histories)


# What `spam train` writes beside its filter: its training's numbers and figures.
RUN_FILES = ("metrics.json", "history.json", "learning_curves.png", "pr_roc.png")


def check_out(out: Path) -> int:
    """Refuse a folder a new filter must not be written into, before any training: a file,
    another application's model, or an image training run (whose run.json and checkpoint `images
    train` writes first). Returns how many corrections the filter already there has learned,
    which the new one will not have (0 if none)."""
    out = Path(out)
    if (problem := folder_problem(out)) is not None:
        raise UserError(f"--out {out}: {problem}")
    replaced = saved_metadata(out)
    task, learned = replaced.get("task"), replaced.get("learned")
    if isinstance(task, str) and task != TASK:
        raise UserError(f"--out {out} holds another application's model (task {task!r}); training would replace "
                        "it: choose another --out")
    if (out / "run.json").is_file() or (out / "checkpoint.npz").is_file():
        raise UserError(f"--out {out} holds an image training run (run.json, checkpoint.npz); training would "
                        "spoil it: choose another --out")
    return learned if isinstance(learned, int) and learned > 0 else 0


def _scores_title(training: dict) -> str:
    """What the validation figures score: a committee's out-of-fold scores, or a held-out split."""
    if training.get("validation") == "out-of-fold":
        return f"Spam filter, out of fold on all {training['examples']:,} training messages"
    return "Spam filter on the validation split"


def write_run(result: TrainResult, out: Path, seconds: float) -> None:
    """Save a trained filter into `out` with its training's numbers and figures (`RUN_FILES`):
    metrics.json (validation figures, cut-offs, training settings), history.json, the learning
    curves and the precision-recall and ROC curves on the validation messages. The figures are
    drawn first, beside the folder, and renamed into it right after the filter is saved, so an
    interrupted run leaves the earlier filter with its own."""
    bundle = result.bundle
    bundle.metadata["training"]["seconds"] = round(seconds, 2)
    metrics = {"validation": result.validation, "cutoffs": bundle.metadata["cutoffs"],
               "training": bundle.metadata["training"]}
    with written_together(out, RUN_FILES, commit=lambda: save_model(bundle, out, replay=result.replay)) as new:
        atomic_write_bytes(new / "metrics.json", json.dumps(metrics, indent=2).encode())
        # The file a user reads numbers the best epoch as its epochs and metrics.json do, from 1;
        # History keeps an index into its epochs (0-based), as checkpoints store it.
        history = result.history.to_dict()
        history["best_epoch"] = None if history["best_epoch"] is None else history["best_epoch"] + 1
        atomic_write_bytes(new / "history.json", json.dumps(history).encode())
        plots.learning_curves(result.history, new / "learning_curves.png", title="Spam filter: learning curves")
        plots.pr_roc_curves(result.val_labels, result.val_probabilities, new / "pr_roc.png",
                            cutoff=bundle.spam_cutoff, title=_scores_title(bundle.metadata["training"]))
