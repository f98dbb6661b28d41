"""Optimizers: move every parameter a small step against its gradient.

Each optimizer works on the *flat* parameter and gradient buffers (see `parameter.py`), so one
`step()` is a few whole-array NumPy operations however many layers the network has. The update
rules follow `torch.optim` exactly (the tests compare them step for step).
"""

from __future__ import annotations

import math
import os

import numpy as np

from chainrule.checks import flag, is_real, number, positive_int
from chainrule.parallel import in_parts
from chainrule.parameter import flat_buffers

# Parameters per block of Adam's update: w, g, m, v and a scratch block of 2¹⁶ float32 values
# (1.3 MB) fit in a core's L2 cache on current x86 CPUs, and blocks this long keep NumPy's
# per-call cost (about a microsecond, 12 calls a block) small beside the arithmetic.
_BLOCK = 1 << 16


class Optimizer:
    """Base class: holds the flat buffers and the learning rate `lr` (which schedules change)."""

    # The arrays, one value per parameter, that a subclass carries from step to step (momentum,
    # Adam's moments): checkpointed by `state`.
    moments: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        name = type(self).__name__
        lr = number(name, "lr", lr, lambda v: 0 < v < math.inf, "positive")
        weight_decay = number(name, "weight_decay", weight_decay, lambda v: 0 <= v < math.inf, ">= 0")
        self.params, self.grads = flat_buffers(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.steps = 0

    def step(self) -> None:
        """Update every parameter in place from its gradient in `grads`."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Set every parameter's gradient to 0."""
        self.grads[...] = 0

    def config(self) -> dict:
        """The optimizer's settings, as its constructor takes them (`lr` as a schedule has set it)."""
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint so training can resume exactly where it stopped."""
        return {"steps": np.array(self.steps), "lr": np.array(self.lr),
                **{name: getattr(self, name).copy() for name in self.moments}}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from a `state()`: all of it checked (ValueError) before any of it is used."""
        name = type(self).__name__
        expected = {"steps", "lr", *self.moments}
        if set(state) != expected:  # (say, a checkpoint of another optimizer)
            raise ValueError(f"{name}: a saved state holds {', '.join(sorted(expected))}, "
                             f"got {', '.join(sorted(state))}")
        for moment in self.moments:
            if np.shape(state[moment]) != getattr(self, moment).shape:
                raise ValueError(f"{name}: the saved {moment} has shape {np.shape(state[moment])}, expected "
                                 f"{getattr(self, moment).shape}")
        steps, lr = np.asarray(state["steps"]), np.asarray(state["lr"])
        # (lr 0 is possible: a schedule may reach it, as a warm-up's first epoch does)
        if steps.shape or steps.dtype.kind not in "iu" or steps < 0 or lr.shape or not 0 <= lr < math.inf:
            raise ValueError(f"{name}: a saved state needs whole steps >= 0 and a finite lr >= 0, got steps "
                             f"{steps.tolist()!r} and lr {lr.tolist()!r}")
        self.steps, self.lr = int(steps), float(lr)
        for moment in self.moments:
            getattr(self, moment)[...] = state[moment]


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum.

    plain:     w ← w - lr · g
    momentum:  v ← μ v + g ;  w ← w - lr · v          (a ball rolling downhill keeps its speed)
    Nesterov:  v ← μ v + g ;  w ← w - lr · (g + μ v)   (looks ahead along the velocity)
    weight_decay adds λ·w to g first (L2 regularisation).
    """

    moments = ("velocity",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        momentum = number("SGD", "momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
        nesterov = flag("SGD", "nesterov", nesterov)
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = np.zeros_like(self.params)

    def config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def step(self):
        g = self.grads
        if self.weight_decay:
            g = g + self.weight_decay * self.params
        if self.momentum:
            if self.steps == 0:
                self.velocity[...] = g
            else:
                self.velocity *= self.momentum
                self.velocity += g
            g = g + self.momentum * self.velocity if self.nesterov else self.velocity
        self.params -= self.lr * g
        self.steps += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015): per-parameter step sizes from running gradient moments.

    m ← β1 m + (1-β1) g            (mean of recent gradients: direction)
    v ← β2 v + (1-β2) g²           (mean of recent squared gradients: scale)
    w ← w - lr · m̂ / (√v̂ + ε)      with m̂ = m/(1-β1^t), v̂ = v/(1-β2^t) correcting the zero start.
    weight_decay is L2: λ·w is added to g (the original Adam); see `AdamW` for the decoupled kind.
    """

    moments = ("m", "v")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        name = type(self).__name__
        if not isinstance(betas, (tuple, list, np.ndarray)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        if not all(is_real(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"{name}: betas must be in [0, 1), got {betas!r}")
        eps = number(name, "eps", eps, lambda v: 0 <= v < math.inf, "a finite number >= 0")
        self.beta1, self.beta2, self.eps = float(betas[0]), float(betas[1]), eps
        self.m = np.zeros_like(self.params)
        self.v = np.zeros_like(self.params)
        # scratch, reused: a block for each part of the update that may run at once (see _update)
        blocks = -(-self.params.size // _BLOCK)
        self._tmp = np.empty((max(1, min(os.cpu_count() or 1, blocks)), min(self.params.size, _BLOCK)),
                             self.params.dtype)

    def config(self):
        return {"lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps, "weight_decay": self.weight_decay}

    def step(self):
        # With g the gradient and t the number of steps taken, this one included:
        #   m ← β1·m + (1 - β1)·g                      running mean of the gradients
        #   v ← β2·v + (1 - β2)·g²                     running mean of their squares
        #   m̂ = m / (1 - β1^t),  v̂ = v / (1 - β2^t)    bias corrections: m and v start at 0
        #   w ← w - lr · m̂ / (√v̂ + ε)
        # Weight decay first: Adam adds λ·w to g (L2); AdamW shrinks w itself, w ← w·(1 - lr·λ).
        self.steps += 1
        g = self.grads
        if self.weight_decay:
            if self.decoupled:
                self.params *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * self.params
        self._update(g)

    def _update(self, g: np.ndarray) -> None:
        """Equivalent to the four lines of maths in `step`, done a block of `_BLOCK` parameters at
        a time. Each line is a few whole-array passes; over the whole network, each pass would
        stream w, g, m and v through memory again (12 passes over arrays larger than the CPU's
        cache), whereas a block's arrays stay in cache from its first pass to its last. Inside
        `fit` the blocks are shared out between the cores (`in_parts`), each part with its own
        scratch block."""
        bias1 = 1 - self.beta1**self.steps
        bias2 = 1 - self.beta2**self.steps

        def update(part, first, end):
            tmp = self._tmp[part]
            for start in range(first * _BLOCK, min(end * _BLOCK, self.params.size), _BLOCK):
                block = slice(start, start + _BLOCK)
                self._update_block(self.params[block], g[block], self.m[block], self.v[block],
                                   tmp[: self.params[block].size], bias1, bias2)

        in_parts(update, -(-self.params.size // _BLOCK), 7 * self.params.size)  # reads w, g, m, v; writes w, m, v

    def _update_block(self, w, g, m, v, tmp, bias1, bias2) -> None:
        """One block of the update, in place in one scratch array (a step allocates nothing): 12
        whole-block passes."""
        b1, b2 = self.beta1, self.beta2
        # m ← β1·m + (1 - β1)·g and v ← β2·v + (1 - β2)·g², each term scaled on its own (not
        # m + (1 - β1)(g - m), as many passes, which loses v where β2 = 0 and g² ≪ the old v)
        m *= b1
        np.multiply(g, 1 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        # lr · m̂ / (√v̂ + ε) = (lr·√(1 - β2^t) / (1 - β1^t)) · m / (√v + ε·√(1 - β2^t)): multiplying
        # through by √(1 - β2^t) leaves one scalar factor per term, and saves a pass over the block
        root2 = math.sqrt(bias2)
        np.sqrt(v, out=tmp)
        tmp += self.eps * root2
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr * root2 / bias1
        w -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): w ← w (1 - lr·λ) before the
    Adam step, so decay is not rescaled by the adaptive step sizes. Default λ = 0.01."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


def step_decay(lr: float, step_size: int, gamma: float = 0.1):
    """Schedule: multiply the learning rate by `gamma` every `step_size` epochs.

    Returns a callable `epoch -> lr` (epochs count from 0), which `fit(lr_schedule=...)` calls
    at the start of every epoch.
    """
    lr = number("step_decay", "lr", lr, lambda v: 0 < v < math.inf, "positive")
    gamma = number("step_decay", "gamma", gamma, lambda v: 0 < v < math.inf, "positive")
    step_size = positive_int("step_decay", "step_size", step_size)  # (2.5 or NaN was taken)
    return lambda epoch: lr * gamma ** (epoch // step_size)


def cosine(lr: float, epochs: int, min_lr: float = 0.0):
    """Schedule: cosine annealing from `lr` at epoch 0 down to `min_lr` at epoch `epochs`.

    lr(e) = min_lr + (lr - min_lr) · (1 + cos(π e / epochs)) / 2
    """
    lr = number("cosine", "lr", lr, lambda v: 0 < v < math.inf, "positive")
    min_lr = number("cosine", "min_lr", min_lr, lambda v: 0 <= v <= lr, f"from 0 to lr ({lr:g})")
    epochs = positive_int("cosine", "epochs", epochs)
    return lambda epoch: min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
