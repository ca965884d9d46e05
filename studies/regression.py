"""Multiple linear regression on synthetic data with strongly correlated features.

Correlated features make the least-squares problem ill-conditioned: plain SGD zig-zags across
the narrow valley while momentum averages the zig-zag out and moves along it, so the choice of
optimizer and of momentum matters for the validation error reached in a fixed number of steps.
"""

from __future__ import annotations

import torch

import tuner

N_TRAIN, N_VAL, FEATURES = 2000, 500, 10


def make_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N_TRAIN + N_VAL, 1, generator=g)
    # Each feature is the shared factor plus a little of its own: correlation about 0.99.
    x = base + 0.1 * torch.randn(N_TRAIN + N_VAL, FEATURES, generator=g)
    true_w = torch.linspace(-2.0, 2.0, FEATURES)
    y = x @ true_w + 0.5 + 0.1 * torch.randn(N_TRAIN + N_VAL, generator=g)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def objective(trial: tuner.Trial) -> float:
    x_train, y_train, x_val, y_val = make_data()
    model = torch.nn.Linear(FEATURES, 1)
    batch_size = int(trial.params.get("batch_size", 100))
    steps_per_epoch = N_TRAIN // batch_size
    optimizer, scheduler = trial.build_optimizer(
        model.parameters(), total_steps=trial.max_epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(trial.seed)
    mse = float("nan")
    for epoch in range(trial.max_epochs):
        order = torch.randperm(N_TRAIN, generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = torch.nn.functional.mse_loss(model(x_train[idx]).squeeze(1), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            mse = torch.nn.functional.mse_loss(model(x_val).squeeze(1), y_val).item()
        trial.report(mse, step=epoch)
    return mse
