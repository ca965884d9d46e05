"""One contract suite over every optimizer registry entry, like torch's ``optim_db``: a new row in
``OPTIMIZERS`` is covered by every test here without touching this file."""

from __future__ import annotations

import io
import math

import pytest
import torch

from tuner.catalog.hparams import Range
from tuner.catalog.optim import OPTIMIZERS, OptimizerSpec, get_optimizer
from tuner.core.errors import CatalogError

SPECS = list(OPTIMIZERS.values())


@pytest.fixture(params=SPECS, ids=[spec.name for spec in SPECS])
def spec(request: pytest.FixtureRequest) -> OptimizerSpec:
    return request.param


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(32, 8, generator=gen)
    return a, a @ torch.randn(8, generator=gen)


def train(optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
    a, b = least_squares()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((a @ x - b) ** 2).mean()
        loss.backward()
        optimizer.step()
    return float(((a @ x.detach() - b) ** 2).mean())


def test_catalog_order_and_names() -> None:
    assert list(OPTIMIZERS) == [
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "yogi"
    ]  # fmt: skip
    assert [hp.name for hp in get_optimizer("adam").hparams] == [
        "lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad"
    ]  # fmt: skip


def test_builds_from_defaults_and_steps_a_small_model(spec: OptimizerSpec) -> None:
    model = small_model()
    optimizer = spec.build(model.parameters(), spec.to_kwargs(spec.defaults()))
    assert isinstance(optimizer, torch.optim.Optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(16, 4)).pow(2).mean().backward()
    optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_lowers_a_least_squares_loss_with_a_suitable_lr(spec: OptimizerSpec) -> None:
    # "Suitable" without a per-optimizer table: the best of five lrs spread over the entry's own
    # default lr range must cut the loss tenfold in 300 steps.
    lr_range = spec.hparam("lr").default
    assert isinstance(lr_range, Range)
    initial = float(least_squares()[1].pow(2).mean())
    finals = []
    for i in range(5):
        lr = math.exp(math.log(lr_range.low) + i / 4 * math.log(lr_range.high / lr_range.low))
        x = torch.zeros(8, requires_grad=True)
        optimizer = spec.build([x], spec.to_kwargs({**spec.defaults(), "lr": lr}))
        finals.append(train(optimizer, x, steps=300))
    # The top of an lr range may diverge (NaN); that is what the range's other points are for.
    assert min(f for f in finals if math.isfinite(f)) < initial / 10, finals


def test_state_dict_round_trip_continues_identically(spec: OptimizerSpec) -> None:
    kwargs = spec.to_kwargs(spec.defaults())
    first = small_model()
    opt_first = spec.build(first.parameters(), kwargs)
    data = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(10)]

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()

    for x in data[:5]:
        step(first, opt_first, x)
    second = small_model()
    second.load_state_dict(first.state_dict())
    opt_second = spec.build(second.parameters(), kwargs)
    buffer = io.BytesIO()
    torch.save(opt_first.state_dict(), buffer)
    buffer.seek(0)
    opt_second.load_state_dict(torch.load(buffer))
    for x in data[5:]:
        step(first, opt_first, x)
        step(second, opt_second, x)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)


def test_accepts_param_group_dicts(spec: OptimizerSpec) -> None:
    model = small_model()
    lr = spec.defaults()["lr"]
    groups = [
        {"params": model[0].parameters()},
        {"params": model[2].parameters(), "lr": lr / 10},
    ]
    optimizer = spec.build(groups, spec.to_kwargs(spec.defaults()))
    assert [g["lr"] for g in optimizer.param_groups] == [lr, lr / 10]
    model(torch.randn(4, 4)).sum().backward()
    optimizer.step()


def test_defaults_are_complete_and_valid(spec: OptimizerSpec) -> None:
    values = spec.defaults()
    assert list(values) == [hp.name for hp in spec.hparams]
    spec.check(values, path=f"search.optimizers.{spec.name}")
    assert spec.from_kwargs(spec.to_kwargs(values)) == values


def test_default_domains_are_valid_and_on_the_right_scales(spec: OptimizerSpec) -> None:
    assert spec.source
    for hp in spec.hparams:
        assert hp.source, hp.name
        hp.validate_domain(hp.default, path=f"{spec.name}.{hp.name}")
        if isinstance(hp.default, Range) and hp.default.log:
            assert 0 < hp.default.low < hp.default.high
        if hp.name in ("lr", "eps") or hp.one_minus:
            assert isinstance(hp.default, Range) and hp.default.log, hp.name
        if hp.name == "weight_decay":
            assert isinstance(hp.default, Range) and hp.default.include_zero


def test_invalid_values_are_rejected_naming_hyperparameter_and_value(spec: OptimizerSpec) -> None:
    path = f"search.optimizers.{spec.name}"
    for hp in spec.hparams:
        bad = "yes" if hp.kind is bool else -1.0
        with pytest.raises(CatalogError) as error:
            spec.check({hp.name: bad}, path=path)
        assert f"{path}.{hp.name}:" in str(error.value)
        assert f"{hp.name}={bad!r}" in str(error.value) or repr(bad) in str(error.value)
        # build() checks too, before torch sees the value.
        with pytest.raises(CatalogError, match=hp.name):
            spec.build(small_model().parameters(), spec.to_kwargs({hp.name: bad}))


@pytest.mark.parametrize("name", [n for n, s in OPTIMIZERS.items() if "eps" in s.defaults()])
def test_eps_zero_is_rejected(name: str) -> None:
    with pytest.raises(CatalogError, match=rf"{name}\.eps: must be > 0, but got eps=0"):
        get_optimizer(name).check({"eps": 0}, path=name)


def test_unknown_hyperparameter_lists_the_known_ones(spec: OptimizerSpec) -> None:
    known = ", ".join(hp.name for hp in spec.hparams)
    with pytest.raises(CatalogError, match=f"known: {known}"):
        spec.hparam("nope")
    with pytest.raises(CatalogError, match=r"x\.nope: unknown hyperparameter"):
        spec.check({"nope": 1}, path="x")


def test_unknown_optimizer_lists_known_names() -> None:
    with pytest.raises(CatalogError) as error:
        get_optimizer("adamx")
    assert str(error.value) == (
        "unknown optimizer 'adamx'; known: sgd, momentum, nesterov, adagrad, rmsprop, adadelta, "
        "adam, adamw, yogi"
    )


def test_nesterov_needs_momentum_and_zero_dampening() -> None:
    spec = get_optimizer("nesterov")
    with pytest.raises(CatalogError, match=r"n\.momentum: nesterov needs `momentum > 0`"):
        spec.check({"momentum": 0.0}, path="n")
    with pytest.raises(CatalogError, match=r"n\.dampening: is fixed to 0.0"):
        spec.build(
            small_model().parameters(), {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}, path="n"
        )
    optimizer = spec.build(small_model().parameters(), spec.to_kwargs({"momentum": 0.5}))
    assert optimizer.param_groups[0]["nesterov"] is True
    assert optimizer.param_groups[0]["dampening"] == 0.0


def test_betas_pack_and_unpack() -> None:
    spec = get_optimizer("yogi")
    kwargs = spec.to_kwargs({"beta1": 0.8, "beta2": 0.99})
    assert kwargs["betas"] == (0.8, 0.99) and "beta1" not in kwargs
    assert spec.from_kwargs({"betas": [0.8, 0.99]}) == {"beta1": 0.8, "beta2": 0.99}
    with pytest.raises(CatalogError, match=r"yogi\.betas: must be a pair"):
        spec.from_kwargs({"betas": 0.9})
    with pytest.raises(CatalogError, match=r"yogi\.foreach: unknown argument"):
        spec.from_kwargs({"foreach": True})
