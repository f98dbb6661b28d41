"""The training loop: forward, loss, backward, update — over mini-batches and epochs.

`fit` also does what makes training trustworthy in practice: a validation set and early
stopping, a guard against a loss that turns NaN, a record of how the gradients flow through every
layer, atomic checkpoints after every epoch, and exact resumption from them. What only observes
the loop (gradient statistics, progress, early stopping) is a callback, in `callbacks.py`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from chainrule.callbacks import EarlyStopping, GradientFlow, ProgressLogger
from chainrule.errors import ModelFileError, TrainingDiverged
from chainrule.files import atomic_write_bytes, atomic_write_npz, npz_headers, read_npz
from chainrule.history import History
from chainrule.network import Sequential


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
    return int((model.predicted_classes(out) == np.asarray(y).reshape(-1)).sum())


class _RunningMetrics:
    """Sums over an epoch's batches, for the mean loss and accuracy of the examples seen so far."""

    def __init__(self, model: Sequential, labels: bool):
        self.model, self.labels = model, labels
        self.examples, self.total_loss, self.correct = 0, 0.0, 0

    def add(self, loss: float, out: np.ndarray, y) -> None:
        self.examples += len(y)
        self.total_loss += loss * len(y)
        self.correct += _correct(out, y, self.model)

    def logs(self) -> dict:
        logs = {"loss": self.total_loss / self.examples}
        if self.labels:
            logs["accuracy"] = self.correct / self.examples
        return logs


class _DivergenceGuard:
    """The NaN guard: keeps the weights from before the latest step, so that when the loss turns
    NaN or infinite the model goes back to the last weights whose loss was finite."""

    def __init__(self, model: Sequential):
        self.model = model
        self.last_good = np.empty_like(model.flat_params)
        self.saved = False

    def check(self, loss: float, epoch: int, batch: int, lr: float) -> None:
        if math.isfinite(loss):
            np.copyto(self.last_good, self.model.flat_params)  # these weights gave a finite loss
            self.saved = True
            return
        if self.saved:
            self.model.flat_params[...] = self.last_good
        raise TrainingDiverged(
            f"loss became {loss} at epoch {epoch + 1}, batch {batch + 1} (lr={lr:g}); "
            "kept the last weights with a finite loss — try a smaller learning rate"
        )


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
        callbacks: `Callback` objects (`chainrule.callbacks` lists the hooks and their order).
        augment: callable `(x_batch, rng) -> x_batch` applied to each training batch.
        verbose: report progress on standard error (see `ProgressLogger`): a bar and a line per
            epoch on a terminal, just the lines in a file or log, then the gradient-flow report.
            False is quiet.
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

    n = x.shape[0]
    batches = math.ceil(n / batch_size)
    history = History()
    start_epoch = 0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        start_epoch = _load_checkpoint(checkpoint, model, optimizer, early_stopping, rng, history)
        if history.stop_reason.startswith("early stopping"):
            start_epoch = epochs  # that run had already finished
    # Gradient statistics first, so they are in `history` before the caller's callbacks see the
    # epoch; the progress report last, so that it can print what the others decided.
    callbacks = [GradientFlow(), *callbacks, *([early_stopping] if early_stopping is not None else []),
                 *([ProgressLogger()] if verbose else [])]
    for cb in callbacks:
        cb.on_train_begin(model, history, epochs, batches)
    guard = _DivergenceGuard(model)

    try:
        for epoch in range(start_epoch, epochs):
            if lr_schedule is not None:
                optimizer.lr = float(lr_schedule(epoch))
            order = rng.permutation(n) if shuffle else np.arange(n)
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            running = _RunningMetrics(model, labels=_is_labels(y))
            t0 = time.perf_counter()
            for b in range(batches):
                for cb in callbacks:
                    cb.on_batch_begin(b)
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb = augment(xb, rng)
                out = model.forward(xb, training=True)
                value, grad = loss(out, yb)  # grad = dL/d(out)
                guard.check(value, epoch, b, optimizer.lr)  # raises TrainingDiverged on NaN or inf
                model.backward(grad, input_grad=False)  # fills every parameter's .grad
                optimizer.step()
                running.add(value, out, yb)
                for cb in callbacks:
                    cb.on_batch_end(b, {**running.logs(), "examples": running.examples})
            seconds = time.perf_counter() - t0

            logs = {"epoch": epoch + 1, **running.logs()}
            if x_val is not None:
                val = evaluate(model, x_val, y_val, loss)
                logs.update({f"val_{k}": v for k, v in val.items()})
            logs.update({"lr": optimizer.lr, "seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 1)})
            history.epochs.append(logs)
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(epoch, logs, model)) or stop
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


# The JSON part of a checkpoint (history, early-stopping and random states): kilobytes per epoch.
MAX_CHECKPOINT_JSON = 64 << 20


def _load_checkpoint(path, model, optimizer, early_stopping, rng, history) -> int:
    """Restore what `_save_checkpoint` saved; returns the number of epochs done.

    A damaged checkpoint, or one of another network, raises ModelFileError naming it: its arrays
    are checked against this run's from their headers before they are read, and its JSON before
    anything is restored.
    """
    try:
        return _restore(path, model, optimizer, early_stopping, rng, history)
    except ModelFileError as exc:
        raise ModelFileError(f"{exc}; delete it to start afresh") from None


def _restore(path, model, optimizer, early_stopping, rng, history) -> int:
    shapes = {f"model.{k}": np.shape(v) for k, v in model.state().items()}
    shapes.update({f"best.{k}": np.shape(v) for k, v in model.state().items()})
    shapes.update({f"optim.{k}": np.shape(v) for k, v in optimizer.state().items()})
    headers = npz_headers(path)
    for name, (shape, dtype) in headers.items():
        if name == "json":
            ok = dtype == np.uint8 and len(shape) == 1 and shape[0] <= MAX_CHECKPOINT_JSON
        else:
            ok = shapes.get(name) == shape and dtype.kind in "fiu"
        if not ok:
            raise ModelFileError(f"{path}: not a checkpoint of this network (array {name}: {shape} {dtype})")
    missing = sorted(k for k in shapes if not k.startswith("best.") and k not in headers) + \
        ([] if "json" in headers else ["json"])
    if missing:
        raise ModelFileError(f"{path}: not a checkpoint of this network ({', '.join(missing)} missing)")
    arrays = read_npz(path, headers)
    try:
        doc = json.loads(arrays.pop("json").tobytes())
        epochs_done = doc["epochs_done"]
        if type(epochs_done) is not int or epochs_done < 0:
            raise ValueError(f"epochs_done is {epochs_done!r}")
        restored = History.from_dict(doc["history"])

        def group(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        if early_stopping is not None and doc["early_stopping"] is not None:
            early_stopping.load_state(doc["early_stopping"], group("best."))
        rng.bit_generator.state = doc["shuffle_rng"]
        model.rng.bit_generator.state = doc["model_rng"]
        model.load_state(group("model."))
        optimizer.load_state(group("optim."))
    except (KeyError, TypeError, ValueError, RecursionError) as exc:  # (json's errors are ValueErrors)
        raise ModelFileError(f"{path}: not a usable checkpoint ({str(exc)[:200]})") from None
    history.__dict__.update(restored.__dict__)
    return epochs_done


def save_history_csv(history: History, path) -> None:
    atomic_write_bytes(path, history.to_csv().encode())
