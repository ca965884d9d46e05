"""Yogi (Zaheer et al. 2018, "Adaptive Methods for Nonconvex Optimization", Algorithm 2).

Laid out like ``torch/optim/adam.py``: the :class:`Yogi` class validates its hyperparameters and
keeps the state; the functional :func:`yogi` dispatches to a single-tensor, a ``foreach``
(multi-tensor) or a ``fused`` implementation (one Triton kernel per step, in ``_yogi_fused.py``),
all with one signature.

The update, with Adam-style bias correction as the common ports do (docs/catalog.md)::

    g = grad + weight_decay * p                      # coupled, like torch.optim.Adam
    m = beta1 * m + (1 - beta1) * g                  # m0 = 0
    v = v - (1 - beta2) * sign(v - g*g) * g*g        # v0 = initial_accumulator
    p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach, _get_scalar_dtype

if TYPE_CHECKING:
    from tuner.catalog.optim._yogi_fused import FusedTables

__all__ = ["Yogi", "yogi"]


class Yogi(Optimizer):
    """Yogi: Adam whose second moment moves by ``sign(v - g²) · g²`` instead of decaying.

    Adam's ``v`` forgets the past geometrically, so one burst of large gradients inflates it and a
    quiet stretch shrinks it fast; Yogi's additive update changes ``v`` by at most
    ``(1 - beta2) · g²`` per step, which keeps the effective learning rate from rising abruptly.

    Args:
        params: tensors to optimize, or dicts defining parameter groups.
        lr: learning rate (default 1e-2).
        betas: decay of the first moment and rate of the second (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-3, larger than Adam's: Yogi's ``v`` can be tiny).
        initial_accumulator: starting value of ``v`` (default 1e-6).
        weight_decay: L2 penalty added to the gradient, as in ``torch.optim.Adam`` (default 0).
        foreach: use the multi-tensor implementation; ``None`` picks it on CUDA, as torch does.
        maximize: maximize the objective instead of minimizing it.
        fused: update every tensor in one Triton kernel launch per step (CUDA tensors, float32,
            float16 or bfloat16; needs Triton, which ships with torch's CUDA builds). Off by
            default, as in torch. On CPU tensors it runs only in Triton's interpreter
            (``TRITON_INTERPRET=1``), for tests.
        capturable: with ``fused``, allow capturing ``step()`` in a CUDA graph. The learning
            rate is then the one at capture time.

    Example::

        >>> model = torch.nn.Linear(4, 1)
        >>> optimizer = Yogi(model.parameters(), lr=1e-2, weight_decay=1e-4)
        >>> model(torch.ones(2, 4)).sum().backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
        capturable: bool = False,
    ) -> None:
        # Written as `not x >= 0` so that NaN fails too.
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not initial_accumulator >= 0.0:
            raise ValueError(f"Invalid initial_accumulator value: {initial_accumulator}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot be `True` together.")
        if capturable and not fused:
            raise ValueError("Yogi supports `capturable=True` only with `fused=True`.")
        defaults = {
            "lr": lr,
            "betas": (float(betas[0]), float(betas[1])),
            "eps": eps,
            "initial_accumulator": initial_accumulator,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "fused": fused,
            "capturable": capturable,
            # Optimizer.__init__ and its helpers read this key; Yogi does not support it.
            "differentiable": False,
        }
        super().__init__(params, defaults)
        self._fused_tables: FusedTables | None = None
        for group in self.param_groups:
            if group["fused"]:
                # Checked here, like torch's fused Adam: the error comes where the optimizer is
                # built, not at the first step.
                for p in group["params"]:
                    _fused().check_fused_param(p)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("capturable", False)
        self._fused_tables: FusedTables | None = None

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        state_steps: list[Tensor],
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "Yogi does not support sparse gradients, please consider "
                    "torch.optim.SparseAdam instead"
                )
            if torch.is_complex(p):
                raise RuntimeError("Yogi does not support complex parameters")
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                # The step count lives on the CPU: reading it as a Python float is free there,
                # while a device tensor would force a sync on every step. The fused kernel reads
                # it on the device instead, so the host never needs its value.
                state["step"] = (
                    torch.tensor(0.0, dtype=torch.float32, device=p.device)
                    if group["fused"]
                    else torch.tensor(0.0, dtype=_get_scalar_dtype())
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.full_like(
                    p, group["initial_accumulator"], memory_format=torch.preserve_format
                )
            elif group["fused"] and state["step"].device != p.device:
                # A state dict saved without fused keeps its step counts on the CPU.
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            state_steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, state_steps)
            if group["fused"] and self._fused_tables is None:
                self._fused_tables = _fused().FusedTables()
            beta1, beta2 = group["betas"]
            yogi(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                state_steps,
                foreach=group["foreach"],
                fused=group["fused"],
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                capturable=group["capturable"],
                fused_tables=self._fused_tables,
            )
        return loss


def yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    foreach: bool | None = None,
    fused: bool | None = None,
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool = False,
    fused_tables: FusedTables | None = None,
) -> None:
    """Functional Yogi: update ``params`` and the state lists in place. See :class:`Yogi`.

    ``state_steps`` holds one scalar tensor per parameter, incremented here: on the CPU, or on
    the parameters' device (float32) with ``fused``. ``fused_tables`` lets the fused path reuse
    its tables from one step to the next (:class:`Yogi` keeps one).

    Example::

        >>> p, g = torch.zeros(3), torch.ones(3)
        >>> m, v, t = torch.zeros(3), torch.full((3,), 1e-6), torch.tensor(0.0)
        >>> yogi([p], [g], [m], [v], [t], beta1=0.9, beta2=0.999, lr=1e-2, eps=1e-3,
        ...      weight_decay=0.0, maximize=False)
    """
    kwargs = {
        "beta1": beta1,
        "beta2": beta2,
        "lr": lr,
        "eps": eps,
        "weight_decay": weight_decay,
        "maximize": maximize,
    }
    if fused:
        if foreach:
            raise ValueError("`fused` and `foreach` cannot be `True` together.")
        _fused().fused_yogi(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            state_steps,
            capturable=capturable,
            tables=fused_tables,
            **kwargs,
        )
        return
    if capturable:
        raise ValueError("Yogi supports `capturable=True` only with `fused=True`.")
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    func = _multi_tensor_yogi if foreach else _single_tensor_yogi
    func(params, grads, exp_avgs, exp_avg_sqs, state_steps, **kwargs)


def _step_constants(step: float, beta1: float, beta2: float, lr: float, eps: float) -> tuple:
    """Fold both bias corrections into two Python floats: ``(step_size, eps_hat)``.

    ``lr * (m/bc1) / (sqrt(v/bc2) + eps) == (lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps*sqrt(bc2))``,
    so the denominator needs one sqrt and one add instead of Adam's sqrt, divide and add: one
    fewer pass over memory per step, for the same value up to rounding.
    """
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    return -lr * bias_correction2_sqrt / bias_correction1, eps * bias_correction2_sqrt


def _single_tensor_yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, strict=True
    ):
        grad = -grad if maximize else grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        step_t += 1
        step_size, eps_hat = _step_constants(step_t.item(), beta1, beta2, lr, eps)

        exp_avg.lerp_(grad, 1 - beta1)
        grad_sq = grad * grad
        sign = (exp_avg_sq - grad_sq).sign_()
        exp_avg_sq.addcmul_(sign, grad_sq, value=-(1 - beta2))
        denom = exp_avg_sq.sqrt().add_(eps_hat)
        param.addcdiv_(exp_avg, denom, value=step_size)


def _multi_tensor_yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    if not params:
        return
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, state_steps]  # type: ignore[list-item]
    )
    for tensors, _ in grouped.values():
        device_params, device_grads, device_exp_avgs, device_exp_avg_sqs, device_steps = (
            cast(list[Tensor], t) for t in tensors
        )
        # The user's .grad tensors are never written: negation and weight decay make a copy.
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
            if weight_decay != 0:
                torch._foreach_add_(device_grads, device_params, alpha=weight_decay)
        elif weight_decay != 0:
            device_grads = torch._foreach_add(device_grads, device_params, alpha=weight_decay)

        # One tensor holding 1.0 avoids wrapping the scalar again for each step tensor.
        torch._foreach_add_(device_steps, torch.tensor(1.0), alpha=1.0)
        step_values = [step.item() for step in device_steps]
        step_sizes: float | list[float]
        eps_hats: float | list[float]
        if len(set(step_values)) == 1:
            # The usual case, every tensor at the same step: scalar arguments take the faster
            # foreach kernels (a list of scalars costs an extra pass on CPU).
            step_sizes, eps_hats = _step_constants(step_values[0], beta1, beta2, lr, eps)
        else:
            constants = [_step_constants(s, beta1, beta2, lr, eps) for s in step_values]
            step_sizes = [c[0] for c in constants]
            eps_hats = [c[1] for c in constants]

        lists = (device_params, device_grads, device_exp_avgs, device_exp_avg_sqs)
        if device_params[0].device.type != "cpu":
            _multi_tensor_yogi_update(
                *lists, beta1=beta1, beta2=beta2, step_sizes=step_sizes, eps_hats=eps_hats
            )
            continue
        # On CPU a foreach op is a loop over its tensors, so each op below would stream every
        # list through main memory once. Running the whole sequence block by block, each block
        # small enough to stay in cache, reads and writes main memory about once per list. The
        # temporaries live in one block-sized buffer reused by every block: allocating fresh
        # memory each step costs page faults, which on CPU are dearer than the arithmetic.
        flat = torch.empty(
            _CPU_BLOCK_BYTES // device_params[0].element_size(),
            dtype=device_params[0].dtype,
            device=device_params[0].device,
        )
        for block, block_step_sizes, block_eps_hats in _cache_blocks(lists, step_sizes, eps_hats):
            _multi_tensor_yogi_update(
                *block,
                beta1=beta1,
                beta2=beta2,
                step_sizes=block_step_sizes,
                eps_hats=block_eps_hats,
                scratch=_views_of(flat, block[0]),
            )


# Bytes of each list per block on CPU. The block's working set, five lists (parameters, gradients,
# both moments, the scratch), is then 10 MiB: within a server CPU's last-level cache, while blocks
# stay large enough that the ~10 foreach calls per block cost little Python time. Measured on a
# 2-core EPYC with 32 MiB L3 (benchmarks/optim_step.py): 2 MiB was fastest among 0.5, 1, 2, 4 MiB.
_CPU_BLOCK_BYTES = 2 * 1024 * 1024


def _cache_blocks(
    lists: tuple[list[Tensor], ...],
    step_sizes: float | list[float],
    eps_hats: float | list[float],
) -> Iterator[tuple[tuple[list[Tensor], ...], float | list[float], float | list[float]]]:
    """Yield ``(lists, step_sizes, eps_hats)`` restricted to blocks of about ``_CPU_BLOCK_BYTES``
    per list. Small tensors are gathered into one block; a large tensor is cut into flat slices
    (views, so the in-place updates land in it) when all its tensors are contiguous."""
    per_tensor = isinstance(step_sizes, list)
    block: list[list[Tensor]] = [[] for _ in lists]
    block_step_sizes: list[float] = []
    block_eps_hats: list[float] = []
    block_bytes = 0

    def flush() -> Iterator:
        nonlocal block, block_step_sizes, block_eps_hats, block_bytes
        if block[0]:
            yield (
                tuple(block),
                block_step_sizes if per_tensor else step_sizes,
                block_eps_hats if per_tensor else eps_hats,
            )
        block = [[] for _ in lists]
        block_step_sizes, block_eps_hats, block_bytes = [], [], 0

    for i, tensors in enumerate(zip(*lists, strict=True)):
        nbytes = tensors[0].numel() * tensors[0].element_size()
        if nbytes > _CPU_BLOCK_BYTES and all(t.is_contiguous() for t in tensors):
            pieces = [t.view(-1).split(_CPU_BLOCK_BYTES // t.element_size()) for t in tensors]
        else:
            pieces = [(t,) for t in tensors]
        for piece in zip(*pieces, strict=True):
            piece_bytes = piece[0].numel() * piece[0].element_size()
            if block_bytes and block_bytes + piece_bytes > _CPU_BLOCK_BYTES:
                yield from flush()
            for column, t in zip(block, piece, strict=True):
                column.append(t)
            if per_tensor:
                block_step_sizes.append(cast(list[float], step_sizes)[i])
                block_eps_hats.append(cast(list[float], eps_hats)[i])
            block_bytes += piece_bytes
    yield from flush()


def _multi_tensor_yogi_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    step_sizes: float | list[float],
    eps_hats: float | list[float],
    scratch: list[Tensor] | None = None,
) -> None:
    """The elementwise update in docs/catalog.md on lists of tensors, given the step constants.

    ``scratch``, tensors shaped like ``params`` whose values are overwritten, holds the
    temporaries in place; without it they are allocated. Both ways compute the same values.
    """
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    # One scratch list serves the whole second-moment update, g² is never stored:
    # scratch = sign(v - g·g) · g, then v -= (1 - beta2) · scratch · g.
    if scratch is None:
        scratch = torch._foreach_addcmul(exp_avg_sqs, grads, grads, value=-1)
    else:
        torch._foreach_copy_(scratch, exp_avg_sqs)
        torch._foreach_addcmul_(scratch, grads, grads, value=-1)
    torch._foreach_sign_(scratch)
    torch._foreach_mul_(scratch, grads)
    torch._foreach_addcmul_(exp_avg_sqs, scratch, grads, value=-(1 - beta2))
    # The same scratch then holds the denominator sqrt(v) + eps_hat.
    torch._foreach_copy_(scratch, exp_avg_sqs)
    torch._foreach_sqrt_(scratch)
    torch._foreach_add_(scratch, eps_hats)
    torch._foreach_addcdiv_(params, exp_avgs, scratch, step_sizes)  # type: ignore[arg-type]


def _views_of(flat: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    """Consecutive views of ``flat`` shaped like ``tensors``, or new tensors where it is too
    small (a large tensor that could not be sliced into blocks)."""
    if sum(t.numel() for t in tensors) > flat.numel():
        return [torch.empty_like(t) for t in tensors]
    views, offset = [], 0
    for t in tensors:
        views.append(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return views


def _fused() -> ModuleType:
    """The fused kernel's module, imported on first use: it imports Triton, which takes seconds
    and is only there with torch's CUDA builds (and the test extra)."""
    from tuner.catalog.optim import _yogi_fused

    return _yogi_fused
