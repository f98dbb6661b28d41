"""`Sequential`: a network as a stack of layers, with its parameters in one flat buffer.

The forward pass runs the layers first to last; the backward pass runs them last to first,
each turning dLoss/dOutput into dLoss/dInput (the chain rule, one layer at a time).
A model is saved as two files in a directory: `model.npz` (arrays only, loaded with
``allow_pickle=False``, so opening a model file can never run code) and `model.json`
(architecture and metadata), both validated on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chainrule import conv as C
from chainrule import layers as L
from chainrule.errors import ModelFileError
from chainrule.files import atomic_write_bytes, atomic_write_npz
from chainrule.functional import sigmoid, softmax
from chainrule.parameter import Parameter, pack

FORMAT_VERSION = 1

# Names a saved model may use for its layers. Loading refuses anything else.
LAYER_TYPES: dict[str, type[L.Layer]] = {
    cls.__name__: cls
    for cls in (L.Linear, L.ReLU, L.LeakyReLU, L.Sigmoid, L.Tanh, L.Softmax, L.Dropout, L.Flatten,
                C.Conv2D, C.MaxPool2D, C.AvgPool2D, C.BatchNorm)
}

DTYPES = {"float32": np.float32, "float64": np.float64}


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
    """

    def __init__(self, layers, input_shape=None, seed: int | None = None, dtype=np.float32,
                 initialize: bool = True):
        self.layers: list[L.Layer] = list(layers)
        if not self.layers:
            raise ValueError("Sequential: needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, L.Layer):
                raise TypeError(f"Sequential: expected Layer instances, got {layer!r}")
        if input_shape is None:
            first = self.layers[0]
            if not hasattr(first, "in_features"):
                raise ValueError("Sequential: input_shape is required when the first layer is not Linear")
            input_shape = (first.in_features,)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        for layer in self.layers:
            if initialize or not layer.params:  # Dropout takes the network's generator either way
                layer.initialize(self.rng)
        self._check_shapes()
        self.dtype = np.dtype(dtype)
        self._pack()

    # -- parameters ---------------------------------------------------------------------------

    def _pack(self):
        self.flat_params, self.flat_grads = pack(self.parameters(), dtype=self.dtype)
        for layer in self.layers:
            for name, buf in layer.buffers.items():
                layer.buffers[name] = buf.astype(self.dtype)

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def num_parameters(self) -> int:
        return int(self.flat_params.size)

    def to(self, dtype) -> Sequential:
        """Convert parameters (and buffers) to `dtype` in place, e.g. float64 for gradcheck."""
        self.dtype = np.dtype(dtype)
        self._pack()
        return self

    def _check_shapes(self):
        """Walk an example's shape through the layers so a mismatch fails now, not mid-training."""
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            if isinstance(layer, L.Linear) and shape != (layer.in_features,):
                raise ValueError(
                    f"Sequential: layer {i} Linear expects {layer.in_features} input features, "
                    f"but receives shape {shape}"
                )
            shape = layer.output_shape(shape)
        self.output_shape = shape

    # -- passes -------------------------------------------------------------------------------

    def _input(self, x):
        """`x` as this network's dtype; a SciPy sparse matrix (hashed text) is passed on as it is."""
        if isinstance(x, np.ndarray) or not hasattr(x, "tocsr"):
            x = np.asarray(x, dtype=self.dtype)
        return x

    def forward(self, x, training: bool = False):
        """Run every layer in order. `training=True` enables dropout and caches for backward."""
        x = self._input(x)
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def layer_outputs(self, x) -> list[np.ndarray]:
        """Every layer's output from one forward pass (evaluation mode), input side first.

        `outputs[i]` is what layer i hands on to layer i + 1, and `outputs[-1]` is the network's
        output, equal to `forward(x)`: `probabilities(outputs[-1])` equals `predict_proba(x)`, so
        a caller can show what every layer did and what the network concluded without a second
        pass. The arrays are the layers' own results (not copies), batch axis first.
        """
        outputs = []
        x = self._input(x)
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
        stop = 0
        if not input_grad:
            stop = next((i for i, layer in enumerate(self.layers) if layer.params), 0)
        for i in range(len(self.layers) - 1, stop - 1, -1):
            layer = self.layers[i]
            layer.needs_input_grad = input_grad or i > stop
            grad = layer.backward(grad)
            if after_layer is not None:
                after_layer(i)
        return grad if input_grad else None

    __call__ = forward

    def _scores(self, x, batch_size: int) -> np.ndarray:
        """The last layer's outputs for every example of `x`, computed `batch_size` at a time."""
        outputs = [self.forward(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0,) + self.output_shape, self.dtype)

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
        """Restore arrays from `state()`, checking every shape."""
        params = state.get("params")
        if params is None or params.shape != self.flat_params.shape:
            got = None if params is None else params.shape
            raise ModelFileError(f"expected {self.flat_params.size} parameters, got {got}")
        self.flat_params[...] = params
        for i, layer in enumerate(self.layers):
            for name, buf in layer.buffers.items():
                key = f"layer{i}.{name}"
                if key not in state or state[key].shape != buf.shape:
                    raise ModelFileError(f"buffer {key} is missing or has the wrong shape")
                buf[...] = state[key]

    def config(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "dtype": self.dtype.name,
            "layers": [{"type": type(layer).__name__, "args": layer.config()} for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config: dict, initialize: bool = True) -> Sequential:
        try:
            built = []
            for spec in config["layers"]:
                kind = spec["type"]
                if kind not in LAYER_TYPES:
                    raise ModelFileError(f"unknown layer type {kind!r}")
                args = spec.get("args", {})
                if not isinstance(args, dict):
                    raise ModelFileError(f"layer {kind} has args {args!r}, expected an object")
                built.append(LAYER_TYPES[kind](**args))
            dtype = DTYPES[config.get("dtype", "float32")]
            return cls(built, input_shape=tuple(config["input_shape"]), dtype=dtype, initialize=initialize)
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"invalid architecture: {exc}") from exc

    def save(self, directory, metadata: dict | None = None) -> None:
        """Write `model.npz` and `model.json` into `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_npz(directory / "model.npz", self.state())
        doc = {"format": "chainrule-model", "format_version": FORMAT_VERSION, **self.config()}
        doc["metadata"] = metadata or {}
        atomic_write_bytes(directory / "model.json", json.dumps(doc, indent=2).encode())

    @classmethod
    def load(cls, directory) -> Sequential:
        """Load a model saved by `save`; raises `ModelFileError` with a one-line reason."""
        model, _ = load_model(directory)
        return model


def model_directory(path) -> Path:
    """The model directory `path` names: the directory itself, or the one holding a model.json or
    model.npz it points at (so either may be given on the command line)."""
    path = Path(path)
    if path.is_file() and path.name in ("model.json", "model.npz"):
        return path.parent
    return path


def load_model(directory) -> tuple[Sequential, dict]:
    """Load `directory/model.json` + `model.npz`; returns (model, metadata). Never unpickles."""
    directory = model_directory(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.npz"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise ModelFileError(f"{p}: not found (a model directory holds model.json and model.npz)")
    try:
        doc = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != "chainrule-model":
        raise ModelFileError(f"{meta_path}: not a chainrule model description")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{meta_path}: format version {version!r}, this chainrule reads {FORMAT_VERSION}")
    model = Sequential.from_config(doc, initialize=False)  # every weight comes from the file
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            state = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile/ValueError/OSError: all mean "not a readable npz"
        raise ModelFileError(f"{weights_path}: not a readable .npz file ({exc})") from exc
    for key, arr in state.items():
        if arr.dtype.kind != "f":
            raise ModelFileError(f"{weights_path}: array {key} has dtype {arr.dtype}, expected floats")
        if not np.all(np.isfinite(arr)):
            raise ModelFileError(f"{weights_path}: array {key} contains NaN or infinity")
    try:
        model.load_state(state)
    except ModelFileError as exc:
        raise ModelFileError(f"{weights_path}: {exc}") from exc
    metadata = doc.get("metadata", {})
    return model, metadata if isinstance(metadata, dict) else {}

