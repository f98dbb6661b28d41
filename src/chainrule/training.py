"""The training loop: forward, loss, backward, update — over mini-batches and epochs.

`fit` also does what makes training trustworthy in practice: a validation set and early
stopping, a guard against a loss that turns NaN, a record of how the gradients flow through every
layer, atomic checkpoints after every epoch, and exact resumption from them. What only observes
the loop (gradient statistics, progress, early stopping) is a callback, in `callbacks.py`; what a
checkpoint holds, and how it is written and read back, is in `checkpoint.py`.

Given a `world` of several processes (`chainrule.distributed`, under mpirun), the same loop is
data-parallel: each process runs forward and backward on its shard of every global batch, the
gradients are summed over the processes while backward runs, and all take the same step.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from chainrule.callbacks import Callback, EarlyStopping, GradientFlow, ProgressLogger
from chainrule.checkpoint import checkpoint_seed, checkpoint_summary, load_checkpoint, save_checkpoint
from chainrule.checks import flag, positive_int
from chainrule.distributed import GradientBuckets, World
from chainrule.errors import TrainingDiverged
from chainrule.files import folder_problem
from chainrule.history import EPOCH_KEYS, History, log_number
from chainrule.layers import Dropout, Sigmoid
from chainrule.losses import BinaryCrossEntropy, CrossEntropy, MeanSquaredError
from chainrule.metrics import has_label_dtype
from chainrule.network import Sequential, checked_inputs, checked_numbers, checked_seed, sliceable
from chainrule.norm import BatchNorm
from chainrule.parallel import BlasThreads
from chainrule.parameter import same_buffer


def evaluate(model: Sequential, x, y, loss, batch_size: int = 1000, world: World | None = None) -> dict:
    """Loss (and accuracy, for class labels: `_reports_accuracy`) of `model` on `(x, y)`, in evaluation mode.

    With a `world` of several processes, each evaluates its shard of `(x, y)` and the sums are
    added up: every process gets the figures of the whole set.
    """
    world = world or World()
    batch_size = positive_int("evaluate", "batch_size", batch_size)
    _check_loss("evaluate", loss)
    x, y = _checked_data("evaluate", x, y, model)
    _check_targets("evaluate", y, model, loss)
    n = x.shape[0]
    lo, hi = world.shard(n)
    labels = _reports_accuracy(y, model, loss)
    totals = np.zeros(3)  # Σ loss·weight, Σ weight (`Loss.weight`: the examples, unless classes weigh), correct
    step = model.examples_per_pass(batch_size)
    for i in range(lo, hi, step):
        j = min(i + step, hi)
        with model.lock:  # (a forward pass at a time: see `Sequential`)
            out = model.forward(x[i:j])
        value, _ = loss(out, y[i:j])
        weight = _weight(loss, y[i:j])
        totals += value * weight if weight else 0.0, weight, _correct(out, y[i:j], model) if labels else 0
    total_loss, weight, correct = world.allreduce(totals)
    logs = {"loss": float(total_loss / weight) if weight else 0.0}  # (0: nothing weighs, as CrossEntropy says)
    if labels:
        logs["accuracy"] = float(correct) / n
    return logs


def _checked_data(where: str, x, y, model: Sequential):
    """(x, y) once checked: as many examples as labels, at least one, every value a finite number
    that the model's dtype holds, x a batch of the model's input shape (named by its own shape,
    not its first batch's). x comes back as an array, or as a CSR/CSC matrix for SciPy sparse
    input (others cannot be sliced by row)."""
    x, y = sliceable(x), np.asanyarray(y)  # (a masked y stays one, for `_checked_targets` to refuse)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != len(y):
        raise ValueError(f"{where}: x has {x.shape[0] if x.ndim else 0} examples but y has {len(y) if y.ndim else 0}")
    if not len(y):
        raise ValueError(f"{where}: no examples")
    x = model.checked_shape(checked_inputs(where, x, model.dtype), f"{where}: x")
    return x, _checked_targets(where, y, model.dtype)


def _checked_targets(where: str, y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`y` as a plain array, once checked as the inputs are (`checked_numbers`: real numbers, finite,
    that the model's `dtype` holds, no None), and not text: label names are not numbers, and digits
    read as numbers would be floats, not the integers CrossEntropy takes. (NumPy's errors came out
    of the label checks, "ufunc 'minimum' did not contain a loop", complex targets lost their
    imaginary parts, and targets beyond the dtype made the loss infinite, blamed on the learning rate.)"""
    if y.dtype.kind in "US":
        raise ValueError(f"{where}: the targets must be numbers, got text ({y.dtype}): class labels are numbers "
                         f"0, 1, ...")
    return np.asarray(checked_numbers(where, "targets", y, dtype))


def _check_loss(where: str, loss) -> None:
    """A loss object, or a function of one's own: a loss class, None or a loss's name failed
    inside the loop, "'NoneType' object is not callable"."""
    if isinstance(loss, type) or not callable(loss):
        raise ValueError(f"{where}: loss must be a loss object, e.g. CrossEntropy(), or a function "
                         f"(output, target) -> (value, grad), got {loss!r}")


def _check_targets(where: str, y: np.ndarray, model: Sequential, loss) -> None:
    """Targets the loss can score, checked for the whole set before training, not batch by batch
    in the loss (with several processes, one process's error would leave the others waiting for
    it for ever): CrossEntropy's labels in range, and MeanSquaredError's where it one-hot encodes
    them, BinaryCrossEntropy's targets from 0 to 1, and the shape each loss takes (a validation
    set's was found after the first epoch's training)."""
    classes = model.output_shape[-1]
    if isinstance(loss, CrossEntropy) and not np.issubdtype(y.dtype, np.integer):  # (as the loss has them)
        raise ValueError(f"{where}: CrossEntropy's targets are integer class labels, got {y.dtype} values")
    if isinstance(loss, CrossEntropy) and y.ndim != 1:
        raise ValueError(f"{where}: CrossEntropy's targets are one class label per example, shape (N,), "
                         f"got shape {y.shape}")
    one_hot = (isinstance(loss, MeanSquaredError) and has_label_dtype(y) and y.ndim == 1  # (MSE's labels)
               and classes > 1)
    if isinstance(loss, MeanSquaredError | BinaryCrossEntropy) and not one_hot and \
            y.size != len(y) * math.prod(model.output_shape):  # (element for element, as the losses compare them)
        labels = " (or be integer class labels, shape (N,))" if isinstance(loss, MeanSquaredError) else ""
        raise ValueError(f"{where}: {type(loss).__name__}'s targets must have the network's output shape "
                         f"(N, {', '.join(map(str, model.output_shape))}){labels}, got shape {y.shape}")
    if (isinstance(loss, CrossEntropy) or one_hot) and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"{where}: labels must be in [0, {classes}) for the network's {classes} outputs, "
                         f"got {y.min()}..{y.max()}")
    if isinstance(loss, BinaryCrossEntropy) and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"{where}: BinaryCrossEntropy's targets are from 0 to 1 (the probability of class 1), "
                         f"got {y.min()}..{y.max()}")


def _check_checkpoint(checkpoint, world: World) -> None:
    """Refuse, before the first step, a `checkpoint` that could never be written: a folder (".",
    say) raised IsADirectoryError, or "Device or resource busy", and a file where its folder
    should be NotADirectoryError, only when the first epoch's checkpoint was put in its place,
    that epoch's training lost. (Rank 0 writes it: it looks, and tells the others.)"""
    if checkpoint is None:
        return
    if not isinstance(checkpoint, str | os.PathLike):
        raise ValueError(f"fit: checkpoint must be the path of a file (run.npz, say), got {checkpoint!r}")
    problem = world.bcast(_checkpoint_problem(os.fspath(checkpoint)) if world.rank == 0 else None)
    if problem is not None:
        raise ValueError(f"fit: checkpoint {problem}")


def _checkpoint_problem(path: str) -> str | None:
    """Why a checkpoint could never be written at `path`, or None."""
    if os.path.isdir(path):
        return f"must be the path of a file (run.npz, say), got the folder {path!r}"
    folder = folder_problem(os.path.dirname(os.path.abspath(path)))
    return None if folder is None else f"{path}: its folder {folder}"


def _check_epochs_left(checkpoint, epochs: int, world: World) -> None:
    """Refuse to resume a checkpoint of more epochs than `epochs`, before anything is restored: fit
    trained nothing and returned them all, more than asked, with the stop reason of a run that goes
    on (""). As many is a finished run; fewer, one to go on with. (Rank 0 reads it, and tells the
    others; a checkpoint it cannot read is `load_checkpoint`'s to refuse.)"""
    summary = checkpoint_summary(checkpoint) if world.rank == 0 else None
    done = world.bcast(summary["epochs_done"] if summary is not None else None)
    if done is not None and done > epochs:
        raise ValueError(f"fit: the checkpoint {os.fspath(checkpoint)} holds {done} epochs, more than epochs={epochs}: "
                         f"resume it with epochs >= {done}, or delete it to start afresh")


def _check_monitor(monitor: str, keys: list[str], callbacks: bool) -> None:
    """Refuse an EarlyStopping `monitor` that none of the `keys` every epoch will report is,
    before the first step: a misspelt key would otherwise stop the run at the end of its first
    epoch. With `callbacks` of the caller's, which may add keys of their own (a val_f1, say), only
    a validation metric without validation data is refused."""
    if monitor.startswith("val_") and "val_loss" not in keys:
        raise ValueError("fit: early stopping on a validation metric needs validation_split or validation_data")
    if monitor not in keys and not callbacks:
        raise ValueError(f"fit: EarlyStopping monitors {monitor!r}, which no epoch will report; they report "
                         f"{', '.join(keys)}")


def _batch_edges(n: int, batch_size: int, processes: int) -> list[int]:
    """Where each batch of n examples starts, and the last one ends. A remainder smaller than
    batch_size is a last, smaller batch, except that one too small to be a batch joins the batch
    before it: a single example (batch norm cannot normalise a batch of one), or fewer than the
    processes sharing it (each needs a row). So 1 and 2 processes take the same steps; more may
    merge more. (n >= processes.)"""
    full, rest = divmod(n, batch_size)
    edges = [b * batch_size for b in range(full + 1)]
    if rest and full and rest < max(processes, 2):
        edges[-1] = n
    elif rest:
        edges.append(n)
    return edges


def _kind_of(value) -> str:
    """What `value` is, in a few words, for an error message ("a tuple of 1", "an array of shape (5, 3)")."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _reports_accuracy(y: np.ndarray, model: Sequential, loss) -> bool:
    """Whether `y` holds class labels, so that accuracy means something. One target per example
    (several 0/1 targets each are a multi-label target), and: for several outputs, integers or
    booleans (CrossEntropy's labels, or MSE's, which it one-hot encodes); for one output, 0s and 1s
    of any dtype where the output is read as a probability (PyTorch's convention for BCE: a
    `BinaryCrossEntropy` loss, or a last `Sigmoid`). MSE on one linear output is a regression, onto
    counts or onto 0 and 1 alike: the class cut-off would be meaningless there."""
    if y.size != len(y):
        return False
    if model.output_shape != (1,):
        return has_label_dtype(y)
    probability = isinstance(loss, BinaryCrossEntropy) or isinstance(model.layers[-1], Sigmoid)
    return probability and bool(np.isin(y, (0, 1)).all())


def _correct(out: np.ndarray, y, model: Sequential) -> int:
    """How many predictions in a batch of outputs match the labels."""
    return int((model.predicted_classes(out) == np.asarray(y).reshape(-1)).sum())


class _RunningMetrics:
    """Sums over an epoch's batches, for the mean loss and accuracy of the examples seen so far."""

    def __init__(self, labels: bool):
        self.labels = labels
        self.examples, self.total_loss, self.weight, self.correct = 0, 0.0, 0.0, 0

    def add(self, loss_sum: float, weight: float, examples: int, correct: int) -> None:
        """One batch: its loss times its weight (`Loss.weight`: its number of examples, unless
        classes weigh), that weight, its number of examples, its correct predictions."""
        self.total_loss += float(loss_sum)
        self.weight += float(weight)
        self.examples += int(examples)
        self.correct += int(correct)

    def logs(self) -> dict:
        logs = {"loss": self.total_loss / self.weight if self.weight else 0.0}
        if self.labels:
            logs["accuracy"] = self.correct / self.examples
        return logs


class _DivergenceGuard:
    """The NaN guard: keeps the weights from before the latest step, and the layers' buffers
    (BatchNorm's running statistics) from its forward pass, so that when the loss turns NaN or
    infinite the model goes back to the last ones whose loss was finite. (The forward pass that
    gave the NaN has already folded it into the running statistics.)"""

    def __init__(self, model: Sequential):
        self.model = model
        self.last_good = [np.empty_like(a) for a in self._arrays()]
        self.saved = False

    def _arrays(self) -> list[np.ndarray]:
        return [self.model.flat_params, *(buf for layer in self.model.layers for buf in layer.buffers.values())]

    def check(self, loss: float, epoch: int, batch: int, lr: float) -> None:
        """Before a batch's step: keep the weights if their `loss` is finite, else restore and raise."""
        if math.isfinite(loss):
            for kept, now in zip(self.last_good, self._arrays(), strict=True):
                np.copyto(kept, now)  # these weights gave a finite loss
            self.saved = True
            return
        self._restore()
        raise TrainingDiverged(loss, epoch + 1, batch + 1, lr)

    def check_epoch(self, val_loss: float | None, epoch: int, lr: float) -> None:
        """At the end of an epoch, the weights its last step left, which no batch's loss has judged
        (the next epoch's first batch would; after the run's last step nothing would): they must be
        finite, and so must their validation loss where there is one (weights that are finite but
        huge overflow the outputs). Else back to the weights before that step, as `check` does.
        Once an epoch: min and max are NaN or ±inf if any weight is, two reductions and no
        temporary array. (With several processes, the weights and the validation loss are the
        same on all of them, and so is the decision.)"""
        params = self.model.flat_params
        for what, value in (("the weights", params.min()), ("the weights", params.max()),
                            ("the validation loss", 0.0 if val_loss is None else val_loss)):
            if not math.isfinite(value):
                self._restore()
                raise TrainingDiverged(float(value), epoch + 1, None, lr, what=what)

    def check_moments(self, optimizer, epoch: int) -> None:
        """At the end of an epoch, the optimizer's moments must be finite: a gradient whose square
        overflowed makes Adam's v infinite for good, and the weights it divides stop moving, while
        the loss stays finite (`check` never sees it). Where they are not, back to the weights
        before the epoch's last step, as `check_epoch` does: those the last finite loss judged.
        Once an epoch; min and max propagate NaN and are ±inf if any value is, so two reductions
        tell, with no temporary array."""
        moments = getattr(optimizer, "moments", ())
        arrays = ({name: getattr(optimizer, name) for name in moments} if moments else  # (else an optimizer of
                  {name: a for name, a in optimizer.state().items() if np.ndim(a)})   # one's own, by its state)
        for name, values in arrays.items():
            for bad in (values.min(), values.max()):
                if not np.isfinite(bad):
                    self._restore()
                    raise TrainingDiverged(float(bad), epoch + 1, None, optimizer.lr,
                                           what=f"the gradients (the optimizer's {name})")

    def _restore(self) -> None:
        if self.saved:
            for kept, now in zip(self.last_good, self._arrays(), strict=True):
                now[...] = kept


def _numbers_only(logs: dict, callback: Callback) -> None:
    """The epoch's `logs` (`History.epochs`' entry) once `callback` has seen them, each value the
    Python number `history.log_number` makes of it, as the next callbacks, the checkpoint's JSON and
    the CSV take them; anything else is refused in a line that names it and the callback, before
    the checkpoint (a NumPy float32 there raised "Object of type float32 is not JSON serializable")."""
    for key, value in logs.items():
        number = log_number(value)
        if number is None:
            raise ValueError(f"fit: {type(callback).__name__} put {key!r} in the epoch logs as {_kind_of(value)}; "
                             "epoch logs are numbers (int, float or bool), kept in the History and its checkpoints")
        logs[key] = number


def _weight(loss, target) -> float:
    """How much a batch counts in a mean over batches (`Loss.weight`); a loss that is a plain
    function, `loss(output, target) -> (value, grad)`, averages over its examples."""
    return loss.weight(target) if hasattr(loss, "weight") else float(len(target))


def _callback_list(callbacks) -> list[Callback]:
    """`fit`'s callbacks as a list (a generator of them is read once), checked."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable | None):
        raise ValueError(f"fit: callbacks must be a list of Callback objects, got {_kind_of(callbacks)}")
    callbacks = list(callbacks or ())
    if not all(isinstance(cb, Callback) for cb in callbacks):
        raise ValueError(f"fit: callbacks must be a list of Callback objects, got {_kind_of(callbacks)}")
    return callbacks


def _the_early_stopping(early_stopping: EarlyStopping | None,
                        callbacks: list[Callback]) -> tuple[EarlyStopping | None, list[Callback]]:
    """`fit`'s early stopping and its other callbacks: an EarlyStopping in `callbacks` (Keras passes
    it there) is taken out and becomes `early_stopping`. Left among the observers, it was never
    reset (a second `fit` with the same list stopped at once and restored the first model's
    weights into the second), nor kept in the checkpoint. One only: two would each stop the run,
    restore weights and claim the checkpoint's one place for them."""
    found = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    if found and early_stopping is not None:
        raise ValueError("fit: an EarlyStopping in callbacks and another as early_stopping: give one")
    if len(found) > 1:
        raise ValueError(f"fit: callbacks hold {len(found)} EarlyStopping: give one")
    if not found:
        return early_stopping, callbacks
    return found[0], [cb for cb in callbacks if cb is not found[0]]


def _check_arguments(model: Sequential, loss, optimizer, early_stopping, lr_schedule, augment, world: World) -> None:
    """Refuse what `fit` is given in place of a loss, an optimizer, a schedule or an augmenter
    before anything runs: each would otherwise fail deep inside the loop, or not at all."""
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise ValueError(f"fit: early_stopping must be an EarlyStopping, got {_kind_of(early_stopping)}")
    _check_loss("fit", loss)
    if isinstance(optimizer, type) or not callable(getattr(optimizer, "step", None)):  # (the class Adam, say)
        raise ValueError(f"fit: optimizer must be an optimizer built on the model's parameters, e.g. "
                         f"Adam(model.parameters()), got {optimizer!r}")
    if lr_schedule is not None and not callable(lr_schedule):
        raise ValueError(f"fit: lr_schedule must be a function epoch -> lr, e.g. step_decay(0.1, 10), got "
                         f"{lr_schedule!r}")
    if not isinstance(getattr(optimizer, "params", None), np.ndarray) or not same_buffer(optimizer.params,
                                                                                         model.flat_params):
        raise ValueError("fit: the optimizer was not built on this model's parameters (build it with "
                         "model.parameters(), after any model.to(dtype))")
    if world.size > 1 and augment is not None and "batch_rows" not in inspect.signature(augment).parameters:
        raise ValueError("fit: with several processes, augment must take batch_rows=(first, total) "
                         "(see digit_augmenter)")


@dataclass
class _Data:
    """`fit`'s data once checked: the training and validation sets, whether accuracy is reported
    (`_reports_accuracy`), the keys of `EPOCH_KEYS` every epoch will report, the run's seed (kept in
    the checkpoint) and the generator drawn from it for shuffling and augmentation."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    reports_accuracy: bool
    epoch_keys: list[str]
    seed: int
    rng: np.random.Generator


def _prepared_data(model: Sequential, x, y, loss, validation_split, validation_data, seed, resume_from,
                   world: World) -> _Data:
    """Check `fit`'s data and seed, and make from them the validation set and the generators.

    The seed is the caller's, else the model's, else the one that the run being resumed (from the
    checkpoint `resume_from`, or None) drew and kept, else drawn now: a resumed run must hold out
    the data the first one did. With several processes, rank 0's seed and initial weights become
    everyone's.
    """
    if validation_split and not (isinstance(validation_split, (int, float, np.floating)) and 0 < validation_split < 1):
        raise ValueError(f"fit: validation_split must be a fraction between 0 and 1, got {validation_split!r}")
    if validation_data is not None and (not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2):
        raise ValueError(f"fit: validation_data must be a pair (x_val, y_val), got {_kind_of(validation_data)}")
    if validation_split and validation_data is not None:  # (the split was dropped without a word)
        raise ValueError("fit: validation_split and validation_data both given: hold out a fraction of the training "
                         "data with validation_split, or pass validation_data, not both")
    x, y = _checked_data("fit", x, y, model)
    labels = _reports_accuracy(y, model, loss)
    _check_targets("fit", y, model, loss)
    seed = model.seed if seed is None else checked_seed("fit", seed)
    if seed is None and resume_from is not None:  # the seed an unseeded run drew, if one left it
        seed = checkpoint_seed(resume_from, world)
    if seed is None:  # drawn, so that a checkpoint can keep it: a resumed run holds out what the first did
        seed = np.random.SeedSequence().entropy
    if world.size > 1:
        # one seed and one set of initial weights for all: rank 0's
        seed = world.bcast(seed)
        world.broadcast_model(model)
    if model.seed is None:  # (a loaded model's generator is unseeded: its dropout masks too)
        model.rng.bit_generator.state = np.random.default_rng([seed, 3]).bit_generator.state
    rng = np.random.default_rng([seed, 1])
    if validation_split:
        x, y, x_val, y_val = _split(x, y, validation_split, np.random.default_rng([seed, 2]))
    elif validation_data is not None:
        x_val, y_val = _checked_data("fit: validation_data", *validation_data, model)
        _check_targets("fit: validation_data", y_val, model, loss)
    else:
        x_val = y_val = None
    reported = {"accuracy": labels, "val_loss": x_val is not None,
                "val_accuracy": x_val is not None and _reports_accuracy(y_val, model, loss)}
    if x.shape[0] < world.size:
        raise ValueError(f"fit: {x.shape[0]} training examples for {world.size} processes: each needs one")
    return _Data(x, y, x_val, y_val, labels, [k for k in EPOCH_KEYS if reported.get(k, True)], seed, rng)


def _split(x, y, validation_split, rng):
    n = x.shape[0]
    n_val = int(round(n * validation_split))
    if not 0 < n_val < n:
        raise ValueError(f"fit: validation_split={validation_split} leaves no training or validation data")
    order = rng.permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]


def _observers(callbacks: list[Callback], early_stopping: EarlyStopping | None, verbose: bool,
               world: World) -> list[Callback]:
    """All that observes `fit`, in the order each hook calls them: the gradient statistics first
    (`fit`'s GradientFlow, unless the caller gave one: one only), so they are in the history
    before the caller's `callbacks` see the epoch; then those, the early stopping, and the
    progress report last, so that it can print what the others decided."""
    gradient_flow = [] if any(isinstance(cb, GradientFlow) for cb in callbacks) else [GradientFlow(world)]
    return [*gradient_flow, *callbacks, *([early_stopping] if early_stopping is not None else []),
            *([ProgressLogger()] if verbose and world.rank == 0 else [])]


def _scheduled_lr(lr_schedule, epoch: int, world: World) -> float:
    """The learning rate `lr_schedule` gives `epoch` (rank 0's, for all), checked."""
    lr = world.bcast(float(lr_schedule(epoch)))
    if not 0 <= lr < math.inf:
        raise ValueError(f"fit: lr_schedule gave lr={lr} for epoch {epoch + 1}, expected a finite lr >= 0")
    return lr


@dataclass
class _Run:
    """What one `fit`'s steps and epochs share once its arguments are checked, so that `fit` reads
    as the loop: `epoch_steps` (`shard` and `step` for each mini-batch), `end_epoch` after each
    epoch. It holds the NaN guard and, with several processes, the gradient buckets; `release`
    gives the model back."""

    model: Sequential
    loss: object
    optimizer: object
    world: World
    data: _Data
    augment: object
    history: History
    callbacks: list[Callback]
    early_stopping: EarlyStopping | None
    checkpoint: object
    epochs: int

    def __post_init__(self):
        self.parallel = self.world.size > 1
        self.guard = _DivergenceGuard(self.model)
        self.dropouts = [layer for layer in self.model.layers if isinstance(layer, Dropout)]
        if self.parallel:
            self.buckets = GradientBuckets(self.model, self.world)
            for layer in self.model.layers:
                if isinstance(layer, BatchNorm):
                    layer.world = self.world

    def epoch_steps(self, epoch: int, order: np.ndarray, edges: list[int], blas: BlasThreads) -> _RunningMetrics:
        """Every step of `epoch`, batch b being the examples `order[edges[b] : edges[b + 1]]`, with
        the callbacks' batch hooks and BLAS's threads adapted before each; returns the epoch's sums."""
        running = _RunningMetrics(labels=self.data.reports_accuracy)
        for b in range(len(edges) - 1):
            blas.adapt()
            for cb in self.callbacks:
                cb.on_batch_begin(b)
            idx = order[edges[b] : edges[b + 1]]
            xb, yb = self.shard(idx)
            # The lock keeps a prediction of another thread from replacing what backward reads
            # between the two passes, or what GradientFlow reads after them.
            with self.model.lock:
                running.add(*self.step(xb, yb, idx, epoch, b))
                for cb in self.callbacks:
                    cb.on_batch_end(b, {**running.logs(), "examples": running.examples})
        return running

    def shard(self, idx: np.ndarray) -> tuple:
        """(x, y) of this process's rows of the batch of examples `idx` (alone: all of them),
        augmented; with several processes, the dropout layers learn which rows these are."""
        first, last = self.world.shard(len(idx))
        xb, yb = self.data.x[idx[first:last]], self.data.y[idx[first:last]]
        if self.parallel:
            for layer in self.dropouts:
                layer.batch_rows = (first, len(idx))
        if self.augment is not None:
            rng = self.data.rng
            xb = self.augment(xb, rng, batch_rows=(first, len(idx))) if self.parallel else self.augment(xb, rng)
        return xb, yb

    def step(self, xb, yb, idx: np.ndarray, epoch: int, batch: int) -> np.ndarray:
        """One step of gradient descent on the shard (xb, yb) of the batch `idx`: forward, loss,
        backward, update. Returns the batch's [loss·weight, weight, examples, correct] for
        `_RunningMetrics`, summed over the processes. Raises TrainingDiverged (the weights from
        before it back in place) where the loss turned NaN or infinite."""
        with np.errstate(over="ignore", invalid="ignore"):  # (the guard reports where it led)
            out = self.model.forward(xb, training=True)
            value, grad = self.loss(out, yb)  # grad = dL/d(out)
            correct = _correct(out, yb, self.model) if self.data.reports_accuracy else 0
            weight = _weight(self.loss, yb)
            stats = np.array([value * weight if weight else 0.0, weight, len(yb), correct])
            if self.parallel:
                self._backward_summed(grad, weight, idx, stats)
            else:
                self.model.backward(grad, input_grad=False)  # fills every parameter's .grad
            # raises TrainingDiverged on NaN or inf (everywhere at once: the loss is the sum's)
            self.guard.check(stats[0] / stats[1] if stats[1] else 0.0, epoch, batch, self.optimizer.lr)
            self.optimizer.step()
        return stats

    def _backward_summed(self, grad: np.ndarray, weight: float, idx: np.ndarray, stats: np.ndarray) -> None:
        """Backward on this process's shard, its gradients and `stats` summed over the processes in
        place. Equivalent to backward on the shard's share of the batch's mean loss, then an
        allreduce of every gradient and of `stats`; but each bucket's sum starts as soon as backward
        has filled it, and runs while backward goes on through the layers below."""
        whole = _weight(self.loss, self.data.y[idx])  # (every process has all of y)
        grad = grad * (weight / whole if whole else 0.0)  # the shard's share of the global batch's mean
        summing = self.world.iallreduce(stats)
        self.model.backward(grad, input_grad=False, after_layer=self.buckets.layer_done)
        self.buckets.wait()  # every process now holds Σ over the processes of their gradients
        self.world.wait([summing])

    def end_epoch(self, epoch: int, running: _RunningMetrics, started: float) -> bool:
        """After the epoch's last step, which began at `started` (perf_counter): the checks no
        batch's loss made (the optimizer's moments, the last step's weights, the validation loss),
        the epoch's logs in the history, the callbacks, the stop reason and the checkpoint. Returns
        whether the run stops here (early stopping); raises TrainingDiverged."""
        model, optimizer, world = self.model, self.optimizer, self.world
        self.guard.check_moments(optimizer, epoch)  # raises TrainingDiverged
        seconds = time.perf_counter() - started
        logs = {"epoch": epoch + 1, **running.logs()}
        if self.data.x_val is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # (the guard reports where it led)
                val = evaluate(model, self.data.x_val, self.data.y_val, self.loss, world=world)
            logs.update({f"val_{k}": v for k, v in val.items()})
        self.guard.check_epoch(logs.get("val_loss"), epoch, optimizer.lr)  # raises TrainingDiverged
        n = self.data.x.shape[0]
        logs.update({"lr": optimizer.lr, "seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 1)})
        self.history.epochs.append(logs)
        stop = False
        for cb in self.callbacks:
            stop = bool(cb.on_epoch_end(epoch, logs, model)) or stop
            _numbers_only(logs, cb)
        stop = world.bcast(stop)
        if stop:
            self.history.stopped_early = True
            self.history.stop_reason = f"early stopping after epoch {epoch + 1}"
        elif epoch == self.epochs - 1:
            self.history.stop_reason = f"reached the epoch limit ({self.epochs})"
        if self.checkpoint is not None and world.rank == 0:
            save_checkpoint(self.checkpoint, epoch + 1, model, optimizer, self.early_stopping, self.data.rng,
                            self.history, self.data.seed)
        return stop

    def release(self) -> None:
        """The model is this process's own again: no world for batch norm, no shard rows for dropout."""
        for layer in self.model.layers:
            if isinstance(layer, BatchNorm):
                layer.world = None
            if isinstance(layer, Dropout):
                layer.batch_rows = None


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
    world: World | None = None,
) -> History:
    """Train `model` on `(x, y)` by mini-batch gradient descent; returns the `History`.

    Args:
        loss: a loss object, e.g. `CrossEntropy()`.
        optimizer: built on `model.parameters()`, e.g. `Adam(model.parameters(), lr=1e-3)`.
        batch_size: examples per step; one example left over (or fewer than the processes of
            `world`) joins the last batch.
        validation_split: fraction of `(x, y)` held out (at random, by `seed`) for validation.
        validation_data: an explicit `(x_val, y_val)` instead (not with `validation_split`).
        early_stopping: an `EarlyStopping`; by default it watches "val_loss". It starts afresh
            in every `fit` (or where the checkpoint resumed from left it), is saved in the
            checkpoint, and restores its best weights before the other callbacks' on_train_end.
        lr_schedule: callable `epoch -> lr`, applied at the start of every epoch.
        callbacks: `Callback` objects (`chainrule.callbacks` lists the hooks and their order).
            An `EarlyStopping` among them is taken as `early_stopping` (and called after the
            others); one at most, and not with `early_stopping` too.
        augment: callable `(x_batch, rng) -> x_batch` applied to each training batch.
        verbose: report progress on standard error (see `ProgressLogger`): a bar and a line per
            epoch on a terminal, just the lines in a file or log, then the gradient-flow report.
            False is quiet.
        seed: fixes shuffling (and augmentation); defaults to the model's seed.
        checkpoint: a `.npz` path written atomically after every epoch with everything needed to
            continue: weights, optimizer moments, random-generator states, history.
        resume: continue from `checkpoint` if it exists; the result is then identical to an
            uninterrupted run with the same seed, bit for bit where no other process kept a core busy,
            or with BLAS held to one thread (`OPENBLAS_NUM_THREADS=1`): under load BLAS runs on fewer
            threads from a moment that varies, and rounds differently on one (see `BlasThreads`).
            A checkpoint of more epochs than `epochs` is refused (ValueError), before anything runs.
        world: the processes that train together (`chainrule.distributed.world()` under mpirun);
            None: this process alone.

    Data parallelism. With a `world` of N > 1 processes, every process calls `fit` with the same
    arguments, and `batch_size` is the global batch. Each process runs forward and backward on its
    shard of every batch (`World.shard`), its loss gradient scaled by shard/batch so that the sum
    over the processes is the gradient of the global batch's mean loss; that sum is taken in
    buckets while backward runs (`distributed.GradientBuckets`), and every process takes the same
    step. Shuffling, dropout masks and augmentation are drawn per example of the global batch from
    the seed, and batch norm normalises over the global batch, so any N gives the weights of one
    process up to the order of floating-point sums. So `augment` is called as
    `augment(x_shard, rng, batch_rows=(first, total))` and must draw the random numbers of all
    `total` rows and use its own (`chainrule.data.augment.digit_augmenter` does). Rank 0's initial
    weights become everyone's; rank 0 alone reports progress and writes the checkpoint (which holds
    nothing of N: a run may resume with another N); it decides the learning rate and early
    stopping for all. The epoch's metrics are those of the global batches. A remainder with fewer
    examples than processes (or a single one) joins the batch before it. (A shard's share of the
    global mean is its `loss.weight` over the batch's: its examples, or with `CrossEntropy`'s
    `class_weight` the sum of their class weights.)

    Raises:
        TrainingDiverged: the loss turned NaN/inf (or, at an epoch's end, the weights or the
            validation loss did); the model keeps the last good weights.
    """
    world = world or World()
    _keep_freed_memory()
    epochs, batch_size = positive_int("fit", "epochs", epochs), positive_int("fit", "batch_size", batch_size)
    shuffle, resume, verbose = (flag("fit", name, value) for name, value in
                                (("shuffle", shuffle), ("resume", resume), ("verbose", verbose)))
    if resume and checkpoint is None:  # (it started afresh without a word)
        raise ValueError("fit: resume=True needs the checkpoint to resume from (checkpoint=path.npz)")
    _check_checkpoint(checkpoint, world)
    if resume:
        _check_epochs_left(checkpoint, epochs, world)
    if batch_size < world.size:
        raise ValueError(f"fit: batch_size {batch_size} is smaller than the {world.size} processes sharing it")
    callbacks = _callback_list(callbacks)
    _check_arguments(model, loss, optimizer, early_stopping, lr_schedule, augment, world)
    early_stopping, callbacks = _the_early_stopping(early_stopping, callbacks)
    data = _prepared_data(model, x, y, loss, validation_split, validation_data, seed,
                          checkpoint if resume else None, world)
    if early_stopping is not None:
        _check_monitor(early_stopping.monitor, data.epoch_keys, bool(callbacks))
    n = data.x.shape[0]
    edges = _batch_edges(n, batch_size, world.size)
    batches = len(edges) - 1

    if early_stopping is not None:
        early_stopping.reset()  # an EarlyStopping used before starts afresh (or from the checkpoint)
    restored = load_checkpoint(checkpoint, model, optimizer, early_stopping, data.rng, world) if resume else None
    history = History() if restored is None else restored
    start_epoch = epochs if history.stopped_early else len(history)  # (a run that stopped early had finished)
    callbacks = _observers(callbacks, early_stopping, verbose, world)
    for cb in callbacks:
        cb.on_train_begin(model, history, epochs, batches)
    run = _Run(model=model, loss=loss, optimizer=optimizer, world=world, data=data, augment=augment, history=history,
               callbacks=callbacks, early_stopping=early_stopping, checkpoint=checkpoint, epochs=epochs)

    # BLAS threads follow the cores the rest of the machine leaves free (see BlasThreads: on 2 cores
    # with one competing process, an mlp step takes 7 ms with one thread and 17 ms with two)
    blas = BlasThreads()
    try:
        for epoch in range(start_epoch, epochs):
            if lr_schedule is not None:
                optimizer.lr = _scheduled_lr(lr_schedule, epoch, world)
            order = data.rng.permutation(n) if shuffle else np.arange(n)
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            started = time.perf_counter()
            running = run.epoch_steps(epoch, order, edges, blas)
            if run.end_epoch(epoch, running, started):
                break
    except KeyboardInterrupt:
        history.stop_reason = "interrupted"
        raise
    finally:
        blas.restore()
        run.release()
    # EarlyStopping first: it restores the best weights and names the best epoch, which the
    # caller's callbacks (one that saves the model, say) must see
    for cb in sorted(callbacks, key=lambda cb: cb is not early_stopping):
        cb.on_train_end(model, history)
    return history


# glibc's mallopt parameters (malloc.h), and the largest values its own adjustment reaches on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20


@functools.cache
def _keep_freed_memory() -> None:
    """Let the memory a training step frees serve the next step (glibc's malloc; once per process).

    A step allocates its layers' outputs and gradients afresh, NumPy arrays of up to megabytes, and
    frees them. glibc hands the top of its heap back to the kernel once more than its trim threshold
    is free there (twice the largest block it has freed so far), and the next step takes it back a
    4 KB page at a time, a page fault each. How often depends on what the process freed before: in
    one that had freed no block of a few MB (it loaded only a training set larger than 32 MB, say),
    LeNet-5 on 2 cores took ~590 faults a step, a median step of 10.9 ms instead of 10.0. glibc
    raises both thresholds by itself each time it frees a larger block, up to blocks of 32 MB from
    the heap and 64 MB left free at its top; this sets them there at once (process-wide, as freeing
    one 32 MB array would). Other C libraries are left as they are.
    """
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):  # (no confstr, or no such name: not glibc)
        glibc = ""
    if not glibc.startswith("glibc"):
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
