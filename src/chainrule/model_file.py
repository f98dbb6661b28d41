"""The model file: how a network is saved as a directory, and read back without trusting it.

A model directory holds `model.json` (the architecture, the metadata, and the names of the array
files) and the `.npz` files it names (arrays only, loaded with ``allow_pickle=False``, so opening
a model file can never run code). A save writes the arrays to new files named by their content and
renames model.json into place last, so a reader, or a crash, sees the old model or the new one,
never a mix. A load holds every claim of model.json against what the layers it names would need
and against the `.npz` headers before it reads or allocates anything, and reads a model.json that
saves replaced meanwhile again (`read_whole`).

`Sequential.save` writes one (`save_model`); `load_model` (in `chainrule.network`, which builds the
network) reads one with `checked_description` and `read_weights`. Nothing here knows `Sequential`:
the network imports this module, not the other way round.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from chainrule import conv as C
from chainrule import layers as L
from chainrule.errors import ModelFileError
from chainrule.files import (
    atomic_write_bytes,
    file_problem,
    locked_directory,
    npz_headers,
    read_npz,
    write_npz_named_by_content,
)
from chainrule.norm import BatchNorm

# 2: model.json names the array files, `<name>-<digest>.npz`. 1: the arrays were in model.npz (and a
# spam filter's in idf.npz and replay.npz), each replaced in place; still read.
FORMAT_VERSION = 2

# Names a saved model may use for its layers. Loading refuses anything else.
LAYER_TYPES: dict[str, type[L.Layer]] = {
    cls.__name__: cls
    for cls in (L.Linear, L.ReLU, L.LeakyReLU, L.Sigmoid, L.Tanh, L.Softmax, L.Dropout, L.Flatten,
                C.Conv2D, C.MaxPool2D, C.AvgPool2D, BatchNorm)
}

# A model.json holds an architecture and metadata: a few kilobytes. Anything near this is not one.
MAX_DESCRIPTION_BYTES = 16 << 20

T = TypeVar("T")


# -- writing ------------------------------------------------------------------------------------

def save_model(model, directory, metadata: dict | None = None,
               arrays: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, Path]:
    """Save the network `model` (a `Sequential`) into `directory`: what `Sequential.save` does.

    Everything is checked before anything is written. Then the arrays go to new files named by
    their content, and model.json, which names them, is renamed into place: that rename is the
    commit. Files of earlier models are deleted after it, except those of the model just replaced,
    which a reader may have begun to load. Returns {name: path} of the files saved.
    """
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"Sequential.save: metadata must be a dict, got {type(metadata).__name__}")
    metadata = _as_json(metadata or {})  # (refused before anything is written)
    for name in arrays or {}:
        if name == "model" or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"Sequential.save: arrays need names of lower-case letters, digits and _, "
                             f"other than 'model' (the network's own), got {name!r}")
    for i, layer in enumerate(model.layers):  # (a model file names its layers' types: a load builds them)
        if LAYER_TYPES.get(type(layer).__name__) is not type(layer):
            raise ValueError(f"Sequential.save: layer {i} ({type(layer).__name__}) is not a type a model file "
                             "may name: put it in chainrule.model_file.LAYER_TYPES, with its array_shapes, to "
                             "save it")
    groups = {"model": model.state(), **(arrays or {})}
    for key, values in groups["model"].items():  # (a load refuses them: see cast_finite)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"Sequential.save: {key} holds NaN or infinite values, which a model file may "
                             "not (training that diverged leaves them)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with locked_directory(directory):  # one writer at a time: a save deletes what is not its own
        replaced = _names_in_use(directory)
        files: dict[str, str] = {}
        try:
            for name, group in groups.items():
                files[name] = write_npz_named_by_content(directory, name, group)
            doc = {"format": "chainrule-model", "format_version": FORMAT_VERSION, **model.config(),
                   "files": files, "metadata": metadata}
            atomic_write_bytes(directory / "model.json", json.dumps(doc, indent=2).encode())
        except BaseException:  # a full disk, Ctrl-C: the old model stays, and so does only it
            # (unless model.json was renamed into place before the interruption came: then it is
            # the new model, and its files are no leftovers)
            if _names_in_use(directory) != set(files.values()):
                for f in set(files.values()) - replaced:
                    (directory / f).unlink(missing_ok=True)
            raise
        _remove_stale(directory, groups, keep=replaced | set(files.values()), orphans=bool(replaced))
    return {name: directory / f for name, f in files.items()}


def _names_in_use(directory: Path) -> set[str]:
    """Names of the files the model now in `directory` is made of (none if there is no readable one)."""
    try:
        return {p.name for p in model_files(directory).values()}
    except (ModelFileError, OSError):
        return set()


def _remove_stale(directory: Path, groups, keep: set[str], orphans: bool) -> None:
    """Delete what earlier saves left behind and no reader needs: the temporary files of a save
    that was killed (the caller holds the directory's lock, so none is running), and with
    `orphans` (the save replaced a model: the folder is a model's) files named by content
    (`<name>-<digest>.npz`, of any group: a model saved over one with more groups, say a spam
    filter retrained over one that had learned lessons, leaves no orphans) and version 1's
    `<name>.npz` of these groups, all not in `keep`. A folder that held no model may hold files of
    those names that are someone else's."""
    ours = re.compile(rf"[a-z][a-z0-9_]*-[0-9a-f]{{16}}\.npz|(?:{'|'.join(map(re.escape, groups))})\.npz")
    for path in directory.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):  # atomic_open's: ".<target>.<random>.tmp"
            target = name[1:-4].rpartition(".")[0]
            stale = target == "model.json" or ours.fullmatch(target)
        else:
            stale = orphans and ours.fullmatch(name) and name not in keep
        if stale:
            path.unlink(missing_ok=True)


def _as_json(metadata: dict) -> dict:
    """`metadata` as model.json will give it back: NumPy numbers and arrays become Python's. NaN
    and infinity are refused: JSON has no such numbers (Python writes them anyway, and other
    readers refuse the file); so are keys that are not strings (JSON's keys are: 1 read back as "1")."""

    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"Sequential.save: metadata holds a {type(value).__name__}, which JSON has no form for")

    def check_keys(value):  # (once json.dumps has taken it: no cycle)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"Sequential.save: metadata keys must be strings, got {key!r}")
                check_keys(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                check_keys(item)

    try:
        text = json.dumps(metadata, allow_nan=False, default=plain)
    except ValueError as exc:
        if str(exc).startswith("Out of range float"):
            raise ValueError("Sequential.save: metadata holds NaN or infinity, which JSON has no number for") from None
        raise ValueError(f"Sequential.save: metadata: {exc}") from None
    check_keys(metadata)
    return json.loads(text)


# -- reading ------------------------------------------------------------------------------------

def model_directory(path) -> Path:
    """The model directory `path` names: the directory itself, or the one holding a model.json or
    weights file it points at (so either may be given on the command line)."""
    path = Path(path)
    if path.is_file() and (path.name == "model.json" or re.fullmatch(r"model(-[0-9a-f]{16})?\.npz", path.name)):
        return path.parent
    return path


# What tells that a saved model changed: every save renames a new model.json into place (a version 1
# model directory, written by an older chainrule, also replaced its model.npz and a spam filter's idf.npz).
_STAMPED = ("model.json", "model.npz", "idf.npz")


def description_path(directory: Path) -> Path:
    """The model.json of the model directory `directory`; `ModelFileError` where there is none."""
    if directory.is_file():  # (a picture given where the model should be: "picture.png/model.json" was not found)
        raise ModelFileError(f"{directory}: a file, not a model folder (a model directory holds model.json "
                             "and the weights it names)")
    path = directory / "model.json"
    problem = file_problem(path)
    if problem:
        raise ModelFileError(f"{path}: {_NO_DESCRIPTION if problem == 'not found' else problem}")
    return path


def model_stamp(path) -> tuple:
    """(name, inode, modification time, size) of each of the files of the model saved in `path` (its
    folder, or its model.json) that exists: what a server compares with the stamp taken when it
    loaded the model, to reload it once it changed (a file renamed into place has a new inode, even
    within one tick of the clock). () where there is none: the folder is gone."""
    directory = model_directory(path)
    out = []
    for name in _STAMPED:
        try:
            st = (directory / name).stat()
        except OSError:
            continue
        out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


# How many times a reader reads a model that saves replace while it reads it (`read_whole`).
READ_ATTEMPTS = 3


def read_whole(directory, read: Callable[[Path], T]) -> T:
    """`read(directory)`, a reading of the model saved in `directory`: its model.json, then the
    array files it names, done again where a save replaced the model meanwhile.

    A save keeps the files of the model it replaces, for a reader that has just read its
    model.json, but deletes older ones: a reader held up between model.json and the arrays while
    two saves complete finds them gone. model.json, which each save renames into place, has
    changed then (`model_stamp`), and names the files of a model that is there: reading again
    gives it, whole. A `ModelFileError` of a model.json that has not changed is the reader's
    answer (a file it names that is missing is not found); so is the last of `READ_ATTEMPTS`."""
    for _ in range(READ_ATTEMPTS - 1):
        stamp = model_stamp(directory)
        try:
            return read(directory)
        except ModelFileError:
            if model_stamp(directory) == stamp:
                raise
    return read(directory)


class ModelDescription(NamedTuple):
    """A saved model's model.json, read and held against its weights' `.npz` headers."""

    path: Path  # the model.json
    doc: dict  # what it says: format, architecture ("layers", "input_shape", "dtype"), "files", "metadata"
    files: dict[str, Path]  # the array files it names, {name: path} (`model_files`)
    weights: Path  # the network's own among them
    arrays: dict[str, tuple[int, ...]]  # {array name: shape} that the weights hold: "params", layer buffers


def checked_description(directory) -> ModelDescription:
    """The model.json of the model in `directory` (its model.json or weights file will do:
    `model_directory`), read and checked: a chainrule model description of a version this chainrule reads, naming
    layers it knows and array files in its directory, whose weights' `.npz` headers hold the
    arrays those layers need, of those shapes, as floats. Nothing but model.json and the headers
    is read; raises `ModelFileError` with a one-line reason."""
    directory = model_directory(directory)
    meta_path = description_path(directory)
    doc = _read_description(meta_path)
    files = _files(doc, directory)
    weights_path = named_file(files.get("model", directory / "model.npz"), "weights")
    try:
        n_params, buffers = _expected_arrays(doc)
    except ModelFileError as exc:
        raise ModelFileError(f"{meta_path}: {exc}") from None
    expected = {"params": (n_params,), **buffers}
    headers = npz_headers(weights_path)
    for name, shape in expected.items():
        if name not in headers:
            what = f"expected {n_params} parameters, got none" if name == "params" else f"buffer {name} is missing"
            raise ModelFileError(f"{weights_path}: {what}")
        got, dtype = headers[name]
        if got != shape:
            what = f"{n_params} parameters" if name == "params" else f"buffer {name} of shape {shape}"
            raise ModelFileError(f"{weights_path}: expected {what} (as model.json says), got shape {got}")
        if dtype.kind != "f":
            raise ModelFileError(f"{weights_path}: array {name} has dtype {dtype}, expected floats")
    return ModelDescription(meta_path, doc, files, weights_path, expected)


def read_weights(described: ModelDescription, dtype) -> dict[str, np.ndarray]:
    """The arrays of the weights `described` names, as `Sequential.state()` gives them, cast to the
    network's `dtype`; `ModelFileError` where one holds what no trained network has (NaN,
    infinity, values beyond `dtype`, negative variances)."""
    state = read_npz(described.weights, described.arrays)
    for key, arr in state.items():
        arr = state[key] = cast_finite(arr, dtype)
        if arr is None:
            raise ModelFileError(f"{described.weights}: array {key} contains NaN, infinity or values beyond {dtype}")
        if key.endswith(".running_var") and np.any(arr < 0):  # a batch norm's variances
            raise ModelFileError(f"{described.weights}: array {key} holds negative variances")
    return state


def cast_finite(values: np.ndarray, dtype) -> np.ndarray | None:
    """Saved `values` cast to the network's float `dtype`, or None where any is NaN or infinite
    once cast (a float64 beyond float32's range is infinite then, and would load as such)."""
    with np.errstate(over="ignore"):
        values = values.astype(dtype, copy=False)
    return values if np.all(np.isfinite(values)) else None


def saved_metadata(directory) -> dict:
    """The metadata of the model saved in `directory`, or {} where there is no readable model
    description: what an application reads before it writes over, or learns into, a directory that
    may hold another model (another application's, or one with lessons of its own)."""
    try:
        metadata = _read_description(model_directory(directory) / "model.json").get("metadata")
    except (OSError, ModelFileError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def saved_task(directory):
    """The task in the metadata of the model saved in `directory` ("images", "spam", ...), or None
    where there is no readable model description or it names none (`saved_metadata`)."""
    return saved_metadata(directory).get("task")


def model_files(directory) -> dict[str, Path]:
    """{name: path} of the array files of the model in `directory`, as its model.json names them:
    "model" (the network's weights) and whatever was saved with it (a spam filter's "idf" and
    "replay"). Raises `ModelFileError` if there is no readable model.json."""
    directory = model_directory(directory)
    return _files(_read_description(directory / "model.json"), directory)


def named_file(path: Path, role: str) -> Path:
    """`path`, an array file model.json names as the model's `role` ("weights", "idf weights"...);
    `ModelFileError` where it is no regular file (`file_problem`: gone, a link that leads nowhere,
    a folder, a FIFO, a device)."""
    problem = file_problem(path)
    if problem:
        raise ModelFileError(f"{path}: {problem} (model.json names it as the model's {role})")
    return path


# A file a model.json may name: a plain name in the model's directory, never a path out of it.
_FILE_NAME = re.compile(r"[\w-]+\.npz")


def _files(doc: dict, directory: Path) -> dict[str, Path]:
    if doc["format_version"] == 1:  # fixed names: model.npz, and a spam filter's idf.npz and replay.npz
        return {p.stem: p for p in sorted(directory.glob("*.npz"))}
    files = doc.get("files")
    if not (isinstance(files, dict) and "model" in files
            and all(isinstance(f, str) and _FILE_NAME.fullmatch(f) for f in files.values())):
        raise ModelFileError(f"{directory / 'model.json'}: 'files' must name the model's .npz files "
                             f"in its directory, got {str(files)[:80]}")
    return {name: directory / f for name, f in files.items()}


_NO_DESCRIPTION = "not found (a model directory holds model.json and the weights it names)"


def _no_constant(name: str):
    """Refuse NaN, Infinity and -Infinity, which Python's json reads but JSON has not (and `save`
    never writes: a model loaded with one in its metadata could not be saved again)."""
    raise ValueError(f"{name} is no JSON number")


def _read_description(path: Path) -> dict:
    """The parsed model.json at `path`, checked to be a chainrule model description this version reads."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelFileError(f"{path}: {_NO_DESCRIPTION}") from None
    if size > MAX_DESCRIPTION_BYTES:
        raise ModelFileError(f"{path}: larger than {MAX_DESCRIPTION_BYTES >> 20} MB, not a model description")
    text = path.read_bytes()
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # (ValueError: JSONDecodeError, or an integer of 4,301 digits)
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:  # json recurses once per level of nesting
        raise ModelFileError(f"{path}: nested too deeply to be a model description") from None
    if not isinstance(doc, dict) or doc.get("format") != "chainrule-model":
        raise ModelFileError(f"{path}: not a chainrule model description")
    version = doc.get("format_version")
    if type(version) is not int or version not in (1, FORMAT_VERSION):
        raise ModelFileError(f"{path}: format version {version!r}, this chainrule reads 1 to {FORMAT_VERSION}")
    return doc


def layer_spec(i: int, spec) -> tuple[type, dict]:
    """The class and arguments of layer `i` as a model description gives it, checked to be a type
    `LAYER_TYPES` names and arguments its constructor takes (their values are the layer's to check)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not isinstance(kind, str):
        raise ModelFileError(f"invalid architecture: layer {i} is not an object with a 'type'")
    if kind not in LAYER_TYPES:
        raise ModelFileError(f"invalid architecture: layer {i}: unknown layer type {kind!r}")
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise ModelFileError(f"invalid architecture: layer {i} ({kind}) has args {args!r}, expected an object")
    try:  # (a constructor's own TypeError names the class that defines it: "_Activation.__init__() got ...")
        inspect.signature(LAYER_TYPES[kind]).bind(**args)
    except TypeError as exc:
        raise ModelFileError(f"invalid architecture: layer {i} ({kind}): {exc}") from None
    return LAYER_TYPES[kind], args


def _expected_arrays(doc: dict) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(number of parameters, {buffer name: shape}) that the layers described in `doc` hold, from
    their arguments alone (`Layer.array_shapes`): nothing is allocated."""
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelFileError(f"invalid architecture: 'layers' must be a non-empty list, got {type(layers).__name__}")
    n_params, buffers = 0, {}
    for i, spec in enumerate(layers):
        layer_type, args = layer_spec(i, spec)
        try:
            params, bufs = layer_type.array_shapes(**args)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"invalid architecture: layer {i} ({layer_type.__name__}): {exc}") from exc
        n_params += sum(math.prod(shape) for shape in params.values())
        buffers.update({f"layer{i}.{name}": shape for name, shape in bufs.items()})
    return n_params, buffers
