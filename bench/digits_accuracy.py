"""Accuracy benchmark for the digits presets (issue 3): full MNIST, official test set.

    python bench/digits_accuracy.py                    # every preset, as `chainrule digits train` runs it
    python bench/digits_accuracy.py --presets small    # just one; other rows of the JSON are kept

Each preset trains exactly as `chainrule digits train --model NAME` does with its defaults: on the
60,000 training images, of which 5,000 are held out for early stopping (restoring the best
epoch's weights), then the 10,000 test images are classified once. Nothing about the test set
feeds back into training. Prints a table (epochs, wall time, test accuracy, target) and merges
one row per preset into `bench/results/digits_accuracy.json`, so presets added later (the
convolutional ones) append their own rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from chainrule.apps.digits import PRESETS, train
from chainrule.files import atomic_write_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "digits_accuracy.json"

# Published figures the presets are held to (issue 3): the Keras mnist_mlp example (98.40%) and
# Nielsen's network.py (95%). Presets without a target are reported without a verdict.
TARGETS = {"mlp": 0.984, "small": 0.95, "lenet5": 0.99, "cnn": 0.995}  # issue 4: LeNet-5's 0.95% error


def run(name: str, seed: int, data_dir, verbose: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"digits-{name}-") as out:
        t0 = time.perf_counter()
        _, metrics = train(name, out, seed=seed, data_dir=data_dir, verbose=verbose, figures=False)
        wall = time.perf_counter() - t0
    preset = PRESETS[name]
    acc = metrics["test"]["accuracy"]
    target = TARGETS.get(name)
    return {
        "preset": name,
        "description": preset.description,
        "epochs_max": metrics["options"]["epochs"],
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "batch_size": metrics["options"]["batch_size"],
        "lr": metrics["options"]["lr"],
        "seed": seed,
        "train_images": metrics["train_images"],
        "validation_images": metrics["validation_images"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": acc,
        "test_errors": metrics["test"]["errors"],
        "target": target,
        "meets_target": None if target is None else bool(acc >= target),
        "wall_seconds": round(wall, 1),
        "train_seconds": metrics["train_seconds_total"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                   f"NumPy {np.__version__}",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="MNIST folder (default: $CHAINRULE_DATA/mnist or the user cache)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results file (rows are merged per preset)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = p.parse_args(argv)

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.setdefault("benchmark", "digits accuracy: train on the 60,000 MNIST training images, test on the 10,000")
    rows = report.setdefault("presets", {})
    for name in args.presets:
        print(f"== {name}: {PRESETS[name].description}", flush=True)
        rows[name] = run(name, args.seed, args.data, verbose=not args.quiet)
        rows[name]["command"] = f"python bench/digits_accuracy.py --presets {name} --seed {args.seed}"
        atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())
        r = rows[name]
        print(f"== {name}: test accuracy {100 * r['test_accuracy']:.2f}% after {r['epochs_run']} epochs "
              f"(best {r['best_epoch']}), {r['wall_seconds']:.0f} s", flush=True)

    print(f"\n{'preset':<8} {'epochs':>6} {'best':>4} {'wall s':>7} {'test acc':>9} {'target':>7}  verdict")
    for name, r in rows.items():
        target = "" if r["target"] is None else f"{100 * r['target']:.1f}%"
        verdict = "" if r["meets_target"] is None else ("meets" if r["meets_target"] else "BELOW TARGET")
        print(f"{name:<8} {r['epochs_run']:>6} {r['best_epoch'] or '':>4} {r['wall_seconds']:>7.0f} "
              f"{100 * r['test_accuracy']:>8.2f}% {target:>7}  {verdict}")
    print(f"\nwrote {out}")
    return 0 if all(r["meets_target"] is not False for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
