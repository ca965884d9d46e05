"""Worker slots: where each worker of ``tuner launch`` runs (``workers.devices`` and
``workers.per_device`` in the study file; docs/distribution.md), and checking that a device
asked for exists."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tuner.core.errors import ConfigError

__all__ = ["Slot", "check_device", "describe_slots", "gpu_driver_present", "resolve_slots"]


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: the device the objective sees, and the one the tags record."""

    device: str
    tag: str
    visible: str | None = None  # CUDA_VISIBLE_DEVICES for a worker subprocess


def resolve_slots(devices: str | list[str], per_device: int) -> list[Slot]:
    """``auto`` means every visible CUDA device, else the CPU; each device ``per_device`` times."""
    if devices == "auto" and not gpu_driver_present():
        devices = ["cpu"]  # no torch build sees a GPU here: spare launch torch's import
    if devices == "auto":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = [f"cuda:{i}" for i in range(n)] or ["cpu"]
    else:
        names = list(devices)
    slots = []
    for name in names:
        for _ in range(per_device):
            if name.startswith("cuda"):
                index = name.partition(":")[2] or "0"
                slots.append(Slot(device="cuda:0", tag=f"cuda:{index}", visible=index))
            else:
                slots.append(Slot(device=name, tag=name))
    return slots


def describe_slots(slots: list[Slot]) -> str:
    counts: dict[str, int] = {}
    for slot in slots:
        counts[slot.tag] = counts.get(slot.tag, 0) + 1
    return ", ".join(f"{tag} x{n}" if n > 1 else tag for tag, n in counts.items())


# What a GPU driver leaves on a machine: NVIDIA's (bare metal and containers), WSL2's GPU
# paravirtualisation, AMD's ROCm. Without any of them torch.cuda sees no device, so ``devices:
# auto`` means the CPU without importing torch (1.3 s of launch's start-up on a CPU machine;
# the workers import it anyway, in parallel).
GPU_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def gpu_driver_present() -> bool:
    return any(os.path.exists(p) for p in GPU_DRIVER_PATHS)


def check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"workers.devices: {device} was asked for, but this torch build sees no CUDA device "
            f"(torch {torch.__version__})",
            hint="install a CUDA build of torch (see the README) or use `devices: [cpu]`",
        )
