"""How much the spam filter leans on the route a message came by: its Received lines and To header.

In the SpamAssassin tarballs spam and ham came in by different routes: the spam went to trap
addresses and through other hosts than the collector's own mail. A filter can learn the route
instead of the message, and then misreads spam that reaches a user by the route of their ham. This
bench measures it: chainrule's mail filter (bench/spam.py's settings), trained as `spam train`
trains it and with `--no-delivery-headers`, and spam.py's peers (bogofilter, spamprobe, scikit-learn's
MultinomialNB and LogisticRegression on word counts, all of which read the whole message) classify
the newer messages of two splits by date

* ``dated``: bench/spam.py's `spamassassin-dated` split (the newest 20% of the spam and of the ham
  are tested, 100 spam and 550 ham);
* ``half``: spam_online.py's split (the oldest 1,625 messages train, the newer 1,625 are tested,
  169 spam and 1,456 ham),

first as they are, then *swapped*: every tested spam carries the Received lines and To header of a
tested ham (drawn at random, seed 0) and every ham those of a spam; every other byte of each message
is as it was. A filter that reads the message, not its route, makes the same errors both ways.

Run:  flock /tmp/chainrule-cpu.lock python bench/spam_routes.py [--data DIR]
Writes bench/results/spam_routes.json and prints one table per split.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from chainrule.apps.spam import binary_report, train_filter, training_features
from chainrule.files import atomic_write_bytes
from spam import BINARIES, PEERS, SETTINGS, filter_options, load_split
from spam_online import load_in_date_order
from speed import machine

HERE = Path(__file__).resolve().parent
SETTING = SETTINGS["spamassassin"]
FILTERS = {"chainrule": SETTING["config"],
           "chainrule --no-delivery-headers": replace(SETTING["config"], delivery=False)}
ROUTE_HEADERS = (b"received", b"to")


# One header field of a header block: its first line and its continuation lines.
_FIELD = re.compile(rb"[^ \t\r\n][^\n]*\n(?:[ \t][^\n]*\n)*")
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _fields(raw: bytes) -> tuple[list[bytes], bytes]:
    """(the header fields of `raw`, as written, each with its line ending; the rest, from the blank line
    on). Raises ValueError for a header block that is not plain fields."""
    m = _BLANK_LINE.search(raw)
    head, rest = (raw[:m.start() + 1], raw[m.start() + 1:]) if m else (raw, b"")
    fields = _FIELD.findall(head)
    if b"".join(fields) != head:
        raise ValueError("a header block that is not plain fields")
    return fields, rest


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def with_route_of(raw: bytes, other: bytes) -> bytes:
    """`raw` with the Received lines and To header of `other` instead of its own, every other byte as
    it was: an mbox "From " line first, then the Received lines (as mail servers add them), the other
    fields, and the To header."""
    fields, rest = _fields(raw)
    envelope = fields[:1] if fields and fields[0].startswith(b"From ") else []
    donor = _fields(other)[0]
    return b"".join(envelope + [f for f in donor if _name(f) == b"received"]
                    + [f for f in fields[len(envelope):] if _name(f) not in ROUTE_HEADERS]
                    + [f for f in donor if _name(f) == b"to"]) + rest


def swapped_routes(messages: list[bytes], y: np.ndarray, seed: int = 0) -> list[bytes]:
    """Every spam with the route of a random ham of `messages`, every ham with that of a random spam."""
    rng = np.random.default_rng(seed)
    spam, ham = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return [with_route_of(m, messages[rng.choice(ham if label == 1 else spam)])
            for m, label in zip(messages, y, strict=True)]


def load(split: str, data_dir) -> tuple[list[bytes], np.ndarray, list[bytes], np.ndarray]:
    """(training messages, labels, tested messages, labels) of one split."""
    if split == "dated":
        _, x_tr, y_tr, x_te, y_te, _ = load_split("spamassassin-dated", data_dir)
        return x_tr, y_tr, x_te, y_te
    raws, y, _, _, _ = load_in_date_order(data_dir)
    half = len(raws) // 2
    return raws[:half], y[:half], raws[half:], y[half:]


def measure(x_tr, y_tr, tests: dict[str, list[bytes]], y_te) -> dict:
    """{filter: {test name: binary_report}}: chainrule's filters (`FILTERS`) trained once on (x_tr, y_tr)
    and scored on each test; each peer of `spam.py` (`PEERS`; skipped where its program is missing)
    trained anew for each test, as its runner takes the test messages with the training ones."""
    rows = {}
    for name, config in FILTERS.items():
        x, _, idf = training_features([("mail", m) for m in x_tr], config)
        bundle = train_filter(x, y_tr, config, seed=0, inputs=("mail",), idf=idf, **filter_options(SETTING)).bundle
        rows[name] = {"spam_cutoff": bundle.spam_cutoff}
        for test, messages in tests.items():
            p, _ = bundle.score([("mail", m) for m in messages])
            rows[name][test] = binary_report(y_te, p, bundle.spam_cutoff)
    for name, run in PEERS.items():
        if name == "chainrule":
            continue
        if name in BINARIES and shutil.which(BINARIES[name]) is None:
            rows[name] = {"skipped": f"{BINARIES[name]} not installed (apt-get install {BINARIES[name]})"}
            continue
        rows[name] = {}
        for test, messages in tests.items():
            with tempfile.TemporaryDirectory() as tmp:
                trained = run("mail", x_tr, y_tr, messages, y_te, Path(tmp))
                rows[name][test] = trained.report(trained.classify())
    return rows


def table(split: str, rows: dict, n_spam: int, n_ham: int) -> str:
    lines = [f"\n{split}: {n_spam} spam, {n_ham} ham tested",
             "| filter | routes | errors | missed spam | blocked ham | accuracy | ROC AUC |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} | | | | | |")
            continue
        for test in ("as is", "swapped"):
            r = row[test]
            (_, fp), (fn, _) = r["confusion_matrix"]
            lines.append(f"| {name} | {test} | {fp + fn} | {fn} | {fp} | {100 * r['accuracy']:.2f}% | "
                         f"{r['roc_auc']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="data directory (default: $CHAINRULE_DATA, then the user cache)")
    parser.add_argument("--out", default=str(HERE / "results" / "spam_routes.json"))
    args = parser.parse_args()
    results = {"machine": machine(), "splits": {}}
    for split in ("dated", "half"):
        x_tr, y_tr, x_te, y_te = load(split, args.data)
        rows = measure(x_tr, y_tr, {"as is": x_te, "swapped": swapped_routes(x_te, y_te)}, y_te)
        n_spam = int(y_te.sum())
        results["splits"][split] = {"train": len(y_tr), "test": len(y_te), "test_spam": n_spam, "results": rows}
        print(table(split, rows, n_spam, len(y_te) - n_spam), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(results, indent=2) + "\n").encode())  # (never half a file)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
