"""Checkpoints: what `fit` writes after every epoch to resume a run exactly, and reads back.

A checkpoint is one `.npz` file, written atomically: the model's weights and buffers
(`model.*`), the optimizer's state (`optim.*`), EarlyStopping's best weights so far (`best.*`),
and a JSON part (`json`, bytes) with the epochs done, the `History`, EarlyStopping's state, the
random generators' states and the run's seed. Reading checks the arrays' headers against the
network before any array is read, and the JSON before anything is restored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chainrule.distributed import World
from chainrule.errors import ModelFileError
from chainrule.files import atomic_write_npz, npz_headers, read_npz
from chainrule.history import History
from chainrule.model_file import cast_finite


def checkpoint_summary(path) -> dict | None:
    """What the checkpoint at `path` says of its run, without restoring it: {"epochs_done": int,
    "stop_reason": str ("" while the run goes on), "stopped_early": bool (`History.stopped_early`),
    "seed": the run's seed, or None if it kept none}; None where there is no checkpoint, or one
    whose JSON part resuming would refuse (too large, unreadable, not a run's). Its arrays are not
    read, nor checked against a network."""
    try:
        headers = npz_headers(path)
        if "json" not in headers or not _json_array(*headers["json"]):
            return None
        doc = json.loads(read_npz(path, ["json"])["json"].tobytes())
        epochs_done, history = _run_so_far(doc)
    except (ModelFileError, KeyError, TypeError, ValueError, RecursionError):  # (no such file: ModelFileError too)
        return None
    seed = doc.get("seed")
    return {"epochs_done": epochs_done, "stop_reason": history.stop_reason, "stopped_early": history.stopped_early,
            "seed": seed if type(seed) is int and seed >= 0 else None}


def checkpoint_seed(path, world: World) -> int | None:
    """The seed saved in the checkpoint at `path` (rank 0 reads it), or None: no checkpoint, one
    saved without a seed, or one that cannot be read (`load_checkpoint` then says why)."""
    summary = checkpoint_summary(path) if world.rank == 0 else None
    return world.bcast(summary["seed"] if summary else None)


def save_checkpoint(path, epochs_done, model, optimizer, early_stopping, rng, history, seed):
    """Write to `path`, atomically, all that `load_checkpoint` needs to go on after `epochs_done` epochs."""
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
        "seed": int(seed),  # (the validation split's: drawn afresh, a resumed run would hold out other data)
    }
    arrays["json"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    atomic_write_npz(path, arrays)


# The JSON part of a checkpoint (history, early-stopping and random states): kilobytes per epoch.
MAX_CHECKPOINT_JSON = 64 << 20


def _json_array(shape, dtype) -> bool:
    """Whether a checkpoint's array of these (header) shape and dtype can hold its JSON part."""
    return dtype == np.uint8 and len(shape) == 1 and shape[0] <= MAX_CHECKPOINT_JSON


def load_checkpoint(path, model, optimizer, early_stopping, rng, world: World) -> History | None:
    """Restore what `save_checkpoint` saved into the model, the optimizer, `early_stopping` and
    `rng`; returns the run's History so far (an entry per epoch done), or None if there is no
    checkpoint at `path`.

    Rank 0 reads the file and sends its arrays to the others, so only rank 0 needs to see it (it
    wrote it). A damaged checkpoint, or one of another network, raises ModelFileError naming it:
    its arrays are checked against this run's from their headers before they are read, and its
    JSON before anything is restored.
    """
    try:
        arrays = None
        if world.rank == 0 and Path(path).exists():
            arrays = _read_checkpoint(path, model, optimizer)
        arrays = world.bcast(arrays)
        if arrays is None:
            return None
        return _restore(path, arrays, model, optimizer, early_stopping, rng)
    except ModelFileError as exc:
        raise ModelFileError(f"{exc}; delete it to start afresh") from None


def _read_checkpoint(path, model, optimizer) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint at `path`, once their headers show they are this network's."""
    ours = {f"{group}.{k}": v for group in ("model", "best") for k, v in model.state().items()}
    ours.update({f"optim.{k}": v for k, v in optimizer.state().items()})
    headers = npz_headers(path)
    for name, (shape, dtype) in headers.items():
        if name == "json":
            ok = _json_array(shape, dtype)
        else:  # weights and moments are floats; only the optimizer's step count may be an integer
            ok = name in ours and ours[name].shape == shape and dtype.kind in ("fiu" if name == "optim.steps" else "f")
        if not ok:
            raise ModelFileError(f"{path}: not a checkpoint of this network (array {name}: {shape} {dtype})")
    missing = sorted(k for k in ours if not k.startswith("best.") and k not in headers) + \
        ([] if "json" in headers else ["json"])
    if missing:
        raise ModelFileError(f"{path}: not a checkpoint of this network ({', '.join(missing)} missing)")
    arrays = read_npz(path, headers)
    for name, values in arrays.items():
        if values.dtype.kind != "f":
            continue
        wanted = ours[name].dtype if ours[name].dtype.kind == "f" else values.dtype  # (an integer step count: as saved)
        arrays[name] = cast_finite(values, wanted)
        if arrays[name] is None:
            raise ModelFileError(f"{path}: not a usable checkpoint (array {name} contains NaN, infinity or values "
                                 f"beyond {wanted})")
    return arrays


def _run_so_far(doc) -> tuple[int, History]:
    """The epochs done and the history in a checkpoint's JSON `doc`; raises KeyError, TypeError or
    ValueError where they are not those of a run."""
    epochs_done = doc["epochs_done"]
    if type(epochs_done) is not int or epochs_done < 0:
        raise ValueError(f"epochs_done is {epochs_done!r}")
    history = History.from_dict(doc["history"])
    if len(history.epochs) != epochs_done:  # (one line per epoch done: the report reads them)
        raise ValueError(f"epochs_done is {epochs_done} but the history holds {len(history.epochs)} epochs")
    return epochs_done, history


def _restore(path, arrays, model, optimizer, early_stopping, rng) -> History:
    arrays = dict(arrays)
    try:
        doc = json.loads(arrays.pop("json").tobytes())
        _, history = _run_so_far(doc)

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
    return history
