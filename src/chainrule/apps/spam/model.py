"""The spam filter as one object, `SpamModel`, and its files.

A filter is a network that maps a hashed message to one logit, the hashing that feeds it (its
config and, for mail, the idf weights of its buckets) and two cut-offs on P(spam):

    spam    if P(spam) >= spam cut-off
    ham     if P(spam) <  ham cut-off
    unsure  otherwise

On disk, a model directory holds `model.npz` + `model.json` (the network and its metadata:
hashing config, cut-offs, how it was trained), `idf.npz` (the idf weights, when the hashing uses
them) and `replay.npz` (training examples that `learn` rehearses). Every file is written
atomically and read back validated, never unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import chainrule as cr
from chainrule.apps.spam.features import featurize_chunk, map_chunks
from chainrule.data.text import Hasher, HashingConfig
from chainrule.distributed import World
from chainrule.files import atomic_write_npz
from chainrule.functional import sigmoid
from chainrule.network import model_directory

TASK = "spam"
SPAM_FORMAT = 1
REPLAY_FILE = "replay.npz"
IDF_FILE = "idf.npz"  # the hashing's idf weights, when the model's hashing config has `idf` on
REPLAY_SIZE = 2000  # examples kept for `learn` to rehearse, so new mail does not overwrite old lessons


@dataclass
class SpamModel:
    """A loaded filter: the network, its metadata, the hashing that feeds it, and its cut-offs."""

    model: cr.Sequential
    metadata: dict
    config: HashingConfig
    spam_cutoff: float
    ham_cutoff: float
    directory: Path | None = None
    idf: np.ndarray | None = None  # the hashing's bucket weights (`HashingConfig.idf`)

    @property
    def hasher(self) -> Hasher:
        return Hasher(self.config, self.idf)

    def logits(self, x: sp.csr_matrix, batch_size: int = 2048) -> np.ndarray:
        """The network's logit, log(P(spam) / P(ham)), for every row of `x`."""
        if x.shape[0] == 0:
            return np.zeros(0)
        return np.concatenate([self.model.forward(x[i:i + batch_size]).reshape(-1)
                               for i in range(0, x.shape[0], batch_size)]).astype(np.float64)

    def probabilities(self, x: sp.csr_matrix, batch_size: int = 2048) -> np.ndarray:
        """P(spam) for every row of `x`."""
        return sigmoid(self.logits(x, batch_size))

    def score(self, items: list[tuple[str, bytes | str]], processes: int | None = None,
              world: World | None = None) -> tuple[np.ndarray, list[str | None]] | None:
        """(P(spam), problems) of raw ("mail", bytes) / ("sms", text) items: `featurize` and the
        forward pass together, chunk by chunk, so that the network runs on every core too.

        With a `world` of several processes, every rank calls it and only rank 0's `items` count:
        rank 0 deals them out in contiguous parts, each rank scores its part on its cores, and
        rank 0 gets the results of all in input order; the other ranks get None.
        """
        world = world or World()
        if world.size > 1:
            parts = [items[slice(*world.shard(len(items), r))] for r in range(world.size)] if world.rank == 0 else None
            scored = world.gather(self.score(world.scatter(parts), processes))
            if scored is None:
                return None
            return np.concatenate([p for p, _ in scored]), [q for _, problems in scored for q in problems]
        hasher = self.hasher

        def chunk(part):
            x, problems = featurize_chunk(hasher, part)
            return self.probabilities(x), problems

        parts = map_chunks(chunk, items, processes)
        return np.concatenate([p for p, _ in parts]), [q for _, problems in parts for q in problems]

    def verdicts(self, p: np.ndarray) -> list[str]:
        return [verdict(float(q), self.spam_cutoff, self.ham_cutoff) for q in p]


def verdict(p: float, spam_cutoff: float, ham_cutoff: float) -> str:
    if p >= spam_cutoff:
        return "spam"
    if p < ham_cutoff:
        return "ham"
    return "unsure"


def build_network(n_features: int, hidden: tuple[int, ...] = (32,), dropout: float = 0.2,
                  seed: int | None = 0) -> cr.Sequential:
    """x (n_features, sparse) -> [Linear -> ReLU -> Dropout] per hidden width -> Linear -> 1 logit."""
    layers: list = []
    width = n_features
    for h in hidden:
        layers += [cr.Linear(width, h), cr.ReLU()]
        if dropout:
            layers.append(cr.Dropout(dropout))
        width = h
    layers.append(cr.Linear(width, 1, init="glorot"))
    return cr.Sequential(layers, input_shape=(n_features,), seed=seed)


def merge_committee(nets: list[cr.Sequential], n_features: int, hidden: tuple[int, ...],
                    dropout: float) -> cr.Sequential:
    """One network whose logit is the mean of the logits of `nets` (all built by `build_network`
    with the same `hidden`), exactly.

    Side by side, k networks are one network k times as wide: the first layer's weights are
    concatenated column-wise, every further hidden layer is block-diagonal (unit j of member i
    sees only member i's units), and the output layer stacks the members' output weights, divided
    by k, with the mean bias:  logit = Σ_i (h_i · w_i + b_i) / k.  Dropout is off at inference, so
    the merged network computes exactly the committee's mean — at the cost of one forward pass.
    """
    k = len(nets)
    merged = build_network(n_features, tuple(k * h for h in hidden), dropout, seed=None)
    linears = [[layer for layer in net.layers if isinstance(layer, cr.Linear)] for net in nets]
    target = [layer for layer in merged.layers if isinstance(layer, cr.Linear)]
    last = len(target) - 1
    for depth, layer in enumerate(target):
        members = [m[depth] for m in linears]
        if depth == 0:
            layer.weight.data[...] = np.hstack([m.weight.data for m in members])
        elif depth < last:
            layer.weight.data[...] = 0.0
            r = c = 0
            for m in members:
                rows, cols = m.weight.shape
                layer.weight.data[r:r + rows, c:c + cols] = m.weight.data
                r, c = r + rows, c + cols
        else:
            layer.weight.data[...] = np.vstack([m.weight.data for m in members]) / k
        if depth < last:
            layer.bias.data[...] = np.concatenate([m.bias.data for m in members])
        else:
            layer.bias.data[...] = np.mean([m.bias.data for m in members], axis=0)
    return merged


def load_spam_model(directory, spam_cutoff: float | None = None, ham_cutoff: float | None = None) -> SpamModel:
    """Load a model saved by `spam train`; raises ModelFileError if it is not a spam model."""
    directory = model_directory(directory)  # (files beside model.json: idf, replay)
    model, metadata = cr.load_model(directory)
    if metadata.get("task") != TASK:
        raise cr.ModelFileError(f"{directory}: not a spam model (task {metadata.get('task')!r})")
    try:
        config = HashingConfig.from_dict(metadata["hashing"])
        cut = metadata["cutoffs"]
        spam_c = float(cut["spam"] if spam_cutoff is None else spam_cutoff)
        ham_c = float(cut["ham"] if ham_cutoff is None else ham_cutoff)
    except (KeyError, TypeError, ValueError) as exc:
        raise cr.ModelFileError(f"{directory}: invalid spam metadata ({exc})") from exc
    if not (0.0 <= ham_c <= spam_c <= 1.0):
        raise cr.ModelFileError(f"cut-offs must satisfy 0 <= ham ({ham_c}) <= spam ({spam_c}) <= 1")
    if model.layers[0].in_features != config.n_features:
        raise cr.ModelFileError(f"{directory}: network input {model.layers[0].in_features} != "
                                f"{config.n_features} hash buckets")
    return SpamModel(model, metadata, config, spam_c, ham_c, directory, load_idf(directory, config))


def load_idf(directory, config: HashingConfig) -> np.ndarray | None:
    """The idf weights saved beside a model whose hashing uses them (None if it does not);
    validated, never unpickled."""
    if not config.idf:
        return None
    n_features = config.n_features
    path = Path(directory) / IDF_FILE
    if not path.is_file():
        raise cr.ModelFileError(f"{path}: not found (the model's hashing weights buckets by idf)")
    try:
        with np.load(path, allow_pickle=False) as z:
            idf = z["idf"]
    except Exception as exc:  # zip/KeyError/ValueError: all mean "not a valid idf file"
        raise cr.ModelFileError(f"{path}: not a valid idf file ({exc})") from exc
    if idf.shape != (n_features,) or idf.dtype.kind != "f" or not np.all(np.isfinite(idf)) or idf.min() < 1:
        raise cr.ModelFileError(f"{path}: expected {n_features} finite idf weights >= 1, "
                                f"got shape {idf.shape}, dtype {idf.dtype}")
    return idf.astype(np.float32)


def save_model(bundle: SpamModel, directory) -> None:
    """Write the network and its metadata, and the idf weights if the hashing has them; each file
    atomically, the idf first, so a model.json that asks for one never lacks it."""
    if bundle.config.idf:
        if bundle.idf is None:
            raise ValueError("the model's hashing config has idf on but it holds no idf weights")
        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write_npz(Path(directory) / IDF_FILE, {"idf": np.asarray(bundle.idf, np.float32)})
    bundle.model.save(directory, bundle.metadata)
    bundle.directory = Path(directory)


def save_replay(directory, x: sp.csr_matrix, y: np.ndarray) -> None:
    x = x.tocsr()
    atomic_write_npz(Path(directory) / REPLAY_FILE, {
        "data": x.data.astype(np.float32), "indices": x.indices.astype(np.int32),
        "indptr": x.indptr.astype(np.int64), "shape": np.array(x.shape, np.int64),
        "labels": np.asarray(y, np.int64)})


def load_replay(directory, n_features: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The replay sample (empty if there is none); validated, never unpickled."""
    path = Path(directory) / REPLAY_FILE
    if not path.is_file():
        return sp.csr_matrix((0, n_features), dtype=np.float32), np.zeros(0, np.int64)
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(s) for s in z["shape"])
            x = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            y = z["labels"].astype(np.int64)
        x.check_format(full_check=True)
    except Exception as exc:  # zip/KeyError/ValueError: all mean "not a valid replay file"
        raise cr.ModelFileError(f"{path}: not a valid replay sample ({exc})") from exc
    if shape[1] != n_features or shape[0] != len(y) or not set(np.unique(y)) <= {0, 1}:
        raise cr.ModelFileError(f"{path}: replay sample does not match the model")
    return x.astype(np.float32), y
