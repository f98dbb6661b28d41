"""Callbacks: observers of `fit`, called at fixed points of the training loop.

For every batch `fit` runs forward, loss, backward and step, and nothing else; what watches the
run (statistics, progress, deciding when to stop) is a callback. The hooks, in the order `fit`
calls them:

    on_train_begin(model, history, epochs, batches)
        on_epoch_begin(epoch)                       for every epoch:
            on_batch_begin(batch)                       for every batch:
            on_batch_end(batch, logs)                       forward, loss, backward, step in between
        on_epoch_end(epoch, logs, model) -> stop?       after validation; True stops training
    on_train_end(model, history)                    also after early stopping, not after an error

`epoch` and `batch` count from 0. A batch's `logs` hold the epoch's running `loss`, `accuracy`
(for class labels) and `examples` (seen so far this epoch); an epoch's logs are the entry
`History.epochs` gets. A callback may add metrics of its own to them, numbers (a NumPy scalar is
kept as the Python number it holds): anything else stops `fit` with a ValueError.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from tqdm import tqdm

from chainrule.checks import flag, number
from chainrule.history import History
from chainrule.layers import ReLU
from chainrule.network import Sequential


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_train_begin(self, model: Sequential, history: History, epochs: int, batches: int) -> None:
        """`history` is the record `fit` fills and returns; `batches` is the number per epoch."""

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_batch_begin(self, batch: int) -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict, model: Sequential) -> bool | None:
        """Return True to stop training after this epoch."""
        return None

    def on_train_end(self, model: Sequential, history: History) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the monitored metric has gone more than `patience` epochs without improving.

    `fit` takes one, as `early_stopping=` or among its `callbacks` (alike: see `fit`).

    Args:
        monitor: a key of the epoch logs, e.g. "val_loss" (lower is better) or "val_accuracy"
            (higher is better), or one a callback of the caller's adds ("val_f1").
        patience: epochs in a row without improvement that are tolerated; the next one without
            improvement stops the run (patience 0 stops at the first). Keras and Lightning stop one
            epoch sooner, at the `patience`-th.
        min_delta: an improvement smaller than this does not count.
        restore_best_weights: at the end of training — whether it stopped early or ran out of
            epochs — put back the weights of the best epoch.
        mode: "min" (lower is better), "max", or "auto": "max" for a monitor whose name holds
            one of `HIGHER_IS_BETTER` (accuracy, F1, ROC AUC, ...), else "min" (a loss, an error).
    """

    HIGHER_IS_BETTER = ("accuracy", "acc", "auc", "f1", "precision", "recall", "mcc")

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best_weights: bool = True, mode: str = "auto"):
        if not isinstance(monitor, str) or not monitor:  # (a list got as far as fit, and failed there)
            raise ValueError(f"EarlyStopping: monitor must be the name of an epoch log, e.g. 'val_loss', got "
                             f"{monitor!r}")
        restore_best_weights = flag("EarlyStopping", "restore_best_weights", restore_best_weights)
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got {patience!r}")
        # (a NaN would count no epoch as better, a negative one every epoch: the last would be "best")
        min_delta = number("EarlyStopping", "min_delta", min_delta, lambda v: 0 <= v < math.inf,
                            "a finite number >= 0")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), min_delta
        self.restore_best_weights = restore_best_weights
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":  # (a word of the name: "val_f1", "val_roc_auc"; not the "acc" of "val_acceptance")
            words = monitor.lower().replace("-", "_").split("_")
            mode = "max" if "accuracy" in monitor or any(w in self.HIGHER_IS_BETTER for w in words) else "min"
        self.mode = mode
        self.sign = -1.0 if mode == "max" else 1.0  # minimise sign·value
        self.reset()

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta}, "
                f"restore_best_weights={self.restore_best_weights}, mode={self.mode!r})")

    def reset(self) -> None:
        """Forget the best epoch so far: `fit` calls this first, so one EarlyStopping can serve
        several trainings (a checkpoint then restores what its own run had seen)."""
        self.best = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, np.ndarray] | None = None
        self.wait = 0

    def on_epoch_end(self, epoch, logs, model):
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping: no {self.monitor!r} in the epoch logs (have {sorted(logs)})")
        value = self.sign * logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_state = model.state()
            return False
        self.wait += 1
        return self.wait > self.patience

    def on_train_end(self, model, history):
        history.best_epoch = self.best_epoch
        if self.restore_best_weights and self.best_state is not None:
            model.load_state(self.best_state)

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state(self, state: dict, best_state: dict[str, np.ndarray] | None = None) -> None:
        """Continue from a `state()` (and the best weights so far, if kept), read from a checkpoint;
        raises ValueError if it is not one."""
        best, best_epoch, wait = state["best"], state["best_epoch"], state["wait"]
        if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best) \
                or not (best_epoch is None or type(best_epoch) is int) or type(wait) is not int or wait < 0:
            raise ValueError(f"EarlyStopping: not a saved state: {str(state)[:80]}")
        self.best, self.best_epoch, self.wait = float(best), best_epoch, wait
        self.best_state = best_state or None


class GradientFlow(Callback):
    """How well the gradient reaches every layer: one entry per epoch in `History.gradient_flow`.

    For each layer with a weight (Linear, Conv2D, BatchNorm's γ), averaged over the epoch:

        grad_norm     ‖dL/dW‖
        update_ratio  ‖ΔW‖ / ‖W‖, how much one optimizer step changes the weights (~1e-3 is typical)

    For each ReLU-family layer, `dead_fraction`: the fraction of its units whose output was ≤ 0
    for every training example of the epoch (read from the layer's `output` after each batch).
    Behind a ReLU such a unit passes no gradient back and has stopped learning; behind a LeakyReLU
    it still passes the small negative-side slope's share (`negative_slope` times the gradient),
    so there "dead" means stuck on the shallow side, learning slowly, not stopped. A unit is alive
    if the sum of its positive outputs over the epoch is above 0: for a batch, a matrix-vector
    product with a vector of ones, which BLAS runs in whichever memory order the output has (a
    per-unit maximum over the batch axis, the obvious way, took ~10x longer: for LeNet-5, 0.7 ms
    of every 10 ms step).

    Norms are sampled on every (batches // `SAMPLES_PER_EPOCH`)-th batch, 20 to 39 of an epoch of
    20 batches or more (copying the weights before a step costs memory traffic, and a sample is
    plenty for an average); dead units are counted over every batch. `fit` always runs one, so
    `History.gradient_report()` has something to report.
    In data-parallel training (`world` of several processes) the gradients are already the
    global batch's, and a unit is dead only if it was for the examples of every process.
    """

    SAMPLES_PER_EPOCH = 20

    def __init__(self, world=None):
        self.world = world

    def on_train_begin(self, model, history, epochs, batches):
        self.history = history
        self.every = max(1, batches // self.SAMPLES_PER_EPOCH)
        self.weighted = {f"{i}:{type(l).__name__}": l for i, l in enumerate(model.layers) if "weight" in l.params}
        self.relus = {f"{i}:{type(l).__name__}": l for i, l in enumerate(model.layers) if isinstance(l, ReLU)}

    def on_epoch_begin(self, epoch):
        self.sums = {name: [0.0, 0.0, 0] for name in self.weighted}  # Σ grad norm, Σ update ratio, samples
        self.positive_sum = {name: None for name in self.relus}  # Σ of each unit's outputs above 0
        self.before = None

    def on_batch_begin(self, batch):
        # the weights before this batch's step (forward and backward leave them as they are)
        self.before = None
        if batch % self.every == 0:
            self.before = {name: l.params["weight"].data.copy() for name, l in self.weighted.items()}

    def on_batch_end(self, batch, logs):
        if self.before is not None:
            for name, layer in self.weighted.items():
                w, before = layer.params["weight"], self.before[name]
                # (a float32 norm past ~1.8e19 is infinite, as it should read, without NumPy's warning:
                # training that far gone is reported by fit's divergence check)
                with np.errstate(over="ignore", invalid="ignore"):
                    w_norm = float(np.linalg.norm(before))
                    s = self.sums[name]
                    s[0] += float(np.linalg.norm(w.grad))
                    s[1] += float(np.linalg.norm(w.data - before)) / w_norm if 0 < w_norm < math.inf else 0.0
                s[2] += 1
        for name, layer in self.relus.items():
            out = layer.output  # ≥ 0 from a ReLU; a LeakyReLU's negative side is left out below
            s = _sum_over_batch(out if type(layer) is ReLU else np.maximum(out, 0))
            total = self.positive_sum[name]
            if total is None or total.shape != s.shape:
                self.positive_sum[name] = s
            else:
                total += s

    def on_epoch_end(self, epoch, logs, model):
        if self.world is not None and self.world.size > 1:
            for name, s in self.positive_sum.items():  # alive anywhere: positive on some process
                if s is not None:
                    self.positive_sum[name] = self.world.allreduce((s > 0).astype(np.float64))
        self.history.gradient_flow.append(self.epoch_stats())

    def epoch_stats(self) -> dict[str, dict]:
        """This epoch's statistics so far, by layer ("<index>:<type>"), input side first."""
        stats = {}
        for name, (g, r, k) in self.sums.items():
            stats[name] = {"grad_norm": g / max(k, 1), "update_ratio": r / max(k, 1)}
        for name, s in self.positive_sum.items():
            if s is not None:
                stats[name] = {"dead_fraction": float(np.mean(s <= 0))}
        return dict(sorted(stats.items(), key=lambda item: int(item[0].split(":")[0])))


def _sum_over_batch(out: np.ndarray) -> np.ndarray:
    """Σ_n out[n, ...] for every unit, flattened: ones · out as (N, units), or out · ones as
    (units, N) when the batch axis is innermost in memory (after a Conv2D), so neither copies."""
    n = out.shape[0]
    ones = np.ones(n, out.dtype)
    if out.ndim > 1 and out.strides[0] == out.itemsize:
        return np.moveaxis(out, 0, -1).reshape(-1, n) @ ones
    return ones @ out.reshape(n, -1)


class _Bar(tqdm):
    """A tqdm bar without tqdm's monitor thread (it only tunes bars that `update` rarely; this one
    is updated every `REFRESH_EVERY` batches): while training runs in the main thread alone, its
    element-wise passes may use every core (see `chainrule.parallel.in_parts`)."""

    monitor_interval = 0


class ProgressLogger(Callback):
    """Training progress on `stream` (standard error by default), as `fit(verbose=True)` shows it.

    On a terminal, a tqdm bar per epoch (examples per second, running loss and accuracy) that
    gives way to one summary line when the epoch ends. Anywhere else (a file, a pipe, a CI log)
    only the summary lines, exactly one per epoch: a bar redrawn with carriage returns would leave
    thousands of frames in a log. At the end of training, `History.gradient_report()`.
    """

    REFRESH_EVERY = 10  # batches between updates of the bar

    def __init__(self, stream=None):
        self.stream = stream

    def on_train_begin(self, model, history, epochs, batches):
        # looked up now, not at import, so that a redirected sys.stderr is the one written to
        self.out = self.stream if self.stream is not None else sys.stderr
        isatty = getattr(self.out, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.epochs, self.batches = epochs, batches
        self.bar = None

    def on_epoch_begin(self, epoch):
        self.epoch, self.start = epoch, time.perf_counter()
        if self.terminal:
            self.bar = _Bar(total=self.batches, desc=self._title(), unit="batch", leave=False, dynamic_ncols=True,
                            file=self.out)

    def on_batch_end(self, batch, logs):
        if self.bar is None or (batch % self.REFRESH_EVERY and batch != self.batches - 1):
            return
        rate = logs["examples"] / max(time.perf_counter() - self.start, 1e-9)
        postfix = {"loss": f"{logs['loss']:.4f}"}
        if "accuracy" in logs:
            postfix["acc"] = f"{logs['accuracy']:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.set_description(f"{self._title()} {rate:,.0f} ex/s", refresh=False)
        self.bar.update(batch + 1 - self.bar.n)

    def on_epoch_end(self, epoch, logs, model):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if "loss" in k or "accuracy" in k)
        self._write(f"{self._title()}  {shown}  ({logs['seconds']:.1f}s, {logs['samples_per_s']:,.0f} ex/s)")

    def on_train_end(self, model, history):
        self._write(history.gradient_report())

    def _title(self) -> str:
        return f"epoch {self.epoch + 1}/{self.epochs}"

    def _write(self, text: str) -> None:
        if self.out is None:  # no standard error (started with it closed, `2>&-`): nowhere to show it,
            return  # and tqdm.write would take None for standard output
        tqdm.write(text, file=self.out)  # above a live bar, if there is one
        self.out.flush()
