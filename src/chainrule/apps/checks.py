"""Gradient checks of saved models on their own data: the library behind `chainrule gradcheck`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chainrule.apps.images import OLD_TASKS, TASK, check_image_model, model_inputs
from chainrule.apps.spam import featurize, load_spam_model
from chainrule.data.corpora import read_messages
from chainrule.data.idx import load_image_set
from chainrule.data.locate import candidate_dirs
from chainrule.errors import DataError
from chainrule.gradcheck import demo_networks, gradcheck
from chainrule.network import load_model

# float64 central differences agree with a correct backward pass to ~1e-8; 1e-6 leaves headroom.
TOLERANCE = 1e-6


def sample_inputs(model_dir, metadata: dict, data_dir, n: int = 4):
    """A few real inputs for a saved model, from the data set its task names (the labels come from
    `_least_likely`)."""
    task = metadata.get("task")
    if task == TASK or task in OLD_TASKS:  # the test set of the image set it was trained on
        images = load_image_set(data_dir, "test", default=metadata.get("dataset", "mnist")).images
        return model_inputs(images[:n], metadata)
    if task == "spam":
        bundle = load_spam_model(model_dir)  # (its hashing config and idf weights, checked)
        # the first n messages of each SpamAssassin tarball (spam and ham), hashed as the model hashes
        tarballs = next((sorted(d.glob("*.tar*")) for d in candidate_dirs("spamassassin", data_dir)
                         if d.is_dir() and any(d.glob("*.tar*"))), None)
        if not tarballs:
            raise DataError("no SpamAssassin tarballs found (give --data DIR or set CHAINRULE_DATA)")
        items = []
        for tarball in tarballs:
            for i, msg in enumerate(read_messages([tarball])):
                if i >= n // 2 or msg.label is None:
                    break
                items.append(("mail", msg.data))
        x, _ = featurize(items, bundle.config, processes=1, idf=bundle.idf)
        return x
    raise ValueError(f"model task {task!r} has no sample inputs for gradcheck")


def _least_likely(model, x) -> np.ndarray:
    """Labels under which finite differences can judge the gradients: the answer the model finds
    *least* likely for each input. A trained model is confidently right on real data, so with the
    true labels the loss is ~1e-4 and so are its gradients — as small as the rounding noise of a
    finite difference (~1e-16 · loss / ε), and the relative errors would measure that noise.
    Backprop's correctness does not depend on the labels being true."""
    out = model.forward(x)
    return out.argmin(axis=1) if out.shape[1] > 1 else (out[:, 0] < 0).astype(np.int64)


def _random_inputs(model, n: int = 4):
    """Standard-normal inputs of the model's input shape, and labels its output can be scored on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *model.input_shape))
    out = model.forward(x)
    if out.ndim == 2 and out.shape[1] > 1:
        return x, rng.integers(0, out.shape[1], n)
    if out.ndim == 2 and out.shape[1] == 1:
        return x, np.array([0, 1] * (n // 2), np.int64)
    return x, rng.normal(size=out.shape)


@dataclass
class GradcheckResult:
    """One gradient check: what was checked, the largest relative error per layer, and a remark."""

    title: str
    errors: dict[str, float]
    note: str | None = None

    @property
    def passed(self) -> bool:
        return all(e < TOLERANCE for e in self.errors.values())


def gradcheck_models(model_dir=None, data=None, samples: int = 30) -> list[GradcheckResult]:
    """Check every layer type on small networks, or a saved model on real (or random) inputs."""
    if model_dir is None:
        return [GradcheckResult(title, gradcheck(model, x, y)) for title, model, x, y in demo_networks()]
    model, metadata = load_model(model_dir)
    if metadata.get("task") == TASK or metadata.get("task") in OLD_TASKS:
        metadata = check_image_model(model, metadata, model_dir)
    if metadata.get("task") not in (TASK, *OLD_TASKS, "spam"):  # saved from Python with no task: random inputs
        x, y = _random_inputs(model)
        title = f"{model_dir} on {len(y)} random inputs (no task in its metadata)"
        return [GradcheckResult(title, gradcheck(model, x, y, samples_per_param=samples))]
    x = sample_inputs(model_dir, metadata, data)
    y = _least_likely(model, x)
    kinks: dict[str, int] = {}
    errors = gradcheck(model, x, y, samples_per_param=samples, kinks=kinks)
    title = f"{model_dir} on {len(y)} real inputs, scored against the least likely answers"
    left_out = ", ".join(f"{n} of {name}" for name, n in kinks.items() if n)
    note = f"entries left out, their nudge crossed a ReLU or max-pool kink: {left_out}" if left_out else None
    return [GradcheckResult(title, errors, note)]
