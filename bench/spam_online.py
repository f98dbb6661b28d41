"""Online spam filtering, TREC Spam Track style: mail in date order, each message classified, then its label revealed.

The three SpamAssassin 20030228 tarballs (easy_ham, hard_ham, spam) are put in date order by their
`Date:` headers (`mail_dates.py`: parsed with `email.utils`, a year-1900 bug repaired; a message
whose date does not parse, lies before 1990 or more than two days after its arrival keeps its
place in the order of its tarball's files: 6 of 3,250). Every filter is trained on the oldest
`--initial` share (default 50%: 1,625 messages, 331 spam, up to 2002-09-15) and then sees the
rest, 1,625 messages (169 spam) to 2002-12-04, one at a time: classify, then learn by the mode:

* ``none``: never learns (the filter as trained, on newer mail);
* ``full``: immediate full feedback, every message is learned right after it is classified
  (TREC's main task);
* ``error``: train on error, only the messages it got wrong or called `unsure`, right away, as a
  user moving mail in and out of Junk does;
* ``batch-error``: delayed, every `--batch` (100) messages the wrong and `unsure` ones of the
  batch are learned together (the issue's "corrected every 100 messages");
* ``batch-full``: delayed full feedback, every message of each batch, learned at its end.

Filters, each from the same initial messages, under the same protocol:

* **chainrule**: `train_filter` with the settings of `bench/spam.py`'s SpamAssassin split (a
  5-fold committee, cut-offs calibrated on its out-of-fold scores); corrections through
  `chainrule.apps.spam.learn`, as `spam learn` does (it writes the model and its replay sample
  to disk each call: the model lives in a temporary directory). One call per correction batch,
  both labels together.
* **bogofilter** (`-s`/`-n` to register, `-T` for verdict and spamicity, default cut-offs);
* **spamprobe** (`spam`/`good` to learn, `score`);
* **sklearn SGD**: `SGDClassifier(loss="log_loss")` on chainrule's hashed features (the same
  `Hasher` rows, idf from the initial messages), `fit` on the initial messages, then
  `partial_fit` on each correction; spam at P >= 0.5.

A verdict of `unsure` (chainrule, bogofilter) counts as ham for the figures, and as a message to
correct in the error modes.

Columns: **(1-ROCA)%** = 100 x (1 - area under the ROC curve of every online score), TREC's
headline figure (lower is better); **accuracy**, **caught** (spam called spam), **blocked** (ham
called spam), **MCC** (Matthews correlation of the verdicts); **lam%**, TREC's logistic average
misclassification: logit⁻¹((logit(hm) + logit(sm)) / 2) with hm = blocked ham, sm = missed spam,
each smoothed as (errors + 0.5) / (n + 1) (the epsilon of 0.5 of TREC's evaluation tools), so a
filter with no errors of one kind still gets a finite figure; **learned**: the messages learned
online; **learn s/msg**: wall seconds spent learning, per message learned.

Run:  flock /tmp/chainrule-cpu.lock python bench/spam_online.py [--data DIR] [--modes ...] [--filters ...]
Writes bench/results/spam_online.json and prints one table per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chainrule.apps.spam import (
    binary_report,
    featurize,
    learn,
    load_spam_model,
    save_model,
    train_filter,
    training_features,
)
from chainrule.data.corpora import read_messages
from chainrule.data.locate import candidate_dirs
from mail_dates import date_order
from spam import SETTINGS, filter_options

HERE = Path(__file__).resolve().parent
MODES = ("none", "full", "error", "batch-error", "batch-full")
FILTERS = ("chainrule", "bogofilter", "spamprobe", "sklearn SGD")

# bench/spam.py's settings for the SpamAssassin split: its hashing, and train_filter's options
CONFIG = SETTINGS["spamassassin"]["config"]
CHAINRULE = filter_options(SETTINGS["spamassassin"])


def load_in_date_order(data_dir) -> tuple[list[bytes], np.ndarray, list[str], np.ndarray, int]:
    """(raw messages, labels, names, sort dates, undated count), oldest first."""
    roots = candidate_dirs("spamassassin", data_dir)  # (--data, $CHAINRULE_DATA, the user cache, as spam.py)
    tarballs = next((sorted(r.glob("*.tar*")) for r in roots if r.is_dir() and list(r.glob("*.tar*"))), None)
    if not tarballs:
        sys.exit("bench/spam_online.py: no spamassassin tarballs found (give --data DIR or set CHAINRULE_DATA)")
    msgs = [m for m in read_messages(tarballs) if not m.error]
    groups = [m.source.rsplit(":", 1)[0] + ":" + m.source.rsplit(":", 1)[1].split("/")[0] for m in msgs]
    order = date_order([m.data for m in msgs], groups)
    idx = order.order
    return ([msgs[i].data for i in idx], np.array([msgs[i].label for i in idx], np.int64),
            [msgs[i].source.rsplit(":", 1)[1] for i in idx], np.array([order.dates[i] for i in idx]),
            order.undated)


def lam(y: np.ndarray, called_spam: np.ndarray) -> float:
    """TREC's logistic average misclassification, as a fraction (module docstring)."""
    y, called_spam = np.asarray(y, bool), np.asarray(called_spam, bool)
    hm = (np.sum(called_spam & ~y) + 0.5) / (np.sum(~y) + 1.0)
    sm = (np.sum(~called_spam & y) + 0.5) / (np.sum(y) + 1.0)
    logit = (np.log(hm / (1 - hm)) + np.log(sm / (1 - sm))) / 2
    return float(1 / (1 + np.exp(-logit)))


# ---------------------------------------------------------------------------------------------
# The filters. Each is trained once on the initial messages; `start` gives a fresh copy of that
# state for one run; `classify(idx)` -> (scores, verdicts) of online messages; `learn(idx)`.


class Chainrule:
    name = "chainrule"

    def __init__(self, x_train, y_train, idf, x_online, tmp: Path, seed: int):
        t0 = time.perf_counter()
        result = train_filter(x_train, y_train, CONFIG, seed=seed, idf=idf, **CHAINRULE)
        self.initial = tmp / "chainrule-initial"
        save_model(result.bundle, self.initial, replay=result.replay)
        self.train_seconds = time.perf_counter() - t0
        self.x, self.tmp, self.seed, self.calls = x_online, tmp, seed, 0
        self.cutoffs = (result.bundle.spam_cutoff, result.bundle.ham_cutoff)

    def start(self, mode: str) -> None:
        directory = self.tmp / f"chainrule-{mode}"
        shutil.copytree(self.initial, directory)
        self.bundle = load_spam_model(directory)

    def classify(self, idx):
        p = self.bundle.probabilities(self.x[idx])
        return p, self.bundle.verdicts(p)

    def learn(self, idx, y):
        self.calls += 1
        learn(self.bundle, self.x[idx], y, seed=self.seed + self.calls)


class CommandLine:
    """bogofilter or spamprobe over the messages as files, one database per run."""

    def __init__(self, name: str, train_raw, y_train, files: list[str], tmp: Path):
        self.name, self.files, self.tmp = name, files, tmp
        self.initial = tmp / f"{name}-initial"
        self.initial.mkdir()
        train_dir = tmp / f"{name}-train"
        train_dir.mkdir()
        paths = {0: [], 1: []}
        for i, (m, y) in enumerate(zip(train_raw, y_train, strict=True)):
            p = train_dir / f"{i:05d}"
            p.write_bytes(m)
            paths[int(y)].append(str(p))
        t0 = time.perf_counter()
        self.db = self.initial
        for label in (1, 0):
            for chunk in range(0, len(paths[label]), 500):
                self._register(paths[label][chunk:chunk + 500], label)
        self.train_seconds = time.perf_counter() - t0

    def start(self, mode: str) -> None:
        self.db = self.tmp / f"{self.name}-{mode}"
        shutil.copytree(self.initial, self.db)

    def _run(self, args: list[str]) -> str:
        res = subprocess.run(args, capture_output=True, check=False)
        if res.returncode not in (0, 1, 2):
            raise RuntimeError(f"{args[0]} failed ({res.returncode}): {res.stderr.decode(errors='replace')[:200]}")
        return res.stdout.decode(errors="replace")

    def _register(self, paths: list[str], label: int) -> None:
        if self.name == "bogofilter":
            self._run(["bogofilter", "-d", str(self.db), "-s" if label else "-n", "-B", *paths])
        else:
            self._run(["spamprobe", "-d", str(self.db), "spam" if label else "good", *paths])

    def classify(self, idx):
        paths = [self.files[i] for i in idx]
        scores, verdicts = [], []
        if self.name == "bogofilter":  # "<file> S 0.999999" per file; S spam, H ham, U unsure
            out = self._run(["bogofilter", "-d", str(self.db), "-T", "-B", *paths])
            lines = [ln.split() for ln in out.splitlines()]
            names = {"S": "spam", "H": "ham", "U": "unsure"}
            got = {ln[0]: (float(ln[-1]), names[ln[-2]]) for ln in lines if len(ln) >= 3}
        else:  # "SPAM 0.9999999 <digest>" or "GOOD ..." per file, in order
            lines = [ln.split() for ln in self._run(["spamprobe", "-d", str(self.db), "score", *paths]).splitlines()
                     if ln.strip()]
            got = {p: (float(ln[1]), "spam" if ln[0] == "SPAM" else "ham") for p, ln in zip(paths, lines, strict=True)}
        for p in paths:
            s, v = got[p]
            scores.append(s)
            verdicts.append(v)
        return np.array(scores), verdicts

    def learn(self, idx, y):
        for label in (1, 0):
            paths = [self.files[i] for i, t in zip(idx, y, strict=True) if t == label]
            if paths:
                self._register(paths, label)


class SGD:
    name = "sklearn SGD"

    def __init__(self, x_train, y_train, x_online, seed: int):
        from sklearn.linear_model import SGDClassifier

        t0 = time.perf_counter()
        self.initial = SGDClassifier(loss="log_loss", random_state=seed).fit(x_train, y_train)
        self.train_seconds = time.perf_counter() - t0
        self.x = x_online

    def start(self, mode: str) -> None:
        import copy

        self.clf = copy.deepcopy(self.initial)

    def classify(self, idx):
        p = self.clf.predict_proba(self.x[idx])[:, 1]
        return p, ["spam" if q >= 0.5 else "ham" for q in p]

    def learn(self, idx, y):
        self.clf.partial_fit(self.x[idx], y)


# ---------------------------------------------------------------------------------------------
# The protocol.


def run_online(f, mode: str, y: np.ndarray, batch: int) -> dict:
    """Classify every online message in order, learning as `mode` says; the figures of the run."""
    n = len(y)
    scores, verdicts = np.zeros(n), [""] * n
    learned, learn_seconds, classify_seconds = 0, 0.0, 0.0
    step = n if mode == "none" else 1 if mode in ("full", "error") else batch
    f.start(mode)
    for start in range(0, n, step):
        idx = list(range(start, min(start + step, n)))
        t0 = time.perf_counter()
        s, v = f.classify(idx)
        classify_seconds += time.perf_counter() - t0
        scores[idx] = s
        for i, verdict in zip(idx, v, strict=True):
            verdicts[i] = verdict
        if mode == "none":
            continue
        wrong = [i for i in idx if verdicts[i] == "unsure" or (verdicts[i] == "spam") != (y[i] == 1)]
        teach = idx if mode.endswith("full") else wrong
        if teach:
            t0 = time.perf_counter()
            f.learn(teach, y[teach])
            learn_seconds += time.perf_counter() - t0
            learned += len(teach)
    called_spam = np.array([v == "spam" for v in verdicts])
    r = binary_report(y, called_spam.astype(float), 0.5)
    r["roc_auc"] = binary_report(y, scores, 0.5)["roc_auc"]
    r.update(one_minus_roca_pct=100 * (1 - r["roc_auc"]), lam_pct=100 * lam(y, called_spam), learned=learned,
             unsure=sum(v == "unsure" for v in verdicts), learn_seconds=learn_seconds,
             learn_seconds_per_message=learn_seconds / learned if learned else None,
             classify_seconds=classify_seconds,
             errors_per_100=[int(np.sum(called_spam[i:i + 100] != (y[i:i + 100] == 1))) for i in range(0, n, 100)])
    return r


def table(mode: str, rows: dict) -> str:
    head = (f"{'filter':<14}{'(1-ROCA)%':>10}{'accuracy':>10}{'caught':>9}{'blocked':>9}{'MCC':>8}{'lam%':>8}"
            f"{'learned':>9}{'unsure':>8}{'learn s/msg':>12}")
    lines = [f"== {mode} ==", head]
    for name, r in rows.items():
        if "skipped" in r:
            lines.append(f"{name:<14}skipped: {r['skipped']}")
            continue
        per = "-" if r["learn_seconds_per_message"] is None else f"{r['learn_seconds_per_message']:.3f}"
        lines.append(f"{name:<14}{r['one_minus_roca_pct']:10.4f}{100 * r['accuracy']:9.2f}%"
                     f"{100 * r['spam_caught']:8.2f}%{100 * r['blocked_ham']:8.2f}%{r['mcc']:8.4f}{r['lam_pct']:8.3f}"
                     f"{r['learned']:9d}{r['unsure']:8d}{per:>12}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="data directory holding spamassassin/ (default: $CHAINRULE_DATA)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--filters", nargs="+", choices=FILTERS, default=list(FILTERS))
    parser.add_argument("--initial", type=float, default=0.5, help="oldest share trained on first (default 0.5)")
    parser.add_argument("--batch", type=int, default=100, help="messages per delayed batch (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "spam_online.json"))
    args = parser.parse_args()
    if not 0 < args.initial < 1:
        parser.error(f"--initial must be between 0 and 1, got {args.initial}")
    if args.batch < 1:
        parser.error(f"--batch must be a positive integer, got {args.batch}")

    raw, y, names, dates, undated = load_in_date_order(args.data)
    k = int(round(len(raw) * args.initial))
    day = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
    print(f"{len(raw)} messages in date order ({undated} without a usable date kept in file order); "
          f"initial {k} ({int(y[:k].sum())} spam, {day(dates[0])} to {day(dates[k - 1])}), "
          f"online {len(raw) - k} ({int(y[k:].sum())} spam, {day(dates[k])} to {day(dates[-1])})", flush=True)
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform()},
               "protocol": {"initial": k, "initial_spam": int(y[:k].sum()), "online": len(raw) - k,
                            "online_spam": int(y[k:].sum()), "undated": undated, "batch": args.batch,
                            "seed": args.seed, "online_first": names[k], "online_last": names[-1]},
               "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        filters: dict = {}
        if {"chainrule", "sklearn SGD"} & set(args.filters):  # the same hashed features for both
            t0 = time.perf_counter()
            x_train, _, idf = training_features([("mail", m) for m in raw[:k]], CONFIG)
            x_online, _ = featurize([("mail", m) for m in raw[k:]], CONFIG, idf=idf)
            print(f"hashed features of all {len(raw)} messages in {time.perf_counter() - t0:.1f}s", flush=True)
        if {"bogofilter", "spamprobe"} & set(args.filters):  # the online messages as files
            (tmp / "online").mkdir()
            files = [str(tmp / "online" / f"{i:05d}") for i in range(len(raw) - k)]
            for path, m in zip(files, raw[k:], strict=True):
                Path(path).write_bytes(m)
        for name in args.filters:
            if name in ("bogofilter", "spamprobe") and shutil.which(name) is None:
                filters[name] = f"{name} not installed (apt-get install {name})"
                continue
            if name == "chainrule":
                filters[name] = Chainrule(x_train, y[:k], idf, x_online, tmp, args.seed)
                print(f"chainrule: cut-offs spam >= {filters[name].cutoffs[0]:.4f}, "
                      f"ham < {filters[name].cutoffs[1]:.4f}", flush=True)
                results["chainrule_cutoffs"] = dict(zip(("spam", "ham"), filters[name].cutoffs, strict=True))
            elif name == "sklearn SGD":
                filters[name] = SGD(x_train, y[:k], x_online, args.seed)
            else:
                filters[name] = CommandLine(name, raw[:k], y[:k], files, tmp)
            print(f"{name}: initial training {filters[name].train_seconds:.1f}s", flush=True)
        for mode in args.modes:
            rows = {}
            for name, f in filters.items():
                if isinstance(f, str):
                    rows[name] = {"skipped": f}
                    continue
                rows[name] = run_online(f, mode, y[k:], args.batch)
                rows[name]["train_seconds"] = f.train_seconds
            results["modes"][mode] = rows
            print(table(mode, rows), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
