"""`chainrule explain`: one step of backpropagation on XOR, with the numbers the engine computed.

The network is 2-3-1: `Linear(2, 3)` -> `Tanh` -> `Linear(3, 1)`, and the loss is
`BinaryCrossEntropy` on the raw output score (the logit). BCE on logits rather than a `Sigmoid`
layer plus a loss, because the pair sigmoid + cross-entropy has the simplest possible error signal
at the output, delta = p - y, and never takes the log of a probability that rounded to 0.

Every number printed here is read from the engine's own objects while it runs: the layers'
outputs as they hand them on, the `grad` arrays their `backward` filled, the parameters' `data`
before and after `SGD.step()`. Nothing is recomputed by a separate toy implementation; the test
suite checks the printed gradients against finite differences and the update against w - lr·g.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from chainrule.checks import positive_int
from chainrule.functional import sigmoid
from chainrule.layers import Linear, Tanh
from chainrule.losses import BinaryCrossEntropy
from chainrule.network import Sequential
from chainrule.optim import SGD
from chainrule.training import fit

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0], dtype=np.int64)
LR = 0.5
EXAMPLE = 2  # the training example walked through: x = (1, 0), y = 1


def build_network(seed: int) -> Sequential:
    """The 2-3-1 XOR network, in float64 so the printed numbers are exact to every digit shown."""
    return Sequential([Linear(2, 3, init="glorot"), Tanh(), Linear(3, 1, init="glorot")], seed=seed,
                      dtype=np.float64)


def one_step(model: Sequential, x: np.ndarray, y: np.ndarray, optimizer: SGD) -> dict[str, np.ndarray]:
    """Run one forward pass, loss, backward pass and update on `model`, layer by layer exactly
    as `Sequential.forward`/`backward` do, and return every intermediate array.

    Keys: x, z1, a1, z2, p, loss, delta2, grad_a1, delta1, W1, b1, W2, b2 (before the step),
    dW1, db1, dW2, db2, and W1_new, b1_new, W2_new, b2_new (after the step).
    """
    lin1, tanh, lin2 = model.layers
    loss = BinaryCrossEntropy()
    out: dict[str, np.ndarray] = {"x": x.copy()}
    for name, p in (("W1", lin1.weight), ("b1", lin1.bias), ("W2", lin2.weight), ("b2", lin2.bias)):
        out[name] = p.data.copy()
    # forward: each layer's output is the next layer's input
    out["z1"] = lin1.forward(x, training=True)
    out["a1"] = tanh.forward(out["z1"], training=True)
    out["z2"] = lin2.forward(out["a1"], training=True)
    value, grad = loss(out["z2"], y)
    out["loss"] = np.array(value)
    out["p"] = sigmoid(out["z2"])  # the predicted probability
    # backward: last layer first; each backward returns dL/d(its input)
    optimizer.zero_grad()
    out["delta2"] = grad.copy()
    out["grad_a1"] = lin2.backward(grad).copy()
    out["delta1"] = tanh.backward(out["grad_a1"]).copy()
    lin1.backward(out["delta1"])
    for name, p in (("dW1", lin1.weight), ("db1", lin1.bias), ("dW2", lin2.weight), ("db2", lin2.bias)):
        out[name] = p.grad.copy()
    optimizer.step()
    for name, p in (("W1_new", lin1.weight), ("b1_new", lin1.bias), ("W2_new", lin2.weight),
                    ("b2_new", lin2.bias)):
        out[name] = p.data.copy()
    return out


def fmt(a) -> str:
    """Numbers as printed: 6 decimals, rows of a matrix on separate lines."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    if a.ndim == 1:
        return "[" + "  ".join(f"{v:+.6f}" for v in a) + "]"
    return "\n".join(fmt(row) for row in a)


def _indent(text: str, by: str = "      ") -> str:
    return "\n".join(by + line for line in text.splitlines())


def explain(seed: int = 1, epochs: int = 2000) -> str:
    """The walk-through as text: one example through the six steps, then training on all of XOR."""
    return "\n".join(explain_lines(seed, epochs))


def explain_lines(seed: int = 1, epochs: int = 2000) -> Iterator[str]:
    """The walk-through's lines as they are ready: the six steps come before the training, so a
    reader sees them at once however many epochs follow. `epochs` is checked here, as it is
    called: a generator's own checks would wait for its first line to be asked for."""
    return _lines(seed, positive_int("explain", "epochs", epochs))


def _lines(seed: int, epochs: int) -> Iterator[str]:
    model = build_network(seed)
    optimizer = SGD(model.parameters(), lr=LR)
    x, y = XOR_X[EXAMPLE : EXAMPLE + 1], XOR_Y[EXAMPLE : EXAMPLE + 1]
    s = one_step(model, x, y, optimizer)

    lines = [
        "Backpropagation, one step at a time",
        "===================================",
        "",
        "The network: 2 inputs -> 3 hidden neurons (tanh) -> 1 output score z.",
        "  Linear(2, 3) -> Tanh -> Linear(3, 1);  loss: binary cross-entropy on the score,",
        "  with p = sigmoid(z) the predicted probability that the answer is 1.",
        f"  Initial weights drawn with seed {seed} (Glorot initialisation); float64 throughout.",
        "  The task is XOR: the output should be 1 when exactly one input is 1.",
        "",
        "Step 1. Inputs",
        "  One training example, a row vector x, and its label y:",
        f"    x = {fmt(s['x'])}     y = {int(y[0])}",
        "",
        "Step 2. Forward pass: every layer transforms its input and hands it on",
        "  Hidden layer, pre-activation   z1 = x · W1 + b1",
        "    W1 (2 inputs x 3 neurons) =",
        _indent(fmt(s["W1"])),
        f"    b1 = {fmt(s['b1'])}",
        f"    z1 = {fmt(s['z1'])}",
        "  Hidden layer, activation       a1 = tanh(z1)",
        f"    a1 = {fmt(s['a1'])}",
        "  Output layer, pre-activation   z2 = a1 · W2 + b2",
        "    W2 (3 neurons x 1 output) =",
        _indent(fmt(s["W2"])),
        f"    b2 = {fmt(s['b2'])}",
        f"    z2 = {fmt(s['z2'])}   ->   p = sigmoid(z2) = {fmt(s['p'])}",
        "",
        "Step 3. The loss: how wrong is the output?",
        "  L = -[y·log p + (1 - y)·log(1 - p)]   (computed stably from z2, never log 0)",
        f"    L = {float(s['loss']):.6f}",
        "",
        "Step 4. Backward pass: the chain rule, last layer first",
        "  A delta is dL/d(pre-activation): how much each neuron contributed to the error.",
        "  Output neuron: for sigmoid + cross-entropy the chain rule collapses to",
        "    delta2 = dL/dz2 = p - y",
        f"    delta2 = {fmt(s['delta2'])}",
        "  Sent down through the output weights:  dL/da1 = delta2 · W2^T",
        f"    dL/da1 = {fmt(s['grad_a1'])}",
        "  Through tanh, whose slope is 1 - a1^2:  delta1 = dL/da1 ⊙ (1 - a1^2)",
        f"    delta1 = {fmt(s['delta1'])}",
        "",
        "Step 5. Gradients of every weight and bias",
        "  Each weight's gradient is (the input it multiplies) x (its neuron's delta):",
        "    dL/dW = x^T · delta        dL/db = delta (summed over the batch)",
        "  dL/dW2 = a1^T · delta2 =",
        _indent(fmt(s["dW2"])),
        f"  dL/db2 = {fmt(s['db2'])}",
        "  dL/dW1 = x^T · delta1 =",
        _indent(fmt(s["dW1"])),
        f"  dL/db1 = {fmt(s['db1'])}",
        "  (An input of 0 gives a zero gradient: that weight played no part in this error.)",
        "",
        f"Step 6. Update: plain gradient descent (SGD), learning rate lr = {LR}:  w <- w - lr · dL/dw",
        "  every weight takes a small step downhill on the loss:",
        "  W1 =",
        _indent(fmt(s["W1_new"])),
        f"  b1 = {fmt(s['b1_new'])}",
        "  W2 =",
        _indent(fmt(s["W2_new"])),
        f"  b2 = {fmt(s['b2_new'])}",
    ]
    new_loss, _ = BinaryCrossEntropy()(model.forward(x), y)
    lines += [
        f"  The same example now has loss {new_loss:.6f} (was {float(s['loss']):.6f}).",
        "",
        "Then repeat: training on all four XOR examples",
        f"  chainrule.fit: all 4 examples per step (full batch), SGD lr {LR}, {epochs} epoch{'s' * (epochs != 1)}.",
    ]
    yield from lines
    lines = []
    history = fit(model, XOR_X, XOR_Y, BinaryCrossEntropy(), optimizer, epochs=epochs, batch_size=4,
                  shuffle=False, verbose=False)
    losses = history["loss"]
    shown = sorted({1, *(e for e in (10, 50, 100, 250, 500, 1000, 2000, 5000) if e < epochs), epochs})
    for e in shown:
        lines.append(f"    epoch {e:>5}   loss {losses[e - 1]:.6f}")
    probs = model.predict_proba(XOR_X)[:, 0]
    lines += ["", "Final predictions:"]
    for xi, yi, pi in zip(XOR_X, XOR_Y, probs, strict=True):
        verdict = "right" if (pi > 0.5) == bool(yi) else "wrong"
        lines.append(f"    x = ({int(xi[0])}, {int(xi[1])})   y = {yi}   p = {pi:.4f}   {verdict}")
    correct = int(((probs > 0.5) == XOR_Y.astype(bool)).sum())
    lines.append(f"  {correct}/4 correct.")
    if correct < 4:
        halfway = losses[(len(losses) - 1) // 2]  # (did the second half of the epochs lower the loss by 1%?)
        if len(losses) < 2 or halfway - losses[-1] > 0.01 * halfway:
            lines.append(f"  Not solved yet: the loss was still falling after {epochs} epoch{'s' * (epochs != 1)}; "
                         "try more --epochs.")
        else:
            lines.append("  Not solved: from this seed's starting weights gradient descent is stuck where the loss "
                         "is flat (a 2-3-1 network has such places); try another --seed, or more --epochs.")
    yield from lines
