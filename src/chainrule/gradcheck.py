"""Gradient checking: compare backpropagation's gradients with finite differences.

Backprop is exact calculus, but code can be wrong. The slow, obviously-correct alternative is to
nudge one weight up and down and watch the loss:

    dL/dw ≈ (L(w + ε) - L(w - ε)) / 2ε          (central difference, error O(ε²))

Done in float64 with ε = 1e-6, agreement to ~1e-8 means the backward pass is right. (Where the
loss's rounding noise, ~1e-16·|L|/ε, is not small beside the gradients, a larger ε is tried too;
and gradients negligible beside the largest in the check are judged against that: `NEGLIGIBLE`.)

Except at a kink. ReLU bends at 0 and max pooling switches winners where two inputs tie; a nudge
that carries a unit across such a point measures the average of two slopes, which is neither
side's derivative. So every nudged forward pass also records which side of its kink each ReLU unit
and each max-pool window sits on, and an entry whose nudge changes that is left out (and counted):
its finite difference cannot judge the backward pass (CS231n's "kinks in the objective").

And what is judged is what the optimizer reads: each parameter's stretch of the model's flat
gradient buffer (`parameter.pack`), after a backward pass over whatever the last one left there
(`fit` never zeroes it: a layer writes its gradients, it does not add to them). So the buffer is
filled with NaN first: a backward pass that adds to the gradient, or rebinds `.grad` to a new
array the optimizer never sees, leaves NaN there and fails.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math

import numpy as np

from chainrule import conv as C
from chainrule import layers as L
from chainrule.checks import positive_int
from chainrule.losses import BinaryCrossEntropy, CrossEntropy, MeanSquaredError
from chainrule.network import Sequential, checked_inputs
from chainrule.norm import BatchNorm

# float64 central differences agree with a correct backward pass to ~1e-8; 1e-6 leaves headroom.
TOLERANCE = 1e-6

# An array whose gradients are all below this fraction of the largest gradient G in the check (every
# parameter's and the input's) is judged against NEGLIGIBLE·G rather than its own largest entry.
# Where a true gradient is ~0 (whatever feeds a batch norm over a batch of 2, whose outputs are ±1
# whatever comes in), backprop's and the finite differences' values are ~1e-9 and agree to ~1e-13:
# the rounding noise of a central difference, ~u·|L|/ε (u = 2.2e-16; 2e-10·|L| at ε = 1e-6), which
# against their own size reads as a relative error of 1e-5 or more. Against NEGLIGIBLE·G, a
# disagreement fails from TOLERANCE·NEGLIGIBLE·G = 1e-9·G: a few times that noise, G being of the
# loss's order (the last layer's gradients are), while a 1% error still fails in any gradient above
# 1e-7·G. A network whose gradients are all small (saturated units) keeps its full relative check:
# its G is small too.
NEGLIGIBLE = 1e-3

# The finite-difference steps tried, in order (see `gradcheck`'s `eps`).
STEPS = (1e-6, 1e-5, 1e-4)

# With `samples_per_param`, entries whose nudge crosses a kink are replaced by others, drawing up to
# this many times as many entries in all.
SAMPLES_DRAWN = 10


def _default_loss(out: np.ndarray, y: np.ndarray):
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer) and out.ndim == 2 and out.shape[1] > 1:
        return CrossEntropy()
    if out.ndim == 2 and out.shape[1] == 1 and set(np.unique(y)) <= {0, 1}:
        return BinaryCrossEntropy()
    return MeanSquaredError()


def relative_error(analytic: np.ndarray, numeric: np.ndarray, scale: float = 0.0) -> float:
    """max |a - n| / max(max |a|, max |n|): the worst disagreement, relative to the largest gradient.

    Relative to the largest entry rather than entry by entry, because an entry that is truly ~0
    has a meaningless entry-wise relative error (finite differences carry ~1e-10 rounding noise).
    `scale` is the largest gradient of the whole array when only some of its entries are checked,
    so that a sample of small entries is judged against the same yardstick as a full check.
    """
    if not (np.all(np.isfinite(analytic)) and np.all(np.isfinite(numeric))):
        return math.inf  # (a NaN or infinite gradient is wrong, whatever the other entries say)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), scale, 1e-12)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def gradcheck(model: Sequential, x, y, loss=None, eps: float | tuple[float, ...] = STEPS,
              samples_per_param: int | None = None, training: bool = True, seed: int = 0,
              kinks: dict[str, int] | None = None, steps: dict[str, float] | None = None,
              problems: dict[str, str] | None = None) -> dict[str, float]:
    """Check every parameter's gradient (and the input's) against central finite differences.

    Works on a float64 copy of `model`; the model itself is untouched. Dropout masks are held
    fixed across the nudged forward passes by replaying the same random state.

    Args:
        loss: defaults to CrossEntropy for integer labels, BCE for one output, else MSE.
        eps: the step ε, or steps to try in order: an array whose error at one step is above
            `TOLERANCE` is checked again, on the same entries, at the next, and its smallest error
            counts (the search ends at a step where one of those entries crosses a kink: a wrong
            entry must not slip out of the check). A central difference is off by O(ε²) (the
            loss's curvature) plus the loss's rounding noise over ε (~1e-16·|L|/ε): where the
            gradients are small beside the loss (a deep or saturated network) that noise can pass
            1e-6 of the gradient at ε = 1e-6 while 1e-4 sees the gradient clearly. A wrong
            backward pass is wrong at every step.
        samples_per_param: check this many randomly chosen entries of each parameter array (for
            big models), drawing others in place of those whose nudge crosses a kink (up to
            `SAMPLES_DRAWN` times as many); None checks every entry.
        training: run layers in training mode (dropout on, batch statistics in batch norm).
        seed: picks the sampled entries and the dropout masks.
        kinks: if given, filled with {"<index>:<Layer>" or "input": number of entries left out
            because their nudge crossed a kink} (at the first step).
        steps: if given, filled with {name: the step that gave its reported error}, for the
            layers that passed.
        problems: if given, filled with {name: what is wrong}, for the layers whose backward pass
            does not write its gradients where the optimizer reads them (it rebinds `.grad`, or
            adds to it); their error is infinite.

    Returns:
        {"<index>:<Layer>": max relative error over its parameters (relative to the layer's
        largest gradient, or `NEGLIGIBLE` of the check's), ..., "input": ...}; NaN where
        every checked entry crossed a kink (nothing could be judged), infinity where a gradient
        is NaN or infinite.
    """
    steps_tried = (float(eps),) if np.ndim(eps) == 0 else tuple(eps)
    if not steps_tried or not all(0 < e < 1 for e in steps_tried):
        raise ValueError(f"gradcheck: eps must be steps between 0 and 1, got {eps!r}")
    if samples_per_param is not None:
        samples_per_param = positive_int("gradcheck", "samples_per_param", samples_per_param)
    net = copy.deepcopy(model).to(np.float64)
    x = checked_inputs("gradcheck", x, np.float64)  # (NaN inputs made every layer read as wrong)
    if np.ndim(x) < 2 or x.shape[0] == 0:
        raise ValueError(f"gradcheck: x must be a batch of at least one example, got shape {np.shape(x)}")
    sparse = hasattr(x, "tocsr")
    x = x.astype(np.float64) if sparse else np.array(x, dtype=np.float64)
    probe = net.forward(x[:1])
    loss = loss or _default_loss(probe, y)
    # the dropout layers share the network's generator: seeded here, so a loaded model (whose
    # generator is unseeded) is checked with the same masks every run
    rng_state = np.random.default_rng(seed).bit_generator.state

    def loss_at() -> tuple[float, bool]:
        """The loss, and whether every kink sits on the same side as at the unnudged weights."""
        net.rng.bit_generator.state = rng_state  # the same dropout masks every time
        value, _ = loss(net.forward(x, training), y)
        same = all(np.array_equal(a, b) for a, b in zip(_kink_sides(net), sides, strict=True))
        return value, same

    def backward_over(fill: float) -> np.ndarray:
        """dL/dx from a forward and backward pass with the gradient buffer holding `fill` before."""
        net.rng.bit_generator.state = rng_state
        _, grad = loss(net.forward(x, training), y)
        net.flat_grads[...] = fill
        return net.backward(grad)

    grad_input = backward_over(np.nan)  # (see the module's docstring)
    sides = _kink_sides(net)
    flat_grads = net.flat_grads.copy()
    grads = _gradient_stretches(net, flat_grads)  # (a list per layer)
    if problems is not None:
        problems.update(_misplaced_gradients(net, grads, backward_over))
    everything = np.concatenate([flat_grads, [] if sparse else grad_input.reshape(-1)])
    # (finite ones: a NaN gradient fails its own layer, not every layer's yardstick)
    negligible = NEGLIGIBLE * np.abs(everything[np.isfinite(everything)]).max(initial=0.0)
    # every array at the same steps, its samples drawn from one generator of the seed's
    check = functools.partial(_check_array, loss_at=loss_at, steps=steps_tried, samples=samples_per_param,
                              rng=np.random.default_rng(seed))
    errors: dict[str, float] = {}
    needed: dict[str, float] = {}
    crossed: dict[str, int] = {}
    for i, layer in enumerate(net.layers):
        name = f"{i}:{type(layer).__name__}"
        # Each array is judged against the largest gradient of its layer: a bias feeding batch
        # norm has a true gradient of exactly 0, and against its own largest entry the rounding
        # noise of its finite differences would read as a 100% error. (And a layer's against
        # `negligible`, where all of its gradients are: see NEGLIGIBLE.)
        scale = max([negligible, *(np.abs(g).max(initial=0.0) for g in grads[i])])
        checked = [check(p.data.reshape(-1), g, scale) for p, g in zip(layer.parameters(), grads[i], strict=True)]
        if checked:
            judged = [(error, step) for error, step, _ in checked if not np.isnan(error)]
            errors[name], needed[name] = max(judged, default=(float("nan"), steps_tried[0]))
            crossed[name] = sum(kinks for _, _, kinks in checked)
    if not sparse:
        errors["input"], needed["input"], crossed["input"] = check(x.reshape(-1), grad_input.reshape(-1), negligible)
    if kinks is not None:
        kinks.update(crossed)
    if steps is not None:  # (a larger step that did not bring the error under the tolerance says nothing)
        steps.update({name: step for name, step in needed.items() if errors[name] < TOLERANCE})
    return errors


def _gradient_stretches(net: Sequential, flat_grads: np.ndarray) -> list[list[np.ndarray]]:
    """Every layer's parameters' gradients as the optimizer reads them: their stretches of
    `flat_grads` (the model's gradient buffer, or a copy), which `Sequential` packs in order."""
    stretches, start = [], 0
    for layer in net.layers:
        mine = []
        for p in layer.parameters():
            mine.append(flat_grads[start : start + p.size])
            start += p.size
        stretches.append(mine)
    return stretches


def _misplaced_gradients(net: Sequential, grads: list[list[np.ndarray]], backward_over) -> dict[str, str]:
    """{"<index>:<Layer>": what is wrong} for the layers whose gradients `grads` (after a backward
    pass over NaN) hold NaN that a backward pass over zeros does not: their backward pass rebinds
    `.grad` (the buffer keeps what was there), adds to it (NaN + g is NaN) or writes only some of it."""
    if all(np.all(np.isfinite(g)) for mine in grads for g in mine):
        return {}
    backward_over(0.0)
    over_zeros = _gradient_stretches(net, net.flat_grads)
    found = {}
    for i, layer in enumerate(net.layers):
        if any(not np.all(np.isfinite(g)) and np.all(np.isfinite(z))
               for g, z in zip(grads[i], over_zeros[i], strict=True)):
            rebound = any(not np.shares_memory(p.grad, net.flat_grads) for p in layer.parameters())
            found[f"{i}:{type(layer).__name__}"] = (
                "gradient not written into the parameter's buffer (.grad rebound to a new array?)" if rebound
                else "backward adds to the gradient instead of writing it (or leaves some of it unwritten)")
    return found


def _check_array(flat: np.ndarray, analytic: np.ndarray, scale: float, loss_at, steps: tuple[float, ...],
                 samples: int | None, rng: np.random.Generator) -> tuple[float, float, int]:
    """One array's check: the relative error of its gradient `analytic` (every entry, or `samples`
    of them, see `_sampled_entries`) against central differences in `flat`, the array itself, over
    the entries no kink spoils (NaN if none), relative to `scale` or the largest gradient here,
    whichever is larger; the step that gave it (see `gradcheck`'s `eps`); and how many entries were
    left out because their nudge crossed a kink."""
    if not np.all(np.isfinite(analytic)):  # wrong wherever it is, sampled or not
        return math.inf, steps[0], 0
    wanted, candidates = flat.size, np.arange(flat.size)
    if samples is not None and flat.size > samples:
        wanted, candidates = samples, _sampled_entries(analytic, samples, rng)
    scale = max(scale, np.abs(analytic).max(initial=0.0))
    judged, numeric, crossed = [], [], 0
    for j in candidates:  # at the first step: the entries to judge, drawing past those at a kink
        value, smooth = _central_difference(flat, j, steps[0], loss_at)
        if smooth:
            judged.append(j)
            numeric.append(value)
            if len(judged) == wanted:
                break
        else:
            crossed += 1
    if not judged:
        return float("nan"), steps[0], crossed
    error, best_step = relative_error(analytic[judged], np.array(numeric), scale=scale), steps[0]
    for step in steps[1:]:
        if error < TOLERANCE:
            break
        # the same entries at a larger step, every one of them: an entry that crosses a kink
        # at this step (a wrong one among them would go unjudged) ends the search
        again = [_central_difference(flat, j, step, loss_at) for j in judged]
        if not all(smooth for _, smooth in again):
            break
        larger = relative_error(analytic[judged], np.array([value for value, _ in again]), scale=scale)
        if larger < error:
            error, best_step = larger, step
    return error, best_step, crossed


def _sampled_entries(analytic: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    """The entries of a gradient to check `n` of, in the order to try them: up to `SAMPLES_DRAWN`
    times n, so that others stand in for those whose nudge crosses a kink.

    Every other entry drawn is one whose gradient is not 0: where the inputs reach a few of a
    layer's weights (a spam filter's hashed words reach ~0.1% of its first layer's), a draw from
    all of them would judge only entries that both sides give as 0. The rest are drawn from all,
    where a gradient missing from the backward pass shows.
    """
    drawn = min(analytic.size, SAMPLES_DRAWN * n)
    moving = np.flatnonzero(analytic)
    moving = rng.choice(moving, min(moving.size, drawn), replace=False)
    anywhere = rng.choice(analytic.size, drawn, replace=False)
    alternate = [j for pair in itertools.zip_longest(moving, anywhere) for j in pair if j is not None]
    return list(dict.fromkeys(alternate))[:drawn]


def _central_difference(flat: np.ndarray, j: int, eps: float, loss_at) -> tuple[float, bool]:
    """(L(w + ε) - L(w - ε)) / 2ε for entry j, and whether neither nudge crossed a kink."""
    original = flat[j]
    flat[j] = original + eps
    plus, plus_smooth = loss_at()
    flat[j] = original - eps
    minus, minus_smooth = loss_at()
    flat[j] = original
    return (plus - minus) / (2 * eps), plus_smooth and minus_smooth


def _kink_sides(net: Sequential) -> list[np.ndarray]:
    """Where the last forward pass sat relative to every kink in the network: which ReLU (and
    LeakyReLU) units were on, and which input won each max-pooling window."""
    sides = []
    for layer in net.layers:
        if isinstance(layer, L.ReLU):  # LeakyReLU is one: both bend at 0, and y > 0 exactly when x > 0
            sides.append(layer.output > 0)
        elif isinstance(layer, C.MaxPool2D):
            sides.extend(layer.winners())
    return sides


def demo_networks(seed: int = 0) -> list[tuple[str, Sequential, np.ndarray, np.ndarray]]:
    """Small networks that between them use every layer type and every loss, with inputs and
    labels, for `chainrule gradcheck` without a model. Returns (title, model, x, y) tuples."""
    rng = np.random.default_rng(seed)
    nets = []
    mse_net = Sequential(
        [L.Flatten(), L.Linear(12, 8), L.ReLU(), L.Linear(8, 8, init="glorot"), L.Tanh(),
         L.Linear(8, 6), L.LeakyReLU(0.1), L.Dropout(0.25), L.Linear(6, 4, init="glorot"), L.Softmax()],
        input_shape=(3, 4), seed=seed,
    )
    one_hot = np.eye(4)[rng.integers(0, 4, 5)]  # (float targets: MeanSquaredError, not CrossEntropy)
    nets.append(("every activation, MeanSquaredError", mse_net, rng.normal(size=(5, 3, 4)), one_hot))
    ce_net = Sequential([L.Linear(6, 7), L.Sigmoid(), L.Linear(7, 3)], seed=seed)
    nets.append(("sigmoid MLP, CrossEntropy", ce_net, rng.normal(size=(5, 6)), rng.integers(0, 3, 5)))
    bce_net = Sequential([L.Linear(5, 4), L.Tanh(), L.Linear(4, 1, bias=False)], seed=seed)
    nets.append(("tanh MLP, BinaryCrossEntropy", bce_net, rng.normal(size=(5, 5)), rng.integers(0, 2, 5)))
    # No bias right before a BatchNorm: in training mode the batch mean cancels it, so its gradient
    # is exactly 0 and a relative error of 0 against rounding noise is meaningless (and it is wasted).
    conv_net = Sequential(
        [C.Conv2D(2, 3, 3, padding=1, bias=False), BatchNorm(3), L.ReLU(), C.MaxPool2D(2),
         C.Conv2D(3, 4, (2, 3), stride=(1, 2)), L.Tanh(), C.AvgPool2D(2, stride=1), L.Flatten(),
         L.Linear(16, 5, bias=False), BatchNorm(5), L.Tanh(), L.Linear(5, 3)],
        input_shape=(2, 8, 14), seed=seed,
    )
    nets.append(("convolution, pooling, batch norm, CrossEntropy", conv_net, rng.normal(size=(4, 2, 8, 14)),
                 rng.integers(0, 3, 4)))
    return nets
