"""The cost of logging the learning rate per optimizer step (issue 9).

Run ``python benchmarks/lr_logging.py``. A trial's optimizer carries a step hook that counts
steps and, every ``total_steps / 200`` steps, hands the lr to the trial's recorder (an append
to a queue). This times a small model's training step (forward, backward, SGD step) with and
without that hook, on the same model, alternating the two arms so both see the same machine
load, and prints the median step times and their ratio. It also counts the points logged. The
script reports and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.trial import LR_POINTS, _LrLogger


class _Queue:
    """What a recorder's ``log`` does on the training path: append a tuple."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.items.append((metrics, step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    x, y = torch.randn(32, 64), torch.randn(32, 1)
    plain = torch.optim.SGD(model.parameters(), lr=1e-3)
    hooked = torch.optim.SGD(model.parameters(), lr=1e-3)
    queue = _Queue()
    hooked.register_step_post_hook(_LrLogger(queue, total_steps=args.steps * args.rounds))

    def step(optimizer: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"plain": [], "hooked": []}
    for _ in range(200):  # warmup
        step(plain)
    for i in range(args.steps * args.rounds):
        arms = ("plain", "hooked") if i % 2 == 0 else ("hooked", "plain")
        for arm in arms:
            times[arm].append(step(plain if arm == "plain" else hooked))
    plain_us = statistics.median(times["plain"]) * 1e6
    hooked_us = statistics.median(times["hooked"]) * 1e6
    print(f"training step, median of {len(times['plain'])}: plain {plain_us:.1f} us, "
          f"with the lr hook {hooked_us:.1f} us, ratio {hooked_us / plain_us:.3f}")  # fmt: skip
    print(f"lr points logged over {len(times['hooked'])} steps: {len(queue.items)} "
          f"(bound {LR_POINTS + 1})")  # fmt: skip


if __name__ == "__main__":
    main()
