"""`chainrule images|digits train|evaluate|predict|show`: image classifiers on the command line.

`chainrule images` works on any 28x28 image set: `--data fashion`, `--data mnist`, or a folder of
IDX files. `chainrule digits` is the same commands with MNIST as the data set unless `--data`
says otherwise, as it has always been.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from chainrule import distributed
from chainrule.apps import images
from chainrule.apps.image_presets import PRESETS
from chainrule.cli.options import (
    MAX_MISTAKES_SHOWN,
    check_standard_input,
    diverged,
    mistakes_shown,
    percent,
    positive_int,
    print_lines,
)
from chainrule.data import idx
from chainrule.data.idx import KNOWN_SETS
from chainrule.errors import TrainingDiverged, UserError, printable
from chainrule.model_file import model_directory, saved_task


def _cmd_train(args) -> int:
    # Under mpirun every rank runs this; rank 0 resolves the options (it alone sees its run.json
    # and checkpoint), says what it does, and the others follow it.
    world = distributed.world()
    given = {k: getattr(args, k) for k in images.RUN_OPTIONS}
    opts = images.resolve_run_options(given, args.out, args.resume, args.default_data) if world.rank == 0 else None
    opts = world.bcast(opts)
    out = Path(opts["out"])
    checkpoint = out / "checkpoint.npz"
    # Nothing to resume is no error, as `make` with nothing to do: a job that always passes
    # --resume (deploy/), run again once its run has ended, succeeds and leaves the folder alone.
    if world.bcast(args.resume and images.finished_run(out, opts["epochs"]) if world.rank == 0 else None):
        if world.rank == 0:
            print(f"{args.group}: the run in {printable(str(out))} is finished: nothing to resume", file=sys.stderr)
        return 0
    if world.rank == 0:
        if args.resume and not checkpoint.exists():
            print(f"{args.group}: no checkpoint in {out}; starting a new run", file=sys.stderr)
    started = time.time()
    try:
        _, metrics = images.train(opts["model"], out, opts["epochs"], opts["batch_size"], opts["lr"], opts["seed"],
                                  data=opts["data"], train_size=opts["train_size"], resume=args.resume,
                                  verbose=not args.quiet, default_data=args.default_data, world=world,
                                  classes=images.DIGITS if args.group == "digits" else None)
    except TrainingDiverged as exc:  # (a new run over an earlier one leaves that one as it was)
        earlier = out if not args.resume and (out / "model.json").exists() else None
        raise UserError(diverged(exc, earlier)) from None
    except KeyboardInterrupt:
        if world.rank != 0:  # (rank 0 writes the checkpoint: it alone can say what is saved)
            raise
        # (a checkpoint older than this run, not resumed, is an earlier run's, finished: --resume would
        # continue that one, not this)
        ours = checkpoint.exists() and (args.resume or checkpoint.stat().st_mtime >= started)
        saved = (out / "metrics.json").exists() and (out / "metrics.json").stat().st_mtime >= started
        if saved:  # (Ctrl-C while its files were put in place: held until they were)
            said = f"interrupted as the run ended; its model and files are saved in {out}"
        elif ours:
            said = (f"interrupted; the last completed epoch is saved in {checkpoint}; continue with: "
                    f"chainrule {args.group} train --out {out} --resume")
        else:
            said = "interrupted before the run's first epoch was saved; nothing to continue: start it again"
        raise KeyboardInterrupt(said) from None  # (`main` says it, and under mpirun ends the job)
    if world.rank != 0:
        return 0
    test = metrics["test"]
    epochs = metrics["epochs_run"]
    print(f"{opts['model']}: {epochs} epoch{'s' * (epochs != 1)} (best {metrics['best_epoch']}), "
          f"{metrics['train_seconds_total']:.1f} s training; "
          f"test accuracy {100 * test['accuracy']:.2f}% ({test['n'] - test['errors']}/{test['n']})")
    print(f"wrote {out}/: model.json (and the weights it names) metrics.json history.csv learning_curves.png "
          "confusion_matrix.png gradient_flow.png")
    return 0


def report_text(report: dict) -> str:
    """Accuracy, a per-class table and the confusion matrix as plain text."""
    classes = report.get("classes") or [str(k) for k in range(len(report["confusion_matrix"]))]
    digits = classes == images.DIGITS
    numbered = classes == [str(k) for k in range(len(classes))]  # (the digits, or a folder's label numbers)
    classes = [printable(name) for name in classes]  # (as the lines they are printed on)
    word = "digit" if digits else "class"
    width = max(5, *(len(c) for c in classes))
    lines = [f"test accuracy: {100 * report['accuracy']:.2f}% ({report['n'] - report['errors']}/{report['n']})",
             "", f"{word:<{width}}  precision   recall       f1  support"]
    # (each column as wide as "100.00%" or its header)
    for name, s in zip(classes, report["per_class"].values(), strict=True):
        lines.append(f"{name:>{width}}  {percent(s['precision']):>9}  {percent(s['recall']):>7}  "
                     f"{percent(s['f1']):>7}  {s['support']:7d}")
    # rows are labelled with the class (and its number, when it has a name); columns with the number
    rows = classes if numbered else [f"{k} {name}" for k, name in enumerate(classes)]
    label = max(6, *(len(r) + 1 for r in rows))
    note = "" if numbered else ", numbered as the rows"
    lines += ["", f"confusion matrix (rows: true {word}, columns: predicted{note})",
              " " * label + "".join(f"{j:>6}" for j in range(len(classes)))]
    align = ">" if numbered else "<"
    for row, counts in zip(rows, report["confusion_matrix"], strict=True):
        lines.append(f"{row:{align}{label}}" + "".join(f"{v:>6}" for v in counts))
    return "\n".join(lines)


def _image_model(args):
    """(model, metadata) of MODEL; under `chainrule digits`, only a model that reads digits."""
    model, metadata = images.load_image_model(args.model)
    if args.group == "digits" and metadata["classes"] != images.DIGITS:
        raise UserError(f"{args.model}: a model of {idx.title(metadata['dataset'])}, not of digits: "
                        "use `chainrule images` for it")
    return model, metadata


def _beside_the_model(args, written: Path) -> contextlib.AbstractContextManager:
    """The model folder's writer lock (`images.writer_lock`), shared, where a command writes its
    files there (`written`, the folder it writes into: without --out, or one that names the model's
    folder), from reading the model on: a train ending meanwhile would leave the evaluation or
    picture of the model it replaced beside its own. Only a folder whose model.json says it holds
    an image model is locked: the lock creates its file, model.lock, and a wrong path (an empty
    folder, another program's files) is left as it was, for the load to refuse."""
    folder = model_directory(args.model)
    # (realpath, as the lock's own key: a loop of symbolic links in --out is for the write to name)
    if os.path.realpath(written) != os.path.realpath(folder) or saved_task(folder) not in images.IMAGE_TASKS:
        return contextlib.nullcontext()
    return images.writer_lock(folder, shared=True)


def _cmd_evaluate(args) -> int:
    where = Path(args.out) if args.out else model_directory(args.model)
    with _beside_the_model(args, where):
        model, metadata = _image_model(args)
        report, shown = images.evaluate_saved(args.model, model, metadata, args.data, args.out, args.top)
    print(report_text(report))
    print(f"\nwrote {where}/eval_metrics.json, eval_confusion_matrix.png and mistakes.png "
          f"({shown} most confidently wrong)")
    return 0


def _stdin():
    if sys.stdin is None:
        raise UserError("standard input is closed; give image files or pipe one image in")
    return sys.stdin.buffer


def _cmd_predict(args) -> int:
    model, metadata = _image_model(args)
    check_standard_input(args.images)
    sources = [_stdin() if src == "-" else src for src in args.images]  # (read when its turn comes)
    results = images.predict_images(model, metadata, sources)
    failed = 0
    for r in results:
        if "error" in r:
            failed += 1
            print(f"chainrule: error: {printable(r['error'])}", file=sys.stderr)
        elif not args.json:
            probs = " ".join(f"{printable(name)}:{p:.3f}"
                             for name, p in zip(metadata["classes"], r["probabilities"], strict=True))
            print(f"{printable(r['source'])}: {printable(r['label'])} ({100 * r['probabilities'][r['index']]:.1f}%)  "
                  f"[{probs}]")
    if args.json:  # one entry per image given, in order: {"source", "error"} for one that could not be read
        print_lines(json.dumps(results, indent=2))
    return 1 if failed else 0


def _cmd_show(args) -> int:
    out = Path(args.out) if args.out else model_directory(args.model) / "first_layer.png"
    with _beside_the_model(args, out.parent):
        model, _ = _image_model(args)
        try:
            what = images.draw_first_layer(model, out, args.units)
        except UserError as exc:
            raise UserError(f"{args.model}: {exc}") from None
        except ValueError as exc:  # (--out with a suffix no figure format has)
            raise UserError(str(exc)) from None
    print(f"wrote {out} ({what})")
    return 0


# The two command groups: one set of commands, two defaults for the data set.
GROUPS = {
    "images": {
        "default_data": None,
        "help": "image classification: Fashion-MNIST, MNIST or any IDX image set",
        "description": "Train, evaluate and use networks that classify 28x28 images: --data fashion "
        "(clothes), --data mnist (digits), or --data DIR (a folder with the four IDX files, and a "
        "classes.txt naming the classes, one per line).",
        "data_help": "the data set: " + ", ".join(KNOWN_SETS) + ", or a folder with the four IDX files",
        "predict_help": "classify image files (PNG, JPEG, ...)",
        "image_help": "image files, each showing one thing to classify",
    },
    "digits": {
        "default_data": "mnist",
        "help": "handwritten digit recognition on MNIST",
        "description": "Train, evaluate and use networks that read handwritten digits "
        "(`chainrule images` with MNIST as the data set).",
        "data_help": "folder with the four MNIST files (or its parent), or a data set name",
        "predict_help": "read the digit in image files (PNG, JPEG, ...)",
        "image_help": "image files, each showing one digit",
    },
}


def _add_group(subparsers, group: str) -> None:
    spec = GROUPS[group]
    parser = subparsers.add_parser(group, help=spec["help"], description=spec["description"])
    sub = parser.add_subparsers(dest=f"{group}_command", required=True, metavar="ACTION")
    defaults = {"group": group, "default_data": spec["default_data"]}
    sets = [spec["default_data"]] if spec["default_data"] else list(PRESETS)
    presets = "; ".join(
        f"{KNOWN_SETS[s].title}: " + ", ".join(f"{name} ({p.description})" for name, p in PRESETS[s].items())
        for s in sets)
    every_preset = list(dict.fromkeys(name for s in PRESETS.values() for name in s))
    default_out = ("runs/digits-<model>" if group == "digits"
                   else "runs/<data set>-<model>, runs/digits-<model> for MNIST")

    p = sub.add_parser("train", help="train a model and report its test accuracy",
                       description=f"Presets: {presets}. A folder that is not a known set gets MNIST's presets. "
                       "Unset options take the preset's values.")
    p.add_argument("--data", metavar="NAME|DIR", help=spec["data_help"])
    p.add_argument("--model", choices=every_preset, default=None, help="preset (default mlp)")
    p.add_argument("--epochs", type=positive_int, help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=positive_int,
                   help="examples per gradient step (under mpirun: in all, shared out among the processes)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int,
                   help="seed for initial weights, validation split, shuffling, dropout and augmentation "
                   "(default 0; bit-identical reruns on a busy machine also need OPENBLAS_NUM_THREADS=1)")
    p.add_argument("--train-size", type=positive_int, metavar="N",
                   help=f"use only the first N training images, more than {images.MIN_TRAIN_SIZE}, a twelfth of "
                   f"them ({images.VALIDATION_IMAGES:,} at most) held out to choose the epoch (quick experiments)")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default {default_out})")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_cmd_train, mpi=True, **defaults)

    p = sub.add_parser("evaluate", help="test-set accuracy, per-class precision/recall, confusion matrix")
    p.add_argument("model", metavar="MODEL", help=f"model directory (from {group} train)")
    p.add_argument("--data", metavar="NAME|DIR",
                   help="the test set's data set or folder (default: the one the model was trained on: the folder "
                   "it was trained from while that holds the set's test files, else the set by name, in "
                   "$CHAINRULE_DATA, the user cache, or downloaded, the test files alone)")
    p.add_argument("--top", type=mistakes_shown, default=25, metavar="N",
                   help=f"how many confidently wrong images to draw (default 25, at most {MAX_MISTAKES_SHOWN})")
    p.add_argument("--out", metavar="DIR", help="where to write eval_metrics.json and the figures (default: the "
                   "model directory)")
    p.set_defaults(func=_cmd_evaluate, **defaults)

    p = sub.add_parser("predict", help=spec["predict_help"])
    p.add_argument("model", metavar="MODEL", help=f"model directory (from {group} train)")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help=f"{spec['image_help']}; '-' reads one image from standard input")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list instead of text, an entry per image (with \"error\" where it failed)")
    p.set_defaults(func=_cmd_predict, **defaults)

    p = sub.add_parser("show", help="draw the first-layer weights: what each hidden unit looks for")
    p.add_argument("model", metavar="MODEL", help=f"model directory (from {group} train)")
    p.add_argument("--units", type=positive_int, default=100, help="how many units to draw (default 100)")
    p.add_argument("--out", metavar="FILE", help="figure file, in the format its suffix names: .png, .svg, .pdf, "
                   "... (default MODEL/first_layer.png)")
    p.set_defaults(func=_cmd_show, **defaults)


def add_commands(subparsers) -> None:
    """Add `chainrule images ...` and `chainrule digits ...`."""
    for group in GROUPS:
        _add_group(subparsers, group)
