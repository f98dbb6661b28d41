"""`Sequential`: a network as a stack of layers, with its parameters in one flat buffer.

The forward pass runs the layers first to last; the backward pass runs them last to first,
each turning dLoss/dOutput into dLoss/dInput (the chain rule, one layer at a time).

A model is saved as a directory, in the format `chainrule.model_file` writes and checks;
`load_model` here builds the network such a directory describes and fills in its weights.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from chainrule import layers as L
from chainrule.checks import positive_int
from chainrule.errors import ModelFileError
from chainrule.functional import sigmoid, softmax
from chainrule.model_file import (
    ModelDescription,
    checked_description,
    layer_spec,
    read_weights,
    read_whole,
    save_model,
)
from chainrule.parameter import Parameter, bind, pack

# The dtypes a network computes in, by the names its config (and so model.json) gives them.
DTYPES = {"float32": np.float32, "float64": np.float64}

# predict and evaluate keep each layer's output and scratch under this many bytes per forward pass.
# A convolution's X_col for 1,000 digits is 226 MB in the `cnn` preset; in passes of 8 MB (37
# digits) the peak memory of predicting 10,000 falls from 1,028 to 114 MB, and it runs faster
# (2.37 -> 1.70 s; LeNet-5 0.52 -> 0.31 s in passes of 102): small arrays stay in the caches and
# are reused, where large ones are faulted in afresh every pass. (8 MB was the fastest of 4-64 MB.)
PASS_BYTES = 8 << 20
# A model file is untrusted input, and a few bytes of its architecture can ask for arrays no network
# needs: 22 parameters, a Conv2D padded by 80,000 zeros, made one image's pass 95 GiB. A file whose
# layers need an array larger than this for one example (an output, or a convolution's X_col) is
# refused before it is built: twice VGG-16's largest on a 224x224 photo (115 MB), a thousand times
# the `cnn` preset's (226 KB).
MAX_EXAMPLE_BYTES = 256 << 20
# ...and what one example's pass holds in all its layers at once (outputs, and each convolution's
# X_col, which it keeps for the next batch) is refused beyond this: each array within the limit
# above, 1x1 convolutions after one padded by 2,700 zeros held 354 MB more each (10 of them, 4.1
# GB). VGG-16's convolutions hold 422 MB for a 224x224 photo.
MAX_EXAMPLE_TOTAL_BYTES = 1 << 30


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
    return checked_numbers(where, "inputs", x, dtype)


def checked_numbers(where: str, what: str, x, dtype: np.dtype):
    """`x` as `sliceable` gives it, once checked as `checked_inputs` checks the inputs, and
    `fit` the targets (`what`, in the messages)."""
    if isinstance(x, np.ma.MaskedArray):  # (its mask would be dropped: the hidden values read as data)
        raise ValueError(f"{where}: the {what} are a masked array: fill or drop the masked values first")
    x = sliceable(x)
    if x.dtype.kind in "cmM":  # (NumPy would drop imaginary parts with a warning, and read dates as day counts)
        raise ValueError(f"{where}: the {what} must be real numbers, got {x.dtype}")
    if x.dtype.kind in "OUSV":  # (from a list holding something else than numbers)
        if x.dtype.kind == "O" and any(value is None for value in x.flat):  # (which NumPy would make NaN)
            raise ValueError(f"{where}: the {what} must be numbers, got None (a missing value: fill or drop it first)")
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: the {what} must be numbers ({str(exc)[:80]})") from None
    values = x if isinstance(x, np.ndarray) else x.data  # (a sparse matrix's stored values)
    if values.dtype.kind == "f" and values.size:
        # min and max propagate NaN and are ±inf if any value is, so checking those two numbers is
        # exact, and unlike np.isfinite(x) it builds no temporary as large as the data set.
        low, high = float(values.min()), float(values.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{where}: the {what} contain NaN or infinity")
        dtype = np.dtype(dtype)  # (only a wider float can hold what is inf once cast to the model's)
        if values.dtype.itemsize > dtype.itemsize and max(-low, high) > float(np.finfo(dtype).max):
            raise ValueError(f"{where}: the {what} hold values beyond the model's {dtype} range "
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
        (what `examples_per_pass` divides by), and in all of them together."""
        shape, largest, total = self.input_shape, 1, 0
        for i, layer in enumerate(self.layers):
            try:
                scratch = layer.scratch_size(shape)
                shape = layer.output_shape(shape)  # (each layer refuses a shape it cannot take)
            except ValueError as exc:
                raise ValueError(f"Sequential: layer {i} {exc}") from None
            largest = max(largest, scratch, math.prod(shape))
            total += scratch + math.prod(shape)
        self.output_shape = shape
        self._largest_example, self._example_total = largest, total

    # -- passes -------------------------------------------------------------------------------

    def _input(self, x):
        """`x` as a batch of this network's dtype, checked against `input_shape`; a SciPy sparse
        matrix (hashed text) stays sparse, in a format whose rows can be sliced (CSR or CSC)."""
        if isinstance(x, np.ndarray) or not hasattr(x, "tocsr"):
            x = np.asarray(x, dtype=self.dtype)
        else:
            x = sliceable(x)
            x = x if x.dtype == self.dtype else x.astype(self.dtype)
        return self.checked_shape(x)

    def checked_shape(self, x, where: str = "Sequential"):
        """`x`, once it is a batch of `input_shape` examples, and sparse only before a first
        `Linear` (the one layer that multiplies a sparse matrix); a ValueError otherwise, that
        begins with `where` (`fit` checks the whole data set so, naming it by its own shape
        before the first step, not by its first batch's)."""
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{where}: expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got shape {x.shape}")
        if not isinstance(x, np.ndarray) and not isinstance(self.layers[0], L.Linear):
            raise ValueError(f"{where}: a sparse matrix can be the input of a first Linear layer only, "
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
        arrays are the layers' own results (not copies), batch axis first. Outputs that overflowed
        are a ModelFileError, as in `predict` (`checked_outputs`).
        """
        outputs = []
        x = self._input(x)
        with self.lock:
            for layer in self.layers:
                x = layer.forward(x)
                outputs.append(x)
            self.checked_outputs(x)
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
        x = self.checked_shape(checked_inputs("Sequential", x, self.dtype))  # (an empty batch too)
        step = self.examples_per_pass(positive_int("Sequential", "batch_size", batch_size))
        with self.lock:  # (the layers keep what a backward pass would need: one pass at a time)
            outputs = [self.forward(x[i : i + step]) for i in range(0, x.shape[0], step)]
        return self.checked_outputs(np.concatenate(outputs) if outputs else
                                    np.zeros((0,) + self.output_shape, self.dtype))

    def checked_outputs(self, outputs: np.ndarray) -> np.ndarray:
        """`outputs` (the network's, from an evaluation-mode pass), once found finite; else a
        ModelFileError. Every prediction goes through here: `predict`, `predict_proba`,
        `layer_outputs`, and the passes applications run themselves (the spam filter's, the web
        app's).

        Finite inputs and finite weights can still overflow inside the network (3e38 is a float32,
        2·3e38 is not): a model file whose weights are finite but huge passes every check of
        `load_model`, and its NaN scores came out as a confident class 0, or as a probability of
        NaN. min and max propagate NaN and are ±inf if any value is, as in `checked_inputs`: two
        reductions over the outputs, no temporary array.
        """
        if outputs.size and not (math.isfinite(outputs.min()) and math.isfinite(outputs.max())):
            raise ModelFileError(f"the model's outputs overflowed to NaN or infinity: its weights, or its inputs, "
                                 f"are too large for {self.dtype}")
        return outputs

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
                layer_type, args = layer_spec(i, spec)
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
        there or this one, whole, never a mix of the two (`model_file.save_model` says how).

        The network's arrays (`state()`) and each other group in `arrays` ({name: {array name:
        array}}, say a spam filter's idf weights) go to new files `<name>-<digest>.npz`, named in
        model.json with the architecture (`config()`) and `metadata` (a dict JSON can hold).
        Returns {name: path} of the files saved.
        """
        return save_model(self, directory, metadata, arrays)


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
    """`load_model`, and {name: path} of the array files saved with the model (`model_file.model_files`),
    read from the same model.json, so that they belong to the model loaded even if another is
    being saved meanwhile (and read again if saves deleted them meanwhile: `read_whole`)."""
    return read_whole(directory, _load)


def _load(directory) -> tuple[Sequential, dict, dict[str, Path]]:
    """`load_model_and_files`, reading model.json once."""
    described = checked_description(directory)
    model = _architecture(described)
    model.load_state(read_weights(described, model.dtype))
    metadata = described.doc.get("metadata", {})
    return model, metadata if isinstance(metadata, dict) else {}, described.files


def check_model_files(directory) -> None:
    """Raise ModelFileError where the model saved in `directory` cannot be loaded, as far as its
    model.json and its weights' headers tell (the arrays are not read): how a program choosing
    among saved models passes over a damaged one at the cost of a few hundred bytes read."""
    read_whole(directory, lambda d: _architecture(checked_description(d)))


def _architecture(described: ModelDescription) -> Sequential:
    """The network model.json describes, its weights not yet read (they all come from the file),
    its passes' arrays checked, from its layers' shapes, to be within `MAX_EXAMPLE_BYTES` each and
    `MAX_EXAMPLE_TOTAL_BYTES` together."""
    try:
        model = Sequential.from_config(described.doc, initialize=False)
    except ModelFileError as exc:
        raise ModelFileError(f"{described.path}: {exc}") from None
    needs = model._largest_example * model.dtype.itemsize
    if needs > MAX_EXAMPLE_BYTES:
        raise ModelFileError(f"{described.path}: invalid architecture: one example's pass needs an array of "
                             f"{needs:,} bytes (a model file may ask for {MAX_EXAMPLE_BYTES:,} at most)")
    holds = model._example_total * model.dtype.itemsize
    if holds > MAX_EXAMPLE_TOTAL_BYTES:
        raise ModelFileError(f"{described.path}: invalid architecture: one example's pass holds {holds:,} bytes in "
                             f"all its layers (a model file may ask for {MAX_EXAMPLE_TOTAL_BYTES:,} at most)")
    return model
