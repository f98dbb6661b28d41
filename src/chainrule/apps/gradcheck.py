"""Gradient checks of saved models on their own data: the library behind `chainrule gradcheck`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chainrule.apps.image_presets import model_inputs, presets_for
from chainrule.apps.images import IMAGE_TASKS, check_image_model, known_set, trained_test_set
from chainrule.apps.spam import featurize, load_spam_model, training_loss
from chainrule.data import idx
from chainrule.data.corpora import read_messages, read_sms
from chainrule.data.locate import candidate_dirs
from chainrule.errors import DataError
from chainrule.files import link_problem
from chainrule.gradcheck import STEPS, TOLERANCE, demo_networks, gradcheck
from chainrule.network import load_model


def sample_inputs(model_dir, metadata: dict, data_dir, n: int = 4):
    """A few real inputs for a saved model (an image model's `metadata` as `check_image_model` gives
    it), from the data set its task names (the labels come from `_least_likely`), and where they
    come from, in words."""
    task = metadata.get("task")
    if task in IMAGE_TASKS:  # the test set of the image set it was trained on (`trained_test_set`), or --data's
        trained_on = metadata["dataset"]
        test = trained_test_set(metadata, data_dir)
        where = f"{idx.title(test.name)} test images" + ("" if test.name == trained_on else
                                                         f" (it was trained on {idx.title(trained_on)})")
        return model_inputs(test.images[:n], metadata), where
    if task == "spam":
        bundle = load_spam_model(model_dir)  # (its hashing config and idf weights, checked)
        if "mail" not in metadata.get("inputs", ["mail"]):  # an SMS filter: the first n/2 spam and ham texts
            return _sample_sms(bundle, data_dir, n), "SMS Spam Collection texts"
        # the first n messages of each SpamAssassin tarball (spam and ham), hashed as the model hashes
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            raise DataError(f"{data_dir}: {_not_there(data_dir, 'folder')}")
        dirs = candidate_dirs("spamassassin", data_dir)
        tarballs = next((sorted(d.glob("*.tar*")) for d in dirs if d.is_dir() and any(d.glob("*.tar*"))), None)
        if not tarballs:
            raise DataError(f"no SpamAssassin tarballs (*.tar*) found in {_places(dirs, data_dir)}")
        items = []
        for tarball in tarballs:
            for i, msg in enumerate(read_messages([tarball])):
                if i >= n // 2 or msg.label is None:
                    break
                items.append(("mail", msg.data))
        x, _ = featurize(items, bundle.config, processes=1, idf=bundle.idf)
        return x, "SpamAssassin messages"
    raise ValueError(f"model task {task!r} has no sample inputs for gradcheck")


def _sample_sms(bundle, data_dir, n: int):
    """The first n/2 spam and ham texts of the SMS Spam Collection: `data_dir` itself where it is a
    file, else the first SMSSpamCollection in the folders `candidate_dirs` gives."""
    if data_dir is not None and Path(data_dir).expanduser().is_file():
        path = Path(data_dir).expanduser()
    elif data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"{data_dir}: {_not_there(data_dir, 'file or folder')}")
    else:
        dirs = candidate_dirs("sms-spam", data_dir)
        path = next((d / "SMSSpamCollection" for d in dirs if (d / "SMSSpamCollection").is_file()), None)
        if path is None:
            raise DataError(f"no SMS Spam Collection found: put SMSSpamCollection in {_places(dirs, data_dir)}")
    texts, labels = read_sms(path)
    chosen = [t for label in (1, 0) for t in [t for t, y in zip(texts, labels, strict=True) if y == label][:n // 2]]
    x, _ = featurize([("sms", t) for t in chosen], bundle.config, processes=1, idf=bundle.idf)
    return x


def _not_there(path, what: str) -> str:
    """Why `--data path` leads to no `what` ("folder", "file or folder"): "not a ..." (a file where a
    folder was asked for), a link that leads nowhere, or "no such ..."."""
    return f"not a {what}" if Path(path).expanduser().exists() else link_problem(path) or f"no such {what}"


def _places(dirs: list[Path], data_dir) -> str:
    """The folders `dirs` that were looked in, and with no --data given, how to give one."""
    return " or ".join(map(str, dirs)) + ("" if data_dir is not None else " (or give --data DIR)")


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
    """One gradient check: what was checked, the largest relative error per layer (NaN: not
    judged, every entry tried crossed a kink), and remarks."""

    title: str
    errors: dict[str, float]
    notes: tuple[str, ...] = ()

    @property
    def judged(self) -> bool:
        return any(not np.isnan(e) for e in self.errors.values())

    @property
    def failed(self) -> bool:
        return any(e >= TOLERANCE for e in self.errors.values())  # (NaN, not judged, is not >=)

    @property
    def passed(self) -> bool:
        """No layer failed and at least one was judged."""
        return self.judged and not self.failed


def gradcheck_models(model_dir=None, data=None, samples: int = 30) -> list[GradcheckResult]:
    """Check every layer type on small networks, or a saved model on real (or random) inputs."""
    if model_dir is None:
        return [_checked(title, model, x, y) for title, model, x, y in demo_networks()]
    model, metadata = load_model(model_dir)
    task = metadata.get("task")
    if task in IMAGE_TASKS:
        metadata = check_image_model(model, metadata, model_dir)
    if task not in (*IMAGE_TASKS, "spam"):  # saved from Python without one of our tasks: random inputs
        x, y = _random_inputs(model)
        what = "no task in its metadata" if task is None else f"task {task!r} has no data set"
        return [_checked(f"{model_dir} on {len(y)} random inputs ({what})", model, x, y, samples=samples)]
    x, where = sample_inputs(model_dir, metadata, data)
    y = _least_likely(model, x)
    loss = _trained_with(metadata)
    title = f"{model_dir} on {len(y)} {where}, scored against the least likely answers"
    if loss is not None:
        title += f" with its {loss!r}"
    return [_checked(title, model, x, y, samples=samples, loss=loss)]


def _trained_with(metadata: dict):
    """The loss a saved model (of an image task, or a spam filter) was trained with, or None where
    its preset is not one of ours (the check's default loss then: `gradcheck`'s `loss`)."""
    if metadata.get("task") == "spam":  # (with its pos_weight: an SMS filter weighs spam #ham/#spam)
        return training_loss(metadata)
    preset = presets_for(known_set(metadata)).get(metadata.get("preset"))
    return preset.loss() if preset is not None else None  # (MSE for `small`)


def _checked(title: str, model, x, y, samples: int | None = None, loss=None) -> GradcheckResult:
    kinks: dict[str, int] = {}
    steps: dict[str, float] = {}
    errors = gradcheck(model, x, y, loss=loss, samples_per_param=samples, kinks=kinks, steps=steps)
    notes = []
    if left_out := ", ".join(f"{n} of {name}" for name, n in kinks.items() if n):
        notes.append(f"entries left out, their nudge crossed a ReLU or max-pool kink: {left_out}")
    if larger := ", ".join(f"{name} at {step:g}" for name, step in steps.items() if step > STEPS[0]):
        notes.append(f"judged with a larger step ε, where at {STEPS[0]:g} the loss's rounding noise outweighed "
                     f"the gradients: {larger}")
    return GradcheckResult(title, errors, tuple(notes))
