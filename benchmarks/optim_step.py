"""Time one Yogi step against one torch.optim.Adam step on identical parameters and gradients.

Run ``python benchmarks/optim_step.py``. The target (ISSUE 2, Speed): Yogi's ``foreach`` step at
most 1.2x ``torch.optim.Adam(foreach=True)``'s on CPU, for about 50 tensors of 10M values in all.
The single-tensor pair is printed for information. Both optimizers start from the same parameters
and gradients, run with the same thread count, get the same warmup steps, and are timed step by
step in alternating order (Adam then Yogi, then Yogi then Adam, ...) so that both see the same
machine load; the median of many steps is reported. The script reports and always exits 0: a
missed target is printed as MISSED, not raised.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.optim import Yogi

TARGET = 1.2


def make_params(device: torch.device, n_tensors: int, total: int) -> list[torch.Tensor]:
    """``n_tensors`` float32 tensors of mixed shapes, ``total`` values in all, with gradients."""
    gen = torch.Generator().manual_seed(0)
    # Uneven sizes, like a real model: a few large matrices and many small vectors.
    weights = torch.rand(n_tensors, generator=gen) ** 2 + 0.01
    sizes = (weights / weights.sum() * total).long().clamp(min=1)
    params = []
    for size in sizes.tolist():
        p = torch.randn(size, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(size, generator=gen).to(device)
        params.append(p)
    return params


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    clones = []
    for p in params:
        c = p.detach().clone().requires_grad_()
        c.grad = p.grad.clone()
        clones.append(c)
    return clones


def time_pair(
    a: Callable[[], object],
    b: Callable[[], object],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> tuple[float, float]:
    """Median seconds per call of ``a`` and ``b``, measured alternately."""

    def sync() -> None:
        if device.type == "cuda":
            # Kernel launches are asynchronous: without a sync we would time the launch only.
            torch.cuda.synchronize(device)

    times_a, times_b = [], []
    for i in range(warmup + repeats):
        pair = ((a, times_a), (b, times_b))
        for fn, times in pair if i % 2 == 0 else pair[::-1]:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def bench(device: torch.device, foreach: bool, args: argparse.Namespace) -> tuple[float, float]:
    base = make_params(device, args.tensors, args.values)
    adam = torch.optim.Adam(clone_params(base), lr=1e-3, foreach=foreach)
    yogi = Yogi(clone_params(base), lr=1e-3, foreach=foreach)
    return time_pair(adam.step, yogi.step, device=device, warmup=args.warmup, repeats=args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument("--values", type=int, default=10_000_000)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="intra-op CPU threads"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))

    print(
        f"torch {torch.__version__}, {args.tensors} tensors, {args.values:,} float32 values, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} steps"
    )
    header = f"{'device':<6} {'path':<14} {'adam ms':>9} {'yogi ms':>9} {'yogi/adam':>10}  target"
    print(header)
    print("-" * len(header))
    for device in devices:
        for foreach in (True, False):
            adam_s, yogi_s = bench(device, foreach, args)
            ratio = yogi_s / adam_s
            if foreach:
                verdict = f"<= {TARGET}x " + ("ok" if ratio <= TARGET else "MISSED")
            else:
                verdict = "(information)"
            path = "foreach" if foreach else "single-tensor"
            print(
                f"{device.type:<6} {path:<14} {adam_s * 1e3:9.2f} {yogi_s * 1e3:9.2f} "
                f"{ratio:9.2f}x  {verdict}"
            )


if __name__ == "__main__":
    main()
