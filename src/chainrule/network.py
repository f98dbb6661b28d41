"""`Sequential`: a network as a stack of layers, with its parameters in one flat buffer.

The forward pass runs the layers first to last; the backward pass runs them last to first,
each turning dLoss/dOutput into dLoss/dInput (the chain rule, one layer at a time).

A model is saved as a directory: `model.json` (architecture and metadata) and the `.npz` files it
names (arrays only, loaded with ``allow_pickle=False``, so opening a model file can never run
code), all validated on load. The arrays go to new files named by their content and model.json is
renamed into place last, so a reader, or a crash, sees the old model or the new one, never a mix.
"""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import numpy as np

from chainrule import conv as C
from chainrule import layers as L
from chainrule.checks import positive_int
from chainrule.errors import ModelFileError
from chainrule.files import (
    atomic_write_bytes,
    link_problem,
    locked_directory,
    npz_headers,
    read_npz,
    write_npz_named_by_content,
)
from chainrule.functional import sigmoid, softmax
from chainrule.norm import BatchNorm
from chainrule.parameter import Parameter, bind, pack

# 2: model.json names the array files, `<name>-<digest>.npz`. 1: the arrays were in model.npz (and a
# spam filter's in idf.npz and replay.npz), each replaced in place; still read.
FORMAT_VERSION = 2

# Names a saved model may use for its layers. Loading refuses anything else.
LAYER_TYPES: dict[str, type[L.Layer]] = {
    cls.__name__: cls
    for cls in (L.Linear, L.ReLU, L.LeakyReLU, L.Sigmoid, L.Tanh, L.Softmax, L.Dropout, L.Flatten,
                C.Conv2D, C.MaxPool2D, C.AvgPool2D, BatchNorm)
}

DTYPES = {"float32": np.float32, "float64": np.float64}

# predict and evaluate keep each layer's output and scratch under this many bytes per forward pass.
# A convolution's X_col for 1,000 digits is 226 MB in the `cnn` preset; in passes of 8 MB (37
# digits) the peak memory of predicting 10,000 falls from 1,028 to 114 MB, and it runs faster
# (2.37 -> 1.70 s; LeNet-5 0.52 -> 0.31 s in passes of 102): small arrays stay in the caches and
# are reused, where large ones are faulted in afresh every pass. (8 MB was the fastest of 4-64 MB.)
PASS_BYTES = 8 << 20

# A model.json holds an architecture and metadata: a few kilobytes. Anything near this is not one.
MAX_DESCRIPTION_BYTES = 16 << 20


def sliceable(x):
    """`x` in a form whose rows can be sliced: a NumPy array (from a list, say), or a SciPy sparse
    matrix in CSR or CSC form (COO, for one, has no row slices); values are left as they are."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "tocsr"):
        return x if x.format in ("csr", "csc") else x.tocsr()
    return np.asarray(x)


def checked_inputs(where: str, x, dtype: np.dtype):
    """`x` as `sliceable` gives it, once checked: numbers, each finite and within the range of the
    model's `dtype` (a NaN would go through every layer and come out as a confident class 0)."""
    if isinstance(x, np.ma.MaskedArray):  # (its mask would be dropped: the hidden values read as data)
        raise ValueError(f"{where}: the inputs are a masked array: fill or drop the masked values first")
    x = sliceable(x)
    if x.dtype.kind in "cmM":  # (NumPy would drop imaginary parts with a warning, and read dates as day counts)
        raise ValueError(f"{where}: the inputs must be real numbers, got {x.dtype}")
    if x.dtype.kind in "OUSV":  # (from a list holding something else than numbers)
        if x.dtype.kind == "O" and any(value is None for value in x.flat):  # (which NumPy would make NaN)
            raise ValueError(f"{where}: the inputs must be numbers, got None (a missing value: fill or drop it first)")
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: the inputs must be numbers ({str(exc)[:80]})") from None
    values = x if isinstance(x, np.ndarray) else x.data  # (a sparse matrix's stored values)
    if values.dtype.kind == "f" and values.size:
        # min and max propagate NaN and are ±inf if any value is, so checking those two numbers is
        # exact, and unlike np.isfinite(x) it builds no temporary as large as the data set.
        low, high = float(values.min()), float(values.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{where}: the inputs contain NaN or infinity")
        dtype = np.dtype(dtype)  # (only a wider float can hold what is inf once cast to the model's)
        if values.dtype.itemsize > dtype.itemsize and max(-low, high) > float(np.finfo(dtype).max):
            raise ValueError(f"{where}: the inputs hold values beyond the model's {dtype} range "
                             f"({low:g}..{high:g})")
    return x


def checked_seed(where: str, seed) -> int | None:
    """`seed` as an int, where it is an integer >= 0 (or None): what a checkpoint can keep, and a
    resumed run draw from again (NumPy takes sequences too, which a checkpoint then could not)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{where}: seed must be an integer >= 0 or None, got {seed!r}")
    return int(seed)


def _float_dtype(dtype) -> np.dtype:
    try:  # (None is float64 to NumPy: a model asked for with none would have been one)
        name = np.dtype(dtype).name if dtype is not None else None
    except (TypeError, ValueError):
        name = None
    if name not in DTYPES:
        raise ValueError(f"Sequential: dtype must be float32 or float64, got {name or repr(dtype)}")
    return np.dtype(dtype)


class Sequential:
    """A feed-forward network: output = layer_n( ... layer_2(layer_1(x)) ).

    Args:
        layers: the layers, input side first.
        input_shape: shape of one example (no batch axis); inferred from a first `Linear`.
        seed: fixes the initial weights and every later random draw (dropout masks), so the
            same seed gives the same network on the same machine.
        dtype: float32 (fast, the default) or float64 (for gradient checks).
        initialize: draw the initial weights from the seeded generator; `load_model` says False,
            since it overwrites them all.

    Threads: the layers keep what a backward pass needs from the forward pass before it, so two
    passes must not run at once. `predict`, `predict_proba`, `layer_outputs`, `evaluate` and each
    step of `fit` hold the model's `lock` (threads may share a model for predictions; they take
    turns); `forward` and `backward` called directly do not.
    """

    def __init__(self, layers, input_shape=None, seed: int | None = None, dtype=np.float32,
                 initialize: bool = True):
        self.layers: list[L.Layer] = list(layers)
        if not self.layers:
            raise ValueError("Sequential: needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, L.Layer):
                raise TypeError(f"Sequential: expected Layer instances, got {layer!r}")
        self._check_layers_are_its_own()  # (before any of them is initialised again)
        if input_shape is None:
            first = self.layers[0]
            if not hasattr(first, "in_features"):
                raise ValueError("Sequential: input_shape is required when the first layer is not Linear")
            input_shape = (first.in_features,)
        if not isinstance(input_shape, (tuple, list)) or not input_shape or any(
                isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in input_shape):
            raise ValueError(f"Sequential: input_shape must be a tuple of positive integers, one example's shape "
                             f"such as (784,) or (1, 28, 28), got {input_shape!r}")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.seed = checked_seed("Sequential", seed)
        self.rng = np.random.default_rng(seed)
        for layer in self.layers:
            if initialize or not layer.params:  # Dropout takes the network's generator either way
                layer.initialize(self.rng)
        self._check_shapes()
        self.dtype = _float_dtype(dtype)
        self._pack()
        self.lock = threading.RLock()
        for layer in self.layers:  # (see _check_layers_are_its_own)
            layer.in_a_model = True

    # -- parameters ---------------------------------------------------------------------------

    def _pack(self):
        self.flat_params, self.flat_grads = pack(self.parameters(), dtype=self.dtype)
        for layer in self.layers:
            for name, buf in layer.buffers.items():
                layer.buffers[name] = buf.astype(self.dtype, copy=False)  # (a layer may hold its own too)

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def _check_layers_are_its_own(self) -> None:
        """A layer belongs to one model, once: packed into another model's flat buffer (or an
        optimizer's), or twice into this one, its weights would change under the other's feet."""
        seen: set[int] = set()
        params: set[int] = set()
        for i, layer in enumerate(self.layers):
            if id(layer) in seen:  # (a ReLU or a pooling layer too: each keeps its forward pass for backward)
                raise ValueError(f"Sequential: layer {i} ({type(layer).__name__}) appears twice; a layer is used "
                                 "once (build another of the same kind)")
            seen.add(id(layer))
            # (a layer without parameters too: a Dropout draws its masks from its model's generator)
            if getattr(layer, "in_a_model", False) or any(p.packed for p in layer.parameters()):
                raise ValueError(f"Sequential: layer {i} ({type(layer).__name__}) already belongs to another model "
                                 "(or an optimizer): build it anew, or copy.deepcopy the model")
            if any(id(p) in params for p in layer.parameters()):  # (its gradient would be one layer's)
                raise ValueError(f"Sequential: layer {i} ({type(layer).__name__}) has a Parameter of an earlier "
                                 "layer; a parameter belongs to one layer (weights cannot be tied)")
            params.update(id(p) for p in layer.parameters())

    # A model pickled (or deep-copied, which goes the same way) is unpickled array by array, which
    # would cut its parameters loose from its flat buffers: they are packed again, and the lock,
    # which cannot be pickled, is a new one.

    def __getstate__(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        bind(self.parameters(), self.flat_params, self.flat_grads)
        self.lock = threading.RLock()
        for layer in self.layers:
            layer.in_a_model = True

    def __copy__(self):
        raise TypeError("Sequential: a shallow copy would share the layers, which belong to one model: use "
                        "copy.deepcopy")

    def num_parameters(self) -> int:
        return int(self.flat_params.size)

    def to(self, dtype) -> Sequential:
        """Convert parameters (and buffers) to `dtype` in place, e.g. float64 for gradcheck."""
        self.dtype = _float_dtype(dtype)
        self._pack()
        return self

    def _check_shapes(self):
        """Walk an example's shape through the layers so a mismatch fails now, not mid-training,
        noting on the way the most values one example has in any layer's output or scratch
        (what `examples_per_pass` divides by)."""
        shape, largest = self.input_shape, 1
        for i, layer in enumerate(self.layers):
            if isinstance(layer, L.Linear) and shape != (layer.in_features,):
                raise ValueError(
                    f"Sequential: layer {i} Linear expects {layer.in_features} input features, "
                    f"but receives shape {shape}"
                )
            largest = max(largest, layer.scratch_size(shape))
            shape = layer.output_shape(shape)
            largest = max(largest, math.prod(shape))
        self.output_shape = shape
        self._largest_example = largest

    # -- passes -------------------------------------------------------------------------------

    def _input(self, x):
        """`x` as a batch of this network's dtype, checked against `input_shape`; a SciPy sparse
        matrix (hashed text) stays sparse, in a format whose rows can be sliced (CSR or CSC)."""
        if isinstance(x, np.ndarray) or not hasattr(x, "tocsr"):
            x = np.asarray(x, dtype=self.dtype)
        else:
            x = sliceable(x)
            x = x if x.dtype == self.dtype else x.astype(self.dtype)
        return self._checked_shape(x)

    def _checked_shape(self, x):
        """`x`, once it is a batch of `input_shape` examples, and sparse only before a first
        `Linear` (the one layer that multiplies a sparse matrix); a ValueError otherwise."""
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"Sequential: expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got shape {x.shape}")
        if not isinstance(x, np.ndarray) and not isinstance(self.layers[0], L.Linear):
            raise ValueError(f"Sequential: a sparse matrix can be the input of a first Linear layer only, "
                             f"not of {type(self.layers[0]).__name__}")
        return x

    def forward(self, x, training: bool = False):
        """Run every layer in order; each keeps what its backward needs. `training=True` turns on
        dropout and batch statistics (batch norm)."""
        x = self._input(x)
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def layer_outputs(self, x) -> list[np.ndarray]:
        """Every layer's output from one forward pass (evaluation mode), input side first.

        `outputs[i]` is what layer i hands on to layer i + 1, and `outputs[-1]` is the network's
        output, equal to `forward(x)`: `probabilities(outputs[-1])` equals `predict_proba(x)` (to
        rounding, where that runs a large batch in several passes: `examples_per_pass`), so a caller
        can show what every layer did and what the network concluded without a second pass. The
        arrays are the layers' own results (not copies), batch axis first.
        """
        outputs = []
        x = self._input(x)
        with self.lock:
            for layer in self.layers:
                x = layer.forward(x)
                outputs.append(x)
        return outputs

    def backward(self, grad, input_grad: bool = True, after_layer=None):
        """Backpropagate dLoss/dOutput through every layer, last to first; fills every `.grad`.

        Returns dLoss/dInput, or None with `input_grad=False`: training never needs the gradient
        of the data, so then the layers below the first one with parameters are not run backward
        at all, and that layer skips its dL/dx (for a first `Linear`, a matrix product as large as
        its forward one: a fifth of the training arithmetic of a 784-512-512-10 MLP).

        `after_layer(i)` is called once layer i's backward has run, when its parameter gradients
        are final: data-parallel training starts summing them over the processes then, while the
        layers below are still at work (`distributed.GradientBuckets`).
        """
        if np.shape(grad)[1:] != self.output_shape:  # (layers may be run forward one by one: no batch size here)
            raise ValueError(f"Sequential: the gradient has shape {np.shape(grad)}, the network's output has "
                             f"(N, {', '.join(map(str, self.output_shape))})")
        stop = 0
        if not input_grad:
            stop = next((i for i, layer in enumerate(self.layers) if layer.params), 0)
        lowest = self.layers[stop]
        lowest.needs_input_grad = input_grad
        try:
            for i in range(len(self.layers) - 1, stop - 1, -1):
                grad = self.layers[i].backward(grad)
                if after_layer is not None:
                    after_layer(i)
        finally:
            lowest.needs_input_grad = True  # (for this pass only: called on its own, a layer returns dL/dx)
        return grad if input_grad else None

    __call__ = forward

    def _scores(self, x, batch_size: int) -> np.ndarray:
        """The last layer's outputs for every example of `x`, computed `batch_size` at a time (or
        fewer: `examples_per_pass`)."""
        x = sliceable(x)
        if x.ndim == 0:
            raise ValueError(f"Sequential: expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {type(x.item()).__name__ if x.dtype == object else 'a single number'}")
        x = self._checked_shape(checked_inputs("Sequential", x, self.dtype))  # (an empty batch too)
        step = self.examples_per_pass(positive_int("Sequential", "batch_size", batch_size))
        with self.lock:  # (the layers keep what a backward pass would need: one pass at a time)
            outputs = [self.forward(x[i : i + step]) for i in range(0, x.shape[0], step)]
        scores = np.concatenate(outputs) if outputs else np.zeros((0,) + self.output_shape, self.dtype)
        # Finite inputs can still overflow inside the network (3e38 is a float32, 2·3e38 is not),
        # and a NaN score would come out as a confident class 0. min and max tell, as in checked_inputs.
        if scores.size and not (math.isfinite(scores.min()) and math.isfinite(scores.max())):
            raise ValueError(f"Sequential: the network's outputs overflowed to NaN or infinity: inputs or "
                             f"weights too large for its {self.dtype}")
        return scores

    def examples_per_pass(self, batch_size: int) -> int:
        """`batch_size`, or fewer where that many examples would make an array larger than
        `PASS_BYTES` in an evaluation-mode forward pass: a layer's output or its scratch (not the
        input, which is there already: a spam filter's 65,536 hashed features are sparse)."""
        return max(1, min(batch_size, PASS_BYTES // (self._largest_example * self.dtype.itemsize)))

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Class probabilities from the network's `outputs` (its last layer's, e.g. `forward(x)`).

        Raw scores go through softmax (several outputs) or σ (one output: the probability of
        class 1); outputs of a last `Softmax` or `Sigmoid` layer are probabilities already.
        """
        if isinstance(self.layers[-1], (L.Softmax, L.Sigmoid)):
            return outputs
        if outputs.shape[-1] == 1:
            return sigmoid(outputs)
        return softmax(outputs, axis=-1)

    def predicted_classes(self, outputs: np.ndarray) -> np.ndarray:
        """The predicted class for each row of the network's `outputs`: the most probable one, or
        1 where the probability of class 1 is above 0.5 for a single output.

        Decided on the raw scores: softmax keeps the order of the scores and σ(z) > 0.5 ⇔ z > 0,
        so turning them into probabilities first would only cost time.
        """
        if outputs.shape[-1] == 1:
            cut = 0.5 if isinstance(self.layers[-1], (L.Softmax, L.Sigmoid)) else 0.0
            return (outputs[:, 0] > cut).astype(np.int64)
        return outputs.argmax(axis=-1)

    def predict_proba(self, x, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities for every example of `x`, computed `batch_size` at a time."""
        return self.probabilities(self._scores(x, batch_size))

    def predict(self, x, batch_size: int = 1024) -> np.ndarray:
        """Predicted class for every example of `x` (see `predicted_classes`)."""
        return self.predicted_classes(self._scores(x, batch_size))

    # -- description --------------------------------------------------------------------------

    def summary(self) -> str:
        """A table of layers, output shapes and parameter counts, like Keras' `model.summary()`."""
        rows = [("Layer", "Output shape", "Params")]
        shape = self.input_shape
        rows.append(("Input", str((None,) + shape), "0"))
        for i, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            n = sum(p.size for p in layer.parameters())
            rows.append((f"{i}: {type(layer).__name__}", str((None,) + shape), f"{n:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 4)
        out = [line]
        for j, r in enumerate(rows):
            out.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}")
            if j == 0:
                out.append(line)
        out += [line, f"Total parameters: {self.num_parameters():,} ({self.dtype.name})", line]
        return "\n".join(out)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"

    # -- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """Copies of all arrays that define the model: the flat parameters and layer buffers."""
        state = {"params": self.flat_params.copy()}
        for i, layer in enumerate(self.layers):
            for name, buf in layer.buffers.items():
                state[f"layer{i}.{name}"] = buf.copy()
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore arrays from `state()`, checking every shape (all of them before any is written)."""
        params = state.get("params")
        if params is None or params.shape != self.flat_params.shape:
            got = None if params is None else params.shape
            raise ModelFileError(f"expected {self.flat_params.size} parameters, got {got}")
        buffers = [(buf, f"layer{i}.{name}") for i, layer in enumerate(self.layers)
                   for name, buf in layer.buffers.items()]
        for buf, key in buffers:
            if key not in state or state[key].shape != buf.shape:
                raise ModelFileError(f"buffer {key} is missing or has the wrong shape")
        with self.lock:  # (a prediction in another thread sees the old weights or the new, not half of each)
            self.flat_params[...] = params
            for buf, key in buffers:
                buf[...] = state[key]

    def config(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "dtype": self.dtype.name,
            "layers": [{"type": type(layer).__name__, "args": layer.config()} for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config: dict, initialize: bool = True, seed: int | None = None) -> Sequential:
        """The network `config()` describes; `initialize` and `seed` as in the constructor."""
        if not isinstance(config, dict):
            raise ModelFileError(f"invalid architecture: expected an object, got {type(config).__name__}")
        missing = [key for key in ("layers", "input_shape") if key not in config]
        if missing:
            raise ModelFileError(f"invalid architecture: no {' or '.join(map(repr, missing))}")
        dtype_name = config.get("dtype", "float32")
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise ModelFileError(f"invalid architecture: dtype must be float32 or float64, got {dtype_name!r}")
        try:
            built = []
            for i, spec in enumerate(config["layers"]):
                layer_type, args = _layer_spec(i, spec)
                built.append(layer_type(**args))
            return cls(built, input_shape=tuple(config["input_shape"]), seed=seed, dtype=DTYPES[dtype_name],
                       initialize=initialize)
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"invalid architecture: {exc}") from exc

    def save(self, directory, metadata: dict | None = None,
             arrays: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, Path]:
        """Save the model into `directory` so that a reader, or a crash, sees the model that was
        there or this one, whole, never a mix of the two.

        The network's arrays (`state()`) and each other group in `arrays` ({name: {array name:
        array}}, say a spam filter's idf weights) go to new files `<name>-<digest>.npz`; then
        model.json, which names them, is renamed into place: that rename is the commit. Files of
        earlier models are deleted after it, except those of the model just replaced, which a
        reader may have begun to load. Returns {name: path} of the files saved.
        """
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"Sequential.save: metadata must be a dict, got {type(metadata).__name__}")
        metadata = _as_json(metadata or {})  # (refused before anything is written)
        for name in arrays or {}:
            if name == "model" or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"Sequential.save: arrays need names of lower-case letters, digits and _, "
                                 f"other than 'model' (the network's own), got {name!r}")
        for i, layer in enumerate(self.layers):  # (a model file names its layers' types: a load builds them)
            if LAYER_TYPES.get(type(layer).__name__) is not type(layer):
                raise ValueError(f"Sequential.save: layer {i} ({type(layer).__name__}) is not a type a model file "
                                 "may name: put it in chainrule.network.LAYER_TYPES, with its array_shapes, to save it")
        groups = {"model": self.state(), **(arrays or {})}
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
                doc = {"format": "chainrule-model", "format_version": FORMAT_VERSION, **self.config(),
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

    @classmethod
    def load(cls, directory) -> Sequential:
        """Load a model saved by `save`; raises `ModelFileError` with a one-line reason."""
        model, _ = load_model(directory)
        return model


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
    path = directory / "model.json"
    if not path.is_file():
        raise ModelFileError(f"{path}: {link_problem(path) or _NO_DESCRIPTION}")
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


def load_model(directory) -> tuple[Sequential, dict]:
    """Load a model saved by `Sequential.save`; returns (model, metadata). Never unpickles.

    Every claim is checked before it costs anything: the architecture's types, then the number of
    parameters its layers need against the shapes in the `.npz` headers, and only then is the
    network built and the arrays read. So a 700-byte model.json asking for gigabytes of weights
    is refused in milliseconds. Raises `ModelFileError` with a one-line reason.
    """
    model, metadata, _ = load_model_and_files(directory)
    return model, metadata


def load_model_and_files(directory) -> tuple[Sequential, dict, dict[str, Path]]:
    """`load_model`, and {name: path} of the array files saved with the model (`model_files`),
    read from the same model.json, so that they belong to the model loaded even if another is
    being saved meanwhile."""
    meta_path, doc, files, weights_path, expected = _described(directory)
    model = _architecture(meta_path, doc)
    state = read_npz(weights_path, expected)
    for key, arr in state.items():
        arr = state[key] = cast_finite(arr, model.dtype)
        if arr is None:
            raise ModelFileError(f"{weights_path}: array {key} contains NaN, infinity or values beyond {model.dtype}")
        if key.endswith(".running_var") and np.any(arr < 0):  # a batch norm's variances
            raise ModelFileError(f"{weights_path}: array {key} holds negative variances")
    model.load_state(state)
    metadata = doc.get("metadata", {})
    return model, metadata if isinstance(metadata, dict) else {}, files


def cast_finite(values: np.ndarray, dtype) -> np.ndarray | None:
    """Saved `values` cast to the network's float `dtype`, or None where any is NaN or infinite
    once cast (a float64 beyond float32's range is infinite then, and would load as such)."""
    with np.errstate(over="ignore"):
        values = values.astype(dtype, copy=False)
    return values if np.all(np.isfinite(values)) else None


def check_model_files(directory) -> None:
    """Raise ModelFileError where the model saved in `directory` cannot be loaded, as far as its
    model.json and its weights' headers tell (the arrays are not read): how a program choosing
    among saved models passes over a damaged one at the cost of a few hundred bytes read."""
    meta_path, doc, *_ = _described(directory)
    _architecture(meta_path, doc)


def _architecture(meta_path: Path, doc: dict) -> Sequential:
    """The network model.json describes, its weights not yet read (they all come from the file)."""
    try:
        return Sequential.from_config(doc, initialize=False)
    except ModelFileError as exc:
        raise ModelFileError(f"{meta_path}: {exc}") from None


def _described(directory) -> tuple[Path, dict, dict[str, Path], Path, dict[str, tuple[int, ...]]]:
    """(model.json's path, its document, the files it names, the weights' path, {array: shape})
    of the model in `directory`, once model.json and the weights' headers agree."""
    directory = model_directory(directory)
    meta_path = description_path(directory)
    doc = _read_description(meta_path)
    files = _files(doc, directory)
    weights_path = files.get("model", directory / "model.npz")
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path}: not found (model.json names it as the model's weights)")
    n_params, buffers = _expected_arrays(doc)
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
    return meta_path, doc, files, weights_path, expected


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


_NO_DESCRIPTION = "not found (a model directory holds model.json and the weights it names)"


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
        doc = json.loads(text)
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


def _layer_spec(i: int, spec) -> tuple[type, dict]:
    """The class and arguments of layer `i` as a model description gives it, checked."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not isinstance(kind, str):
        raise ModelFileError(f"invalid architecture: layer {i} is not an object with a 'type'")
    if kind not in LAYER_TYPES:
        raise ModelFileError(f"unknown layer type {kind!r}")
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise ModelFileError(f"layer {kind} has args {args!r}, expected an object")
    return LAYER_TYPES[kind], args


def _expected_arrays(doc: dict) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(number of parameters, {buffer name: shape}) that the layers described in `doc` hold, from
    their arguments alone (`Layer.array_shapes`): nothing is allocated."""
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelFileError(f"invalid architecture: 'layers' must be a non-empty list, got {type(layers).__name__}")
    n_params, buffers = 0, {}
    for i, spec in enumerate(layers):
        layer_type, args = _layer_spec(i, spec)
        try:
            params, bufs = layer_type.array_shapes(**args)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"invalid architecture: layer {i} ({layer_type.__name__}): {exc}") from exc
        n_params += sum(math.prod(shape) for shape in params.values())
        buffers.update({f"layer{i}.{name}": shape for name, shape in bufs.items()})
    return n_params, buffers
