"""The spam filter as one object, `SpamModel`, and its files.

A filter is a network that maps a hashed message to one logit, the hashing that feeds it (its
config and, for mail, the idf weights of its buckets) and two cut-offs on P(spam):

    spam    if P(spam) >= spam cut-off
    ham     if P(spam) <  ham cut-off
    unsure  otherwise

On disk, a filter is a model directory (`chainrule.Sequential.save`): `model.json` (the network's
architecture and metadata: hashing config, cut-offs, how it was trained) and the array files it
names: the network's weights, the idf weights when the hashing uses them, the replay sample of
training examples that `learn` rehearses, and the lessons `learn` has recorded (`Lessons`). They
are saved together in one commit, so a reader never sees the weights of one model with the idf,
replay sample or lessons of another, and are read back validated, sizes first, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import chainrule as cr
from chainrule.apps.spam.features import featurize_chunk, item_tokens, map_chunks
from chainrule.checks import is_real
from chainrule.data.text import Hasher, HashingConfig
from chainrule.distributed import World
from chainrule.errors import UserError
from chainrule.files import npz_headers, read_npz
from chainrule.functional import sigmoid
from chainrule.model_file import cast_finite, model_directory, named_file, read_whole
from chainrule.network import load_model_and_files

TASK = "spam"
SPAM_FORMAT = 1
INPUTS = ("mail", "sms")  # what a filter may have been trained on (the metadata's "inputs")
REPLAY_SIZE = 2000  # examples kept for `learn` to rehearse, so new mail does not overwrite old lessons
LESSONS_KEPT = 50_000  # lessons remembered (21 bytes each); beyond that the oldest are forgotten
MAX_FOLDERS = 1000  # folders whose last run `spam learn --since-last` remembers


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
    files: dict[str, Path] = field(default_factory=dict)  # the model's array files (`cr.model_files`)

    @property
    def hasher(self) -> Hasher:
        return Hasher(self.config, self.idf)

    def untrained_on(self, kind: str) -> str | None:
        """A warning if the filter was trained on no `kind` ("mail" or "sms") messages, else None:
        it still scores them, but from words and habits of the other kind."""
        inputs = self.metadata.get("inputs", list(INPUTS))
        if kind in inputs:
            return None
        return (f"{self.directory or 'the filter'} was trained on {' and '.join(inputs)} only; its verdicts on "
                f"{kind} messages are a guess from the other kind's words")

    def logits(self, x: sp.csr_matrix, batch_size: int = 2048) -> np.ndarray:
        """The network's logit, log(P(spam) / P(ham)), for every row of `x`; a ModelFileError
        where it overflowed (`Sequential.checked_outputs`)."""
        if x.shape[0] == 0:
            return np.zeros(0)
        with self.model.lock:  # (the layers keep what a backward pass would need: one pass at a time)
            z = np.concatenate([self.model.forward(x[i:i + batch_size]).reshape(-1)
                                for i in range(0, x.shape[0], batch_size)])
        return self.model.checked_outputs(z).astype(np.float64)

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
        if len(items) == 1:  # one message, as a daemon checks them
            p, problem = self._score_one(*items[0])
            return np.array([p]), [problem]
        hasher = self.hasher

        def chunk(part):
            x, problems = featurize_chunk(hasher, part)
            return self.probabilities(x), problems

        parts = map_chunks(chunk, items, processes)
        return np.concatenate([p for p, _ in parts]), [q for _, problems in parts for q in problems]

    # Equivalent to `score([(kind, data)])` the batch way (`featurize_chunk`, then `probabilities`)
    # for one message, at a fraction of its fixed cost: the row is hashed without a CSR matrix
    # (`Hasher.row`), and the first layer's product with a row of k non-zeros x_i in buckets b_i,
    # x·W1 = Σ_i x_i W1[b_i], reads just those k rows of W1 and adds them one after another in
    # float32, in the order of the buckets, as SciPy's sparse product does; the layers above see
    # the same (1, width) array as in a batch of one.
    def _score_one(self, kind: str, data: bytes | str) -> tuple[float, str | None]:
        tokens, problem = item_tokens(kind, data, self.config)
        buckets, values = self.hasher.row(tokens)
        first, *rest = self.model.layers
        with self.model.lock:
            h = np.multiply(values[:, None], first.weight.data[buckets]).sum(axis=0, keepdims=True)
            if first.bias is not None:
                h += first.bias.data
            for layer in rest:
                h = layer.forward(h)
            h = self.model.checked_outputs(h)
            return float(sigmoid(h.reshape(-1).astype(np.float64))[0]), problem

    def verdicts(self, p: np.ndarray) -> list[str]:
        return [verdict(float(q), self.spam_cutoff, self.ham_cutoff) for q in p]

    def digest(self) -> str:
        """SHA-256 of what `score` reads: the network (its layers and arrays), the hashing and its
        idf weights. Copies of one filter have the same digest; a filter saved anew, another."""
        digest = hashlib.sha256(json.dumps([self.model.config(), self.config.to_dict()]).encode())
        for array in [*self.model.state().values(), *([] if self.idf is None else [self.idf])]:
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()


def check_same_filter(bundle: SpamModel, world: World) -> None:
    """Under mpirun every rank loads the filter itself and `score`s its share of the messages with
    it, and rank 0's cut-offs judge them all: raise UserError if the ranks did not all load the same
    filter (another machine's copy of the folder, or one that `spam learn` or the daemon's TELL
    saved between their loads)."""
    if world.size == 1:
        return
    digests = world.allgather(bundle.digest())
    others = [str(rank) for rank, d in enumerate(digests) if d != digests[0]]
    if others:
        raise UserError(f"the processes loaded different spam filters from {bundle.directory} (rank"
                        f"{'s' * (len(others) > 1)} {', '.join(others)}: not rank 0's): was it saved anew while they "
                        "started (spam learn, the daemon's TELL), or does another machine hold another copy? Classify "
                        "again")


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


def training_loss(metadata: dict) -> cr.BinaryCrossEntropy:
    """The loss a filter with this metadata was trained with, which `learn` goes on with and
    `chainrule gradcheck` checks: spam weighted by the pos_weight its training recorded (#ham/#spam
    where it was balanced), 1 where it recorded none."""
    return cr.BinaryCrossEntropy(pos_weight=float(metadata.get("training", {}).get("pos_weight", 1.0)))


def merge_committee(nets: list[cr.Sequential], n_features: int, hidden: tuple[int, ...],
                    dropout: float) -> cr.Sequential:
    """One network whose logit is the mean of the logits of `nets` (all built by `build_network`
    with the same `hidden`), exactly.

    Side by side, k networks are one network k times as wide: the first layer's weights are
    concatenated column-wise, every further hidden layer is block-diagonal (unit j of member i
    sees only member i's units), and the output layer stacks the members' output weights, divided
    by k, with the mean bias:  logit = Σ_i (h_i · w_i + b_i) / k.  Dropout is off at inference, so
    the merged network computes exactly the committee's mean — at the cost of one forward pass.
    Without hidden layers (linear members) the one layer is the mean of theirs:
    Σ_i (x · w_i + b_i) / k = x · (Σ_i w_i / k) + Σ_i b_i / k.
    """
    k = len(nets)
    merged = build_network(n_features, tuple(k * h for h in hidden), dropout, seed=None)
    linears = [[layer for layer in net.layers if isinstance(layer, cr.Linear)] for net in nets]
    target = [layer for layer in merged.layers if isinstance(layer, cr.Linear)]
    last = len(target) - 1
    for depth, layer in enumerate(target):
        members = [m[depth] for m in linears]
        if not hidden:
            layer.weight.data[...] = np.mean([m.weight.data for m in members], axis=0)
        elif depth == 0:
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
    """Load a model saved by `spam train`; raises ModelFileError if it is not a spam model.

    The metadata is checked for every type the filter will rely on, so that a damaged model.json
    is refused here, in one line, rather than by every message a server then classifies. The idf
    weights come from the model.json the network came from (read again if saves replaced the model
    meanwhile: `read_whole`).
    """
    return read_whole(model_directory(directory), lambda d: _load(d, spam_cutoff, ham_cutoff))


def _load(directory: Path, spam_cutoff: float | None, ham_cutoff: float | None) -> SpamModel:
    """`load_spam_model`, reading model.json once (or again, for the network alone)."""
    model, metadata, files = load_model_and_files(directory)
    if metadata.get("task") != TASK:
        raise cr.ModelFileError(f"{directory}: not a spam model (task {metadata.get('task')!r})")
    try:
        config = HashingConfig.from_dict(metadata.get("hashing"))
        spam_c, ham_c = _cutoffs(metadata.get("cutoffs"), spam_cutoff, ham_cutoff)
        _check_training(metadata)
    except ValueError as exc:
        raise cr.ModelFileError(f"{directory}: invalid spam metadata ({exc})") from exc
    _check_cutoffs(directory, spam_c, ham_c, spam_cutoff, ham_cutoff)
    first = model.layers[0]
    if not isinstance(first, cr.Linear) or first.in_features != config.n_features or model.output_shape != (1,):
        raise cr.ModelFileError(f"{directory}: expected a network from {config.n_features} hash buckets to one "
                                f"logit, got {model.input_shape} -> {model.output_shape}")
    idf = load_idf(files.get("idf"), config)
    return SpamModel(model, metadata, config, spam_c, ham_c, directory, idf, files)


def _is_finite_number(v) -> bool:
    return is_real(v) and math.isfinite(v)


def _cutoffs(cut, spam_cutoff: float | None, ham_cutoff: float | None) -> tuple[float, float]:
    """(spam, ham) cut-offs: the overrides given, else the model's, checked."""
    if not isinstance(cut, dict) or not _is_finite_number(cut.get("spam")) or not _is_finite_number(cut.get("ham")):
        raise ValueError(f"cutoffs must be an object with numbers 'spam' and 'ham', got {str(cut)[:80]}")
    spam_c = float(cut["spam"] if spam_cutoff is None else spam_cutoff)
    ham_c = float(cut["ham"] if ham_cutoff is None else ham_cutoff)
    return spam_c, ham_c


def _check_cutoffs(directory, spam_c: float, ham_c: float, spam_asked, ham_asked) -> None:
    """0 <= ham <= spam <= 1, or an error that blames what is wrong: a cut-off asked for (an
    override, `*_asked`), or the model file."""
    for name, value, asked in (("spam", spam_c, spam_asked), ("ham", ham_c, ham_asked)):
        if not 0.0 <= value <= 1.0:
            if asked is not None:
                raise cr.UserError(f"the {name} cut-off asked for must be a probability from 0 to 1, got {asked!r}")
            raise cr.ModelFileError(f"{directory}: its {name} cut-off {value} is not a probability from 0 to 1")
    if ham_c > spam_c:
        if spam_asked is None and ham_asked is None:
            raise cr.ModelFileError(f"{directory}: its ham cut-off ({ham_c}) is above its spam cut-off ({spam_c})")
        whose = {True: "asked for", False: "the model's"}
        raise cr.UserError(f"the ham cut-off ({ham_c!r}, {whose[ham_asked is not None]}) is above the spam "
                           f"cut-off ({spam_c!r}, {whose[spam_asked is not None]}): a message cannot be both")


def _check_training(metadata: dict) -> None:
    """The format version, what the filter was trained on, and what `learn` reads of the metadata:
    the training's pos_weight, the count of messages learned, and when `spam learn --since-last`
    last read each folder."""
    version = metadata.get("spam_format", SPAM_FORMAT)
    if type(version) is not int or not 1 <= version <= SPAM_FORMAT:
        raise ValueError(f"spam_format {version!r} is not one this chainrule reads (1..{SPAM_FORMAT}): "
                         "a newer chainrule wrote it")
    inputs = metadata.get("inputs", list(INPUTS))
    if not (isinstance(inputs, list) and inputs and all(isinstance(i, str) for i in inputs)
            and set(inputs) <= set(INPUTS) and len(set(inputs)) == len(inputs)):
        raise ValueError(f"inputs must be a list of {' and/or '.join(INPUTS)}, got {str(inputs)[:80]}")
    training = metadata.get("training", {})
    if not isinstance(training, dict):
        raise ValueError(f"training must be an object, got {type(training).__name__}")
    if "pos_weight" in training and not (_is_finite_number(training["pos_weight"]) and training["pos_weight"] > 0):
        raise ValueError(f"training.pos_weight must be a positive number, got {training['pos_weight']!r}")
    learned = metadata.get("learned", 0)
    if type(learned) is not int or learned < 0:
        raise ValueError(f"learned must be an integer >= 0, got {learned!r}")
    since = metadata.get("since_last", {})
    if not (isinstance(since, dict) and len(since) <= MAX_FOLDERS
            and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in since.items())):
        raise ValueError(f"since_last must map at most {MAX_FOLDERS} folders to times in nanoseconds, "
                         f"got {str(since)[:80]}")


def load_idf(path, config: HashingConfig) -> np.ndarray | None:
    """The idf weights in `path` (a model's "idf" file, `cr.model_files`) for a model whose hashing
    uses them, or None if it does not; validated, sizes first, never unpickled."""
    if not config.idf:
        return None
    n_features = config.n_features
    if path is None:
        raise cr.ModelFileError("idf.npz: not found (the model's hashing weights buckets by idf)")
    named_file(Path(path), "idf weights")
    shape, dtype = npz_headers(path).get("idf", (None, None))
    if shape != (n_features,) or dtype.kind != "f":
        raise cr.ModelFileError(f"{path}: expected {n_features} idf weights, got shape {shape}, dtype {dtype}")
    # None where NaN or infinite once in the filter's float32 (1e300 is a finite float64)
    idf = cast_finite(read_npz(path, ["idf"])["idf"], np.float32)
    lowest = 0 if config.min_df else 1  # 0 weighs the buckets `min_df` left out (and only with it)
    if idf is None or np.any((idf < 1) & (idf != lowest)):
        allowed = "0 or >= 1" if config.min_df else ">= 1"
        raise cr.ModelFileError(f"{path}: expected {n_features} finite idf weights {allowed}")
    return idf


def save_model(bundle: SpamModel, directory, replay: tuple[sp.csr_matrix, np.ndarray] | None = None,
               lessons: Lessons | None = None) -> None:
    """Save the filter into `directory` in one commit (`cr.Sequential.save`): the network and its
    metadata, the idf weights if its hashing uses them, the `replay` sample (x, y) that `learn`
    rehearses and its `lessons`. A replay sample or lessons not given are those the bundle was
    loaded with, read back and saved again, so that a save never drops them unasked (a bundle not
    loaded from disk, as `train_filter` returns it, has none)."""
    arrays = {}
    if bundle.config.idf:
        if bundle.idf is None:
            raise ValueError("the model's hashing config has idf on but it holds no idf weights")
        arrays["idf"] = {"idf": np.asarray(bundle.idf, np.float32)}
    if replay is None and bundle.files.get("replay") is not None:
        replay = load_replay(bundle.files["replay"], bundle.config.n_features)
    if replay is not None:
        x, y = replay[0].tocsr(), replay[1]
        arrays["replay"] = {
            "data": x.data.astype(np.float32), "indices": x.indices.astype(np.int32),
            "indptr": x.indptr.astype(np.int64), "shape": np.array(x.shape, np.int64),
            "labels": np.asarray(y, np.int64)}
    if lessons is None and bundle.files.get("lessons") is not None:
        lessons = load_lessons(bundle.files["lessons"])
    if lessons is not None:
        arrays["lessons"] = {"digests": lessons.digests, "labels": lessons.labels, "before": lessons.before}
    bundle.files = bundle.model.save(directory, bundle.metadata, arrays)
    bundle.directory = Path(directory)


# The largest replay sample read back: `learn` keeps REPLAY_SIZE rows; this leaves room for files
# written with a larger REPLAY_SIZE, and refuses a header that claims millions of rows.
MAX_REPLAY_ROWS = 100_000
# A hashed row is unit length, √2 at most with split_norm (`Hasher.matrix`), each value rounded to
# float32 (by half its eps at most).
MAX_ROW_NORM = math.sqrt(2.0) * (1 + np.finfo(np.float32).eps)


def load_replay(path, n_features: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The replay sample in `path` (a model's "replay" file, `cr.model_files`; empty if None: the
    model has none), checked against the model's `n_features`: sizes from the headers first, then
    the CSR structure; never unpickled. A file the model names but that is gone is an error, not an
    empty sample, so that learning never saves the model without it."""
    if path is None:
        return sp.csr_matrix((0, n_features), dtype=np.float32), np.zeros(0, np.int64)
    named_file(Path(path), "replay sample")
    names = ("data", "indices", "indptr", "shape", "labels")
    headers = npz_headers(path)
    shapes = {name: headers[name][0] if name in headers else None for name in names}
    kinds = "".join(headers[name][1].kind if name in headers else "?" for name in names)
    rows = shapes["labels"][0] if shapes["labels"] and len(shapes["labels"]) == 1 else -1
    nnz = shapes["data"][0] if shapes["data"] and len(shapes["data"]) == 1 else -1
    if not (0 <= rows <= MAX_REPLAY_ROWS and 0 <= nnz <= rows * n_features and shapes["shape"] == (2,)
            and shapes["indices"] == (nnz,) and shapes["indptr"] == (rows + 1,)
            and kinds[0] == "f" and all(k in "iu" for k in kinds[1:])):
        raise cr.ModelFileError(f"{path}: not a replay sample of at most {MAX_REPLAY_ROWS} rows of "
                                f"{n_features} features (shapes {shapes})")
    try:
        z = read_npz(path, names)
        shape = tuple(int(s) for s in z["shape"])
        x = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
        x.check_format(full_check=True)
        y = z["labels"].astype(np.int64)
    except (TypeError, ValueError, OverflowError) as exc:  # (OverflowError: a shape beyond a C long)
        raise cr.ModelFileError(f"{path}: not a valid replay sample ({exc})") from exc
    if shape != (rows, n_features) or not set(np.unique(y)) <= {0, 1} or not np.all(np.isfinite(x.data)):
        raise cr.ModelFileError(f"{path}: replay sample does not match the model")
    x64 = x.astype(np.float64)  # (3e38 squared is no float32)
    norms = np.sqrt(np.asarray(x64.multiply(x64).sum(axis=1)).ravel())
    if np.any(norms > MAX_ROW_NORM):
        i = int(np.argmax(norms))
        raise cr.ModelFileError(f"{path}: replay row {i} is {norms[i]:.4g} long, longer than hashing makes one "
                                "(unit length, √2 at most)")
    return x.astype(np.float32), y


@dataclass
class Lessons:
    """What `learn` has taught a filter, one entry per message, oldest first: a digest of the
    message as the filter reads it (`chainrule.apps.spam.learning.row_digests`), the label it was
    taught (SPAM 1 or HAM 0), and its P(spam) before its first lesson, which `unlearn` returns it to."""

    digests: np.ndarray  # (n, 16) uint8
    labels: np.ndarray  # (n,) int8
    before: np.ndarray  # (n,) float32

    @classmethod
    def empty(cls) -> Lessons:
        return cls(np.zeros((0, DIGEST_BYTES), np.uint8), np.zeros(0, np.int8), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep) -> Lessons:
        """The lessons at the indices or where the mask `keep` says."""
        return Lessons(self.digests[keep], self.labels[keep], self.before[keep])

    def updated(self, label_of: dict[bytes, int], new: dict[bytes, float]) -> Lessons:
        """These lessons, each with the label `label_of` gives its digest now, then the messages of
        `new` ({digest: P(spam) before its first lesson}) at the end, labelled by `label_of` too."""
        added = list(new)
        return Lessons(
            np.concatenate([self.digests, np.frombuffer(b"".join(added), np.uint8).reshape(-1, DIGEST_BYTES)]),
            np.array([label_of[d.tobytes()] for d in self.digests] + [label_of[k] for k in added], np.int8),
            np.concatenate([self.before, np.array([new[k] for k in added], np.float32)]))


DIGEST_BYTES = 16  # of a message's SHA-256: 128 bits, so two messages share one only by design
MAX_LESSONS = 1_000_000  # the most lessons read back (LESSONS_KEPT, with room for a larger setting)


def load_lessons(path) -> Lessons:
    """The lessons in `path` (a model's "lessons" file, `cr.model_files`; none if None: the model
    has none), validated, sizes first, never unpickled. A file the model names but that is gone is
    an error, as in `load_replay`."""
    if path is None:
        return Lessons.empty()
    named_file(Path(path), "lessons")
    headers = npz_headers(path)
    shapes = {name: headers[name] if name in headers else (None, None) for name in ("digests", "labels", "before")}
    (d_shape, d_type), (l_shape, l_type), (b_shape, b_type) = shapes.values()
    n = l_shape[0] if l_shape and len(l_shape) == 1 else -1
    if not (0 <= n <= MAX_LESSONS and d_shape == (n, DIGEST_BYTES) and d_type == np.uint8 and b_shape == (n,)
            and l_type.kind in "iu" and b_type.kind == "f"):
        raise cr.ModelFileError(f"{path}: not a list of at most {MAX_LESSONS} lessons ({shapes})")
    z = read_npz(path, ("digests", "labels", "before"))
    # checked as stored, before the casts: cast to int8, labels 256 and 257 would read as 0 and 1,
    # and cast to float32, a P(spam) a hair over 1 as 1
    if not (np.all(np.isin(z["labels"], (0, 1))) and np.all((z["before"] >= 0) & (z["before"] <= 1))):
        raise cr.ModelFileError(f"{path}: lessons need labels 0 or 1 and probabilities from 0 to 1")
    return Lessons(z["digests"], z["labels"].astype(np.int8), z["before"].astype(np.float32))
