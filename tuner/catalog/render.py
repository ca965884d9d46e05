"""An exported configuration as plain, runnable torch code (``tuner best --format python``).

The printed code needs no tuner: a ``torch.optim`` optimizer (or, for Yogi, which torch lacks,
a compact implementation printed with it) and a ``LambdaLR`` whose ``lr_factor`` repeats,
operation for operation, the factor :func:`tuner.catalog.export.build_optimizer` schedules, so both
give
the same learning rates and updates to the bit. :func:`render_torch_script` wraps it into a
complete script (a placeholder model, random data and the training loop over the study's
``total_steps``) that runs as printed; :func:`render_torch_code` is the optimizer part alone.

Example::

    >>> from tuner.catalog.export import OptimizerConfig
    >>> cfg = OptimizerConfig("sgd", {"lr": 0.1}, {"name": "constant"})
    >>> print(render_torch_code(cfg, total_steps=100))  # doctest: +ELLIPSIS
    # Exported by tuner: sgd, constant schedule.
    import torch
    ...
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=0.1,
    )
    ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from tuner.catalog.export import OptimizerConfig, _document_order
from tuner.catalog.optim import get_optimizer
from tuner.catalog.schedules import SCHEDULES

__all__ = ["render_torch_code", "render_torch_script"]

# Each renderer returns the body of lr_factor after warmup, in terms of `s` (the schedule's
# step, already clamped) and `schedule_steps`, using the same float operations in the same
# order as tuner.catalog.schedules._factors; literals are repr()s, which round-trip exactly.
_Body = Callable[[Mapping[str, Any]], list[str]]


def _constant(values: Mapping[str, Any]) -> list[str]:
    return ["return 1.0"]


def _step(values: Mapping[str, Any]) -> list[str]:
    milestones = tuple(float(m) for m in values["milestones"])
    return [
        f"milestones = [round(m * schedule_steps) for m in {milestones!r}]",
        f"return {float(values['gamma'])!r} ** sum(1 for m in milestones if m <= s)",
    ]


def _exponential(values: Mapping[str, Any]) -> list[str]:
    return [f"return ({float(values['final_lr_ratio'])!r} ** (1.0 / schedule_steps)) ** s"]


def _linear(values: Mapping[str, Any]) -> list[str]:
    r = float(values["final_lr_ratio"])
    return [f"return 1.0 - {1.0 - r!r} * s / schedule_steps"]


def _polynomial(values: Mapping[str, Any]) -> list[str]:
    r, power = float(values["final_lr_ratio"]), float(values["power"])
    return [f"return {r!r} + {1.0 - r!r} * (1.0 - s / schedule_steps) ** {power!r}"]


def _cosine(values: Mapping[str, Any]) -> list[str]:
    r = float(values["final_lr_ratio"])
    return [f"return {r!r} + {1.0 - r!r} * (1.0 + math.cos(math.pi * s / schedule_steps)) / 2.0"]


def _onecycle(values: Mapping[str, Any]) -> list[str]:
    div, final_div = float(values["div_factor"]), float(values["final_div_factor"])
    return [
        "# torch's OneCycleLR lr curve (cosine annealing) with max_lr = the base lr;",
        "# no momentum cycling.",
        f"start = 1.0 / {div!r}",
        f"end = start / {final_div!r}",
        f"peak = float({float(values['pct_start'])!r} * schedule_steps) - 1",
        "last = schedule_steps - 1",
        "if peak > 0 and s <= peak:",
        "    frm, to, pct = start, 1.0, s / peak",
        "else:",
        "    frm, to = 1.0, end",
        "    pct = 1.0 if last - peak <= 0 else min((s - peak) / (last - peak), 1.0)",
        "return to + (frm - to) / 2.0 * (math.cos(math.pi * pct) + 1)",
    ]


def _custom(values: Mapping[str, Any]) -> list[str]:
    attr = values["function"].split(":")[1]
    return [f"return float({attr}(s, schedule_steps))"]


_BODIES: dict[str, _Body] = {
    "constant": _constant,
    "step": _step,
    "exponential": _exponential,
    "linear": _linear,
    "polynomial": _polynomial,
    "cosine": _cosine,
    "onecycle": _onecycle,
    "custom": _custom,
}


# Yogi as tuner trains it (docs/catalog.md, the single-tensor path of tuner.catalog.optim.Yogi),
# compact
# enough to paste: the same operations in the same order, so the updates agree to the bit.
_YOGI_CLASS = '''\
class Yogi(torch.optim.Optimizer):
    """Yogi (Zaheer et al. 2018) with Adam-style bias correction; torch has none."""

    def __init__(
        self,
        params,
        lr=1e-2,
        betas=(0.9, 0.999),
        eps=1e-3,
        initial_accumulator=1e-6,
        weight_decay=0.0,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            initial_accumulator=initial_accumulator,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.full_like(p, group["initial_accumulator"])
                state["step"] += 1
                t, m, v = state["step"], state["m"], state["v"]
                m.lerp_(grad, 1 - beta1)
                grad_sq = grad * grad
                # v moves toward g^2 by at most (1 - beta2) * g^2 per step.
                v.addcmul_((v - grad_sq).sign_(), grad_sq, value=-(1 - beta2))
                # Both bias corrections, folded into the step size and eps.
                bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
                step_size = -group["lr"] * bias_correction2_sqrt / (1.0 - beta1**t)
                denom = v.sqrt().add_(group["eps"] * bias_correction2_sqrt)
                p.addcdiv_(m, denom, value=step_size)
        return loss
'''


def _optimizer_class(cls: type) -> tuple[str, list[str]]:
    """How the code names the optimizer class, and the definition it needs printed first."""
    if getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim.{cls.__name__}", []
    if cls.__name__ == "Yogi":
        return "Yogi", _YOGI_CLASS.splitlines()
    raise ValueError(f"no torch-only rendering for optimizer class {cls.__qualname__}")


def _literal(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ")"
    return repr(value)  # floats: repr round-trips exactly


def _factor_lines(schedule: Mapping[str, Any], warmup: Mapping[str, Any] | None) -> list[str]:
    """``lr_factor``: the same warmup and schedule arithmetic as tuner.catalog.schedules.Curve.

    Only the names the body uses are defined: a constant schedule needs no schedule length.
    """
    body = [f"    {line}" for line in _BODIES[schedule["name"]](schedule)]
    scheduled = schedule["name"] != "constant"
    if warmup is None:
        return [
            *(["schedule_steps = total_steps", ""] if scheduled else []),
            "",
            "def lr_factor(step: int) -> float:",
            '    """Multiplier of each param group\'s base lr at optimizer step `step`."""',
            *(
                ["    s = min(step, schedule_steps)  # past the end: hold the final lr"]
                if scheduled
                else []
            ),
            *body,
        ]
    if "steps" in warmup:
        lines = [f"warmup_steps = {int(warmup['steps'])}"]
    else:
        fraction = float(warmup["fraction"])
        lines = [f"warmup_steps = min(round({fraction!r} * total_steps), total_steps - 1)"]
    if scheduled:
        lines.append("schedule_steps = total_steps - warmup_steps")
    lines.append("")
    begin_lr = float(warmup["begin_lr"])
    if begin_lr != 0.0:
        lines += [
            f"begin_lr = {begin_lr!r}",
            "",
            "",
            "def lr_factor(step: int, base_lr: float) -> float:",
            '    """Multiplier of a group\'s base lr: warmup from begin_lr, then the schedule."""',
            "    if step < warmup_steps:",
            "        begin = begin_lr / base_lr",
            "        return begin + (1.0 - begin) * step / warmup_steps",
        ]
    else:
        lines += [
            "",
            "def lr_factor(step: int) -> float:",
            '    """Multiplier of the base lr: linear warmup from 0, then the schedule."""',
            "    if step < warmup_steps:",
            "        return step / warmup_steps",
        ]
    if scheduled:
        lines.append(
            "    s = min(step - warmup_steps, schedule_steps)  # past the end: hold the final lr"
        )
    return lines + body


def _uses_total_steps(schedule: Mapping[str, Any], warmup: Mapping[str, Any] | None) -> bool:
    return schedule["name"] != "constant" or (warmup is not None and "fraction" in warmup)


def _parts(
    config: OptimizerConfig, params: str, total_steps: int, total_steps_comment: str
) -> tuple[list[str], list[str]]:
    """(import lines, the code from ``total_steps`` to the scheduler) for ``config``."""
    spec = get_optimizer(config.optimizer)
    schedule = dict(config.schedule)
    if schedule["name"] not in _BODIES:
        raise ValueError(f"no renderer for schedule {schedule['name']!r}; known: {list(SCHEDULES)}")
    class_name, class_def = _optimizer_class(spec.factory)
    warmup = config.warmup
    begin_lr = 0.0 if warmup is None else float(warmup["begin_lr"])
    # With begin_lr 0 warmup is the same ratio for every group; otherwise it depends on each
    # group's base lr, so each group gets its own factor.
    per_group = begin_lr != 0.0

    stdlib = ["import math"] if schedule["name"] in ("cosine", "onecycle") or class_def else []
    if per_group:
        stdlib.append("from functools import partial")
    imports = [*stdlib, *([""] if stdlib else []), "import torch"]
    if schedule["name"] == "custom":
        module, attr = schedule["function"].split(":")
        imports += ["", f"from {module} import {attr.split('.')[0]}  # your schedule function"]
    if class_def:
        imports += ["", "", *class_def]
    lines = [
        "",
        f"optimizer = {class_name}(",
        f"    {params},",
        *(
            f"    {key}={_literal(config.kwargs[key])},"
            for key in _document_order(config.optimizer, config.kwargs)
        ),
        ")",
        "",
    ]
    if _uses_total_steps(schedule, warmup):
        lines += [f"total_steps = {total_steps}  # {total_steps_comment}"]
    lines += _factor_lines(schedule, warmup)
    lines += ["", "", "# Call scheduler.step() once after every optimizer.step()."]
    if per_group:
        lines.append(
            "scheduler = torch.optim.lr_scheduler.LambdaLR(\n"
            '    optimizer, [partial(lr_factor, base_lr=g["lr"]) for g in optimizer.param_groups]\n'
            ")"
        )
    else:
        lines.append("scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)")
    return imports, lines


def _title(config: OptimizerConfig) -> str:
    warmup = config.warmup
    text = f"# Exported by tuner: {config.optimizer}, {config.schedule['name']} schedule"
    if warmup is not None:
        length = f"{warmup['steps']} steps" if "steps" in warmup else f"{warmup['fraction']:.3g}"
        text += f", warmup {length}"
        if warmup["begin_lr"]:
            text += f" from lr {warmup['begin_lr']:.3g}"
    return text + "."


def render_torch_code(
    config: OptimizerConfig, *, params: str = "model.parameters()", total_steps: int = 10_000
) -> str:
    """Plain torch code that builds the same optimizer and lr schedule as ``build_optimizer``.

    ``params`` is the expression the code passes to the optimizer (a ``model`` is assumed by
    default; param-group lists work too, each group scheduled from its own lr);
    ``total_steps`` is printed as a variable the user sets to the run's optimizer steps.
    For a complete script that runs as printed, see :func:`render_torch_script`.

    Example::

        >>> from tuner.catalog.export import OptimizerConfig
        >>> cfg = OptimizerConfig("adamw", {"lr": 1e-3}, {"name": "cosine", "final_lr_ratio": 0.0},
        ...                       {"fraction": 0.05, "begin_lr": 0.0})
        >>> "LambdaLR(optimizer, lr_factor)" in render_torch_code(cfg)
        True
    """
    imports, body = _parts(
        config, params, total_steps, "set to the number of optimizer steps of your run"
    )
    return "\n".join([_title(config), *imports, *body]) + "\n"


def render_torch_script(
    config: OptimizerConfig,
    *,
    total_steps: int,
    header: list[str] | tuple[str, ...] = (),
) -> str:
    """A complete script that trains a placeholder model with ``config``, using torch alone.

    It holds the ``total_steps`` the study trained with, the optimizer (Yogi's implementation
    printed in it, when Yogi won), the schedule as a ``LambdaLR``, and a placeholder model,
    random data and the loop with the two ``step()`` calls, so that it runs as printed; the
    user swaps in their model and data. ``header`` lines (the answer, say) open the script as
    comments.

    Example::

        >>> from tuner.catalog.export import OptimizerConfig
        >>> script = render_torch_script(OptimizerConfig("yogi", {"lr": 1e-2}), total_steps=20)
        >>> "import tuner" in script, "class Yogi(torch.optim.Optimizer):" in script
        (False, True)
        >>> exec(script, {})  # doctest: +ELLIPSIS
        final loss ...
    """
    imports, body = _parts(
        config,
        "model.parameters()",
        total_steps,
        "the study's optimizer steps; the schedule stretches to yours",
    )
    if not any(line.startswith("total_steps = ") for line in body):
        # A constant lr needs no run length; the loop below still does.
        body = [
            "",
            f"total_steps = {total_steps}  # the optimizer steps the study trained with",
            *body,
        ]
    return (
        "\n".join(
            [
                _title(config),
                *(f"# {line}" for line in header),
                *imports,
                "",
                "",
                "torch.manual_seed(0)",
                "",
                "# A placeholder so that this script runs as printed: put your model here.",
                "model = torch.nn.Sequential(",
                "    torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)",
                ")",
                *body,
                "",
                "# A placeholder loop on random data: train on yours, keep the two step() calls.",
                "loss_fn = torch.nn.MSELoss()",
                "for _ in range(total_steps):",
                "    x, y = torch.randn(64, 16), torch.randn(64, 1)",
                "    loss = loss_fn(model(x), y)",
                "    optimizer.zero_grad()",
                "    loss.backward()",
                "    optimizer.step()",
                "    scheduler.step()",
                'print(f"final loss {loss.item():.4g}, lr {scheduler.get_last_lr()[0]:.4g}")',
            ]
        )
        + "\n"
    )
