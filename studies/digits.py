"""A small CNN on scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

import tuner


def load_data(device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    # A fixed split: every trial is judged on the same 360 validation images.
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = order[:360], order[360:]
    return x[train].to(device), y[train].to(device), x[val].to(device), y[val].to(device)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def objective(trial: tuner.Trial) -> float:
    x_train, y_train, x_val, y_val = load_data(trial.device)
    batch_size = int(trial.params.get("batch_size", 64))
    model = Net().to(trial.device)
    steps_per_epoch = -(-len(x_train) // batch_size)
    optimizer, scheduler = trial.build_optimizer(
        model.parameters(), total_steps=trial.max_epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(trial.seed)
    acc = 0.0
    for epoch in range(trial.max_epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(trial.device)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        acc = accuracy(model, x_val, y_val)
        trial.log({"train_loss": total / len(x_train)}, step=epoch)
        trial.report(acc, step=epoch)
    return acc
