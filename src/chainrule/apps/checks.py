"""`chainrule gradcheck`: a per-layer table of gradient errors, with a pass/fail verdict."""

from __future__ import annotations

import numpy as np

from chainrule.conv import MaxPool2D
from chainrule.gradcheck import demo_networks, gradcheck
from chainrule.network import load_model

# float64 central differences agree with a correct backward pass to ~1e-8; 1e-6 leaves headroom.
TOLERANCE = 1e-6


def _table(title: str, errors: dict[str, float]) -> tuple[str, bool]:
    ok = all(e < TOLERANCE for e in errors.values())
    width = max(len(k) for k in errors)
    lines = [f"{title}", f"  {'layer':<{width}}  max relative error  verdict"]
    for name, err in errors.items():
        lines.append(f"  {name:<{width}}  {err:18.2e}  {'pass' if err < TOLERANCE else 'FAIL'}")
    return "\n".join(lines), ok


def sample_inputs(model_dir, metadata: dict, data_dir, n: int = 4):
    """A few real inputs for a saved model, from the data set its task names (the labels come from
    `_least_likely`)."""
    task = metadata.get("task")
    if task == "digits":
        from chainrule.apps.digits import model_inputs
        from chainrule.data.mnist import load_mnist

        images, _ = load_mnist("test", data_dir)
        return model_inputs(images[:n], metadata)
    if task == "spam":
        # the first n messages of each SpamAssassin tarball (spam and ham), hashed as the model hashes
        from chainrule.apps.spam import featurize, load_idf
        from chainrule.data.corpora import read_messages
        from chainrule.data.locate import candidate_dirs
        from chainrule.data.text import HashingConfig

        tarballs = next((sorted(d.glob("*.tar*")) for d in candidate_dirs("spamassassin", data_dir)
                         if d.is_dir() and any(d.glob("*.tar*"))), None)
        if not tarballs:
            raise FileNotFoundError("no SpamAssassin tarballs found (give --data DIR or set CHAINRULE_DATA)")
        items = []
        for tarball in tarballs:
            for i, msg in enumerate(read_messages([tarball])):
                if i >= n // 2 or msg.label is None:
                    break
                items.append(("mail", msg.data))
        config = HashingConfig.from_dict(metadata["hashing"])
        x, _ = featurize(items, config, processes=1, idf=load_idf(model_dir, config))
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


def gradcheck_report(model_dir=None, data=None, samples: int = 30) -> int:
    """Print gradcheck tables; return 0 if every layer passes, 1 otherwise."""
    all_ok = True
    note = None
    if model_dir is None:
        checks = [(title, model, x, y, None) for title, model, x, y in demo_networks()]
    else:
        model, metadata = load_model(model_dir)
        if metadata.get("task") in ("digits", "spam"):
            x = sample_inputs(model_dir, metadata, data)
            y = _least_likely(model, x)
            checks = [(f"{model_dir} on {len(y)} real inputs, scored against the least likely answers",
                       model, x, y, samples)]
            if any(isinstance(layer, MaxPool2D) for layer in model.layers):
                # Max pooling has no derivative where a window's values tie, as they do on blank
                # paper, and near ties a nudge of a pixel crosses from one maximum to another, so a
                # finite difference measures a one-sided slope. Nudging a weight moves tied values
                # together, so the parameters can still be checked here.
                note = ("input row left out: on real images max-pooling windows tie, where the loss has no "
                        "derivative in the pixels (`chainrule gradcheck` alone checks input gradients)")
        else:  # a model saved from Python with no task: its data is unknown, so random inputs
            x, y = _random_inputs(model)
            checks = [(f"{model_dir} on {len(y)} random inputs (no task in its metadata)", model, x, y, samples)]
    for title, model, x, y, per_param in checks:
        errors = gradcheck(model, x, y, samples_per_param=per_param)
        if note:
            errors.pop("input", None)
        text, ok = _table(title, errors)
        all_ok &= ok
        print(text)
        if note:
            print(f"  ({note})")
    print(f"gradcheck: {'PASS' if all_ok else 'FAIL'} (tolerance {TOLERANCE:g}, float64 central differences)")
    return 0 if all_ok else 1
