"""Yogi checked three ways (ISSUE 2): against the update rule transcribed here, against
pytorch_optimizer's independent implementation, and foreach against single-tensor."""

from __future__ import annotations

import io

import pytest
import torch
from pytorch_optimizer import Yogi as ReferenceYogi

from tuner.catalog.optim import Yogi

SHAPES = [(3, 4), (5,), (2, 3, 2), (1,)]


def make_params(dtype: torch.dtype = torch.float64, device: str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=dtype).to(device).requires_grad_() for s in SHAPES]


def clone(params: list[torch.Tensor], device: str | None = None) -> list[torch.Tensor]:
    return [p.detach().clone().to(device or p.device).requires_grad_() for p in params]


def gradients(step: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Gradients whose scale swings by 100x every 5 steps, so that v - g² changes sign often:
    both branches of Yogi's second-moment update run."""
    gen = torch.Generator().manual_seed(1000 + step)
    scale = 1.0 if step % 10 < 5 else 0.01
    return [scale * torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone().to(p.device)


def saved_and_loaded(state_dict: dict) -> dict:
    """The state dict through torch.save and torch.load, as a checkpoint takes it. (Loaded
    in-process as is, torch shares the state tensors between the two optimizers.)"""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def groups(params: list[torch.Tensor]) -> list[dict]:
    """Two parameter groups with their own lr, betas and weight decay."""
    return [
        {"params": params[:2], "lr": 1e-2, "weight_decay": 1e-2},
        {"params": params[2:], "lr": 3e-2, "betas": (0.8, 0.99), "weight_decay": 0.1},
    ]


def transcribed_yogi(params, group_of, steps, *, eps=1e-3, v0=1e-6):
    """The update of docs/catalog.md line by line, one parameter at a time; params and signs."""
    p = [q.detach().clone() for q in params]
    m = [torch.zeros_like(q) for q in p]
    v = [torch.full_like(q, v0) for q in p]
    signs = {1.0: 0, -1.0: 0}
    for t in range(1, steps + 1):
        for i, grad in enumerate(gradients(t)):
            lr, (b1, b2), wd = group_of[i]
            g = grad + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            sign = torch.sign(v[i] - g * g)
            signs[1.0] += int((sign > 0).sum())
            signs[-1.0] += int((sign < 0).sum())
            v[i] = v[i] - (1 - b2) * sign * g * g
            p[i] = p[i] - lr * (m[i] / (1 - b1**t)) / (torch.sqrt(v[i] / (1 - b2**t)) + eps)
    return p, signs


def run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> None:
    for t in range(1, steps + 1):
        set_grads(params, gradients(t, params[0].dtype))
        optimizer.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_the_transcribed_update_rule_for_120_steps(foreach: bool) -> None:
    params = make_params()
    group_of = [(1e-2, (0.9, 0.999), 1e-2)] * 2 + [(3e-2, (0.8, 0.99), 0.1)] * 2
    expected, signs = transcribed_yogi(params, group_of, steps=120)
    assert signs[1.0] > 100 and signs[-1.0] > 100  # both branches of sign(v - g²) exercised

    ours = clone(params)
    run(Yogi(groups(ours), foreach=foreach), ours, steps=120)

    for got, want in zip(ours, expected, strict=True):
        assert not torch.equal(got, params[0].new_zeros(got.shape))
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_pytorch_optimizer_yogi(foreach: bool) -> None:
    # pytorch_optimizer's Yogi differs from docs/catalog.md in two defaults, set to ours here:
    # weight_decouple=True (AdamW-style) -> False for coupled L2 decay, and it starts
    # m0 = initial_accumulator where we start m0 = 0. It builds state only for parameters whose
    # state is empty, so seeding m0 = 0, v0 = 1e-6 beforehand gives the same semantics exactly.
    params = make_params()
    ours, theirs = clone(params), clone(params)
    reference = ReferenceYogi(
        groups(theirs),
        lr=1e-2,
        betas=(0.9, 0.999),
        eps=1e-3,
        initial_accumulator=1e-6,
        weight_decouple=False,
    )
    for p in theirs:
        reference.state[p]["exp_avg"] = torch.zeros_like(p)
        reference.state[p]["exp_avg_sq"] = torch.full_like(p, 1e-6)

    run(Yogi(groups(ours), foreach=foreach), ours, steps=120)
    run(reference, theirs, steps=120)

    for got, want in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_foreach_matches_single_tensor(maximize: bool, weight_decay: float) -> None:
    params = make_params(torch.float32)
    single, multi = clone(params), clone(params)
    kwargs = {"lr": 1e-2, "weight_decay": weight_decay, "maximize": maximize}
    opt_single = Yogi(single, foreach=False, **kwargs)
    opt_multi = Yogi(multi, foreach=True, **kwargs)
    for t in range(1, 31):
        grads = gradients(t, torch.float32)
        # The last parameter gets no gradient for 3 steps: its step count lags behind the others,
        # which takes the foreach path's per-tensor bias corrections.
        for p_single, p_multi, g in zip(single, multi, grads, strict=True):
            skip = p_single is single[-1] and t <= 3
            p_single.grad = None if skip else g.clone()
            p_multi.grad = None if skip else g.clone()
        opt_single.step()
        opt_multi.step()
    assert opt_multi.state[multi[-1]]["step"].item() == 27
    for a, b in zip(single, multi, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_cpu_cache_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU foreach path runs block by block; blocks of 40 bytes slice every tensor of more than
    five values and take the allocating path for a non-contiguous one, and must still give the
    same bits as one block holding everything."""
    import tuner.catalog.optim._yogi as yogi_module

    params = make_params()
    params[0] = params[0].detach().reshape(4, 3).t().requires_grad_()  # non-contiguous, (3, 4)
    results = []
    for block_bytes in (40, 1 << 20):
        monkeypatch.setattr(yogi_module, "_CPU_BLOCK_BYTES", block_bytes)
        ours = clone(params)
        ours[0] = params[0].detach().clone().reshape(4, 3).t().requires_grad_()
        assert not ours[0].is_contiguous()
        optimizer = Yogi(groups(ours), weight_decay=0.1, foreach=True)
        for t in range(1, 31):
            set_grads(ours, gradients(t))
            if t <= 3:
                ours[-2].grad = None  # its step count lags: per-tensor constants in a block
            optimizer.step()
        results.append([p.detach().clone() for p in ours])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_does_not_modify_gradients() -> None:
    params = make_params()
    optimizer = Yogi(params, weight_decay=0.1, maximize=True, foreach=True)
    set_grads(params, gradients(1))
    before = [p.grad.clone() for p in params]
    optimizer.step()
    for p, g in zip(params, before, strict=True):
        assert torch.equal(p.grad, g)


def test_maximize_is_minimizing_the_negated_objective() -> None:
    params = make_params()
    up, down = clone(params), clone(params)
    opt_up, opt_down = Yogi(up, maximize=True), Yogi(down)
    for t in range(1, 21):
        grads = gradients(t)
        set_grads(up, grads)
        set_grads(down, [-g for g in grads])
        opt_up.step()
        opt_down.step()
    for a, b in zip(up, down, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(up[0], params[0])


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_continues_identically(foreach: bool) -> None:
    params = make_params()
    first = clone(params)
    opt_first = Yogi(groups(first), foreach=foreach)
    run(opt_first, first, steps=5)

    second = clone(first)
    opt_second = Yogi(groups(second), foreach=foreach)
    opt_second.load_state_dict(saved_and_loaded(opt_first.state_dict()))
    assert opt_second.state[second[0]]["step"].item() == 5
    for t in range(6, 16):
        set_grads(first, gradients(t))
        set_grads(second, gradients(t))
        opt_first.step()
        opt_second.step()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_step_returns_the_closure_loss() -> None:
    p = torch.ones(3, requires_grad=True)
    optimizer = Yogi([p])

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 3.0
    assert (p < 1).all()


def test_sparse_gradients_are_rejected() -> None:
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="Yogi does not support sparse gradients"):
        Yogi(embedding.parameters()).step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "Invalid learning rate: -1.0"),
        ({"eps": -1e-3}, "Invalid epsilon value: -0.001"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ({"initial_accumulator": -1.0}, "Invalid initial_accumulator value: -1.0"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
        ({"lr": float("nan")}, "Invalid learning rate: nan"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Yogi([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("foreach", [None, False, True])
def test_cuda_matches_cpu(foreach: bool | None) -> None:
    params = make_params(torch.float32)
    cpu, cuda = clone(params), clone(params, "cuda")
    opt_cpu, opt_cuda = Yogi(groups(cpu), foreach=False), Yogi(groups(cuda), foreach=foreach)
    run(opt_cpu, cpu, steps=20)
    run(opt_cuda, cuda, steps=20)
    for a, b in zip(cpu, cuda, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)
