"""An ill-conditioned quadratic: f(x) = 1/2 sum_i lambda_i x_i^2 with lambda from 1 to 1000.

Gradient descent with a fixed learning rate is stable only for lr < 2 / lambda_max, and at that
lr the shallow axis (lambda = 1) shrinks by (1 - lr) per step: a learning rate that is fast on
the shallow axis diverges along the steep one, and a safe one crawls. Momentum, adaptive
methods and schedules each answer this differently; the study finds out which works best.
"""

from __future__ import annotations

import torch

import tuner

DIM = 20
CONDITION = 1000.0


def objective(trial: tuner.Trial) -> float:
    # Curvatures spread log-uniformly from 1 to CONDITION; the start is all ones.
    curvature = torch.logspace(0, torch.log10(torch.tensor(CONDITION)).item(), DIM)
    x = torch.nn.Parameter(torch.ones(DIM))
    steps_per_epoch = int(trial.params.get("steps_per_epoch", 50))
    total_steps = trial.max_epochs * steps_per_epoch
    optimizer, scheduler = trial.build_optimizer([x], total_steps=total_steps)
    loss = torch.tensor(0.0)
    for epoch in range(trial.max_epochs):
        for _ in range(steps_per_epoch):
            loss = 0.5 * (curvature * x * x).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            loss = 0.5 * (curvature * x * x).sum()
        # log10 makes the metric readable across the many orders of magnitude it spans.
        trial.report(torch.log10(loss + 1e-30).item(), step=epoch)
    return torch.log10(loss + 1e-30).item()
