"""The training loop: forward, loss, backward, update — over mini-batches and epochs.

`fit` also does what makes training trustworthy in practice: a validation set and early
stopping, a guard against a loss that turns NaN, a record of how the gradients flow through every
layer, atomic checkpoints after every epoch, and exact resumption from them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from chainrule.errors import TrainingDiverged
from chainrule.files import atomic_write_bytes, atomic_write_npz
from chainrule.layers import ReLU, Sigmoid
from chainrule.network import Sequential


class History:
    """Everything `fit` measured, one entry per epoch.

    `epochs[i]` is a dict with `loss`, `accuracy`, `val_loss`, `val_accuracy` (when there is
    validation data), `lr`, `seconds` and `samples_per_s`. `gradient_flow[i]` maps each layer with
    weights (and each ReLU-family layer) to its gradient-flow statistics for that epoch.
    """

    def __init__(self):
        self.epochs: list[dict] = []
        self.gradient_flow: list[dict[str, dict]] = []
        self.best_epoch: int | None = None
        self.stop_reason = ""

    def __getitem__(self, key: str) -> list:
        return [e.get(key) for e in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("epochs", "gradient_flow", "best_epoch", "stop_reason")}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        h = cls()
        for k, v in d.items():
            setattr(h, k, v)
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

    def gradient_report(self) -> str:
        """Summary of gradient flow over training, with vanishing/exploding gradients flagged.

        Rules of thumb (Karpathy, "A Recipe for Training Neural Networks"): each step should
        change a layer's weights by roughly 1e-3 of their size. Far below 1e-6 the layer has
        stopped learning (vanishing); above 1e-1 steps are wild (exploding). A layer whose gradient
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
                if not (math.isfinite(norm) and math.isfinite(ratio)) or ratio > 1e-1:
                    flags.append("EXPLODING")
                elif ratio < 1e-6 or (biggest > 0 and norm < 1e-3 * biggest):
                    flags.append("VANISHING")
            if "dead_fraction" in s:
                parts.append(f"dead units {100 * s['dead_fraction']:.1f}%")
                if s["dead_fraction"] > 0.5:
                    flags.append("MOSTLY DEAD")
            lines.append(f"  {layer:<14} " + ", ".join(parts) + (f"  <- {', '.join(flags)}" if flags else ""))
        return "\n".join(lines)


class Callback:
    """Hooks into `fit`. Return True from `on_epoch_end` to stop training."""

    def on_epoch_end(self, epoch: int, logs: dict, model: Sequential) -> bool | None:
        return None

    def on_train_end(self, model: Sequential, history: History) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for `patience` epochs.

    Args:
        monitor: a key of the epoch logs, e.g. "val_loss" (lower is better) or "val_accuracy"
            (higher is better; any key containing "accuracy" is maximised).
        patience: epochs without improvement to wait before stopping.
        min_delta: an improvement smaller than this does not count.
        restore_best_weights: at the end of training — whether it stopped early or ran out of
            epochs — put back the weights of the best epoch.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best_weights: bool = True):
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.restore_best_weights = restore_best_weights
        self.sign = -1.0 if "accuracy" in monitor else 1.0  # minimise sign·value
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


def evaluate(model: Sequential, x, y, loss, batch_size: int = 1000) -> dict:
    """Loss (and accuracy, for integer labels) of `model` on `(x, y)`, in evaluation mode."""
    n = x.shape[0]
    total_loss, correct = 0.0, 0
    for i in range(0, n, batch_size):
        out = model.forward(x[i : i + batch_size])
        value, _ = loss(out, y[i : i + batch_size])
        total_loss += value * out.shape[0]
        correct += _correct(out, y[i : i + batch_size], model)
    logs = {"loss": total_loss / max(n, 1)}
    if _is_labels(y):
        logs["accuracy"] = correct / max(n, 1)
    return logs


def _is_labels(y) -> bool:
    return np.issubdtype(np.asarray(y).dtype, np.integer) or np.asarray(y).dtype == bool


def _correct(out: np.ndarray, y, model: Sequential) -> int:
    """How many predictions in a batch of outputs match the labels."""
    if not _is_labels(y):
        return 0
    if out.ndim == 2 and out.shape[1] > 1:
        pred = out.argmax(axis=1)
    else:  # one output: a logit (threshold 0), or a probability after a Sigmoid (threshold 0.5)
        pred = out.reshape(-1) > (0.5 if isinstance(model.layers[-1], Sigmoid) else 0.0)
    return int((pred == np.asarray(y).reshape(-1)).sum())


class _GradientFlow:
    """Per-epoch gradient statistics for every layer with weights and every ReLU-family layer.

    Norms are sampled every `every` batches (copying weights before the step costs memory traffic,
    and a sample is plenty for an average); dead units are counted over every batch.
    """

    def __init__(self, model: Sequential, batches: int):
        self.model = model
        self.every = max(1, batches // 20)
        self.weighted = {f"{i}:{type(l).__name__}": l for i, l in enumerate(model.layers) if "weight" in l.params}
        self.relus = {f"{i}:{type(l).__name__}": l for i, l in enumerate(model.layers) if isinstance(l, ReLU)}
        self.reset()

    def reset(self):
        self.sums = {name: [0.0, 0.0, 0] for name in self.weighted}
        for layer in self.relus.values():
            layer.max_output = None

    def before_step(self, batch: int):
        if batch % self.every:
            return None
        return {name: l.params["weight"].data.copy() for name, l in self.weighted.items()}

    def after_step(self, before):
        if before is None:
            return
        for name, layer in self.weighted.items():
            w = layer.params["weight"]
            grad_norm = float(np.linalg.norm(w.grad))
            w_norm = float(np.linalg.norm(before[name]))
            update = float(np.linalg.norm(w.data - before[name]))
            s = self.sums[name]
            s[0] += grad_norm
            s[1] += update / w_norm if w_norm > 0 else 0.0
            s[2] += 1

    def epoch_stats(self) -> dict[str, dict]:
        stats = {}
        for name, (g, r, k) in self.sums.items():
            stats[name] = {"grad_norm": g / max(k, 1), "update_ratio": r / max(k, 1)}
        for name, layer in self.relus.items():
            if layer.max_output is not None:
                stats[name] = {"dead_fraction": float(np.mean(layer.max_output <= 0))}
        return dict(sorted(stats.items(), key=lambda item: int(item[0].split(":")[0])))


def _split(x, y, validation_split, rng):
    n = x.shape[0]
    n_val = int(round(n * validation_split))
    if not 0 < n_val < n:
        raise ValueError(f"fit: validation_split={validation_split} leaves no training or validation data")
    order = rng.permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]


def fit(
    model: Sequential,
    x,
    y,
    loss,
    optimizer,
    epochs: int = 10,
    batch_size: int = 32,
    validation_split: float = 0.0,
    validation_data=None,
    shuffle: bool = True,
    early_stopping: EarlyStopping | None = None,
    lr_schedule=None,
    callbacks=(),
    augment=None,
    verbose: bool = True,
    seed: int | None = None,
    checkpoint=None,
    resume: bool = False,
) -> History:
    """Train `model` on `(x, y)` by mini-batch gradient descent; returns the `History`.

    Args:
        loss: a loss object, e.g. `CrossEntropy()`.
        optimizer: built on `model.parameters()`, e.g. `Adam(model.parameters(), lr=1e-3)`.
        validation_split: fraction of `(x, y)` held out (at random, by `seed`) for validation.
        validation_data: an explicit `(x_val, y_val)` instead.
        early_stopping: an `EarlyStopping`; by default it watches "val_loss".
        lr_schedule: callable `epoch -> lr`, applied at the start of every epoch.
        callbacks: `Callback` objects.
        augment: callable `(x_batch, rng) -> x_batch` applied to each training batch.
        verbose: show a progress bar and a line per epoch; False is quiet.
        seed: fixes shuffling (and augmentation); defaults to the model's seed.
        checkpoint: a `.npz` path written atomically after every epoch with everything needed to
            continue: weights, optimizer moments, random-generator states, history.
        resume: continue from `checkpoint` if it exists; the result is then identical to an
            uninterrupted run with the same seed.

    Raises:
        TrainingDiverged: the loss turned NaN/inf; the model keeps the last good weights.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit: epochs and batch_size must be positive, got {epochs} and {batch_size}")
    if x.shape[0] != len(y):
        raise ValueError(f"fit: x has {x.shape[0]} examples but y has {len(y)}")
    # min and max propagate NaN and are ±inf if any value is, so checking those two numbers is
    # exact, and unlike np.isfinite(x) it builds no temporary as large as the data set.
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) and x.size and not (
        np.isfinite(x.min()) and np.isfinite(x.max())
    ):
        raise ValueError("fit: the training inputs contain NaN or infinity")
    y = np.asarray(y)
    seed = model.seed if seed is None else seed
    rng = np.random.default_rng(None if seed is None else [seed, 1])
    if validation_data is None and validation_split:
        x, y, x_val, y_val = _split(x, y, validation_split, np.random.default_rng(None if seed is None else [seed, 2]))
    elif validation_data is not None:
        x_val, y_val = validation_data[0], np.asarray(validation_data[1])
    else:
        x_val = y_val = None
    if early_stopping is not None and early_stopping.monitor.startswith("val_") and x_val is None:
        raise ValueError("fit: early stopping on a validation metric needs validation_split or validation_data")
    callbacks = list(callbacks) + ([early_stopping] if early_stopping is not None else [])

    n = x.shape[0]
    batches = math.ceil(n / batch_size)
    history = History()
    flow = _GradientFlow(model, batches)
    last_good = np.empty_like(model.flat_params)
    start_epoch = 0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        start_epoch = _load_checkpoint(checkpoint, model, optimizer, early_stopping, rng, history)
        if history.stop_reason.startswith("early stopping"):
            start_epoch = epochs  # that run had already finished

    try:
        for epoch in range(start_epoch, epochs):
            if lr_schedule is not None:
                optimizer.lr = float(lr_schedule(epoch))
            order = rng.permutation(n) if shuffle else np.arange(n)
            flow.reset()
            seen, total_loss, correct = 0, 0.0, 0
            t0 = time.perf_counter()
            bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="ex", disable=not verbose,
                       leave=False, dynamic_ncols=True)
            for b in range(batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb = augment(xb, rng)
                out = model.forward(xb, training=True)
                value, grad = loss(out, yb)
                if not math.isfinite(value):
                    if b or epoch > start_epoch:
                        model.flat_params[...] = last_good
                    raise TrainingDiverged(
                        f"loss became {value} at epoch {epoch + 1}, batch {b + 1} (lr={optimizer.lr:g}); "
                        "kept the last weights with a finite loss — try a smaller learning rate"
                    )
                np.copyto(last_good, model.flat_params)
                model.backward(grad, input_grad=False)
                before = flow.before_step(b)
                optimizer.step()
                flow.after_step(before)
                seen += len(idx)
                total_loss += value * len(idx)
                correct += _correct(out, yb, model)
                if verbose and (b % 10 == 0 or b == batches - 1):
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    postfix = {"loss": f"{total_loss / seen:.4f}"}
                    if _is_labels(y):
                        postfix["acc"] = f"{correct / seen:.4f}"
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(seen - bar.n)
                    bar.set_description(f"epoch {epoch + 1}/{epochs} {rate:,.0f} ex/s", refresh=False)
            bar.close()
            seconds = time.perf_counter() - t0
            logs = {"epoch": epoch + 1, "loss": total_loss / n}
            if _is_labels(y):
                logs["accuracy"] = correct / n
            if x_val is not None:
                val = evaluate(model, x_val, y_val, loss)
                logs.update({f"val_{k}": v for k, v in val.items()})
            logs.update({"lr": optimizer.lr, "seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 1)})
            history.epochs.append(logs)
            history.gradient_flow.append(flow.epoch_stats())
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(epoch, logs, model)) or stop
            if verbose:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if "loss" in k or "accuracy" in k)
                tqdm.write(f"epoch {epoch + 1}/{epochs}  {shown}  ({seconds:.1f}s, {n / seconds:,.0f} ex/s)")
            if stop:
                history.stop_reason = f"early stopping after epoch {epoch + 1}"
            elif epoch == epochs - 1:
                history.stop_reason = f"reached the epoch limit ({epochs})"
            if checkpoint is not None:
                _save_checkpoint(checkpoint, epoch + 1, model, optimizer, early_stopping, rng, history)
            if stop:
                break
    except KeyboardInterrupt:
        history.stop_reason = "interrupted"
        raise
    for cb in callbacks:
        cb.on_train_end(model, history)
    if verbose:
        tqdm.write(history.gradient_report())
    return history


def _save_checkpoint(path, epochs_done, model, optimizer, early_stopping, rng, history):
    arrays = {f"model.{k}": v for k, v in model.state().items()}
    arrays.update({f"optim.{k}": v for k, v in optimizer.state().items()})
    if early_stopping is not None and early_stopping.best_state is not None:
        arrays.update({f"best.{k}": v for k, v in early_stopping.best_state.items()})
    doc = {
        "epochs_done": epochs_done,
        "history": history.to_dict(),
        "early_stopping": early_stopping.state() if early_stopping is not None else None,
        "shuffle_rng": rng.bit_generator.state,
        "model_rng": model.rng.bit_generator.state,
    }
    arrays["json"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    atomic_write_npz(path, arrays)


def _load_checkpoint(path, model, optimizer, early_stopping, rng, history) -> int:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    doc = json.loads(arrays.pop("json").tobytes())

    def group(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    model.load_state(group("model."))
    optimizer.load_state(group("optim."))
    if early_stopping is not None and doc["early_stopping"] is not None:
        es = doc["early_stopping"]
        early_stopping.best, early_stopping.best_epoch, early_stopping.wait = es["best"], es["best_epoch"], es["wait"]
        best = group("best.")
        early_stopping.best_state = best or None
    rng.bit_generator.state = doc["shuffle_rng"]
    model.rng.bit_generator.state = doc["model_rng"]
    restored = History.from_dict(doc["history"])
    history.__dict__.update(restored.__dict__)
    return int(doc["epochs_done"])


def save_history_csv(history: History, path) -> None:
    atomic_write_bytes(path, history.to_csv().encode())
