"""`History`: everything `fit` measured, epoch by epoch, and the reports made from it.

`fit` returns one; its callbacks fill parts of it (`GradientFlow` the gradient statistics,
`EarlyStopping` the best epoch). It is saved inside checkpoints, as CSV and as plots.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import operator

import numpy as np

from chainrule.files import atomic_write_bytes

# What `fit` puts in every epoch's dict (the val_ ones with validation data, accuracy for labels).
EPOCH_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s")

# Update/weight ratios beyond which `History.gradient_report` flags a layer (see there); the
# gradient-flow figure draws them, so the figure and the report say the same thing.
EXPLODING_RATIO = 1e-1
VANISHING_RATIO = 1e-6


def log_number(value) -> bool | int | float | None:
    """`value` as an epoch's logs keep it: a Python bool, int or float, which the checkpoint's JSON,
    the CSV and the progress line all write; None where it is no real number. A callback's metric
    computed with NumPy is a NumPy scalar (the mean of float32 values is a float32, a count an
    int64), which JSON cannot write: it comes back as the Python number it holds."""
    if isinstance(value, np.ndarray | np.generic) and value.ndim == 0:
        value = value.item()  # (np.bool_ is no `numbers.Integral`: as a Python bool it is)
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


class History:
    """Everything `fit` measured, one entry per epoch.

    `epochs[i]` is a dict with `loss`, `accuracy`, `val_loss`, `val_accuracy` (when there is
    validation data), `lr`, `seconds` and `samples_per_s`, and whatever a callback adds (a
    "val_f1"), every value a Python number (`log_number`: `fit` refuses what is none).
    `gradient_flow[i]` maps each layer with weights (and each ReLU-family layer) to its
    gradient-flow statistics for that epoch.
    `best_epoch` is an index into `epochs` (0-based, as checkpoints store it); files and lines
    meant for people name it as the epoch's own number, `best_epoch + 1`. `stop_reason` says in
    words why the run ended ("" while it goes on); `stopped_early` whether a callback
    (`EarlyStopping`, or one's own) ended it before its epoch limit: resuming it has nothing left
    to train.
    """

    def __init__(self):
        self.epochs: list[dict] = []
        self.gradient_flow: list[dict[str, dict]] = []
        self.best_epoch: int | None = None
        self.stop_reason = ""
        self.stopped_early = False

    def __getitem__(self, key: str | int) -> list | dict:
        """`history["loss"]`: that value of every epoch (None where an epoch has none, e.g.
        `val_loss` without validation data); `history[i]`: epoch i's dict."""
        if not isinstance(key, str):
            return self.epochs[operator.index(key)]
        if key not in EPOCH_KEYS and not any(key in e for e in self.epochs):  # (a misspelling, say)
            raise KeyError(f"{key!r}: no epoch measured it; each has some of {', '.join(EPOCH_KEYS)}")
        return [e.get(key) for e in self.epochs]

    def __iter__(self):
        """The epochs' dicts, first to last."""
        return iter(self.epochs)

    def __contains__(self, key) -> bool:
        """Whether some epoch measured `key` ("val_loss" in history: was there validation data?)."""
        return any(key in e for e in self.epochs)

    def __len__(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("epochs", "gradient_flow", "best_epoch", "stop_reason", "stopped_early")}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        """A History from `to_dict()` (read from a checkpoint); raises ValueError if it is not one."""
        h = cls()
        if not isinstance(d, dict):
            raise ValueError(f"history: expected an object, got {type(d).__name__}")
        epochs, flow = d.get("epochs", []), d.get("gradient_flow", [])
        best, reason = d.get("best_epoch"), d.get("stop_reason", "")
        # (a history saved before there was `stopped_early` says it in its stop reason's words alone)
        early = d.get("stopped_early", isinstance(reason, str) and reason.startswith("early stopping"))
        if not (isinstance(epochs, list) and all(isinstance(e, dict) for e in epochs)
                and isinstance(flow, list) and all(isinstance(f, dict) for f in flow)
                and (best is None or type(best) is int) and isinstance(reason, str) and type(early) is bool):
            raise ValueError("history: not the epochs, gradient flow, best epoch and stop reason of a run")
        h.epochs, h.gradient_flow, h.best_epoch, h.stop_reason, h.stopped_early = epochs, flow, best, reason, early
        return h

    def to_csv(self) -> str:
        """One row per epoch: the metrics, then per-layer gradient statistics."""
        flow_cols = []
        for layer_stats in self.gradient_flow[:1]:
            for layer, stats in layer_stats.items():
                flow_cols += [(layer, k) for k in stats]
        metric_cols = list(dict.fromkeys(k for e in self.epochs for k in e))
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(metric_cols + [f"{layer}/{k}" for layer, k in flow_cols])
        for i, e in enumerate(self.epochs):
            flow = self.gradient_flow[i] if i < len(self.gradient_flow) else {}
            w.writerow([e.get(k, "") for k in metric_cols]
                       + [flow.get(layer, {}).get(k, "") for layer, k in flow_cols])
        return out.getvalue()

    def save_csv(self, path) -> None:
        """Write `to_csv()` to `path` atomically: a reader never sees half a file."""
        atomic_write_bytes(path, self.to_csv().encode())

    def gradient_report(self) -> str:
        """Summary of gradient flow over training, with vanishing/exploding gradients flagged.

        Rules of thumb (Karpathy, "A Recipe for Training Neural Networks"): each step should
        change a layer's weights by roughly 1e-3 of their size. Below 1e-6 the layer has stopped
        learning (vanishing); above 1e-1 steps are wild (exploding). A layer whose gradient
        is 1000× smaller than the network's largest also counts as vanishing.
        """
        if not self.gradient_flow:
            return "no gradient-flow statistics recorded"
        last = self.gradient_flow[-1]
        biggest = max((s.get("grad_norm", 0) for s in last.values()), default=0)
        lines = ["gradient flow (last epoch):"]
        for layer, s in last.items():
            parts, flags = [], []
            if "grad_norm" in s:
                parts.append(f"grad norm {s['grad_norm']:.3g}")
                parts.append(f"update/weight {s['update_ratio']:.2g}")
                ratio, norm = s["update_ratio"], s["grad_norm"]
                if not (math.isfinite(norm) and math.isfinite(ratio)) or ratio > EXPLODING_RATIO:
                    flags.append("EXPLODING")
                elif ratio < VANISHING_RATIO or (biggest > 0 and norm < 1e-3 * biggest):
                    flags.append("VANISHING")
            if "dead_fraction" in s:
                parts.append(f"dead units {100 * s['dead_fraction']:.1f}%")
                if s["dead_fraction"] > 0.5:
                    flags.append("MOSTLY DEAD")
            lines.append(f"  {layer:<14} " + ", ".join(parts) + (f"  <- {', '.join(flags)}" if flags else ""))
        return "\n".join(lines)
