"""How long one correction takes: `chainrule spam learn MODEL --spam|--ham MESSAGE`, end to end, in-process.

Each call is what a user's correction costs once Python and chainrule are imported: load the model
(and take its lock), read and hash the message, learn it with its replay sample, save the model,
its replay sample and its lessons in one commit. The model is a copy of MODEL (a filter written by
`chainrule spam train`, by default the full one: `chainrule spam train $CHAINRULE_DATA/spamassassin/*`)
in a temporary directory; the messages are the last N of each SpamAssassin tarball, alternating
spam and ham, each learned as what it is, each once. Reported: the median, the fastest and the
slowest call, in seconds, and the same for the model load alone (`load_spam_model`).

The script uses only `chainrule.cli.main` and the corpus reader, so the same command times an
older chainrule too: `PYTHONPATH=/path/to/other/src python bench/spam_learn.py --model M --no-json`.

Run:  flock /tmp/chainrule-cpu.lock python bench/spam_learn.py --model runs/spam [--messages 10]
Writes bench/results/spam_learn.json (or --out FILE; nothing with --no-json).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import chainrule
from chainrule.apps.spam import load_spam_model
from chainrule.cli import main
from chainrule.data.corpora import read_messages

HERE = Path(__file__).resolve().parent


def corrections(data: Path, n: int) -> list:
    """The last `n` messages of each SpamAssassin tarball (`RawMessage`s, labelled), interleaved."""
    per_tarball = [[m for m in read_messages([tarball]) if not m.error][-n:]
                   for tarball in sorted((data / "spamassassin").glob("*.tar*"))]
    return [m for group in zip(*per_tarball, strict=False) for m in group]


def main_() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/spam", help="a model written by `chainrule spam train`")
    ap.add_argument("--data", default=os.environ.get("CHAINRULE_DATA", ""), help="default $CHAINRULE_DATA")
    ap.add_argument("--messages", type=int, default=10, help="messages per tarball (default 10)")
    ap.add_argument("--out", default=str(HERE / "results" / "spam_learn.json"), help="JSON results file")
    ap.add_argument("--no-json", action="store_true", help="print only; do not write the JSON results file")
    args = ap.parse_args()
    msgs = corrections(Path(args.data), args.messages)
    if not msgs:
        sys.exit("bench/spam_learn.py: no spamassassin tarballs found (give --data DIR or set CHAINRULE_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(args.model, model)
        loads, calls = [], []
        for i, m in enumerate(msgs):
            path = Path(tmp) / f"{i:03d}.eml"
            path.write_bytes(m.data)
            t0 = time.perf_counter()
            load_spam_model(model)
            loads.append(time.perf_counter() - t0)
            with contextlib.redirect_stdout(io.StringIO()):
                t0 = time.perf_counter()
                rc = main(["spam", "learn", str(model), "--spam" if m.label == 1 else "--ham", str(path),
                           "--seed", str(i)])
                calls.append(time.perf_counter() - t0)
            if rc != 0:
                sys.exit(f"bench/spam_learn.py: spam learn failed on {m.source} (exit {rc})")
        params = load_spam_model(model).model.num_parameters()
    result = {
        "chainrule": getattr(chainrule, "__file__", ""), "model": str(args.model), "parameters": params,
        "corrections": len(calls),
        "learn_seconds": {"median": statistics.median(calls), "min": min(calls), "max": max(calls)},
        "load_seconds": {"median": statistics.median(loads), "min": min(loads), "max": max(loads)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor()},
    }
    print(f"chainrule from {result['chainrule']}; model {args.model} ({params:,} parameters)")
    print(f"{len(calls)} corrections: `spam learn` median {result['learn_seconds']['median']:.3f} s "
          f"(min {min(calls):.3f}, max {max(calls):.3f}); loading the model alone: median "
          f"{result['load_seconds']['median']:.3f} s")
    if not args.no_json:
        out = Path(args.out)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
