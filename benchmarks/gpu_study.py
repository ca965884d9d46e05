"""The GPU example study (studies/cifar_resnet.yaml) with workers.per_device 1, 2 and 4.

Run ``python benchmarks/gpu_study.py`` on a machine with a CUDA GPU (``--per-device 1 2 4``,
``--trials 12``). For each setting it runs ``tuner launch`` on a fresh SQLite study, with
MLflow off and no replicate comparison, while ``nvidia-smi`` samples the GPU every 200 ms, and
prints, side by side:

- trials per minute (finished trials over the launch's wall time, and over the span from the
  first trial's start to the last trial's end);
- GPU utilization (mean and median of the samples taken while trials ran);
- the time from starting ``tuner launch`` to the first trial's start;
- the gap between a worker's consecutive trials (target: at most 50 ms), broken down from
  what the study database records: *between* trials (one trial's end to the worker's next
  trial's start) and *in-trial overhead* (a trial's recorded span less the time tuner measured
  around the objective, ``tuner:duration_s``: sampling and bookkeeping).

On a machine without CUDA it says so and exits 0 (``--allow-cpu`` runs the small CPU setting,
to check the script itself).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMALL = {"train_size": 128, "val_size": 64, "batch_size": 32, "width": 4, "blocks": 1}


def run_one(per_device: int, args: argparse.Namespace, cuda: bool) -> dict[str, float]:
    import optuna
    from optuna.trial import TrialState

    work = Path(tempfile.mkdtemp(prefix=f"gpu-study-{per_device}-"))
    shutil.copy(REPO / "studies" / "cifar_resnet.py", work / "cifar_resnet.py")
    spec = yaml.safe_load((REPO / "studies" / "cifar_resnet.yaml").read_text())
    spec["budget"] = {"trials": args.trials, "epochs": args.epochs}
    spec["workers"] = {"devices": "auto", "per_device": per_device}
    spec["mlflow"] = {"tracking_uri": "off"}
    spec["compare"] = {"seeds": 0}  # the search alone: replicate runs would add trials
    if not cuda:
        spec["params"].update(SMALL)
    (work / "study.yaml").write_text(yaml.safe_dump(spec))

    smi = None
    samples = work / "smi.csv"
    if cuda:
        smi = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=samples.open("w"), stderr=subprocess.DEVNULL,
        )  # fmt: skip
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "launch", "study.yaml"],
        cwd=work, capture_output=True, text=True, timeout=args.timeout,
    )  # fmt: skip
    wall = time.time() - started
    if smi is not None:
        smi.terminate()
        smi.wait()
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(f"tuner launch failed with per_device={per_device}")

    study = optuna.load_study(study_name=spec["name"], storage=f"sqlite:///{work}/tuner.db")
    done = [
        t for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete
    ]  # fmt: skip
    first_start = min(t.datetime_start for t in done).timestamp()
    last_end = max(t.datetime_complete for t in done).timestamp()
    between, in_trial, objective = [], [], []
    by_worker: dict[str, list] = {}
    for t in done:
        by_worker.setdefault(str(t.user_attrs.get("tuner:worker")), []).append(t)
        span = (t.datetime_complete - t.datetime_start).total_seconds()
        measured = float(t.user_attrs.get("tuner:duration_s", span))
        in_trial.append(max(span - measured, 0.0))
        objective.append(measured)
    for trials in by_worker.values():
        trials.sort(key=lambda t: t.datetime_start)
        for prev, nxt in itertools.pairwise(trials):
            between.append((nxt.datetime_start - prev.datetime_complete).total_seconds())

    util: list[float] = []
    if samples.exists():
        for line in samples.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3 and parts[1].isdigit():
                util.append(float(parts[1]))
    median = statistics.median
    return {
        "per_device": per_device,
        "trials": len(done),
        "wall_s": wall,
        "per_min_wall": len(done) / wall * 60,
        "per_min_span": len(done) / (last_end - first_start) * 60,
        "to_first_trial_s": first_start - started,
        "trial_s": median(objective),
        "gap_ms": median(between) * 1e3 if between else float("nan"),
        "gap_mean_ms": statistics.mean(between) * 1e3 if between else float("nan"),
        "in_trial_ms": median(in_trial) * 1e3,
        "util_mean": statistics.mean(util) if util else float("nan"),
        "util_median": median(util) if util else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-device", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_study: SKIPPED, no CUDA device (--allow-cpu runs the small CPU setting)")
        return
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (small setting)'}")
    header = (
        f"{'per_device':>10} {'trials':>6} {'wall s':>7} {'/min wall':>9} {'/min span':>9} "
        f"{'to 1st s':>8} {'trial s':>7} {'gap ms':>7} {'gap mean':>8} {'in-trial ms':>11} "
        f"{'util %':>6} {'util med':>8}"
    )
    print(header)
    print("-" * len(header))
    for k in args.per_device:
        r = run_one(k, args, cuda)
        print(
            f"{k:>10} {r['trials']:>6} {r['wall_s']:7.1f} {r['per_min_wall']:9.1f} "
            f"{r['per_min_span']:9.1f} {r['to_first_trial_s']:8.1f} {r['trial_s']:7.2f} "
            f"{r['gap_ms']:7.0f} {r['gap_mean_ms']:8.0f} {r['in_trial_ms']:11.0f} "
            f"{r['util_mean']:6.0f} {r['util_median']:8.0f}",
            flush=True,
        )
    print("gap target: at most 50 ms between a worker's consecutive trials")


if __name__ == "__main__":
    main()
