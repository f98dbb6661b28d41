"""`chainrule digits train|evaluate|predict|show`: the digit reader on the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chainrule import distributed
from chainrule.apps import digits
from chainrule.cli.options import positive_int
from chainrule.errors import TrainingDiverged, UserError

# An image read from standard input is refused beyond this size before it is decoded (the
# decoder's own pixel limit then guards what a small file can claim).
MAX_STDIN_IMAGE_BYTES = 64 << 20


def _cmd_train(args) -> int:
    # Under mpirun every rank runs this; rank 0 resolves the options (it alone sees its run.json
    # and checkpoint), says what it does, and the others follow it.
    world = distributed.world()
    given = {k: getattr(args, k) for k in digits.RUN_OPTIONS}
    opts = digits.resolve_run_options(given, args.out, args.resume) if world.rank == 0 else None
    opts = world.bcast(opts)
    out = Path(opts["out"])
    checkpoint = out / "checkpoint.npz"
    if world.rank == 0:
        if not args.resume and checkpoint.exists():
            print(f"digits: {out} holds a checkpoint from an earlier run; starting afresh "
                  "(use --resume to continue it)", file=sys.stderr)
            checkpoint.unlink()
        if args.resume and not checkpoint.exists():
            print(f"digits: no checkpoint in {out}; starting a new run", file=sys.stderr)
    try:
        _, metrics = digits.train(opts["model"], out, opts["epochs"], opts["batch_size"], opts["lr"], opts["seed"],
                                  args.data, opts["train_size"], resume=args.resume, verbose=not args.quiet,
                                  world=world)
    except TrainingDiverged as exc:
        raise UserError(f"training diverged: {exc}") from None
    except KeyboardInterrupt:
        where = (f"the last completed epoch is saved in {checkpoint}" if checkpoint.exists()
                 else "no epoch had completed")
        if world.rank == 0:
            print(f"chainrule: interrupted; {where}; continue with: chainrule digits train --out {out} --resume",
                  file=sys.stderr)
        return 130
    if world.rank != 0:
        return 0
    test = metrics["test"]
    print(f"{opts['model']}: {metrics['epochs_run']} epochs (best {metrics['best_epoch']}), "
          f"{metrics['train_seconds_total']:.1f} s training; "
          f"test accuracy {100 * test['accuracy']:.2f}% ({test['n'] - test['errors']}/{test['n']})")
    print(f"wrote {out}/: model.json (and the weights it names) metrics.json history.csv learning_curves.png "
          "confusion_matrix.png gradient_flow.png")
    return 0


def report_text(report: dict) -> str:
    """Accuracy, a per-class table and the confusion matrix as plain text."""
    classes = len(report["confusion_matrix"])
    lines = [f"test accuracy: {100 * report['accuracy']:.2f}% ({report['n'] - report['errors']}/{report['n']})",
             "", "digit  precision  recall     f1  support"]
    for k, s in report["per_class"].items():
        lines.append(f"{k:>5}  {100 * s['precision']:8.2f}%  {100 * s['recall']:5.2f}%  "
                     f"{100 * s['f1']:5.2f}  {s['support']:7d}")
    lines += ["", "confusion matrix (rows: true digit, columns: predicted)",
              "      " + "".join(f"{j:>6}" for j in range(classes))]
    for i, row in enumerate(report["confusion_matrix"]):
        lines.append(f"{i:>6}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)


def _cmd_evaluate(args) -> int:
    report, shown = digits.evaluate_saved(args.model, args.data, args.out, args.top)
    print(report_text(report))
    print(f"\nwrote {Path(args.out or args.model)}/eval_metrics.json, eval_confusion_matrix.png and mistakes.png "
          f"({shown} most confidently wrong)")
    return 0


def _read_stdin_image() -> bytes:
    if sys.stdin is None:
        raise UserError("standard input is closed; give image files or pipe one image in")
    data = sys.stdin.buffer.read(MAX_STDIN_IMAGE_BYTES + 1)
    if len(data) > MAX_STDIN_IMAGE_BYTES:
        raise UserError(f"-: the image on standard input is larger than {MAX_STDIN_IMAGE_BYTES >> 20} MB")
    return data


def _cmd_predict(args) -> int:
    model, metadata = digits.load_digits_model(args.model)
    if args.images.count("-") > 1:
        raise UserError("'-' (standard input) can be given only once")
    sources = [_read_stdin_image() if src == "-" else src for src in args.images]
    results = digits.predict_images(model, metadata, sources)
    failed = 0
    for r in results:
        if "error" in r:
            failed += 1
            print(f"chainrule: error: {r['error']}", file=sys.stderr)
        elif not args.json:
            probs = " ".join(f"{k}:{v:.3f}" for k, v in enumerate(r["probabilities"]))
            print(f"{r['source']}: {r['digit']} ({100 * r['probabilities'][r['digit']]:.1f}%)  [{probs}]")
    if args.json:
        print(json.dumps([r for r in results if "error" not in r], indent=2))
    return 1 if failed else 0


def _cmd_show(args) -> int:
    model, _ = digits.load_digits_model(args.model)
    out = Path(args.out) if args.out else Path(args.model) / "first_layer.png"
    try:
        what = digits.draw_first_layer(model, out, args.units)
    except UserError as exc:
        raise UserError(f"{args.model}: {exc}") from None
    print(f"wrote {out} ({what})")
    return 0


def add_commands(subparsers) -> None:
    """Add `chainrule digits train|evaluate|predict|show`."""
    group = subparsers.add_parser("digits", help="handwritten digit recognition on MNIST",
                                  description="Train, evaluate and use networks that read handwritten digits.")
    sub = group.add_subparsers(dest="digits_command", required=True, metavar="ACTION")

    presets = ", ".join(f"{name} ({p.description})" for name, p in digits.PRESETS.items())
    p = sub.add_parser("train", help="train a model on MNIST and report its test accuracy",
                       description=f"Presets: {presets}. Unset options take the preset's values.")
    p.add_argument("--model", choices=list(digits.PRESETS), default=None, help="preset (default mlp)")
    p.add_argument("--epochs", type=positive_int, help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=positive_int,
                   help="examples per gradient step (under mpirun: in all, shared out among the processes)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="seed for initial weights, validation split, shuffling (default 0)")
    p.add_argument("--train-size", type=positive_int, metavar="N",
                   help="train on only the first N training images (quick experiments)")
    p.add_argument("--data", metavar="DIR", help="folder with the four MNIST files (or its parent)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/digits-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_cmd_train, mpi=True)

    p = sub.add_parser("evaluate", help="test-set accuracy, per-class precision/recall, confusion matrix")
    p.add_argument("model", metavar="MODEL", help="model directory (from digits train)")
    p.add_argument("--data", metavar="DIR", help="folder with the MNIST files (or its parent)")
    p.add_argument("--top", type=positive_int, default=25, metavar="N",
                   help="how many confidently wrong images to draw (default 25)")
    p.add_argument("--out", metavar="DIR", help="where to write figures (default: the model directory)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="read the digit in image files (PNG, JPEG, ...)")
    p.add_argument("model", metavar="MODEL", help="model directory (from digits train)")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files, each showing one digit; '-' reads one image from standard input")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("show", help="draw the first-layer weights: what each hidden unit looks for")
    p.add_argument("model", metavar="MODEL", help="model directory (from digits train)")
    p.add_argument("--units", type=positive_int, default=100, help="how many units to draw (default 100)")
    p.add_argument("--out", metavar="FILE", help="PNG file (default MODEL/first_layer.png)")
    p.set_defaults(func=_cmd_show)
