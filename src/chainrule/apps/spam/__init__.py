"""A neural spam filter for email and SMS, as a library: train, evaluate, classify, learn, explain.

The network reads a message as a sparse vector of hashed tokens (`chainrule.data.text`) and
outputs one logit:

    x (2^16 hashed features, CSR) -> Linear -> ReLU -> Dropout -> Linear -> 1 logit,  p = σ(logit)

trained with `BinaryCrossEntropy` (spam weighted by #ham / #spam with `balance`, so both classes
weigh the same in the loss), Adam, and early stopping on a validation split. By default five such
networks are trained by 5-fold cross-validation and merged into one five times as wide
(`train_filter`, `merge_committee`). Losing a real message costs more than letting a spam through,
so the decision threshold is **calibrated** on the out-of-fold scores, as the cut-off with the
best MCC among those that block at most `target_blocked_ham` (default 0.5%) of the ham
(`calibrate`); without `balance` (mail, by default) it is then capped at 0.5, since the
out-of-fold scores of last season's spam sit higher than next season's will. Like bogofilter and
SpamBayes there are three verdicts: `spam` at or above the spam cut-off, `ham` below the ham
cut-off, `unsure` between. Both cut-offs live in the model's metadata and can be overridden per
run.

The modules, in the order data flows through them:

    features     messages -> hashed feature rows, on every core
    model        SpamModel (network, hashing, cut-offs) and its files
    calibration  cut-offs from scored messages; the numbers that judge a cut-off
    training     train_filter: one network or a cross-validation committee, calibrated
    learning     learn, unlearn: the user's corrections, each recorded as a lesson
    explain      the tokens behind a verdict; classify_message for other programs
    corpus       labelled messages from mail corpora and SMS files; batches that fit in memory
    annotate     X-Chainrule-Spam headers stamped into a message
    protocol     spamc/spamd requests and answers: the mail flow's protocol
    daemon       the server that speaks it (`chainrule spam daemon`)

For other programs (the web app): `load_spam_model(dir)` and `classify_message(bundle, raw_bytes)`.
The `chainrule spam` commands are `chainrule.cli.spam`.
"""

from chainrule.apps.spam.annotate import annotate
from chainrule.apps.spam.calibration import binary_report, calibrate
from chainrule.apps.spam.corpus import batches, check_same_on_every_rank, collect, labelled_messages, sms_lines
from chainrule.apps.spam.explain import classify_message, explain_row, looks_like_email
from chainrule.apps.spam.features import MAIL_MIN_DF, featurize, item_tokens, training_features
from chainrule.apps.spam.learning import (
    LEARN_EPOCHS,
    Gathered,
    Learned,
    gather_lessons,
    learn,
    open_for_learning,
    row_digests,
    unlearn,
)
from chainrule.apps.spam.model import (
    LESSONS_KEPT,
    REPLAY_SIZE,
    SPAM_FORMAT,
    TASK,
    Lessons,
    SpamModel,
    build_network,
    check_same_filter,
    load_idf,
    load_lessons,
    load_replay,
    load_spam_model,
    merge_committee,
    save_model,
    training_loss,
    verdict,
)
from chainrule.apps.spam.training import (
    TrainResult,
    check_labels,
    check_out,
    kfold_assignments,
    repeated_messages,
    stratified_split,
    train_filter,
    write_run,
)

__all__ = [
    "LEARN_EPOCHS", "LESSONS_KEPT", "MAIL_MIN_DF", "REPLAY_SIZE", "SPAM_FORMAT", "TASK", "Gathered", "Learned",
    "Lessons", "SpamModel", "TrainResult", "annotate", "batches", "binary_report", "build_network", "calibrate",
    "check_labels", "check_out", "check_same_filter", "check_same_on_every_rank", "classify_message", "collect",
    "explain_row", "featurize", "gather_lessons", "item_tokens", "kfold_assignments", "labelled_messages", "learn",
    "load_idf", "load_lessons", "load_replay", "load_spam_model", "looks_like_email", "merge_committee",
    "open_for_learning", "repeated_messages", "row_digests", "save_model", "sms_lines", "stratified_split",
    "train_filter", "training_features", "training_loss", "unlearn", "verdict", "write_run",
]
