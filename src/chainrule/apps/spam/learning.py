"""Teaching a trained filter its user's corrections: `learn`, `unlearn`, and the lessons they keep.

A correction is a few steps of Adam on the corrected messages mixed with a random sample of older
examples (the replay sample), so that the network rehearses what it knew instead of bending
entirely towards the new mail; the new messages then join the replay sample. The idf weights stay
those of the training messages: a few new messages say little about how common a word is.

Every message taught is recorded as a lesson (`Lessons`): a digest of the message, the label it
was taught and its P(spam) before. With them, as `sa-learn` does it:

* taught again with the same label, a message is recognised and not counted again (a cron job
  reading a folder twice, a user pressing the button twice); it is learned again only while the
  filter still does not give it that verdict (one lesson moves a message, but not always across
  a cut-off), so that pressing the button again does what the user asks;
* taught with the other label, it is relearned: its lesson and its row of the replay sample take
  the new label and the network learns it as the new class; it still counts once;
* unlearned (`spam learn --unlearn`, spamc's `-L forget`), its lesson and its row of the replay
  sample are removed and the network is edited back: the smallest change of its weights, as Adam
  (which gave the lesson) measures a change, that gives the message the P(spam) it had before its
  first lesson, the other lessons of its look-alikes held where they are (`_move_logits`). A Bayes
  token database subtracts a message's counts exactly; a network cannot, so undoing a lesson puts
  the message back where it stood before it (not at the other class: forgetting a message wrongly
  taught as spam does not say that it is ham), and takes back with it most of what the lesson did
  to the rest of the mail.

The digest is that of the message as the filter reads it, its hashed feature row (`row_digests`),
so a message is the same whether spamc sends it with CRLF line ends or it is read from a Maildir,
with or without the X-Spam headers the daemon adds (which the filter does not read).

Writers of a model take turns: `open_for_learning` loads the model under its directory's lock and
holds it until the block has saved, so that two learners at once (a cron job, a correction by
hand, the daemon's TELL) each learn on top of the other's result and no update is lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

import chainrule as cr
from chainrule.apps.spam.annotate import stamped_verdict
from chainrule.apps.spam.corpus import collect, sms_lines
from chainrule.apps.spam.features import featurize
from chainrule.apps.spam.model import (
    DIGEST_BYTES,
    LESSONS_KEPT,
    MAX_FOLDERS,
    REPLAY_SIZE,
    TASK,
    Lessons,
    SpamModel,
    load_lessons,
    load_replay,
    load_spam_model,
    save_model,
    training_loss,
)
from chainrule.data.corpora import HAM, MAX_BYTES, SPAM, changed_files, unreadable_folder
from chainrule.files import locked_directory
from chainrule.model_file import description_path, model_directory, saved_task

log = logging.getLogger(__name__)

# What became of a message given to `learn` or `unlearn`.
LEARNED, RELEARNED, AGAIN, REPEATED = "learned", "relearned", "learned again", "already learned"
UNLEARNED, NOT_LEARNED, NOT_ON_RECORD = "unlearned", "never learned", "not on record"
LABEL_NAMES = {SPAM: "spam", HAM: "ham"}


def describe(status: str, label: int | None, was: int | None) -> str:
    """What became of a message, in words, as `spam learn` prints it and the daemon logs a TELL:
    its `status` (LEARNED, ...) from `learn`, which taught it as `label`, or from `unlearn` (no
    label), and the label it had been taught before (`was`, None if none)."""
    if status == LEARNED:
        return f"learned as {LABEL_NAMES[label]}"
    if status == RELEARNED:
        return f"relearned as {LABEL_NAMES[label]} (was learned as {LABEL_NAMES[was]})"
    if status == AGAIN:
        return f"learned again as {LABEL_NAMES[label]} (not yet given that verdict after its earlier lesson)"
    if status == REPEATED:
        return f"already learned as {LABEL_NAMES[label]}; not learned again"
    if status == UNLEARNED:
        return f"unlearned (was learned as {LABEL_NAMES[was]})"
    if status == NOT_ON_RECORD:
        return "not on record: never learned, or learned before the lessons on record; nothing to unlearn"
    return "never learned; nothing to unlearn"


@dataclass
class Learned:
    """What `learn` or `unlearn` did with each message, in order: its status (LEARNED, ...), the
    label it had been taught before (None if none), and P(spam) before and after."""

    status: list[str]
    was: list[int | None]
    before: np.ndarray
    after: np.ndarray


@contextmanager
def open_for_learning(directory, spam_cutoff: float | None = None, ham_cutoff: float | None = None,
                      stop: threading.Event | None = None) -> Iterator[SpamModel]:
    """The filter saved in `directory` (`load_spam_model`), loaded under the lock of its writers
    (`locked_directory`), which is held until the `with` block ends: call `learn` or `unlearn`
    (which save) inside it. Another writer may hold the lock for minutes (a `spam train` into the
    folder holds it to its end): that is said, once, and waited for; with `stop`, a tenth of a
    second at a time until `stop` is set (`LearningStopped`: a daemon asked to stop)."""
    directory = model_directory(directory)
    description_path(directory)  # (a folder with no model in it is refused before it gets our lock file)
    task = saved_task(directory)  # another application's model is refused before its directory gets our
    if task is not None and task != TASK:  # lock file (an unreadable one: load_spam_model below says why)
        raise cr.ModelFileError(f"{directory}: not a spam model (task {task!r})")
    with ExitStack() as held:
        try:
            held.enter_context(locked_directory(directory, wait=False))
        except BlockingIOError:
            if stop is None:
                log.warning("%s: waiting for another writer (a training run, another learn) to finish", directory)
                held.enter_context(locked_directory(directory))
            else:
                _wait_unless(directory, stop, held)
        yield load_spam_model(directory, spam_cutoff, ham_cutoff)


class LearningStopped(cr.UserError):
    """The daemon stopped while a lesson waited for its model's lock: it was not learned."""


def _wait_unless(directory: Path, stop: threading.Event, held: ExitStack) -> None:
    """Take `directory`'s writer lock into `held`, tried every tenth of a second until `stop` is set."""
    while not stop.wait(0.1):
        try:
            held.enter_context(locked_directory(directory, wait=False))
            return
        except BlockingIOError:
            continue
    raise LearningStopped("the daemon stopped while the model was locked by another writer")


# File systems stamp change times from a coarse clock, a few milliseconds behind the time of day:
# a folder's new messages are those changed since a second before the previous run began; those
# that run learned then are recognised by their digests and not learned twice.
SINCE_LAST_OVERLAP_NS = 1_000_000_000


def new_since_last(bundle: SpamModel, folder, unlisted: list[OSError]) -> tuple[list, str, int]:
    """(the files put into `folder` since the previous run that learned from it, the folder's key,
    its new mark): every file the first time. Passing {key: mark} as `learn(since_last=...)` saves
    the mark with the lessons, so that the next run starts from this one; not where a folder inside
    it could not be listed (it goes to `unlisted`): its messages would never be looked at again.
    NotADirectoryError where `folder` is not a folder."""
    key = str(Path(folder).resolve())
    now = time.time_ns()
    new = changed_files(folder, bundle.metadata.get("since_last", {}).get(key, 0), unlisted)
    return new, key, now - SINCE_LAST_OVERLAP_NS


class Gathered(NamedTuple):
    """The messages a run of `spam learn` teaches (`gather_lessons`), and what it met on the way."""

    items: list  # (kind, message) each, as `featurize` reads them
    sources: list[str]  # where each came from
    labels: np.ndarray  # the label each is taught
    filed: list[str]  # the messages in the folders that the filter itself filed there: not lessons
    marks: dict[str, int]  # {folder key: its new mark} of the --since-last folders, for `learn(since_last=...)`
    nothing_new: list[tuple[str, bool]]  # (folder, whether an earlier run marked it) of those with nothing new
    read: bool  # whether there was anything to read (not where --since-last found nothing new anywhere)


def gather_lessons(bundle: SpamModel, paths: list[str], folders: list[str], label: int,
                   on_problem: Callable[[str, str], None], sms: bool = False, since_last: bool = False,
                   unlearning: bool = False, max_bytes: int = MAX_BYTES) -> Gathered:
    """The messages to teach `bundle` as `label` (SPAM or HAM), or to unlearn: those of `paths`
    (messages, folders, mbox, Maildir; '-': standard input; with `sms`, files of text messages, a
    line each) and of `folders` (`spam learn --from`), of which with `since_last` only the files
    put there since the previous such run (`new_since_last`). A message that cannot be read, and a
    folder inside one of `folders` that cannot be listed, goes to `on_problem(source, reason)`.
    Unless `unlearning`, the messages of `folders` that the filter filed there itself are left out
    (`_without_filed`). A UserError where one of `folders` is not a folder."""
    named, paths, marks, nothing_new = paths, list(paths), {}, []
    for folder in folders:
        if not since_last:
            paths.append(folder)
            continue
        unlisted = []
        try:
            new, key, mark = new_since_last(bundle, folder, unlisted)
        except OSError as exc:
            raise cr.UserError(f"--from {folder}: {exc.strerror or exc}") from None
        for exc in unlisted:  # (the folder keeps its mark: they are looked at again next time)
            on_problem(str(exc.filename), unreadable_folder(exc))
        if not new:
            nothing_new.append((folder, key in bundle.metadata.get("since_last", {})))
        if not unlisted:
            marks[key] = mark
        paths += new
    if not paths:
        return Gathered([], [], np.empty(0, np.int64), [], marks, nothing_new, read=False)
    if sms:  # (each line of the files a text message, as classify --sms reads them)
        lines = list(sms_lines(paths, max_bytes, on_problem))
        sources, items = [source for source, _ in lines], [("sms", text) for _, text in lines]
        y = np.full(len(items), label)
    else:
        items, sources, y = collect(paths, None, labelled=False, max_bytes=max_bytes, label=label,
                                    on_problem=on_problem)
    filed = []
    if folders and not unlearning:
        items, sources, y, filed = _without_filed(bundle, items, sources, y, folders, label, named)
    return Gathered(items, sources, y, filed, marks, nothing_new, read=True)


def _without_filed(bundle: SpamModel, items: list, sources: list[str], y: np.ndarray, folders: list[str],
                   label: int, named: list[str]):
    """(items, sources, labels, the sources left out): the messages found in `folders` that the
    filter itself filed there, its verdict stamped in them (`stamped_verdict`) being the `label`
    taught, are left out. A folder the filter files its spam into (Junk) also receives the user's
    corrections (missed spam moved there); only those are lessons: teaching the filter's own
    verdicts would teach its false positives before the user has seen them. A message `named` on
    the command line is learned as told, wherever it lies, and so is one the filter was taught
    otherwise since it filed it (moved to Junk by mistake, then back: `taught_otherwise`)."""
    roots = {os.path.abspath(folder) for folder in folders}  # (sources: files in them; an mbox, or "mbox:N")
    inside = tuple(root + end for root in roots for end in (os.sep, ":"))
    told = {os.path.abspath(path) for path in named}
    name = LABEL_NAMES[label]

    def filed_there(source: str, raw: bytes) -> bool:
        where = os.path.abspath(source)
        found = where in roots or where.startswith(inside)
        return found and where not in told and stamped_verdict(raw) == name

    filed = [i for i, (source, (_, raw)) in enumerate(zip(sources, items, strict=True)) if filed_there(source, raw)]
    if filed:
        x, _ = featurize([items[i] for i in filed], bundle.config, processes=1, idf=bundle.idf)
        filed = [i for i, corrected in zip(filed, taught_otherwise(bundle, x, label), strict=True) if not corrected]
    if not filed:
        return items, sources, y, []
    keep = np.setdiff1d(np.arange(len(items)), filed)
    return [items[i] for i in keep], [sources[i] for i in keep], y[keep], [sources[i] for i in filed]


def row_digests(x: sp.csr_matrix) -> np.ndarray:
    """(n, 16) uint8: for each row of hashed features, the first 16 bytes of the SHA-256 of its
    buckets (int32) and values (float32), in bucket order."""
    x = x.tocsr().astype(np.float32)
    x.sort_indices()
    out = np.empty((x.shape[0], DIGEST_BYTES), np.uint8)
    for i in range(x.shape[0]):
        lo, hi = x.indptr[i], x.indptr[i + 1]
        h = hashlib.sha256(x.indices[lo:hi].astype(np.int32).tobytes())
        h.update(x.data[lo:hi].tobytes())
        out[i] = np.frombuffer(h.digest()[:DIGEST_BYTES], np.uint8)
    return out


# Adam's step size for a correction. Chosen on the SpamAssassin training tarballs in date order,
# trained on the oldest 20-60% and corrected every 100 newer messages (the errors and `unsure` ones
# of each batch learned): 1e-3 against 5e-4 raised the accuracy on the 20% and 30% splits from 98.84%
# to 99.07% and from 98.65% to 98.83% (means of 3 seeds) and lowered the ham blocked there, from
# 0.12% to 0.06% and from 0.62% to 0.43% (a second run with other learning seeds: 0.15%, 0.40%),
# and was as good on the 40-60% splits. 2e-3 blocked more ham again, and so did
# 1e-3 where the filter had learned from only 325 messages (the oldest 10%: 0.98% against 0.71%).
LEARN_LR = 1e-3
LEARN_EPOCHS = 4  # passes over a run's lessons (each with its replay examples)

# Lessons `unlearn` holds in place while it moves a message back: the look-alikes it would move most.
HELD_LESSONS = 32
# Directions of G Gᵀ weaker than this share of its strongest are left alone by `_move_logits`: the
# gradients are float32, so there they are rounding noise, and inverting it (a held look-alike that
# differs from the message by one faint token) moved unrelated messages by thousands of logits.
GRAM_RCOND = 1e-5
# The same in Adam's measure (`_move_logits`'s first edit), where a token's part of G S Gᵀ grows
# with its weight in the row, not with its square: near-copies that the plain measure leaves
# alone (settled between) are left alone here at the square root. With 1e-5, a message and its
# near-copy moved to targets 3 logits apart, differing by one token of weight 0.003 (each of their
# other 80: 0.11), were pulled apart by a change that moved every message with that token by 8.7
# logits (0.3 with this).
ADAM_GRAM_RCOND = GRAM_RCOND ** 0.5
# Rows `_move_logits` moves at once (and the held ones with them): their Gram matrix is dense and
# solved by an SVD, (rows)² memory and (rows)³ time. With 256 and 32 held, a block's solve takes
# a few megabytes and a few hundredths of a second; the size hardly changed how close 3 sweeps
# brought 4,000 messages unlearned to their targets (blocks of 128, 256 and 512 alike).
MOVED_AT_ONCE = 256


def _taught_labels(lessons: Lessons) -> dict[bytes, int]:
    """{message digest: the label it was taught} of a filter's `lessons`."""
    return {d.tobytes(): int(label) for d, label in zip(lessons.digests, lessons.labels, strict=True)}


def taught_otherwise(bundle: SpamModel, x: sp.csr_matrix, label: int) -> np.ndarray:
    """For each row of `x`, whether the filter was taught it with another label than `label`: a
    message the filter filed as `label` whose lesson since says otherwise (the user moved it, then
    moved it back) is a correction, whatever its stamp says."""
    label_of = _taught_labels(load_lessons(bundle.files.get("lessons")))
    return np.array([label_of.get(d.tobytes(), label) != label for d in row_digests(x)], bool)


def learn(bundle: SpamModel, x_new: sp.csr_matrix, y_new: np.ndarray, epochs: int = LEARN_EPOCHS, lr: float = LEARN_LR,
          replay_per_new: int = 8, seed: int | None = None, since_last: dict[str, int] | None = None,
          again: bool = True) -> Learned:
    """Teach the filter the messages `x_new` (hashed rows) as `y_new` (SPAM 1 or HAM 0 each), like
    `bogofilter -s/-n` or `sa-learn --spam/--ham`, and save it (in `bundle.directory`).

    Messages taught before with the same label are left out (REPEATED), unless the filter still
    does not give them that verdict and `again` (AGAIN: learned, not counted; a `--since-last` run
    says not, since it may read a message of the run before it again); the others are learned by
    `epochs` epochs of Adam on them and up to `replay_per_new` replay examples per message, and
    the model, its replay sample and its lessons are saved in one commit (`save_model`). The
    metadata's "learned" counts the messages learned, each once. `since_last` ({folder: time})
    is merged into the metadata's "since_last" in the same commit. Returns what became of each
    message (`Learned`).
    """
    labels = np.asarray(y_new)
    if labels.shape != (x_new.shape[0],) or not np.isin(labels, (SPAM, HAM)).all():  # (0.7 would be taken as ham)
        raise ValueError(f"learn: y_new must be one label, {SPAM} (spam) or {HAM} (ham), per row of x_new "
                         f"({x_new.shape[0]} rows), got shape {labels.shape}: {labels.ravel()[:5].tolist()}")
    y_new = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    lessons = load_lessons(bundle.files.get("lessons"))
    digests = row_digests(x_new)
    before = bundle.probabilities(x_new)
    agrees = [verdict == LABEL_NAMES[label]  # does the filter already say what it is taught?
              for verdict, label in zip(bundle.verdicts(before), y_new, strict=True)]
    label_of = _taught_labels(lessons)
    status, was, teach, first_before = _sort_lessons(digests, y_new, agrees, label_of, before, again)
    meta = bundle.metadata
    if since_last:
        # merged, and only the MAX_FOLDERS marked last kept (what a model file may hold): a folder
        # no run has read for that long starts again from its beginning, its lessons recognised
        merged = {**meta.get("since_last", {}), **since_last}
        meta["since_last"] = dict(sorted(merged.items(), key=lambda item: item[1])[-MAX_FOLDERS:])
    if not teach:
        if since_last:
            save_model(bundle, bundle.directory)
        return Learned(status, was, before, before.copy())

    rows = np.array(list(teach.values()))
    x_teach, y_teach = x_new[rows], y_new[rows]
    # The replay sample keeps one row per message: a message taught again leaves its old row.
    x_old, y_old = load_replay(bundle.files.get("replay"), bundle.config.n_features)
    keep = ~_rows_in(row_digests(x_old), teach)
    x_old, y_old = x_old[keep], y_old[keep]
    _rehearse(bundle, x_teach, y_teach.astype(np.float32), x_old, y_old, epochs, lr, replay_per_new, rng)

    meta["learned"] = int(meta.get("learned", 0)) + len(first_before)
    _save(bundle, sp.vstack([x_old, x_teach]).tocsr(), np.concatenate([y_old, y_teach]),
          lessons.updated(label_of, first_before))
    return Learned(status, was, before, bundle.probabilities(x_new))


def _sort_lessons(digests: np.ndarray, labels: np.ndarray, agrees: list[bool], label_of: dict[bytes, int],
                  before: np.ndarray, again: bool):
    """(status, was, teach, first_before) of `learn`'s messages (their `digests`, the `labels` they
    are taught, whether the filter `agrees` already, their P(spam) `before`): the status of each
    and the label it was taught before (None: never); {digest: its last row} of those to teach;
    {digest: P(spam) before} of those new to the filter. `label_of` ({digest: label} of the
    filter's lessons) is updated with the labels taught."""
    first_before: dict[bytes, float] = {}
    teach: dict[bytes, int] = {}
    status, was = [], []
    for i, (d, label) in enumerate(zip(digests, labels, strict=True)):
        key = d.tobytes()
        old = label_of.get(key)
        was.append(old)
        if old == label and (agrees[i] or key in teach or not again):
            status.append(REPEATED)
            continue
        if old == label:  # taught before, and still not given its verdict: once more, not counted again
            status.append(AGAIN)
            teach[key] = i
            continue
        new = old is None and key not in first_before  # (not even earlier in this call)
        status.append(LEARNED if new else RELEARNED)
        if new:
            first_before[key] = float(before[i])
        label_of[key] = int(label)
        teach[key] = i
    return status, was, teach, first_before


def unlearn(bundle: SpamModel, x: sp.csr_matrix) -> Learned:
    """Undo the lessons of the messages `x` (hashed rows), like `sa-learn --forget`, and save.

    Each message taught before (UNLEARNED) loses its lesson and its row of the replay sample, and
    the network is edited back, the lesson's step taken back, to give it the P(spam) it had before
    its first lesson (`_move_logits`); the metadata's "learned" goes down by one (a message given
    twice, a file and its copy: UNLEARNED both times, counted once). A message with no lesson on
    record is left as it is: NOT_LEARNED, or NOT_ON_RECORD where the filter has learned more
    messages than it holds records of (it keeps the newest LESSONS_KEPT; chainrule 0.1.0 kept
    none), so the message may be one of those. Returns what became of each message (`Learned`).
    """
    lessons = load_lessons(bundle.files.get("lessons"))
    unknown = NOT_ON_RECORD if int(bundle.metadata.get("learned", 0)) > len(lessons) else NOT_LEARNED
    index = {d.tobytes(): j for j, d in enumerate(lessons.digests)}
    before = bundle.probabilities(x)
    undo: dict[bytes, int] = {}  # message -> its row in x, of those to unlearn
    status, was = [], []
    for i, d in enumerate(row_digests(x)):
        j = index.get(d.tobytes())
        if j is None:
            status.append(unknown)
            was.append(None)
            continue
        status.append(UNLEARNED)  # (a message given twice, a file and its copy: unlearned, and counted, once)
        was.append(int(lessons.labels[j]))
        undo.setdefault(d.tobytes(), i)
    if not undo:
        return Learned(status, was, before, before.copy())

    gone = _rows_in(lessons.digests, undo)
    rows = np.array([undo[d.tobytes()] for d in lessons.digests[gone]])  # (in the lessons' order)
    p = np.clip(lessons.before[gone].astype(np.float64), 1e-6, 1 - 1e-6)
    x_old, y_old = load_replay(bundle.files.get("replay"), bundle.config.n_features)
    old_digests = row_digests(x_old)
    keep = ~_rows_in(old_digests, undo)
    # The other lessons stay where they are: the messages' rows in the replay sample that share the
    # most buckets with the messages unlearned (up to HELD_LESSONS) are held at their present logits
    # while those move back (else undoing one message drags its look-alikes, taught on their own,
    # back with it).
    others = {d.tobytes() for d in lessons.digests[~gone]}
    buckets = np.unique(x[rows].indices)
    shared = np.array([np.isin(x_old.indices[x_old.indptr[i]:x_old.indptr[i + 1]], buckets).sum()
                       if keep[i] and d.tobytes() in others else 0 for i, d in enumerate(old_digests)], np.int64)
    hold = np.argsort(-shared, kind="stable")[:HELD_LESSONS]
    x_hold = x_old[np.sort(hold[shared[hold] > 0])]
    _move_logits(bundle.model, sp.vstack([x[rows], x_hold]).tocsr(),
                 np.concatenate([np.log(p / (1 - p)), bundle.logits(x_hold)]), hold=x_hold.shape[0])
    bundle.metadata["learned"] = max(int(bundle.metadata.get("learned", 0)) - len(undo), 0)
    _save(bundle, x_old[keep], y_old[keep], lessons.select(~gone))
    return Learned(status, was, before, bundle.probabilities(x))


def _move_logits(model: cr.Sequential, x: sp.csr_matrix, target: np.ndarray, hold: int = 0,
                 steps: int = 3) -> None:
    """Change the network's weights θ as little as possible so that its logit z for each row of
    `x` becomes `target` (for a row that should stay where it is, its present logit, as for the
    last `hold` rows: the look-alikes `unlearn` holds in place).

    In two edits (`_edit_logits`). The first takes the moved rows' lessons back as `learn` gave
    them: the smallest change as Adam measures it, for those rows alone. A fresh Adam steps each
    weight by about lr·g/|g|, as far whatever the size of its gradient g, so a lesson moved the
    thousands of first-layer weights of its message's words as far as the few that every message
    shares (the biases, the layers above), and through those it moved every other message; for one
    message the first edit is that step reversed (Δθ ∝ sign ∇z), and the other messages go back with
    it. The second, the smallest plain change (in ‖Δθ‖), puts the held rows back where they were and
    each moved row exactly on its target. The plain change alone put most of itself into the shared
    weights, whose gradients are the largest, and moved the other messages by more than the lesson
    had, most often the other way: of 26 messages taught wrongly (13 spam as ham, 13 ham as spam)
    and each unlearned, on a filter trained on 650 messages for 5 epochs, it left the 159 other
    messages' P(spam) 0.027 on average from where they had been before the lesson, 23 of their
    verdicts changed; now 0.007, and 6 (the default committee, trained on the same messages:
    0.014 and 3.5, now 0.005 and 1.8).
    """
    moved = x.shape[0] - hold
    _edit_logits(model, x[:moved], target[:moved], 0, steps, in_adams_measure=True)
    _edit_logits(model, x, target, hold, steps, in_adams_measure=False)


def _edit_logits(model: cr.Sequential, x: sp.csr_matrix, target: np.ndarray, hold: int, steps: int,
                 in_adams_measure: bool) -> None:
    """The smallest change of the network's weights θ that gives each row of `x` its `target`
    logit (the last `hold` rows in every block, below), measured plainly (‖Δθ‖) or, with
    `in_adams_measure`, as Adam measures it: Δθᵀ S⁻¹ Δθ, S = diag(1 / the root mean square of the
    rows' gradients, weight by weight: `_gradient_scales`); S = I plainly.

    With G holding each row's gradient ∇z, the smallest change that moves the logits by Δz, to
    first order, is Δθ = S Gᵀ s with (G S Gᵀ) s = Δz: it satisfies G Δθ = Δz, and any other Δθ
    that does is longer. Exact for the linear part of the network; a few such steps (Gauss-Newton)
    absorb the ReLUs' bends. Where the rows ask for what no change can give (one message twice, or
    nearly, with two targets), least squares settles between them (`GRAM_RCOND`,
    `ADAM_GRAM_RCOND`). Dropout is off.

    G is never formed (for a few dozen rows of a committee it would be hundreds of megabytes):
    row i's gradient for the first layer's weights is the outer product x_iᵀ δ_i, with δ_i =
    dz/d(the first layer's output), which is also its gradient for that layer's bias, and S is
    taken as an outer product there too: 1/(a_b c_u) for bucket b's weight into unit u, a_b and
    c_u the root mean squares of the rows' x_b and δ_u (exact for one row). So the first layer's
    part of G S Gᵀ is (X A Xᵀ) ⊙ (Δ C Δᵀ) (+ Δ C Δᵀ for the bias), and its part of the step is
    A Xᵀ (s ⊙ Δ C); the layers above have few parameters, and their gradients R are kept whole.

    G S Gᵀ is dense, rows x rows, and solved by an SVD: for a folder of 4,000 messages unlearned at
    once (a bulk lesson undone) that took 800 MB and 5 minutes, and the 50,000 lessons a filter
    keeps would need 20 GB a matrix. So the rows move in blocks of up to `MOVED_AT_ONCE`, each with
    the held rows, each block a step in turn, in `steps` sweeps over the blocks (block Kaczmarz):
    a block's step moves the other blocks' rows a little, and their next step takes that back.
    Each step lies in the span of its rows' gradients (in S's measure, fixed for the sweeps), so
    for the linear part the sweeps converge on the same smallest change as one solve of all the
    rows, in memory and time linear in the rows. A few messages (the daemon's `spamc -L forget`)
    are one block: one solve a step.
    """
    small, x_small, cols = _touched_copy(model, x)  # ∇z is zero on the first-layer rows x does not touch
    first, above = small.layers[0], small.layers[1:]
    params = [p for layer in above for p in layer.parameters()]
    if in_adams_measure:
        per_bucket, per_unit, per_param = _gradient_scales(small, x_small, params)
        x_scaled, rcond = (x_small @ sp.diags(per_bucket)).tocsr(), ADAM_GRAM_RCOND  # X A
    else:
        x_scaled, per_unit, per_param, rcond = x_small, 1.0, 1.0, GRAM_RCOND
    moved = x.shape[0] - hold
    held = np.arange(moved, x.shape[0])
    # Each sweep draws its blocks at random. Blocks in the order given (a folder's, a spam run's
    # messages side by side) brought 4,000 messages unlearned within 0.009 logits of their targets
    # on average after 3 sweeps (0.08 at most); blocks drawn at random, within 0.003 (0.03). The
    # seed is fixed: the same lessons undone, the same change.
    rng = np.random.default_rng(0)
    for _ in range(steps):
        for block in np.array_split(rng.permutation(moved), -(-moved // MOVED_AT_ONCE)):
            rows = np.r_[block, held]
            x_block, a_x_block = x_small[rows], x_scaled[rows]
            z, deltas, grads = _logit_gradients(small, x_block, params)
            dd = (deltas * per_unit) @ deltas.T  # Δ C Δᵀ
            xx = (a_x_block @ x_block.T).toarray().astype(np.float64)  # X A Xᵀ
            gram = xx * dd + (dd if first.bias is not None else 0) + (grads * per_param) @ grads.T
            s = np.linalg.lstsq(gram, target[rows] - z, rcond=rcond)[0]
            step = s[:, None] * deltas * per_unit
            first.weight.data += np.asarray(a_x_block.T @ step).astype(first.weight.data.dtype)
            if first.bias is not None:
                first.bias.data += step.sum(axis=0).astype(first.bias.data.dtype)
            change = (s @ grads) * per_param
            for p, start in zip(params, np.cumsum([0] + [p.size for p in params])[:-1], strict=True):
                p.data += change[start:start + p.size].reshape(p.shape).astype(p.data.dtype)
    _write_back(small, model, cols)


def _gradient_scales(small: cr.Sequential, x: sp.csr_matrix, params: list) -> tuple[np.ndarray, ...]:
    """(per bucket, per unit, per parameter of the layers above the first): 1 / the root mean
    square over the rows of `x` of their x_b, δ_u and gradients R (`_edit_logits`'s A, C and S
    above the first layer), 0 where that is 0: a weight no row moves. A block of rows at a time."""
    sum_x = np.asarray(x.multiply(x).sum(axis=0)).ravel().astype(np.float64)
    sum_deltas = np.zeros(small.layers[0].out_features)
    sum_grads = np.zeros(sum(p.size for p in params))
    for start in range(0, x.shape[0], MOVED_AT_ONCE):
        _, deltas, grads = _logit_gradients(small, x[start:start + MOVED_AT_ONCE], params)
        sum_deltas += (deltas ** 2).sum(axis=0)
        sum_grads += (grads ** 2).sum(axis=0)
    rms = [np.sqrt(total / max(x.shape[0], 1)) for total in (sum_x, sum_deltas, sum_grads)]
    return tuple(np.divide(1.0, r, out=np.zeros_like(r), where=r > 0) for r in rms)


def _logit_gradients(small: cr.Sequential, x: sp.csr_matrix, params: list) -> tuple[np.ndarray, ...]:
    """(z, Δ, R) of the network `small` for each row of `x`: its logit, the logit's gradient for
    the first layer's output (δ), and for `params`, the parameters of the layers above, flattened."""
    first, above = small.layers[0], small.layers[1:]
    z = np.empty(x.shape[0])
    deltas = np.empty((x.shape[0], first.out_features))
    grads = np.empty((x.shape[0], sum(p.size for p in params)))
    for i in range(x.shape[0]):
        out = small.forward(x[i])
        z[i] = out[0, 0]
        grad = np.ones_like(out)
        for layer in reversed(above):  # backward down to the first layer's output
            grad = layer.backward(grad)
        deltas[i] = grad[0]
        grads[i] = np.concatenate([p.grad.ravel() for p in params]) if params else ()
    return z, deltas, grads


def _rows_in(digests: np.ndarray, keys) -> np.ndarray:
    """Mask of the `digests` that are among `keys` (a set or dict of digests as bytes)."""
    return np.array([d.tobytes() in keys for d in digests], bool)


def _rehearse(bundle: SpamModel, x_new, y_new: np.ndarray, x_old, y_old: np.ndarray, epochs: int, lr: float,
              replay_per_new: int, rng: np.random.Generator) -> None:
    """Train the network on (x_new, y_new) mixed with a random sample of (x_old, y_old), up to
    `replay_per_new` old examples per new one, with the training's pos_weight."""
    take = rng.permutation(x_old.shape[0])[: replay_per_new * x_new.shape[0]]
    x = sp.vstack([x_new, x_old[take]]).tocsr().astype(np.float32)
    y = np.concatenate([y_new, y_old[take]]).astype(np.float32)
    _fit_touched(bundle.model, x, y, training_loss(bundle.metadata), epochs, lr, seed=int(rng.integers(1 << 31)))


def _fit_touched(model: cr.Sequential, x: sp.csr_matrix, y: np.ndarray, loss, epochs: int, lr: float,
                 seed: int) -> None:
    """Equivalent to `cr.fit(model, x, y, loss, cr.Adam(model.parameters(), lr=lr), epochs=epochs,
    batch_size=32, seed=seed)` with the network's dropout drawn from a generator seeded with `seed`
    (as `cr.Sequential(..., seed=seed)` seeds it), for a network whose first layer is a Linear that
    reads the sparse rows `x`, at a small part of the cost.

    A fresh Adam's moments m and v of a weight start at 0 and stay 0 while its gradient is 0, so
    its step lr·m̂/(√v̂ + ε) is exactly 0: the first-layer rows of buckets that no row of `x` has
    never move. So a copy of the network whose first layer holds only the rows `x` touches is
    trained (`_touched_copy`), and those rows are written back: the same arithmetic, without
    stepping through the 10 million weights of a 65,536-bucket committee that stay as they are.
    """
    small, x_small, cols = _touched_copy(model, x, seed)
    cr.fit(small, x_small, y, loss, cr.Adam(small.parameters(), lr=lr), epochs=epochs, batch_size=32,
           verbose=False, seed=seed)
    _write_back(small, model, cols)


def _touched_copy(model: cr.Sequential, x: sp.csr_matrix,
                  seed: int | None = None) -> tuple[cr.Sequential, sp.csr_matrix, np.ndarray]:
    """(copy, x_copy, cols): a copy of `model` whose first layer (a Linear) keeps only the rows of
    its weights that `x` touches, the buckets `cols` (a few thousand of 65,536), and `x` with its
    columns renumbered to match, in order, so that the copy computes what `model` does on `x`."""
    cols = np.unique(x.indices)
    if cols.size == 0:  # (messages without a single token: a first layer still needs an input)
        cols = np.zeros(1, np.int64)
    x_small = sp.csr_matrix((x.data, np.searchsorted(cols, x.indices), x.indptr), shape=(x.shape[0], len(cols)))
    config = model.config()
    config["input_shape"] = [len(cols)]
    config["layers"][0]["args"]["in_features"] = len(cols)
    small = cr.Sequential.from_config(config, initialize=False, seed=seed)
    small.layers[0].weight.data[...] = model.layers[0].weight.data[cols]
    for copy, param in zip(small.parameters()[1:], model.parameters()[1:], strict=True):
        copy.data[...] = param.data
    for copy, layer in zip(small.layers, model.layers, strict=True):
        for name, buf in layer.buffers.items():
            copy.buffers[name][...] = buf
    return small, x_small, cols


def _write_back(small: cr.Sequential, model: cr.Sequential, cols: np.ndarray) -> None:
    """Copy the weights of `_touched_copy`'s `small` back into `model`."""
    model.layers[0].weight.data[cols] = small.layers[0].weight.data
    for copy, param in zip(small.parameters()[1:], model.parameters()[1:], strict=True):
        param.data[...] = copy.data
    for copy, layer in zip(small.layers, model.layers, strict=True):
        for name, buf in layer.buffers.items():
            buf[...] = copy.buffers[name]


def _save(bundle: SpamModel, x_replay, y_replay: np.ndarray, lessons: Lessons) -> None:
    """Save the model with its replay sample and lessons, each cut to its size, oldest first out."""
    if x_replay.shape[0] > REPLAY_SIZE:
        x_replay, y_replay = x_replay[-REPLAY_SIZE:], y_replay[-REPLAY_SIZE:]
    if len(lessons) > LESSONS_KEPT:
        lessons = lessons.select(slice(len(lessons) - LESSONS_KEPT, None))
    save_model(bundle, bundle.directory, replay=(x_replay, y_replay), lessons=lessons)
