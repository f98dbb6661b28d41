"""`chainrule explain` and `chainrule gradcheck`: the engine's own tools for looking inside."""

from __future__ import annotations

import math

from chainrule.apps.gradcheck import GradcheckResult, gradcheck_models
from chainrule.cli.options import MAX_EXPLAIN_EPOCHS, explain_epochs, nonnegative_int, positive_int
from chainrule.errors import UserError
from chainrule.explain import explain_lines
from chainrule.gradcheck import TOLERANCE

SAMPLES = 30  # entries of each parameter array of a saved model that `gradcheck` checks by default


def _cmd_explain(args) -> int:
    for line in explain_lines(seed=args.seed, epochs=args.epochs):
        print(line, flush=True)  # (the walk-through shows before the training that follows it)
    return 0


def gradcheck_table(result: GradcheckResult) -> str:
    """One check as text: a row per layer with its largest relative error and a verdict."""
    width = max(len(k) for k in result.errors)
    lines = [result.title, f"  {'layer':<{width}}  max relative error  verdict"]
    for name, err in result.errors.items():
        if math.isnan(err):
            lines.append(f"  {name:<{width}}  {'-':>18}  not judged (every entry tried crossed a kink)")
        elif math.isinf(err):
            lines.append(f"  {name:<{width}}  {'-':>18}  FAIL (a gradient is NaN or infinite)")
        else:
            lines.append(f"  {name:<{width}}  {err:18.2e}  {'pass' if err < TOLERANCE else 'FAIL'}")
    lines += [f"  ({note})" for note in result.notes]
    return "\n".join(lines)


def _cmd_gradcheck(args) -> int:
    if args.data is not None and args.model is None:
        raise UserError("--data is for a saved model's real inputs: give the model too (chainrule gradcheck MODEL "
                        "--data DIR)")
    if args.samples is not None and args.model is None:
        raise UserError("--samples is for a saved model (the small networks are checked entry by entry)")
    results = gradcheck_models(args.model, data=args.data, samples=args.samples or SAMPLES)
    for result in results:
        print(gradcheck_table(result))
    verdict = "FAIL" if any(r.failed for r in results) else "PASS" if all(r.passed for r in results) else "NOT JUDGED"
    print(f"gradcheck: {verdict} (tolerance {TOLERANCE:g}, float64 central differences)")
    return 0 if verdict == "PASS" else 1


def add_commands(subparsers) -> None:
    """Add `chainrule explain` and `chainrule gradcheck`."""
    p = subparsers.add_parser("explain", help="walk through one backpropagation step on XOR with real numbers")
    p.add_argument("--seed", type=nonnegative_int, default=1, help="initialisation seed (default 1)")
    p.add_argument("--epochs", type=explain_epochs, default=2000,
                   help=f"epochs for the XOR training demo (default 2000, at most {MAX_EXPLAIN_EPOCHS:,})")
    p.set_defaults(func=_cmd_explain)

    p = subparsers.add_parser("gradcheck", help="check backprop gradients against finite differences")
    p.add_argument("model", nargs="?", help="a saved model directory (default: small networks of every layer type)")
    p.add_argument("--data", help="data directory for the model's real inputs (for an SMS filter, the "
                   "SMSSpamCollection file will do; default for an image model: the folder it was trained from "
                   "while that holds the set's test files, else the set by name, as `images evaluate` finds it)")
    p.add_argument("--samples", type=positive_int,
                   help=f"entries checked per parameter array of a saved model (default {SAMPLES})")
    p.set_defaults(func=_cmd_gradcheck)
