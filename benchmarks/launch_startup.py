"""How soon `tuner launch` tells the user what it is doing: time to its first line of output.

Arms, measured side by side in rounds (the order rotates each round), each a fresh process:

- ``python``: ``python -c pass``, the interpreter's own start-up (the floor);
- ``import torch``: ``python -c "import torch"``, what validating a study file costs at least
  (the optimizer catalog is built from torch classes);
- ``launch``: ``tuner launch`` on a one-trial study (tracking off, a fresh SQLite file each
  time), timed from the start of the process to its first line, to the ``workers:`` line (the
  study, storage, MLflow and workers are all printed by then), to the first finished trial, and
  to its exit.

Run: ``python benchmarks/launch_startup.py [--rounds 5]``. Prints medians and ratios to the
interpreter's start-up. No GPU needed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

STUDY = textwrap.dedent(
    """
    name: startup
    objective: obj.py:objective
    budget: {trials: 1, epochs: 1}
    storage: sqlite:///study.db
    sampler: {name: random, seed: 0}
    pruner: none
    search: {optimizers: {adam: {}}, schedules: [constant]}
    mlflow: off
    compare: {seeds: 0}
    workers: {devices: [cpu], per_device: 1}
    """
)


def run_plain(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def run_launch(folder: Path) -> dict[str, float]:
    for leftover in folder.glob("study.db*"):
        leftover.unlink()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", "launch", "study.yaml"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    marks: dict[str, float] = {}
    assert proc.stderr is not None
    for line in proc.stderr:
        now = time.perf_counter() - started
        marks.setdefault("first line", now)
        if line.startswith("workers:"):
            marks.setdefault("workers line", now)
        if "trial 0 complete" in line:
            marks.setdefault("first trial", now)
    proc.wait()
    marks["exit"] = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"launch exited {proc.returncode}")
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "study.yaml").write_text(STUDY)
        (folder / "obj.py").write_text("def objective(trial):\n    return 1.0\n")
        results: dict[str, list[float]] = {}
        arms = ["python", "import torch", "launch"]
        for r in range(args.rounds):
            for arm in arms[r % 3 :] + arms[: r % 3]:
                if arm == "launch":
                    for key, value in run_launch(folder).items():
                        results.setdefault(f"launch: {key}", []).append(value)
                else:
                    code = "pass" if arm == "python" else "import torch"
                    results.setdefault(arm, []).append(run_plain(code))
    floor = statistics.median(results["python"])
    print(f"{'arm':<26} {'median s':>9} {'min s':>7} {'x python':>9}   ({args.rounds} rounds)")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<26} {median:>9.2f} {min(values):>7.2f} {median / floor:>9.1f}")


if __name__ == "__main__":
    main()
