"""Optimizers step for step against torch.optim (float64, 1e-6), and the learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import chainrule as cr
from chainrule import optim

CASES = [
    ("SGD", dict(lr=0.1), torch.optim.SGD),
    ("SGD", dict(lr=0.1, weight_decay=0.05), torch.optim.SGD),
    ("SGD", dict(lr=0.05, momentum=0.9), torch.optim.SGD),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01), torch.optim.SGD),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True), torch.optim.SGD),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02), torch.optim.SGD),
    ("Adam", dict(lr=0.01), torch.optim.Adam),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), torch.optim.Adam),
    ("Adam", dict(lr=0.01, weight_decay=0.1), torch.optim.Adam),
    ("AdamW", dict(lr=0.01), torch.optim.AdamW),
    ("AdamW", dict(lr=0.01, weight_decay=0.3), torch.optim.AdamW),
]


def _pair(seed=0):
    """A chainrule MLP and a PyTorch copy with the same weights, both float64."""
    model = cr.Sequential([cr.Linear(5, 8), cr.Tanh(), cr.Linear(8, 4), cr.ReLU(), cr.Linear(4, 3)],
                          seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if isinstance(layer, cr.Linear):
            layer.bias.data[...] = rng.normal(scale=0.1, size=layer.bias.shape)
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 3)).double()
    with torch.no_grad():
        for ours, theirs in zip(model.layers[::2], tmodel[::2], strict=True):
            theirs.weight.copy_(torch.tensor(ours.weight.data.T))
            theirs.bias.copy_(torch.tensor(ours.bias.data))
    return model, tmodel


@pytest.mark.parametrize("name,kwargs,torch_cls", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_training_steps_match_torch_optim(name, kwargs, torch_cls, parts, monkeypatch):
    # blocks of 16 parameters: Adam's update runs over 7 blocks (the 99 parameters), in parts
    monkeypatch.setattr(optim, "_BLOCK", 16)
    model, tmodel = _pair()
    opt = getattr(cr, name)(model.parameters(), **kwargs)
    topt = torch_cls(tmodel.parameters(), **kwargs)
    loss = cr.CrossEntropy()
    rng = np.random.default_rng(7)
    for _ in range(5):  # several steps, so momentum and Adam's moments matter
        x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
        value, grad = loss(model.forward(x, training=True), y)
        opt.zero_grad()
        model.backward(grad)
        opt.step()
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        topt.step()
        assert value == pytest.approx(tloss.item(), rel=1e-9)
    for ours, theirs in zip(model.layers[::2], tmodel[::2], strict=True):
        np.testing.assert_allclose(ours.weight.data, theirs.weight.detach().numpy().T, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.bias.data, theirs.bias.detach().numpy(), rtol=0, atol=1e-6)
    # and they did move: the comparison is not between two untouched networks
    assert not np.allclose(model.flat_params, _pair()[0].flat_params)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_optimizer_state_round_trip_continues_identically(name):
    kwargs = {"lr": 0.05, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 5)), rng.integers(0, 3, 4)) for _ in range(6)]

    def run(model, opt, part):
        for x, y in part:
            _, grad = cr.CrossEntropy()(model.forward(x, training=True), y)
            model.backward(grad)
            opt.step()

    a, _ = _pair()
    opt_a = getattr(cr, name)(a.parameters(), **kwargs)
    run(a, opt_a, batches)
    b, _ = _pair()
    opt_b = getattr(cr, name)(b.parameters(), **kwargs)
    run(b, opt_b, batches[:3])
    c, _ = _pair()
    c.load_state(b.state())
    opt_c = getattr(cr, name)(c.parameters(), **kwargs)
    opt_c.load_state(opt_b.state())
    run(c, opt_c, batches[3:])
    np.testing.assert_array_equal(a.flat_params, c.flat_params)


def test_a_state_that_does_not_fit_is_refused_before_anything_changes():
    model, _ = _pair()
    adam = cr.Adam(model.parameters(), lr=0.01)
    sgd_state = cr.SGD(model.parameters(), lr=0.1, momentum=0.9).state()
    good = adam.state()
    for state, said in ((sgd_state, "Adam: a saved state holds lr, m, steps, v, got lr, steps, velocity"),
                        ({**good, "m": good["m"][:5]}, r"the saved m has shape \(5,\), expected"),
                        ({**good, "lr": np.array(-1.0)}, "a finite lr >= 0, got steps 0 and lr -1.0"),
                        ({**good, "steps": np.array(2.5)}, "needs whole steps >= 0")):
        adam.m[...] = 7.0
        with pytest.raises(ValueError, match=said):
            adam.load_state(state)
        assert adam.steps == 0 and adam.lr == 0.01 and np.all(adam.m == 7.0)
    adam.lr = 0.0  # (a schedule may reach 0: a warm-up's first epoch, say) and a checkpoint then
    adam.load_state(adam.state())
    assert adam.lr == 0.0


@pytest.mark.parametrize("dtype, small", [(np.float32, 1e-4), (np.float64, 1e-9)])
def test_adam_with_betas_of_0_keeps_the_latest_gradient_as_torch_does(dtype, small):
    # β2 = 0: v is the last g² (v + (1 - β2)(g² - v) rounded a small g² after a large one to 0)
    model = cr.Sequential([cr.Linear(1, 1, bias=False)], seed=0, dtype=dtype)
    opt = cr.Adam(model.parameters(), lr=0.01, betas=(0.0, 0.0))
    w = torch.tensor(model.flat_params.copy(), requires_grad=True)
    reference = torch.optim.Adam([w], lr=0.01, betas=(0.0, 0.0))
    for g in (1.0, small):
        model.flat_grads[...] = g
        w.grad = torch.full_like(w, g)
        opt.step()
        reference.step()
    np.testing.assert_allclose(opt.v, [small * small], rtol=1e-6)
    np.testing.assert_allclose(model.flat_params, w.detach().numpy(), rtol=1e-6)


def test_step_decay_and_cosine_match_torch_schedulers():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ours = cr.step_decay(0.2, 3, 0.5)
    for epoch in range(10):
        assert ours(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    opt = torch.optim.SGD([p], lr=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.01)
    ours = cr.cosine(0.2, 8, 0.01)
    for epoch in range(9):
        assert ours(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()
    assert ours(100) == pytest.approx(0.01)
    assert cr.cosine(1.0, 4)(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


@pytest.mark.parametrize(("make", "said"), [
    (lambda: cr.step_decay(-0.1, 3), "step_decay: lr must be positive"),
    (lambda: cr.step_decay(0.1, 2.5), "step_decay: step_size must be a positive integer"),
    (lambda: cr.step_decay(0.1, 3, float("nan")), "step_decay: gamma must be positive"),
    (lambda: cr.cosine(0.1, float("nan")), "cosine: epochs must be a positive integer"),
    (lambda: cr.cosine(0.1, 5, min_lr=0.5), r"cosine: min_lr must be from 0 to lr \(0.1\)"),
    (lambda: cr.SGD([cr.Parameter(np.zeros(2))], momentum=0.9, nesterov="no"), "SGD: nesterov must be True or False"),
])
def test_schedules_and_options_that_make_no_sense_are_refused(make, said):
    """A negative or NaN rate, a fractional step, a floor above the rate were taken (fit caught some
    at epoch 1); the string "no" turned Nesterov on."""
    with pytest.raises(ValueError, match=said):
        make()


def test_an_optimizer_of_some_layers_updates_them_in_the_models_own_buffer(tmp_path):
    # fine-tuning the last layer: the step must reach the weights the model saves, not a copy
    rng = np.random.default_rng(0)
    model = cr.Sequential([cr.Linear(2, 3), cr.ReLU(), cr.Linear(3, 2)], seed=0, dtype=np.float64)
    first = model.layers[0].weight.data.copy()
    opt = cr.SGD(model.layers[2].parameters(), lr=0.5)
    x, y = rng.normal(size=(8, 2)), rng.integers(0, 2, 8)
    _, grad = cr.CrossEntropy()(model.forward(x, training=True), y)
    model.backward(grad)
    opt.step()
    assert np.shares_memory(opt.params, model.flat_params) and opt.params.size == 3 * 2 + 2
    assert np.array_equal(model.layers[0].weight.data, first)  # the layers left out do not move
    model.save(tmp_path / "m")
    saved, _ = cr.load_model(tmp_path / "m")
    assert np.array_equal(saved.forward(x), model.forward(x))
    with pytest.raises(ValueError, match="not one stretch of it"):  # weights without their biases
        cr.SGD([model.layers[0].weight, model.layers[2].weight], lr=0.1)


def test_optimizer_updates_every_layer_through_the_flat_buffer():
    model, _ = _pair()
    opt = cr.SGD(model.parameters(), lr=0.1)
    assert opt.params is model.flat_params
    model.flat_grads[...] = 1.0
    before = model.flat_params.copy()
    opt.step()
    np.testing.assert_allclose(model.flat_params, before - 0.1)
    for p in model.parameters():
        assert np.shares_memory(p.data, model.flat_params)


def test_an_optimizer_shows_its_settings():
    """It showed as <chainrule.optim.Adam object at 0x...>."""
    model = cr.Sequential([cr.Linear(2, 3)], seed=0)
    assert repr(cr.SGD(model.parameters(), lr=0.1, momentum=0.9)) == \
        "SGD(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)"
    assert repr(cr.Adam(model.parameters(), lr=0.01)) == \
        "Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)"
    assert repr(cr.AdamW(model.parameters())) == "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)"


@pytest.mark.parametrize("make,match", [
    (lambda ps: cr.SGD(ps, lr=0), "lr must be positive, got 0"),
    (lambda ps: cr.SGD(ps, lr=0.1, momentum=1.0), "momentum must be in"),
    (lambda ps: cr.SGD(ps, lr=0.1, nesterov=True), "nesterov=True needs a momentum"),
    (lambda ps: cr.Adam(ps, betas=(1.0, 0.9)), "betas must be in"),
    (lambda ps: cr.AdamW(ps, weight_decay=-1), "weight_decay must be >= 0"),
    (lambda ps: cr.SGD(ps, weight_decay=float("nan")), "weight_decay must be >= 0"),
    (lambda ps: cr.Adam(ps, lr=float("inf")), "lr must be positive, got inf"),
    (lambda ps: cr.Adam(ps, eps=-1), "eps must be a finite number >= 0"),
    (lambda ps: cr.SGD(ps, lr="0.1"), "lr must be positive, got '0.1'"),  # (were TypeErrors from inside)
    (lambda ps: cr.SGD(ps, lr=0.1, weight_decay=float("inf")), "weight_decay must be >= 0, got inf"),
])
def test_bad_optimizer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_pair()[0].parameters())


@pytest.mark.parametrize("make,match", [
    (lambda ps: cr.SGD(ps, momentum=None), r"SGD: momentum must be in \[0, 1\), got None"),
    (lambda ps: cr.SGD(ps, momentum="0.9"), r"SGD: momentum must be in \[0, 1\), got '0.9'"),
    (lambda ps: cr.Adam(ps, betas=(0.9,)), r"Adam: betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
    (lambda ps: cr.Adam(ps, betas=0.9), r"Adam: betas must be a pair \(beta1, beta2\), got 0.9"),
    (lambda ps: cr.Adam(ps, betas=(0.9, 0.99, 0.999)), r"Adam: betas must be a pair \(beta1, beta2\)"),
    (lambda ps: cr.AdamW(ps, betas=("0.9", 0.999)), r"AdamW: betas must be in \[0, 1\), got \('0.9', 0.999\)"),
    (lambda ps: cr.Adam(ps, eps=None), "Adam: eps must be a finite number >= 0, got None"),
])
def test_optimizer_arguments_of_the_wrong_type_are_named(make, match):
    """None, a string or a wrong number of betas failed inside: a TypeError from a comparison, or
    Python's "not enough values to unpack", which names neither the optimizer nor the argument."""
    with pytest.raises(ValueError, match=match):
        make(_pair()[0].parameters())
