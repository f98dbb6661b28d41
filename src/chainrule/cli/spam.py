"""`chainrule spam train|evaluate|classify|learn|explain|daemon`: the spam filter on the command line.

The filter itself is the library `chainrule.apps.spam`; this module reads the options, prints
the results and sets the exit codes. `spam classify` sets the exit code like bogofilter: with one
message from standard input, 0 spam, 1 ham, 2 unsure; any error, usage errors included, is 3
(a mail recipe reads 2 as "unsure").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from chainrule import distributed
from chainrule.apps.spam import (
    LEARN_EPOCHS,
    MAIL_MIN_DF,
    annotate,
    batches,
    binary_report,
    check_labels,
    check_out,
    check_same_filter,
    check_same_on_every_rank,
    collect,
    explain_row,
    featurize,
    gather_lessons,
    item_tokens,
    labelled_messages,
    learn,
    load_spam_model,
    open_for_learning,
    repeated_messages,
    sms_lines,
    train_filter,
    training_features,
    unlearn,
    verdict,
    write_run,
)
from chainrule.apps.spam.learning import LABEL_NAMES, describe
from chainrule.apps.spam.training import VALIDATION
from chainrule.cli import spamd
from chainrule.cli.options import (
    add_cutoffs,
    add_max_bytes,
    char_ngrams,
    check_standard_input,
    decimal,
    diverged,
    fraction,
    layer_width,
    nonnegative_float,
    nonnegative_int,
    percent,
    positive_float,
    positive_int,
    print_lines,
    probability,
)
from chainrule.data.corpora import (
    HAM,
    SPAM,
    RawMessage,
    read_as_is,
    read_messages,
    readable,
)
from chainrule.data.text import HashingConfig
from chainrule.errors import TrainingDiverged, UserError, printable
from chainrule.files import file_id, locked_directory

VERDICT_EXIT = {"spam": 0, "ham": 1, "unsure": 2}  # bogofilter's exit codes; 3 is an error
ERROR_EXIT = 3


def _tsv_field(text: str) -> str:
    """A name in a tab-separated line: a backslash in it doubled, and a tab, line break or whatever
    else a terminal acts on written as Python writes it in a string (`printable`: \\t, \\n, \\x1b),
    so that every output line splits into the same columns."""
    return printable(text.replace("\\", "\\\\"))


def _report_problem(source: str, reason: str) -> None:
    print(printable(f"chainrule: skipped {source}: {reason}"), file=sys.stderr)


class _InputProblems:
    """The inputs a command could not read, reported as `chainrule: skipped SOURCE: REASON`.

    `failed` says whether one of the inputs named on the command line failed (an error: the exit
    code says so) rather than a file found in a named folder (only reported). With `hold`, the
    reports wait in `held` until `report_held()`: a command that never finds a message to work on
    makes its one failed input the error itself (`_nothing_read`)."""

    def __init__(self, named, hold: bool):
        self.named, self.hold = set(named), hold
        self.failed = False
        self.held: list[tuple[str, str]] = []

    def __call__(self, source: str, reason: str) -> None:
        self.failed = self.failed or source in self.named
        if self.hold:
            self.held.append((source, reason))
        else:
            _report_problem(source, reason)

    def report_held(self) -> None:
        for problem in self.held:
            _report_problem(*problem)
        self.held.clear()


def _cmd_train(args) -> int:
    # Under mpirun every rank reads the corpus and hashes its share of it; the committee members
    # (or the shards of one network's batches) are spread over the ranks; rank 0 writes and prints.
    world = distributed.world()
    if not args.corpus and not args.sms:
        raise UserError("nothing to train on: give mail corpora and/or --sms FILE")
    check_standard_input(args.corpus)
    if args.folds == 1 or args.folds < 0:
        raise UserError(f"--folds must be 0 (one network) or at least 2, got {args.folds}")
    if args.validation is not None and args.folds != 0:  # (it was ignored without a word)
        raise UserError("--validation is for --folds 0 (one network): a committee validates each member on its "
                        "own fold")
    validation = VALIDATION if args.validation is None else args.validation
    if args.folds == 0 and validation == 0:
        raise UserError("--validation must be above 0 with --folds 0: the held-out messages calibrate the cut-offs")
    if args.folds == 0 and args.batch_size < world.size:  # (a committee's members train one to a process)
        raise UserError(f"--batch-size {args.batch_size} is smaller than the {world.size} processes that share each "
                        "batch with --folds 0")
    use_idf = bool(args.corpus) if args.idf is None else args.idf  # (mail: see --idf)
    min_df = (MAIL_MIN_DF if use_idf else 0) if args.min_df is None else args.min_df
    if min_df and not use_idf:
        raise UserError("--min-df needs idf weights (--idf): rare buckets are left out through them")
    if not args.delivery_headers and not args.corpus:
        raise UserError("--no-delivery-headers is for mail (a text message has no Received or To header): give "
                        "mail to train on, or leave it out")
    config = HashingConfig(n_features=1 << args.hash_bits, bigrams=args.bigrams, char_ngrams=args.char_ngrams,
                           split_norm=bool(args.corpus),  # (mail has headers to keep apart; SMS has none)
                           idf=use_idf, min_df=min_df, delivery=args.delivery_headers)
    out = Path(args.out)
    # (found now, not after minutes of training; by rank 0 alone, which writes it: another machine
    # may not see the folder, or may see it read-only; the others wait for it, and stop with it)
    world.bcast(check_out(out) if world.rank == 0 else None)
    return _train_into(args, config, validation, out, world)


def _train_into(args, config: HashingConfig, validation: float, out: Path, world) -> int:
    """`spam train`, once its options are checked. Rank 0 holds `out`'s writer lock from the
    corpus read to the save: other writers of the folder (`spam learn`, the daemon's TELL, another
    train) wait, and a correction goes into the new filter; it went into the old one, which the
    new one then replaced, uncounted."""
    with contextlib.ExitStack() as held:
        t0 = time.perf_counter()
        items, _, y = collect(args.corpus, args.sms, max_bytes=args.max_bytes,
                              on_problem=_report_problem if world.rank == 0 else None)
        check_labels(y, args.folds, validation)  # (before the corpus is hashed)
        check_same_on_every_rank(items, y, world)
        x, problems, idf = training_features(items, config, world=world)
        inputs = tuple(sorted({kind for kind, _ in items}))
        del items  # (the messages, up to --max-bytes each, are let go: training needs only their rows)
        if idf is not None and not idf.any():
            raise UserError(f"--min-df {config.min_df} leaves no hash bucket: none is in {config.min_df} of the "
                            f"{len(y)} training messages")
        t_feat = time.perf_counter() - t0
        if world.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            held.enter_context(locked_directory(out))
            if learned := check_out(out):  # (counted under the lock: no correction comes after it)
                print(f"chainrule: warning: --out {out} holds a spam filter that has learned {learned} "
                      "corrections; the new one starts without them (teach them again with `spam learn`)",
                      file=sys.stderr)
            _warn_about_repeats(x, y)
            print(f"{len(y)} messages ({int(y.sum())} spam, {int((y == 0).sum())} ham), "
                  f"{sum(p is not None for p in problems)} read as plain text; features in {t_feat:.1f}s"
                  + (f" on {world.size} processes" if world.size > 1 else ""), flush=True)
        try:
            result = train_filter(x, y, config, hidden=tuple(args.hidden), dropout=args.dropout, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                                  validation=validation, target_blocked_ham=args.target_blocked_ham,
                                  seed=args.seed, verbose=not args.quiet, inputs=inputs, folds=args.folds, idf=idf,
                                  world=world,
                                  balance=not args.corpus if args.balance is None else args.balance)  # (see --balance)
        except TrainingDiverged as exc:
            raise UserError(diverged(exc, weight_decay=args.weight_decay)) from None
        if result is None:  # a rank other than 0: its part is done
            return 0
        if args.folds >= 2 and not args.quiet:
            for i, h in enumerate(result.histories):
                best = None if h.best_epoch is None else h.best_epoch + 1
                print(f"committee member {i + 1}/{len(result.histories)}: {len(h)} epochs, best {best} "
                      f"(val_loss {min(h['val_loss']):.4f})")
        seconds = time.perf_counter() - t0
        _write_filter(result, out, seconds)
        v, bundle = result.validation, result.bundle
        print(f"validation: accuracy {100 * v['accuracy']:.2f}%  spam caught {percent(v['spam_caught'])}  "
              f"blocked ham {percent(v['blocked_ham'])}  MCC {v['mcc']:.4f}  ROC AUC {decimal(v['roc_auc'])}")
        print(f"cut-offs: spam >= {bundle.spam_cutoff:.4f}, ham < {bundle.ham_cutoff:.4f}; "
              f"trained in {seconds:.1f}s; model written to {out}")
        return 0


def _write_filter(result, out: Path, seconds: float) -> None:
    """`write_run`; a Ctrl-C held while the files were put in place says, once they are, that the
    new filter is saved."""
    before = file_id(out / "metrics.json")
    try:
        write_run(result, out, seconds)
    except KeyboardInterrupt:
        if file_id(out / "metrics.json") not in (before, None):  # (renamed into place: another inode)
            raise KeyboardInterrupt(f"interrupted as the run ended; the new filter and its files are saved in "
                                    f"{out}") from None
        raise


def _format_metrics(r: dict) -> str:
    (tn, fp), (fn, tp) = r["confusion_matrix"]
    return "\n".join([
        f"messages      {r['messages']} ({r['spam']} spam, {r['ham']} ham)",
        f"accuracy      {100 * r['accuracy']:.2f}%",
        f"spam caught   {percent(r['spam_caught'])}",
        f"blocked ham   {percent(r['blocked_ham'])}",
        f"precision     {decimal(r['precision'])}",
        f"F1            {decimal(r['f1'])}",
        f"MCC           {decimal(r['mcc'])}",
        f"ROC AUC       {decimal(r['roc_auc'])}",
        "confusion matrix (rows: true, columns: predicted)",
        "               ham    spam",
        f"  ham    {tn:>8} {fp:>7}",
        f"  spam   {fn:>8} {tp:>7}",
    ])


def _cmd_evaluate(args) -> int:
    check_standard_input(args.corpus)
    bundle = load_spam_model(args.model, args.spam_cutoff, args.ham_cutoff)
    problems = _InputProblems(args.corpus, hold=False)  # (figures without a named corpus: the exit code says so)
    # Scored a batch at a time, as classify scores them: the figures need only each message's
    # P(spam) and label, so the messages of a corpus of any size are never all held at once.
    messages = labelled_messages(args.corpus, args.sms, max_bytes=args.max_bytes, on_problem=problems)
    scores, labels, kinds, seconds = [], [], set(), 0.0
    for batch in batches(messages, lambda message: len(message[0][1])):
        items = [item for item, _, _ in batch]
        t0 = time.perf_counter()
        scores.append(bundle.score(items)[0])
        seconds += time.perf_counter() - t0
        labels += [label for _, _, label in batch]
        kinds.update(kind for kind, _ in items)
        del batch, items  # (let go before the next batch is read, or two would be held at once)
    if not labels:
        raise UserError("no messages to evaluate")
    for kind in sorted(kinds):  # (figures on a kind it never saw mean little)
        _warn_if_untrained_on(bundle, kind)
    y, p = np.asarray(labels, np.int64), np.concatenate(scores)
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
    return args.error_exit if problems.failed else 0


def _classify_batches(args, on_problem):
    """Batches of (sources, items, raw messages or None) to classify, read lazily (`batches`); what
    cannot be read goes to `on_problem(source, reason)`."""
    paths = args.paths or ["-"]
    if args.sms:
        for batch in batches(sms_lines(paths, args.max_bytes, on_problem), lambda line: len(line[1])):
            yield [source for source, _ in batch], [("sms", text) for _, text in batch], None
            del batch  # (let go before the next batch is read, or two would be held at once)
        return
    # --annotate writes the message back out: a file is read as standard input is, every byte kept
    # (an mbox's reader would drop a "From " line and unquote ">From " lines)
    messages = ((read_as_is(p, args.max_bytes) for p in paths) if args.annotate
                else read_messages(paths, max_bytes=args.max_bytes))
    for batch in batches(readable(messages, on_problem), lambda m: len(m.data)):
        yield [m.source for m in batch], [("mail", m.data) for m in batch], batch
        del batch  # (as above)


def _write_annotated(msg: RawMessage, verdict: str, p: float) -> None:
    """`msg` to standard output with the X-Chainrule-Spam headers of its `verdict` and P(spam)
    `p`; one read in part (over --max-bytes) is passed on whole without them, as the daemon passes
    on what is over --max-size."""
    if msg.truncated:
        _pass_on(msg)
        print(f"chainrule: warning: {printable(msg.source)}: larger than --max-bytes; passed on without annotation",
              file=sys.stderr)
        return
    sys.stdout.buffer.write(annotate(msg.data, verdict == "spam", p, verdict))
    sys.stdout.buffer.flush()


def _pass_on(msg: RawMessage) -> None:
    """Write a message that `read_as_is` read in part (`truncated`) to standard output whole: the
    part it read, then the rest of its source (standard input, or a file read again from there; a
    pipe named as a file, read once, is refused before anything is written)."""
    with contextlib.ExitStack() as held:
        if msg.source == "-":
            rest = sys.stdin.buffer
        elif os.path.isfile(msg.source):
            rest = held.enter_context(open(msg.source, "rb"))
            rest.seek(len(msg.data))
        else:
            raise UserError(f"{msg.source}: larger than --max-bytes, and not a file to read again: give it on "
                            "standard input to have it passed on whole")
        sys.stdout.buffer.write(msg.data)
        shutil.copyfileobj(rest, sys.stdout.buffer)
    sys.stdout.buffer.flush()


def _on_every_rank(batches, world):
    """Rank 0's batches, announced to every rank (the others get (None, None, None) for each), so
    that all of them call `score` together for each batch; rank 0 alone reads the input. Every rank
    must run the loop over them to its end: the others wait to hear of rank 0's next batch, for
    ever if it left the loop (an error is raised instead: it ends the job)."""
    if world.size == 1:
        yield from batches
        return
    while True:
        batch = next(batches, None) if world.rank == 0 else None
        if not world.bcast(batch is not None):
            return
        yield batch if world.rank == 0 else (None, None, None)
        del batch  # (let go before the next batch is read, or two would be held at once)


def _cmd_classify(args) -> int:
    # Under mpirun rank 0 reads the messages and deals every batch out to all the ranks, which
    # score their parts; rank 0 prints the verdicts in input order.
    world = distributed.world()
    check_standard_input(args.paths or ["-"])
    bundle = load_spam_model(args.model, args.spam_cutoff, args.ham_cutoff)
    single_stdin = (args.paths or ["-"]) == ["-"]
    check_same_filter(bundle, world)
    # What could not be read is reported as it comes, except while nothing has been classified: if
    # nothing ever is (a missing file, empty or closed standard input), that is the error, exit 3,
    # never a verdict a mail recipe would act on.
    problems = _InputProblems(args.paths, hold=True)
    seen, last = 0, None
    batches = _classify_batches(args, problems) if world.rank == 0 else None
    for sources, items, raws in _on_every_rank(batches, world):
        scored = bundle.score(items, world=world)
        if world.rank != 0:
            continue
        if seen == 0:  # (said once there is something to classify)
            _warn_if_untrained_on(bundle, "sms" if args.sms else "mail")
        problems.report_held()
        seen += len(items)
        if args.annotate and (seen != 1 or raws is None):
            raise UserError("--annotate needs exactly one email message (a file or standard input)")
        p, _ = scored
        verdicts = bundle.verdicts(p)
        last = verdicts[-1]
        if args.annotate:  # (no `return` after it: under mpirun the other ranks wait to hear that no batch is left)
            _write_annotated(raws[0], verdicts[0], float(p[0]))
            continue
        del items, raws  # (let go before the next batch is read, or two would be held at once)
        if args.json:
            print_lines(json.dumps({"source": src, "verdict": v, "probability": round(float(q), 6)})
                        for src, v, q in zip(sources, verdicts, p, strict=True))
        else:
            print_lines(f"{_tsv_field(src)}\t{v}\t{q:.6f}" for src, v, q in zip(sources, verdicts, p, strict=True))
    if world.rank != 0:
        return 0
    if seen == 0:
        _nothing_read(problems.held, "classify")
    problems.report_held()
    if problems.failed:
        return ERROR_EXIT  # the others were classified, but a cron job must see that one was not
    if seen == 1 and single_stdin and not args.annotate:  # (annotated, the verdict is in the headers: a
        return VERDICT_EXIT[last]  # mail filter such as procmail's `:0fw` keeps only a filter's 0-exit output)
    return 0


def _warn_about_repeats(x, y: np.ndarray) -> None:
    """Say so when messages repeat, above all under both labels: copies in both the training and
    the validation messages flatter the validation scores, and a message labelled both ways
    teaches nothing but confusion."""
    repeats, both = repeated_messages(x, y)
    if both:
        print(f"chainrule: warning: {both} distinct messages appear under both labels (spam and ham)",
              file=sys.stderr)
    if repeats:
        print(f"chainrule: warning: {repeats} messages repeat others (the same features); copies in both the "
              "training and the validation messages flatter the validation scores", file=sys.stderr)


def _warn_if_untrained_on(bundle, kind: str) -> None:
    if warning := bundle.untrained_on(kind):
        print(f"chainrule: warning: {warning}", file=sys.stderr)


def _nothing_read(problems: list[tuple[str, str]], what: str):
    """Raise the error for a command that found no message to work on: the one problem, if one
    input failed, in one line; else each problem, then the count."""
    if len(problems) == 1:
        raise UserError(": ".join(problems[0]))
    for problem in problems:
        _report_problem(*problem)
    raise UserError(f"no message to {what}" + (f": all {len(problems)} inputs skipped" if problems else ""))


def _cmd_learn(args) -> int:
    if args.since_last and not args.source:
        raise UserError("--since-last needs --from FOLDER: the folder whose new messages to learn")
    if args.unlearn and (args.since_last or args.epochs is not None or args.seed is not None):
        given = [name for name, value in (("--since-last", args.since_last), ("--epochs", args.epochs),
                                          ("--seed", args.seed)) if value not in (None, False)]
        raise UserError(f"{', '.join(given)}: with --spam or --ham, not --unlearn (unlearning trains nothing)")
    if not args.paths and not args.source:
        raise UserError("nothing to learn from: give messages ('-' reads standard input) or --from FOLDER")
    check_standard_input(args.paths)
    if args.sms and args.source:
        raise UserError("--from reads a mail folder; with --sms, name the files of text messages")
    label = SPAM if args.spam else HAM
    with open_for_learning(args.model) as bundle:  # the model's lock is held until it is saved
        _warn_if_untrained_on(bundle, "sms" if args.sms else "mail")
        problems = _InputProblems([*args.paths, *(args.source or [])], hold=True)
        found = gather_lessons(bundle, args.paths, args.source or [], label, problems, sms=args.sms,
                               since_last=args.since_last, unlearning=args.unlearn, max_bytes=args.max_bytes)
        if not args.quiet:
            for folder, before in found.nothing_new:
                said = "nothing new since the previous run" if before else "no messages yet"
                print(f"{printable(folder)}: {said}")
        if not found.read:  # (--since-last, and nothing new anywhere)
            problems.report_held()
            return 0
        if not found.items and not found.filed and (problems.failed or not found.marks):
            _nothing_read(problems.held, "unlearn" if args.unlearn else "learn from")  # (an empty message: a problem)
        problems.report_held()  # (a file found by --since-last is only reported: the folders are marked)
        x, _ = featurize(found.items, bundle.config, idf=bundle.idf)
        if args.unlearn:
            result = unlearn(bundle, x)
        else:
            try:
                result = learn(bundle, x, found.labels, epochs=args.epochs or LEARN_EPOCHS, seed=args.seed,
                               since_last=found.marks,
                               again=not args.since_last)
            except TrainingDiverged as exc:  # (a sound filter does not: its metadata or replay sample is damaged)
                raise UserError(f"learning diverged: {exc.where()}; {bundle.directory} is as it was") from None
        total = bundle.metadata.get("learned", 0)
    if args.quiet:  # (a cron job mails what a command prints)
        return args.error_exit if problems.failed else 0
    name = LABEL_NAMES[label]
    for src in found.filed:
        print(f"{_tsv_field(src)}\tfiled as {name} on delivery; not learned")
    for src, status, was, b, a in zip(found.sources, result.status, result.was, result.before, result.after,
                                      strict=True):
        print(f"{_tsv_field(src)}\t{describe(status, label, was)}\tP(spam) {b:.4f} -> {a:.4f}")
    counts = {s: result.status.count(s) for s in dict.fromkeys(result.status)}
    if found.filed:
        counts[f"filed as {name} on delivery"] = len(found.filed)
    print((", ".join(f"{n} {s}" for s, n in counts.items()) or "nothing learned")
          + f"; the model has learned {total} message{'s' * (total != 1)}")
    return args.error_exit if problems.failed else 0  # (the others were learned)


def _explained_tokens(args, config: HashingConfig, on_problem):
    """(source, tokens) of each message to explain: emails, or with --sms each line of the files
    (or of standard input) a text message, tokenised as training saw each kind."""
    if args.sms:
        for source, text in sms_lines(args.paths, args.max_bytes, on_problem):
            yield source, item_tokens("sms", text, config)[0]
        return
    for msg in readable(read_messages(args.paths, max_bytes=args.max_bytes), on_problem):
        yield msg.source, item_tokens("mail", msg.data, config)[0]


def _cmd_explain(args) -> int:
    check_standard_input(args.paths)
    bundle = load_spam_model(args.model)
    problems = _InputProblems(args.paths, hold=True)  # (as in classify: a lone failed input is the error)
    seen = 0
    for source, tokens in _explained_tokens(args, bundle.config, problems):
        problems.report_held()
        if seen == 0:
            _warn_if_untrained_on(bundle, "sms" if args.sms else "mail")
        seen += 1
        p, to_spam, to_ham = explain_row(bundle, tokens, args.top)
        v = verdict(p, bundle.spam_cutoff, bundle.ham_cutoff)
        if args.json:
            print(json.dumps({"source": source, "verdict": v, "probability": p,
                              "towards_spam": [{"token": t, "weight": w} for t, w in to_spam],
                              "towards_ham": [{"token": t, "weight": w} for t, w in to_ham]}))
            continue
        if seen > 1:
            print()
        print(f"{printable(source)}: {v} (P(spam) {p:.4f}; cut-offs: spam >= {bundle.spam_cutoff:.4f}, "
              f"ham < {bundle.ham_cutoff:.4f})")
        print("gradient x input on the hashed features, per token (positive: towards spam)")
        # (a token is the message's text: an attachment's type or an encoded word may hold ESC c)
        print("towards spam:")
        for t, w in to_spam:
            print(f"  {w:+.4f}  {printable(t)}")
        print("towards ham:")
        for t, w in to_ham:
            print(f"  {w:+.4f}  {printable(t)}")
    if seen == 0:
        _nothing_read(problems.held, "explain")
    problems.report_held()
    return args.error_exit if problems.failed else 0  # (the others were explained)


LEARN_DESCRIPTION = """\
Teach the filter that these messages are spam (--spam) or ham (--ham): a few steps of training on
them, mixed with a sample of what it learned before, so that it keeps what it knew. Every message
is remembered by a digest of its features. Taught again with the same label, it is recognised and
counted once, and learned again only while the filter does not yet give it that verdict; with the
other label, it is relearned as that. --unlearn undoes
a lesson: the message is forgotten and the network edited, as little as it takes, to give the
message the P(spam) it had before the lesson (a network cannot subtract one message exactly, as a
Bayes token database can). --from FOLDER --since-last learns what arrived in a Junk or inbox folder since the
previous such run, for a cron job. Writers of a model take turns (a lock file in the model
directory), so a cron job, a correction by hand and the daemon's TELL never undo each other's
lessons; every change is saved in one commit."""


def add_commands(subparsers) -> None:
    """`chainrule spam train|evaluate|classify|learn|explain`."""
    spam = subparsers.add_parser("spam", help="a neural spam filter for email and SMS")
    sub = spam.add_subparsers(dest="spam_command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a filter on labelled mail and/or SMS")
    p.add_argument("corpus", nargs="*", help="files, directories, mbox, Maildir, .tar[.gz|.bz2|.xz] or .zip; labels "
                   "from folder names: 'spam' (not 'nonspam' or the like) or the word 'ham'")
    p.add_argument("--sms", action="append", help="an SMS collection (label<TAB>text lines); repeatable")
    p.add_argument("--out", default="runs/spam", help="model directory to write (default runs/spam)")
    p.add_argument("--hidden", type=layer_width, nargs="+", default=[32], help="hidden layer widths (default 32)")
    p.add_argument("--dropout", type=fraction, default=0.2,
                   help="share of hidden units dropped at each training step (default 0.2)")
    p.add_argument("--epochs", type=positive_int, default=30,
                   help="at most this many epochs (default 30; early stopping ends sooner)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="messages per training step (default 256)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="Adam's learning rate (default 0.003)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0,
                   help="AdamW decoupled weight decay (default 0)")
    p.add_argument("--validation", type=fraction, help="held-out fraction for early stopping and the cut-offs, "
                   f"with --folds 0 (default {VALIDATION})")
    p.add_argument("--folds", type=int, default=5, help="train a committee of this many networks, each "
                   "validated on its own fold, cut-offs from the out-of-fold scores (default 5; 0: one "
                   "network and a --validation split)")
    p.add_argument("--target-blocked-ham", type=probability, default=0.005,
                   help="largest share of validation ham the spam cut-off may block (default 0.005; with "
                   "mail and --no-balance the cut-off is also at most P(spam) 0.5, which may block more)")
    p.add_argument("--hash-bits", type=int, choices=range(1, 25), default=16, metavar="BITS",
                   help="2^BITS hash buckets, 1 to 24 (default 16: as accurate as 18 on SpamAssassin and SMS "
                   "out of fold, 4x smaller)")
    p.add_argument("--bigrams", action="store_true",
                   help="also hash adjacent word pairs (default off: no gain out of fold)")
    p.add_argument("--char-ngrams", type=char_ngrams, default=0,
                   help="also hash character 3..N-grams (default off)")
    p.add_argument("--idf", action=argparse.BooleanOptionalAction, default=None,
                   help="weight each hash bucket by its inverse document frequency in the training "
                   "messages (default: on with mail, where it helped out of fold; off for SMS only, "
                   "where it did not)")
    p.add_argument("--min-df", type=nonnegative_int, default=None, metavar="N",
                   help="with idf, leave out the hash buckets found in fewer than N training messages "
                   f"(default {MAIL_MIN_DF} with idf, where it made the filter hold up better on newer mail; "
                   "0 keeps every bucket)")
    p.add_argument("--delivery-headers", action=argparse.BooleanOptionalAction, default=True,
                   help="with mail, read the hosts of the Received lines and the To header (default on; turn it off "
                   "where the training spam and ham came in by different routes, e.g. spam from a trap "
                   "address or a public corpus: those headers would tell the routes apart, not spam "
                   "from ham)")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None,
                   help="weigh spam by #ham/#spam in the loss and calibrate the spam cut-off freely "
                   "(default: on for SMS only; with mail, off: every message weighs the same and the "
                   "spam cut-off is at most P(spam) 0.5, which held up better on newer mail)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed for the folds (or validation split), initial weights, shuffling and dropout (default 0)")
    add_max_bytes(p)
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no line per committee member; the totals are still printed")
    p.set_defaults(func=_cmd_train, mpi=True)

    p = sub.add_parser("evaluate", help="accuracy, spam caught, blocked ham, MCC, ROC AUC on labelled messages")
    p.add_argument("model")
    p.add_argument("corpus", nargs="*")
    p.add_argument("--sms", action="append", help="an SMS collection (label<TAB>text lines)")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")
    add_max_bytes(p)
    add_cutoffs(p)
    p.set_defaults(func=_cmd_evaluate)

    spamd.add_command(sub)

    p = sub.add_parser("classify", error_exit=ERROR_EXIT,
                       help="spam/ham/unsure for each message; one stdin message sets the exit code (0 spam, "
                       "1 ham, 2 unsure; with --annotate 0); errors exit 3")
    p.add_argument("model")
    p.add_argument("paths", nargs="*", help="messages, folders, mbox, Maildir, archives (.tar, .zip); '-' or nothing: "
                   "stdin")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="one JSON object per line (default: SOURCE<TAB>VERDICT<TAB>P(spam); a tab, line "
                        "break or backslash in SOURCE written as \\t, \\n, \\r, \\\\)")
    output.add_argument("--annotate", action="store_true",
                        help="write the message back with X-Chainrule-Spam headers added (body untouched); "
                        "exit 0 whatever the verdict, as a mail filter needs")
    p.add_argument("--sms", action="store_true", help="inputs are SMS texts, one per line")
    add_max_bytes(p)
    add_cutoffs(p)
    p.set_defaults(func=_cmd_classify, mpi=True)

    p = sub.add_parser("learn", help="teach the filter messages it got wrong, or undo such a lesson",
                       description=LEARN_DESCRIPTION)
    p.add_argument("model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--spam", action="store_true", help="the messages are spam")
    which.add_argument("--ham", action="store_true", help="the messages are ham")
    which.add_argument("--unlearn", action="store_true",
                       help="undo the lessons of these messages: each is forgotten and the network edited, "
                       "as little as it takes, to give it the P(spam) it had before it was taught")
    p.add_argument("paths", nargs="*", help="messages, folders, mbox, Maildir; '-' reads standard input (with none "
                   "named it is not read: a cron job whose list is empty must not wait on it)")
    p.add_argument("--from", dest="source", action="append", metavar="FOLDER",
                   help="a folder or Maildir to learn from, such as a Junk folder (repeatable)")
    p.add_argument("--since-last", action="store_true",
                   help="with --from: only the messages put in the folder since the previous --since-last "
                   "run on this model (the first run takes them all); for a cron job")
    p.add_argument("--sms", action="store_true",
                   help="the files hold text messages, one per line ('-' reads standard input)")
    p.add_argument("--quiet", action="store_true", help="print only errors and warnings (for a cron job, which "
                   "mails what a command prints)")
    p.add_argument("--epochs", type=positive_int,
                   help=f"passes over the lessons and their replay examples (default {LEARN_EPOCHS})")
    p.add_argument("--seed", type=nonnegative_int,
                   help="fixes the replay examples drawn and their order (default: drawn afresh each run)")
    add_max_bytes(p)
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("explain", help="the tokens that pushed each message towards spam and towards ham")
    p.add_argument("model")
    p.add_argument("paths", nargs="+", metavar="MESSAGE",
                   help="messages, folders, mbox, Maildir, archives (.tar, .zip; each message explained); "
                   "'-' for stdin")
    p.add_argument("--sms", action="store_true",
                   help="the files hold text messages, one per line ('-' reads standard input)")
    p.add_argument("--top", type=positive_int, default=10,
                   help="tokens shown each way, towards spam and towards ham (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    add_max_bytes(p)
    p.set_defaults(func=_cmd_explain)
