"""A small ResNet on CIFAR-shaped synthetic images (3x32x32, 10 classes): a study a GPU is for.

The data are made on the device from a seed, so nothing is downloaded: each class is a fixed
smooth random pattern, and each image is its class's pattern, shifted by a few pixels, scaled,
and buried in noise. Telling the classes apart takes real convolutions, and a bad optimizer
configuration shows as a lower validation accuracy within a few epochs.

The defaults in ``cifar_resnet.yaml`` make trials of several seconds on one modern GPU; the
test suite runs the same objective on CPU with a small setting in ``params``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import tuner


def make_data(n: int, *, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images and labels, the same for the same ``seed`` on any device."""
    images, labels = _cpu_data(n, seed)
    return images.to(device), labels.to(device)


@functools.lru_cache(maxsize=4)
def _cpu_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Kept per worker process: a worker runs many trials, and making 25k images on the CPU
    # takes about a second that a GPU trial should not spend again and again.
    gen = torch.Generator().manual_seed(seed)
    # Smooth class patterns: random 8x8 fields upsampled to 32x32 (shared by every split).
    patterns = F.interpolate(
        torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
    )
    labels = torch.randint(0, 10, (n,), generator=gen)
    shifts = torch.randint(-3, 4, (n, 2), generator=gen)
    scale = 0.5 + torch.rand(n, 1, 1, 1, generator=gen)
    noise = torch.randn(n, 3, 32, 32, generator=gen)
    images = torch.empty(n, 3, 32, 32)
    for dx in range(-3, 4):
        for dy in range(-3, 4):
            chosen = (shifts[:, 0] == dx) & (shifts[:, 1] == dy)
            images[chosen] = torch.roll(patterns[labels[chosen]], (dx, dy), dims=(2, 3))
    return scale * images + 1.5 * noise, labels


class Block(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with batch norm and a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """Three stages of ``blocks`` basic blocks, ``width``, 2x and 4x channels (ResNet-20 style
    with blocks=3)."""

    def __init__(self, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks):
                layers.append(Block(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(x)


def objective(trial: tuner.Trial) -> float:
    p = trial.params
    on_cuda = trial.device.startswith("cuda")
    x_train, y_train = make_data(int(p["train_size"]), seed=1, device=trial.device)
    x_val, y_val = make_data(int(p["val_size"]), seed=2, device=trial.device)
    batch_size = int(p["batch_size"])
    model = ResNet(int(p["width"]), int(p["blocks"])).to(trial.device)
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    steps_per_epoch = len(x_train) // batch_size
    # fused: Adam, AdamW and Yogi step with one kernel each on CUDA (ignored on CPU).
    optimizer, scheduler = trial.build_optimizer(
        model.parameters(),
        total_steps=trial.max_epochs * steps_per_epoch,
        fused=bool(p.get("fused", True)),
    )
    # bfloat16 autocast on CUDA: the tensor cores a GPU trial should use.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and p.get("amp", True))
    generator = torch.Generator(device=trial.device).manual_seed(trial.seed)
    acc = 0.0
    for epoch in range(trial.max_epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator, device=trial.device)
        total = torch.zeros((), device=trial.device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            with autocast:
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Summed on the device: a .item() per step would wait for the GPU every step.
            total += loss.detach()
        with autocast:
            acc = accuracy(model, x_val, y_val, batch_size)
        trial.log({"train_loss": total.item() / steps_per_epoch}, step=epoch)
        trial.report(acc, step=epoch)
    return acc
