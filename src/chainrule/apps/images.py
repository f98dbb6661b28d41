"""Image classification on 28x28 image sets: MNIST's digits, Fashion-MNIST's clothes, any IDX folder.

A library: `chainrule images|digits train|evaluate|predict|show` (in `chainrule.cli.images`) parse
the command line and print what these functions return. They build and train networks with the
public API (`Sequential`, layers, losses, optimizers, `fit`), and lean on the library's support
modules for the rest: the data loaders, `metrics`, `plots`, `files` (atomic writes, the run
folder's lock) and `distributed` (mpirun).

What each data set trains, and how a model reads its images, are its presets
(`chainrule.apps.image_presets`). A saved model records its data set, its class names and how a
photo must be prepared for it (`preprocessing.picture`: "digit" as MNIST was made, "object" as
Fashion-MNIST was; see `chainrule.data.images`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chainrule import (
    BatchNorm,
    EarlyStopping,
    History,
    Sequential,
    Sigmoid,
    fit,
    load_model,
    plots,
)
from chainrule import metrics as M
from chainrule.apps.image_presets import (
    PICTURE,
    PIXELS,
    Preset,
    build_model,
    model_inputs,
    preprocessing_metadata,
    presets_for,
    run_name,
)
from chainrule.checkpoint import checkpoint_summary
from chainrule.data import idx
from chainrule.data.images import PICTURES, ImageError, preprocess_image
from chainrule.distributed import World
from chainrule.errors import DataError, ModelFileError, TrainingDiverged, UserError
from chainrule.files import (
    LOCK_FILE,
    HeldByReaders,
    atomic_write_bytes,
    folder_problem,
    locked_directory,
    written_together,
)
from chainrule.model_file import model_directory, saved_task

log = logging.getLogger(__name__)

TASK = "images"
# Models saved by chainrule 0.1's `chainrule digits train` say "digits": MNIST models.
OLD_TASKS = ("digits",)
# What the metadata of an image model, new or 0.1's, says its task is.
IMAGE_TASKS = (TASK, *OLD_TASKS)
DIGITS = [str(k) for k in range(10)]
# Held out from the training images to choose the epoch (early stopping): a twelfth of them, at
# most 5,000 (MNIST's 60,000 give 5,000); the official test images are only ever used for the final
# figure.
VALIDATION_IMAGES = 5000
VALIDATION_SHARE = 12
# --train-size must be above this: a twelfth of 500 images is 41 to validate on, each one 2.4% of
# the validation accuracy that chooses the epoch; fewer choose it by chance.
MIN_TRAIN_SIZE = 500


def class_names(metadata: dict, model: Sequential | None = None) -> list[str]:
    """The model's class names: those saved with it, else its output numbers."""
    classes = metadata.get("classes")
    if classes is None and model is not None:
        classes = [str(k) for k in range(model.output_shape[-1])]
    return list(classes) if classes is not None else DIGITS


# -- evaluation ---------------------------------------------------------------------------------


def class_distribution(model: Sequential, p: np.ndarray) -> np.ndarray:
    """The model's probabilities `p` (`predict_proba`, `probabilities(outputs)`) as one distribution
    over the classes per row. Softmax gives one already; a last Sigmoid (the textbook network,
    trained on MSE against one-hot targets) scores each class on its own, and its scores sum from
    ~0.1 to ~1.8 on MNIST's test set: they are divided by their sum."""
    if isinstance(model.layers[-1], Sigmoid) and p.shape[-1] > 1:
        total = p.sum(axis=-1, keepdims=True)
        p = np.divide(p, total, out=np.full_like(p, 1 / p.shape[-1]), where=total > 0)  # (all 0: no opinion)
    return p


def evaluate_images(model: Sequential, metadata: dict, images: np.ndarray, labels: np.ndarray,
                    world: World | None = None) -> tuple[dict, np.ndarray]:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on `(images, labels)`.

    Returns (report, probabilities): the report as metrics.json and eval_metrics.json hold it, and
    each image's distribution over the classes (`class_distribution`), from which
    `save_mistakes_grid` draws the most confident mistakes. With a `world` of several processes
    each computes the probabilities of its share of the images, and every process gets them all."""
    classes = class_names(metadata, model)
    world = world or World()
    first, last = world.shard(len(images))
    proba = class_distribution(model, model.predict_proba(model_inputs(images[first:last], metadata)))
    proba = np.concatenate(world.allgather(proba))
    pred = proba.argmax(axis=1)
    cm = M.confusion_matrix(labels, pred, len(classes))
    precision, recall, f1 = M.precision_recall_f1(cm)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)

    def defined(value, count):  # (None, not 0: precision of a class never predicted, recall of one not in the set)
        return float(value) if count else None

    report = {
        "accuracy": M.accuracy(labels, pred),
        "n": int(len(labels)),
        "errors": int((pred != labels).sum()),
        "classes": classes,
        "per_class": {
            name: {"precision": defined(precision[k], predicted[k]), "recall": defined(recall[k], support[k]),
                   "f1": defined(f1[k], predicted[k] + support[k]), "support": int(support[k])}
            for k, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
    return report, proba


def confident_mistakes(proba: np.ndarray, labels: np.ndarray, n: int = 25) -> np.ndarray:
    """Indices of the `n` wrong predictions made with the highest probability `proba` (as
    `evaluate_images` gives them), most confident first."""
    pred = proba.argmax(axis=1)
    wrong = np.nonzero(pred != labels)[0]
    confidence = proba[wrong, pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:n]]


def save_mistakes_grid(proba: np.ndarray, classes: list[str], images: np.ndarray, labels: np.ndarray, path,
                       n: int = 25) -> int:
    """The most confidently wrong of the test images `images` (their probabilities `proba`, as
    `evaluate_images` gives them) as a PNG grid; returns how many are shown."""
    worst = confident_mistakes(proba, labels, n)
    pred = proba.argmax(axis=1)
    # "7 -> 2" fits on one line under a tile; "T-shirt/top -> Shirt" needs two
    arrow = " -> " if max(len(c) for c in classes) <= 3 else "\n-> "
    titles = [f"test #{i}\n{classes[labels[i]]}{arrow}{classes[pred[i]]} ({100 * proba[i, pred[i]]:.0f}%)"
              for i in worst]
    tiles = images[worst] if len(worst) else np.zeros((0, idx.IMAGE_SIZE, idx.IMAGE_SIZE))
    plots.image_grid(tiles, path, titles=titles, cols=min(max(len(worst), 1), 5),
                     title=f"{len(worst)} most confidently wrong test images (true -> predicted)")
    return len(worst)


# -- training -----------------------------------------------------------------------------------


RUN_OPTIONS = ("data", "model", "epochs", "batch_size", "lr", "seed", "train_size")


def _data_key(data) -> str | None:
    """`--data` as run.json keeps it: a known set's name, or a folder's absolute path."""
    if data is None or str(data) in idx.KNOWN_SETS:
        return None if data is None else str(data)
    return str(Path(data).expanduser().resolve())


def resolve_run_options(given: dict, out=None, resume: bool = False, default_data: str | None = "mnist") -> dict:
    """The run's options: those `given` (None: not given), else (when resuming) those the run in
    `out` started with, else the defaults: `default_data`, the "mlp" preset and its settings.
    Raises UserError for a conflict or a bad value."""
    given = {k: given.get(k) for k in RUN_OPTIONS}
    given["data"] = _data_key(given["data"])
    if out is None:
        dataset = idx.identify(given["data"], default_data)[0]
        out = f"runs/{run_name(dataset)}-{given['model'] or 'mlp'}"
    out = Path(out)
    if (problem := folder_problem(out)) is not None:
        raise UserError(f"--out {out}: {problem}")
    _check_not_another_models(out)
    _check_not_being_written(out)
    if not resume and unfinished_run(out / "checkpoint.npz"):
        raise UserError(f"{out} holds the checkpoint of an unfinished run: continue it with --resume, or "
                        f"delete {out / 'checkpoint.npz'} to start afresh")
    run_file = out / "run.json"
    if resume and not run_file.is_file() and (out / "checkpoint.npz").exists():
        raise UserError(f"--resume: {run_file} is missing, so the options the run in {out} started with (its data, "
                        "seed and validation split among them) are unknown; delete its checkpoint.npz to start afresh")
    stored = _stored_options(run_file) if resume and run_file.is_file() else {}
    if stored:
        for k, v in given.items():
            if v is not None and k in stored and stored[k] != v:
                raise UserError(f"--resume: the run in {out} used {k}={stored[k]!r}, not {v!r}; "
                                "leave the option out or start a new run with another --out")
    opts = {k: given[k] if given[k] is not None else stored.get(k) for k in RUN_OPTIONS}
    opts["data"] = opts["data"] or default_data
    dataset, known = idx.identify(opts["data"], default_data)
    opts["model"] = opts["model"] or "mlp"
    preset = _preset(opts["model"], dataset, known)
    opts["epochs"], opts["batch_size"], opts["lr"] = _settings(preset, opts["epochs"], opts["batch_size"], opts["lr"])
    opts["seed"] = 0 if opts["seed"] is None else opts["seed"]
    for k in ("epochs", "batch_size"):
        if opts[k] < 1:
            raise UserError(f"--{k.replace('_', '-')} must be a positive integer, got {opts[k]}")
    if not 0 < opts["lr"] < math.inf:
        raise UserError(f"--lr must be a finite number > 0, got {opts['lr']}")
    if opts["seed"] < 0:
        raise UserError(f"--seed must be an integer >= 0, got {opts['seed']}")
    if opts["train_size"] is not None and opts["train_size"] <= MIN_TRAIN_SIZE:
        raise UserError(f"--train-size must be above {MIN_TRAIN_SIZE}, got {opts['train_size']}")
    opts["out"] = str(out)
    return opts


def _preset(model_name: str, dataset: str, known: str | None) -> Preset:
    """The preset `model_name` of the data set's presets (`presets_for`); a UserError that names
    them if it has none of that name."""
    presets = presets_for(known)
    if model_name not in presets:
        raise UserError(f"{idx.title(known or dataset)} has no preset {model_name!r}; "
                        f"choose from {', '.join(presets)}")
    return presets[model_name]


def _settings(preset: Preset, epochs: int | None, batch_size: int | None, lr: float | None) -> tuple[int, int, float]:
    """`epochs`, `batch_size` and `lr` as given, the preset's where one is None (not given)."""
    return (preset.epochs if epochs is None else epochs, preset.batch_size if batch_size is None else batch_size,
            preset.lr if lr is None else lr)


def _recognised_as(dataset: str, known: str | None) -> dict:
    """What a model records of the known set its images are, beside its data set: nothing where
    that names it (`dataset` is the known set, or a folder of other images), else
    {"recognised_as": the set}: a folder holding that set's images with test files or class names
    of its own, whose presets and preparation of photos it was trained with."""
    return {"recognised_as": known} if known is not None and known != dataset else {}


def _data_folder(data, train_set: idx.ImageSet) -> dict:
    """What a model records of the folder it was trained from, beside its data set:
    {"data_folder": the folder} where `data` named a folder holding a known set as published, whose
    name alone the model's `dataset` says (and would look for elsewhere); nothing where `data` named
    the set (looked for by name again) or its data set is a folder (`dataset` names it).
    `trained_test_set` looks there first."""
    from_folder = data is not None and str(data) not in idx.KNOWN_SETS
    return {"data_folder": str(train_set.folder)} if from_folder and train_set.name in idx.KNOWN_SETS else {}


def trained_test_set(metadata: dict, data=None) -> idx.ImageSet:
    """The test split of `data` (`--data`), or where None, of the set a model of `metadata` (as
    `check_image_model` gives it) was trained on: from the folder it was trained from
    (`data_folder`) while that still holds the set (`idx.holds_set`), else looked for by its name
    (a model copied to another machine finds the set where that one keeps it). Only the test files
    are downloaded where they are found nowhere."""
    dataset, folder = metadata["dataset"], metadata.get("data_folder")
    if data is None and folder is not None and idx.holds_set(folder, dataset, "test"):
        return idx.load_image_set(folder, "test")
    return idx.load_image_set(data, "test", default=dataset)


def known_set(metadata: dict) -> str | None:
    """The known set (`idx.KNOWN_SETS`) whose images a model of `metadata` (as `check_image_model`
    gives it) was trained on, and whose presets: its data set, or the set its folder's images were
    recognised as; None for a folder of other images."""
    name = metadata.get("recognised_as", metadata["dataset"])
    return name if name in idx.KNOWN_SETS else None


def _named(classes: list[str]) -> str:
    return ", ".join(classes[:4]) + (f", ..., {classes[-1]}" if len(classes) > 4 else "")


def unfinished_run(checkpoint: Path) -> bool:
    """Whether `checkpoint` is that of a run that was stopped before its end: before its last
    epoch (its history has no stop reason yet), or after it, before its model was saved (as its
    test set was scored or its figures drawn: the last checkpoint is written first, and no
    model.json newer than it is beside it). A finished run keeps its last checkpoint too; that
    one, like one that cannot be read, holds nothing a new run would lose."""
    return _unfinished(checkpoint, checkpoint_summary(checkpoint))


def _unfinished(checkpoint: Path, summary: dict | None) -> bool:
    """`unfinished_run`, given the checkpoint's `checkpoint_summary`."""
    if summary is None:
        return False
    if not summary["stop_reason"]:
        return True
    saved = checkpoint.parent / "model.json"
    try:
        return not saved.exists() or saved.stat().st_mtime_ns < checkpoint.stat().st_mtime_ns
    except OSError:  # (gone since it was read)
        return False


def finished_run(out: Path, epochs: int) -> bool:
    """Whether the run in `out` has ended, leaving nothing to resume: its checkpoint is that of a
    run that stopped early or ran all its `epochs`, and its model was saved after it (not
    `unfinished_run`). No checkpoint, or one that resuming reports as unreadable, has not."""
    checkpoint = out / "checkpoint.npz"
    summary = checkpoint_summary(checkpoint)
    if summary is None or _unfinished(checkpoint, summary):
        return False
    return summary["stopped_early"] or summary["epochs_done"] >= epochs


def _check_not_another_models(out: Path) -> None:
    """Refuse an --out that holds another application's model (a spam filter, say): training would
    replace it. An image model there is an earlier run, which a new run replaces as it always has."""
    task = saved_task(out)
    if isinstance(task, str) and task not in IMAGE_TASKS:
        raise UserError(f"--out {out} holds a {task} model; training would replace it: choose another --out")


def _stored_options(run_file: Path) -> dict:
    """The options a run started with, from its run.json, each checked for its type."""
    try:
        stored = json.loads(run_file.read_bytes())["options"]
        if not isinstance(stored, dict):
            raise TypeError("its options are not an object")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # (json's errors are ValueErrors)
        raise UserError(f"{run_file}: not a readable run description ({str(exc)[:80]})") from None
    checks = {"data": lambda v: v is None or isinstance(v, str), "model": lambda v: isinstance(v, str),
              "epochs": lambda v: type(v) is int and v > 0, "batch_size": lambda v: type(v) is int and v > 0,
              "lr": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf,
              "seed": lambda v: type(v) is int, "train_size": lambda v: v is None or (type(v) is int and v > 0)}
    for k, ok in checks.items():
        if k in stored and not ok(stored[k]):
            raise UserError(f"{run_file}: not a readable run description ({k} is {stored[k]!r})")
    return stored


def train(
    model_name: str = "mlp",
    out=None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    data=None,
    train_size: int | None = None,
    resume: bool = False,
    verbose: bool = True,
    figures: bool = True,
    default_data: str | None = "mnist",
    world: World | None = None,
    classes: list[str] | None = None,
) -> tuple[Sequential, dict]:
    """Train a preset on an image set, evaluate it on the test set and write everything to `out`.

    Writes the model (`Sequential.save`: model.json, with the data set, class names and
    preprocessing, and its weights), `metrics.json`, `history.csv`, `learning_curves.png`,
    `confusion_matrix.png`, `gradient_flow.png`, and after every epoch `checkpoint.npz`, from which
    `resume=True` continues an interrupted run exactly.

    Args:
        model_name: a preset of the data set (`presets_for`).
        out: the output folder (default `runs/<data set>-<model>`, `runs/digits-mlp` for MNIST).
        data: a known set's name (`mnist`, `fashion`) or a folder with the four IDX files;
            None for `default_data`.
        train_size: use only the first this many training images (quick experiments, tests);
            a twelfth of them (at most 5,000) is held out for validation.
        verbose: progress of every epoch (`fit`'s progress bar or lines) and of a download of
            the data set (its bar), and a log line saying what is being trained.
        world: the processes that train together (`chainrule.distributed.world()` under
            mpirun): data-parallel `fit` with `batch_size` the global batch, the test set shared
            out among them; rank 0 alone writes files and logs. None: this process alone.
        classes: the classes the data set must have, where the caller reads the model as such
            (`chainrule digits`: `DIGITS`); None: any.
    Returns:
        (model, metrics) — the metrics dict that is also written to `metrics.json` (the same on
        every rank).
    """
    world = world or World()
    writer = world.rank == 0  # the one process that writes files and logs
    train_set = _training_set(data, default_data, classes, verbose)
    dataset, known, classes = train_set.name, train_set.known, train_set.classes
    preset = _preset(model_name, dataset, known)
    epochs, batch_size, lr = _settings(preset, epochs, batch_size, lr)
    model = _new_model(preset, model_name, len(classes), seed, batch_size, world)
    images, labels, n_val = _training_share(train_set, train_size)
    test = _test_set(data, default_data, train_set)
    if world.size > 1:  # every rank read the data set itself: the same one?
        _check_same_data_on_every_rank(world, (images, labels, test.images, test.labels))
    _check_labels(test.labels, classes, f"{idx.title(dataset)} test set")

    name = run_name(dataset)
    out = Path(out or f"runs/{name}-{model_name}")
    options = {"data": _data_key(data) or default_data, "model": model_name, "epochs": epochs,
               "batch_size": batch_size, "lr": lr, "seed": seed, "train_size": train_size}
    metadata = {"task": TASK, "preset": model_name, "dataset": dataset, **_recognised_as(dataset, known),
                **_data_folder(data, train_set), "classes": classes,
                "preprocessing": preprocessing_metadata(preset, PICTURE.get(known, "digit"))}
    with contextlib.ExitStack() as lock:  # rank 0 holds the run folder's writer lock to the end
        if writer:  # (once the data is known to be readable: a failed start leaves no folder behind)
            _start_run(lock, out, options, resume)
        x, y = model_inputs(images, metadata), labels.astype(np.int64)

        optimizer = preset.optimizer(model.parameters(), lr)
        schedule = preset.lr_schedule(lr, epochs) if preset.lr_schedule is not None else None
        early = EarlyStopping(monitor=preset.monitor, patience=preset.patience, restore_best_weights=True)
        if writer:
            log.info("%s: training %s (%s) on %d %s images, validating on %d; up to %d epoch%s, batch %d, "
                     "lr %g%s; output in %s", name, model_name, preset.description, len(y) - n_val,
                     idx.title(dataset), n_val, epochs, "s" * (epochs != 1), batch_size, lr,
                     f", {world.size} processes" if world.size > 1 else "", out)
        t0 = time.perf_counter()
        history = fit(model, x, y, preset.loss(), optimizer, epochs=epochs, batch_size=batch_size,
                      validation_split=n_val / len(y), early_stopping=early, lr_schedule=schedule,
                      augment=preset.augment, verbose=verbose, seed=seed, checkpoint=out / "checkpoint.npz",
                      resume=resume, world=world)
        fitted = _fit_metrics(history, time.perf_counter() - t0)

        report = evaluate_images(model, metadata, test.images, test.labels, world)[0]
        metadata.update({"trained_epochs": len(history), "best_epoch": fitted["best_epoch"],
                         "test_accuracy": report["accuracy"], "seed": seed})
        if world.size > 1:
            metadata["processes"] = world.size
        metrics = {"task": TASK, "model": model_name, "dataset": dataset, **_recognised_as(dataset, known),
                   "options": options, "train_images": len(y) - n_val, "validation_images": n_val, **fitted,
                   "test": report}
        if writer:
            _write_run(out, model, metadata, metrics, history, figures)
        return model, metrics


def _training_set(data, default_data: str | None, required: list[str] | None, verbose: bool) -> idx.ImageSet:
    """The training split of the image set `data` (None: `default_data`), refused unless its
    classes are those `required` (None: any) and each has a training image."""
    train_set = idx.load_image_set(data, "train", default=default_data, progress=verbose)
    dataset, classes = idx.title(train_set.name), train_set.classes
    if required is not None and classes != required:
        raise UserError(f"{dataset}: its classes are {_named(classes)}, not {_named(required)}")
    if len(classes) < 2:
        raise DataError(f"{dataset}: every training label is {classes[0]}; a classifier needs two classes")
    missing = np.flatnonzero(np.bincount(train_set.labels, minlength=len(classes)) == 0)
    if missing.size:
        named = ", ".join(classes[k] for k in missing[:5]) + (f" and {missing.size - 5} more" * (missing.size > 5))
        raise DataError(f"{dataset}: no training image of class {named} (of {len(classes)}); "
                        "labels must number the classes 0, 1, ... without gaps")
    return train_set


def _new_model(preset: Preset, model_name: str, classes: int, seed: int, batch_size: int, world: World) -> Sequential:
    """A fresh model of `preset` with `classes` outputs, refused where batches of `batch_size`
    cannot train it: fewer examples than the processes that share each batch (`fit` would refuse
    them too, once the run folder is made), or one example where it has batch normalisation."""
    if batch_size < world.size:
        raise UserError(f"--batch-size {batch_size} is smaller than the {world.size} processes that share each batch")
    model = build_model(preset, classes, seed)
    if batch_size < 2 and any(isinstance(layer, BatchNorm) for layer in model.layers):
        # (a batch's variance of one example is 0; `fit` merges one left over at an epoch's end
        # into the batch before it, so any larger batch size trains)
        raise UserError(f"--batch-size must be at least 2 for the {model_name} preset: batch normalisation needs "
                        "two examples per batch")
    return model


def _training_share(train_set: idx.ImageSet, train_size: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(images, labels, how many of them are held out to choose the epoch) a run trains on: the
    first `train_size` of the training set (None: all of it)."""
    images, labels = train_set.images, train_set.labels
    if train_size is not None:
        if train_size > len(labels):
            raise UserError(f"--train-size {train_size:,} is more than the {len(labels):,} training images of "
                            f"{idx.title(train_set.name)}")
        images, labels = images[:train_size], labels[:train_size]
    n_val = min(VALIDATION_IMAGES, len(labels) // VALIDATION_SHARE)
    if n_val == 0:
        raise DataError(f"{idx.title(train_set.name)}: {len(labels)} training images; a model needs at least "
                        f"{VALIDATION_SHARE}, a twelfth of them held out to choose the epoch")
    return images, labels, n_val


def _test_set(data, default_data: str | None, train_set: idx.ImageSet) -> idx.ImageSet:
    """The test split of the image set `data`, refused where its classes are not the training set's."""
    test = idx.load_image_set(data, "test", default=default_data)
    if _other_classes(train_set.known, train_set.classes, test):
        raise DataError(f"{data}: its training images are {idx.title(train_set.known or train_set.name)} "
                        f"({', '.join(train_set.classes)}), its test images are {idx.title(test.known or test.name)} "
                        f"({', '.join(test.classes)}): a model is tested on the set it learns")
    return test


def _check_same_data_on_every_rank(world: World, arrays: tuple[np.ndarray, ...]) -> None:
    """Refuse to train where the processes of `world` read different data: `arrays` (training
    images first) hashed on every rank, shapes and types included, and compared."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.shape} {array.dtype}\n".encode())
        digest.update(np.ascontiguousarray(array).data)
    counts = world.differences(len(arrays[0]), digest.hexdigest())
    if counts:
        raise DataError(f"the processes read different data sets ({counts} training images; the same number "
                        "may differ in what they hold): does every machine see the same --data?")


def _start_run(stack: contextlib.ExitStack, out: Path, options: dict, resume: bool) -> None:
    """Make `out` the folder of a run of `options`: its writer lock held in `stack`, what killed
    runs left there cleared, an earlier run set aside (unless resuming: `_replacing_earlier_run`),
    and run.json written."""
    out.mkdir(parents=True, exist_ok=True)
    _hold_writer_lock(stack, out)
    _clear_leftovers(out)
    if not resume:
        stack.enter_context(_replacing_earlier_run(out))
    atomic_write_bytes(out / "run.json", json.dumps({"options": options}, indent=2).encode())


def _fit_metrics(history: History, wall: float) -> dict:
    """What metrics.json says of the training itself: epochs run, the best (numbered from 1), why
    it stopped, its time (`wall` seconds in this session) and its best validation accuracy."""
    best = history.best_epoch
    return {"epochs_run": len(history), "best_epoch": None if best is None else best + 1,
            "stop_reason": history.stop_reason, "wall_seconds_this_session": round(wall, 2),
            "train_seconds_total": round(sum(e["seconds"] for e in history.epochs), 2),
            "val_accuracy": None if best is None else history.epochs[best].get("val_accuracy")}


def _write_run(out: Path, model: Sequential, metadata: dict, metrics: dict, history: History, figures: bool) -> None:
    """Save the trained model in `out`, and beside it metrics.json, history.csv and (with `figures`)
    the learning curves, the test set's confusion matrix and the gradient flow.

    The metrics and figures are drawn first, beside the folder, and renamed into it right after the
    model is saved: Ctrl-C while they are drawn leaves the earlier model with its own."""
    dataset = metadata["dataset"]
    run = f"{run_name(dataset)} {metadata['preset']}"

    undrawn = () if figures else RUN_FIGURES  # (the earlier run's, if it drew them, describe the earlier model)

    def commit():  # the new model, without what was derived from the earlier one (its evaluation, figures)
        model.save(out, metadata)
        for derived in (*DERIVED_FILES, *undrawn):
            (out / derived).unlink(missing_ok=True)

    with written_together(out, tuple(name for name in RUN_FILES if name not in undrawn), commit=commit) as new:
        atomic_write_bytes(new / "metrics.json", json.dumps(metrics, indent=2).encode())
        history.save_csv(new / "history.csv")
        if figures:
            plots.learning_curves(history, new / "learning_curves.png", title=f"{run}: learning curves")
            plots.confusion_matrix(np.array(metrics["test"]["confusion_matrix"]), new / "confusion_matrix.png",
                                   labels=metadata["classes"], title=f"{run}, {idx.title(dataset)} test set")
            plots.gradient_flow(history, new / "gradient_flow.png", title=f"{run}: gradient flow")


# What a run writes beside its model: the metrics and history, then (unless told not to) its figures.
RUN_FIGURES = ("learning_curves.png", "confusion_matrix.png", "gradient_flow.png")
RUN_FILES = ("metrics.json", "history.csv", *RUN_FIGURES)


# What `evaluate_saved` writes (together), and with what the `show` command writes, beside a model:
# a new run's model makes them stale.
EVALUATE_FILES = ("eval_metrics.json", "eval_confusion_matrix.png", "mistakes.png")
DERIVED_FILES = (*EVALUATE_FILES, "first_layer.png")


def _clear_leftovers(out: Path) -> None:
    """Put back the earlier run that a run killed before its first checkpoint had set aside
    (`_put_back_earlier_run`), and delete the partial files killed runs, evaluations or drawings
    left (`atomic_open`'s temporary files: a checkpoint, a run.json, a figure; an earlier run's
    checkpoint and run.json set aside by a run that got past its first checkpoint). Called with
    the folder's writer lock held, so nothing of a run still writing there is touched. (Staging
    folders a killed run left, `written_together` removes; what was derived from the earlier
    model, and the model's own partial files, the new one's save.)"""
    _put_back_earlier_run(out)
    for name in ("checkpoint.npz", "run.json", *RUN_FILES, *DERIVED_FILES):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


# Where a new run keeps the earlier run's checkpoint and run.json until it has a checkpoint of its
# own (`_replacing_earlier_run`); names of partial files, which `_clear_leftovers` deletes after.
EARLIER_CHECKPOINT, EARLIER_RUN_FILE = ".checkpoint.npz.earlier.tmp", ".run.json.earlier.tmp"


@contextlib.contextmanager
def _replacing_earlier_run(out: Path) -> Iterator[None]:
    """The `with` block of a new run in `out` over what an earlier run left there (a finished run:
    `resolve_run_options` refuses to start over an unfinished one). That run's checkpoint and
    run.json are set aside (renamed, which needs no room on a full disk), and put back if the new
    run fails or is stopped before it has a checkpoint of its own (a full disk, Ctrl-C, SIGTERM),
    or diverges, at any epoch (it saved no model): the model, metrics and figures there are still
    the earlier run's, and the folder describes that run again (--resume, which
    deploy/slurm-train.sh passes, finds it finished, where it started the failed run, or the
    diverging one, again). A run killed then (SIGKILL) leaves them aside, for the next command to
    look at the folder to put back (`_clear_leftovers`). Otherwise they are deleted at the end."""
    run_file, checkpoint = out / "run.json", out / "checkpoint.npz"
    aside, earlier_run = out / EARLIER_CHECKPOINT, out / EARLIER_RUN_FILE
    had_run_file = run_file.is_file()
    if checkpoint.exists():
        log.warning("chainrule: warning: replacing the earlier run in %s", out)
        # the checkpoint first: while it is aside, its run.json is too or is still in place
        if had_run_file:
            checkpoint.replace(aside)
        else:  # (without its run.json, --resume refuses it: no run to put back)
            checkpoint.unlink()
    if had_run_file:
        run_file.replace(earlier_run)
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, TrainingDiverged):  # (its own checkpoint goes, and a run.json of none earlier)
            checkpoint.unlink(missing_ok=True)
            if not had_run_file:
                run_file.unlink(missing_ok=True)
        _put_back_earlier_run(out)
        raise
    finally:
        aside.unlink(missing_ok=True)
        earlier_run.unlink(missing_ok=True)


def _put_back_earlier_run(out: Path) -> None:
    """Where `out` holds no checkpoint, put back the run.json and checkpoint of an earlier run that a
    new run set aside (`_replacing_earlier_run`). The checkpoint last: until it is back, this can
    be done again (after a kill part-way, say) and ends the same."""
    if (out / "checkpoint.npz").exists():  # (the new run's: what is aside is obsolete)
        return
    if (out / EARLIER_RUN_FILE).exists():
        (out / EARLIER_RUN_FILE).replace(out / "run.json")
    if (out / EARLIER_CHECKPOINT).exists():
        (out / EARLIER_CHECKPOINT).replace(out / "checkpoint.npz")


@contextlib.contextmanager
def writer_lock(out: Path, shared: bool = False) -> Iterator[None]:
    """`out`'s writer lock, held for the `with` block, or a UserError if another run holds it.
    `shared`, what a command writing files about the model in `out` beside it (`evaluate`, `show`)
    holds from reading the model to renaming its files into place: a run saving a new model there
    meanwhile is refused, so the files never describe a model that is no longer there, but other
    such commands are not (they only read the model; each file they write is renamed into place)."""
    with contextlib.ExitStack() as stack:
        _hold_writer_lock(stack, out, shared)
        yield


def _check_not_being_written(out: Path) -> None:
    """Refuse a folder that another run is writing now: its checkpoint is no unfinished run to
    --resume, nor one to delete. In one that none is, what killed runs left is cleared first
    (`_clear_leftovers`: an earlier run set aside is put back), so that its run.json and
    checkpoint are read as what they are."""
    if out.is_dir():
        with writer_lock(out):
            _clear_leftovers(out)


def _hold_writer_lock(stack: contextlib.ExitStack, out: Path, shared: bool = False) -> None:
    """Take `out`'s writer lock (`locked_directory`, as `Sequential.save` takes it; or `shared`)
    into `stack`, or refuse: two runs writing one folder leave one's run.json beside the other's
    model and checkpoint, and both said they succeeded."""
    try:
        stack.enter_context(locked_directory(out, wait=False, shared=shared))
    except HeldByReaders:  # (a run that saved a model now would leave their files about the old one)
        raise UserError(f"{out}: a command is reading the model in this folder (evaluate or show: it holds "
                        f"{out / LOCK_FILE} shared); try again when it ends or choose another --out") from None
    except BlockingIOError:
        raise UserError(f"{out}: another run is writing to this folder (it holds {out / LOCK_FILE}); "
                        "wait for it to end or choose another --out") from None


def _check_labels(labels: np.ndarray, classes: list[str], what: str) -> None:
    """Refuse labels the model has no output for."""
    idx.check_labels(labels, len(classes), what, f", but the model knows {len(classes)} classes")


# -- evaluate / predict / show --------------------------------------------------------------------


def load_image_model(path) -> tuple[Sequential, dict]:
    """A model saved by `train` (or by chainrule 0.1's `chainrule digits train`), checked to be an
    image model that `model_inputs` and the predictions can use (`check_image_model`). So a damaged
    model.json is refused here, in one line, rather than by every image a server is then sent.
    The metadata returned always has `dataset`, `classes` and `preprocessing.picture`; a 0.1 model
    gets MNIST's ("mnist", "0".."9", "digit")."""
    model, metadata = load_model(path)
    return model, check_image_model(model, metadata, path)


def check_image_model(model: Sequential, metadata: dict, path) -> dict:
    """Raise ModelFileError unless the model loaded from `path` is a usable image model; return its
    metadata with the defaults of a 0.1 digits model filled in."""
    task = metadata.get("task")
    if task not in IMAGE_TASKS:
        raise ModelFileError(f"{path}: not an image model (its task is {task!r})")
    problem, metadata = _metadata_problem(model, metadata)
    if problem:
        raise ModelFileError(f"{path}: invalid image model metadata ({problem})")
    return metadata


def _metadata_problem(model: Sequential, metadata: dict) -> tuple[str | None, dict]:
    """What is wrong with an image model's metadata and shapes (or None), and the metadata with
    the defaults of a 0.1 digits model filled in."""
    prep = metadata.get("preprocessing", {})  # (where `model_inputs` reads it)
    if not isinstance(prep, dict):
        return f"preprocessing must be an object, got {type(prep).__name__}", metadata
    # (ranges, not only signs: a std of 1e-300 or a mean of 1e300 turned every image into inf)
    for key, default, ok, expected in (("scale", 255.0, lambda v: 1e-6 <= v <= 1e6, "a number in [1e-6, 1e6]"),
                                       ("std", 1.0, lambda v: 1e-6 <= v <= 1e6, "a number in [1e-6, 1e6]"),
                                       ("mean", 0.0, lambda v: abs(v) <= 1e6, "a number in [-1e6, 1e6]")):
        v = prep.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            return f"preprocessing.{key} must be {expected}, got {v!r}", metadata
    layout = prep.get("layout", "flat")
    if layout not in ("flat", "image"):
        return f"preprocessing.layout must be 'flat' or 'image', got {layout!r}", metadata
    picture = prep.get("picture", "digit")
    if picture not in PICTURES:
        return f"preprocessing.picture must be one of {', '.join(PICTURES)}, got {str(picture)[:80]!r}", metadata
    dataset = metadata.get("dataset", "mnist")
    if not (isinstance(dataset, str) and dataset):
        return f"dataset must be a data set's name or folder, got {str(dataset)[:80]}", metadata
    recognised_as = metadata.get("recognised_as", "mnist")
    if not (isinstance(recognised_as, str) and recognised_as in idx.KNOWN_SETS):
        return f"recognised_as must be one of {', '.join(idx.KNOWN_SETS)}, got {str(recognised_as)[:80]!r}", metadata
    data_folder = metadata.get("data_folder", "/")
    if not (isinstance(data_folder, str) and Path(data_folder).is_absolute()):
        return f"data_folder must be a folder's absolute path, got {str(data_folder)[:80]!r}", metadata
    try:  # the network on one blank image, prepared as every image will be: one score per class
        out = model.forward(model_inputs(np.zeros((1, idx.IMAGE_SIZE, idx.IMAGE_SIZE), np.uint8), metadata))
    except ValueError as exc:
        return f"the network cannot read a {layout} 28x28 image: {exc}", metadata
    if out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        return f"the network gives {out.shape[1:]} outputs per image, not one score per class", metadata
    outputs = out.shape[1]
    classes = metadata.get("classes", DIGITS if outputs == len(DIGITS) else None)
    if not (isinstance(classes, list) and len(classes) == outputs and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        return f"classes must be a list of {outputs} distinct names, one per output, got {str(classes)[:80]}", metadata
    if (k := next((k for k, name in enumerate(classes) if idx.control_character(name)), None)) is not None:
        return f"class {k} ({classes[k][:80]!r}) holds a control character", metadata
    return None, {**metadata, "dataset": dataset, "classes": classes, "preprocessing": {**prep, "picture": picture}}


def _other_classes(known: str | None, classes: list[str], data: idx.ImageSet) -> bool:
    """Whether `data` is a set with other classes than a model of `classes` trained on images of
    the known set `known` (or of none) knows: another known set's images, or classes named otherwise
    (numbered ones may be any)."""
    numbered = data.classes == [str(k) for k in range(len(data.classes))]
    return (None not in (known, data.known) and known != data.known) or (not numbered and data.classes != classes)


def _check_same_classes(path, metadata: dict, data: idx.ImageSet) -> None:
    """Refuse to score a model on a set with other classes (a clothes model on digits, say)."""
    trained_on = metadata["dataset"]
    if _other_classes(known_set(metadata), metadata["classes"], data):
        raise UserError(f"{path} was trained on {idx.title(trained_on)} ({', '.join(metadata['classes'])}), "
                        f"not on {idx.title(data.name)} ({', '.join(data.classes)})")
    _check_labels(data.labels, metadata["classes"], f"{idx.title(data.name)} test set")


def evaluate_saved(model_dir, model: Sequential, metadata: dict, data=None, out=None,
                   top: int = 25) -> tuple[dict, int]:
    """Evaluate the model saved in `model_dir` (`model`, `metadata`: as `load_image_model` read it)
    on the test set of `data` (default: the set it was trained on) and write `eval_metrics.json`,
    `eval_confusion_matrix.png` and `mistakes.png` (the `top` most confidently wrong images) to
    `out` (default: the model directory).
    Returns (report, how many mistakes are drawn); the report names the data set (`dataset`)."""
    given, out = out, Path(out) if out else model_directory(model_dir)  # (model_dir may name its model.json)
    if (problem := folder_problem(out)) is not None:  # (said before the evaluation, not after)
        raise UserError(f"--out {given}: {problem}" if given else
                        f"{problem} (evaluate writes its report beside the model: give --out DIR)")
    test = trained_test_set(metadata, data)
    _check_same_classes(model_dir, metadata, test)
    report, proba = evaluate_images(model, metadata, test.images, test.labels)
    report = {"dataset": test.name, **report}
    with written_together(out, EVALUATE_FILES) as new:  # (an interrupted evaluate leaves the earlier set)
        plots.confusion_matrix(np.array(report["confusion_matrix"]), new / "eval_confusion_matrix.png",
                               labels=report["classes"],
                               title=f"{run_name(metadata['dataset'])} {metadata.get('preset', 'model')}, "
                                     f"{idx.title(test.name)} test set")
        shown = save_mistakes_grid(proba, report["classes"], test.images, test.labels, new / "mistakes.png", top)
        atomic_write_bytes(new / "eval_metrics.json", json.dumps(report, indent=2).encode())
    return report, shown


def predict_images(model: Sequential, metadata: dict, sources) -> list[dict]:
    """Classify each image (a path, or standard input's binary stream, named "-").

    Each result is {"source", "label": the class name, "index": its number, "probabilities": one
    per class}, plus "digit" (= index) for a model whose classes are the digits 0-9; a bad image
    gives {"source", "error"} instead of stopping the rest.
    """
    classes = class_names(metadata, model)
    picture = metadata.get("preprocessing", {}).get("picture", "digit")
    results = []
    for src in sources:
        name = "-" if hasattr(src, "read") else str(src)
        try:
            img = preprocess_image(src, picture)
        except ImageError as exc:  # (its one line names the image)
            results.append({"source": name, "error": str(exc)})
            continue
        p = class_distribution(model, model.predict_proba(model_inputs(img, metadata)))[0]
        results.append({"source": name, **best_class(p, classes), "probabilities": [float(v) for v in p]})
    return results


def best_class(proba: np.ndarray, classes: list[str]) -> dict:
    """{"label": the most probable class's name, "index": its number}, plus "digit" (= index) for
    a model whose classes are the digits 0-9: what a prediction answers, on the command line and
    on the web alike."""
    k = int(np.argmax(proba))
    return {"label": classes[k], "index": k, **({"digit": k} if classes == DIGITS else {})}


def draw_first_layer(model: Sequential, path, units: int = 100) -> str:
    """Draw the first layer's weights as images (what each hidden unit or kernel looks for) into
    `path`; returns what was drawn, e.g. "100 of 512 hidden units"."""
    first = next((layer for layer in model.layers if "weight" in layer.params), None)
    if first is None:
        raise UserError("the model has no layer with weights")
    w = first.params["weight"].data
    if w.ndim == 2 and w.shape[0] == PIXELS:  # Linear: column j is what hidden unit j looks for
        plots.weight_grid(w, path, max_units=units)
        return f"{min(units, w.shape[1])} of {w.shape[1]} hidden units"
    if w.ndim == 4:  # convolution kernels (out, in, kh, kw): one tile per output channel
        tiles = w[:units, 0]
        plots.image_grid(tiles, path, titles=[str(i) for i in range(len(tiles))], cols=min(len(tiles), 8),
                         title=f"First-layer kernels ({len(tiles)} of {w.shape[0]})", symmetric=True)
        return f"{len(tiles)} of {w.shape[0]} kernels"
    raise UserError(f"first weights have shape {w.shape}; cannot draw them as images")
