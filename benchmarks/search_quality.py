"""Search quality: tuner's defaults against a hand-written and an expert Optuna study.

The hand-written study is what a user writes without tuner in five minutes: Optuna's default
TPE over ``{sgd, momentum 0.9, adam, rmsprop, adagrad} x lr in [1e-5, 1] (log)``, a constant
learning rate, no pruning. The expert study (issue 16) is what an experienced Optuna user
writes in an hour, in plain Optuna and torch: ``TPESampler(multivariate=True, group=True)``,
``MedianPruner(n_startup_trials=5, n_warmup_steps=3)`` on a report per epoch, the optimizer in
``{sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad}``, ``lr`` in ``[1e-5, 3]`` (log), one
``one_minus_momentum`` in ``[1e-3, 0.5]`` (log; momentum or beta1 = 1 - x, suggested only for
the optimizers that have one) and a ``LambdaLR`` schedule in ``{constant, cosine,
warmup_cosine}`` (linear warmup over 5% of the steps, then cosine to 0); a run whose value turns
NaN is reported, then pruned. tuner's arm is a study file with no ``search:`` section (the whole
catalog, the range test and the portfolio on, the default pruner), driven through tuner's real
worker loop on a real SQLite file. Every arm gets the same trial count and epochs per trial on
the same problems; a trial's cost is counted in optimizer steps, so range-test probes and pruned
trials count what they really trained.

Arms (``--arms``; the default is ``hand,expert,tuner,tuner-nopr,random``):

- ``hand``: the hand-written study (the baseline);
- ``expert``: the expert study (the bar);
- ``tuner``: tuner's defaults, the objective reporting once per epoch;
- ``tuner-nopr``: tuner's defaults with ``pruner: none`` (the pruner's effect);
- ``random``: random search over the hand-written space;
- ``tuner-loss``: tuner's defaults with an objective that also gives each step's training
  loss to ``trial.step_loss`` (when ``tuner.Trial`` has it) for the range test;
- ``tuner-k50``: the default pruner before 2026-11-28 (median rule at 20% and 50%);
- ``tuner-hb``: Optuna's Hyperband pruner, ``tuner-sh``: successive halving, ``tuner-indep``:
  TPE with Optuna's default settings, and the other pruner variants in :data:`ARMS`.

The problem suite (our own; none is used to tune a default alone):

- ``ill_conditioned``: least squares whose features span three decades of scale;
- ``large_lr``: least squares with small features and large weights: the best rates lie far
  above every catalog range (Adam near 2, SGD in the hundreds);
- ``noisy_regression``: an MLP on targets with heavy noise;
- ``digits``: an MLP on scikit-learn's 8x8 digits (validation accuracy, maximized);
- ``anneal``: small-batch least squares with label noise, where a decaying schedule beats any
  constant rate (the error floor of SGD is proportional to its rate);
- ``moons``: an MLP on two interleaved half-moons (non-convex, classification loss);
- ``char_transformer``: a decoder-only transformer (2 pre-norm blocks, width 32, 2 heads,
  causal attention over 32 characters) on the data set descriptions scikit-learn installs
  (``sklearn/datasets/descr/*.rst``, ~43k characters, every tenth block of 1000 held out);
  an epoch is 384 random training windows (24 steps of 16); validation cross-entropy per
  character;
- ``digits_cnn``: two conv layers on the 8x8 digits as images, validation cross-entropy;
- ``classifier_ce``: an MLP on six classes of ``make_classification`` (raw features, 3% of the
  labels flipped), validation cross-entropy: adaptive optimizers at high rates sharpen the
  logits, and the validation loss rises while the training loss still falls.

The ceiling check (issue 16, item 5): for each problem and each optimizer the range test probes
on a full-catalog study (``momentum``, ``adam``, ``adagrad``), one seed trains the catalog's
defaults at constant rates 10^(k/2) from 1e-5 to 1e3 (and over the probe's ramp); the best final
value gives that family's best constant rate (a diverged run is the worst). Each tuner arm's
stored range test (``tuner:lr_range_test``) is printed beside it, its ceilings (range tops) over
the seeds with the signal each probe read; ``CUT`` marks a ceiling below the best rate, a defect
of the probe whatever the final score says. ``--no-ceiling-check`` skips the grid.

The re-test (``--retest N``, default 5): each study's best configuration is trained again with
N fresh seeds (none a study trains with) and the mean is the value of that study's answer. A
study's best value is also the luckiest of its trials' training seeds: on ``moons`` one good
configuration's validation loss spreads from 0.151 to 0.28 over 30 seeds, so an arm that runs
more full-length trials draws more tickets. The re-test table shows what each arm's answer is
worth on the user's next run; ``--retest 0`` skips it.

Targets (issue 16), for ``--candidate`` (default ``tuner``) on every problem, median over seeds:
at least as good as ``hand``; at least as good as ``expert`` on all problems but at most one,
and never more than 2% worse; at most 0.7x ``hand``'s epochs; every ceiling at or above the
grid's best constant rate. The output ends with a line counting the problems meeting each.

    python benchmarks/search_quality.py                 # 30 trials x 10 epochs x 5 seeds, 2 jobs
    python benchmarks/search_quality.py --seeds 2 --problems digits,anneal   # a quick look
    python benchmarks/search_quality.py --seeds 1 --trials 6 --epochs 3 \
        --arms hand,expert,tuner,tuner-nopr,random,tuner-loss           # a smoke run
    python benchmarks/search_quality.py --arms hand,expert,tuner,tuner-loss \
        --candidate tuner-loss --no-ceiling-check      # judge the loss-signal arm
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import optuna
import torch
from torch import nn

import tuner

Build = Callable[..., tuple[torch.optim.Optimizer, object]]
Report = Callable[[float, int], None]


# ------------------------------------------------------------------------------------------
# Problems


@dataclass
class Counter:
    steps: int = 0


COUNTER = Counter()


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: its data, model, training loss and validation metric.

    ``data()`` returns ``(x_train, y_train, x_val, y_val)``; a minibatch is ``x[idx], y[idx]``
    along the first dimension, whatever the rest of the shape (feature rows, images, windows
    of token ids). An epoch is one pass over the training set, or ``epoch_size`` examples drawn
    without replacement when the set is far larger than an epoch should be (the text's every
    window). ``model`` takes ``x_train.shape[1]``.
    """

    name: str
    direction: str
    metric: str
    data: Callable[[], tuple[torch.Tensor, ...]]
    model: Callable[[int], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
    batch: int
    epoch_size: int | None = None

    def train(
        self,
        build: Build,
        epochs: int,
        report: Report,
        seed: int,
        step_loss: Callable[[float], None] | None = None,
    ) -> float:
        """Train for ``epochs``, reporting the validation metric after each; the last one.

        ``step_loss``, when given, receives each step's training loss after the step.
        """
        xtr, ytr, xva, yva = _DATA[self.name]
        torch.manual_seed(seed)
        model = self.model(xtr.shape[1])
        per_epoch = self.steps_per_epoch
        optimizer, scheduler = build(model.parameters(), per_epoch * epochs)
        gen = torch.Generator().manual_seed(seed)
        value = math.nan
        for epoch in range(epochs):
            order = torch.randperm(len(xtr), generator=gen)
            for i in range(per_epoch):
                idx = order[i * self.batch : (i + 1) * self.batch]
                loss = self.loss(model(xtr[idx]), ytr[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                COUNTER.steps += 1
                if step_loss is not None:
                    step_loss(loss.item())
            with torch.no_grad():
                value = self.evaluate(model, xva, yva)
            report(value, epoch)
        return value

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil((self.epoch_size or len(_DATA[self.name][0])) / self.batch)


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.mse_loss(model(x), y))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.cross_entropy(model(x), y))


def _split(x: np.ndarray, y: np.ndarray, n_val: int, long: bool = False) -> tuple:
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long if long else torch.float32)
    return xt[n_val:], yt[n_val:], xt[:n_val], yt[:n_val]


def _ill_conditioned() -> tuple:
    rng = np.random.default_rng(0)
    scales = np.logspace(-1.5, 0, 20)
    x = rng.standard_normal((1280, 20)) * scales
    w = rng.standard_normal((20, 1)) / scales[:, None] ** 0.5
    y = x @ w + 0.05 * rng.standard_normal((1280, 1))
    return _split(x, y, 256)


def _large_lr() -> tuple:
    rng = np.random.default_rng(1)
    x = 0.02 * rng.standard_normal((768, 10))
    w = 60.0 + 20.0 * rng.standard_normal((10, 1))
    y = x @ w + 0.01 * rng.standard_normal((768, 1))
    return _split(x, y, 256)


def _noisy_regression() -> tuple:
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (768, 8))
    f = np.sin(x[:, :1] * 1.5) + 0.5 * x[:, 1:2] * x[:, 2:3] - 0.3 * x[:, 3:4] ** 2
    y = f + 0.7 * rng.standard_normal((768, 1))
    return _split(x, y, 256)


def _digits() -> tuple:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(3).permutation(len(x))
    return _split(x[perm] / 16.0, y[perm], 360, long=True)


def _anneal() -> tuple:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1280, 20))
    w = rng.standard_normal((20, 1))
    noisy = x @ w + 1.5 * rng.standard_normal((1280, 1))
    xtr, ytr, _, _ = _split(x, noisy, 256)
    _, _, xva, yva = _split(x, x @ w, 256)  # judged against the clean targets
    return xtr, ytr, xva, yva


def _moons() -> tuple:
    from sklearn.datasets import make_moons

    x, y = make_moons(1024, noise=0.25, random_state=5)
    return _split(x, y, 256, long=True)


# The char-level text: scikit-learn's data set descriptions (reStructuredText it installs with
# itself, about 43k characters). Every tenth block of the text is held out, so validation
# covers every file rather than the last one alone.
CONTEXT = 32
TEXT_BLOCK = 1000


@functools.cache
def _corpus() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Train and validation character ids, and the vocabulary's size."""
    import sklearn

    descr = Path(sklearn.__file__).parent / "datasets" / "descr"
    text = "".join(f.read_text(encoding="utf-8") for f in sorted(descr.glob("*.rst")))
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    blocks = ids.split(TEXT_BLOCK)
    train = torch.cat([b for i, b in enumerate(blocks) if i % 10 != 9])
    val = torch.cat([b for i, b in enumerate(blocks) if i % 10 == 9])
    return train, val, len(chars)


def _char_text() -> tuple:
    train, val, _ = _corpus()
    # Every window of the training text (views, no copies); an epoch draws epoch_size of them.
    xtr, ytr = train[:-1].unfold(0, CONTEXT, 1), train[1:].unfold(0, CONTEXT, 1)
    # Validation: the held-out text in non-overlapping windows, one batch.
    xva, yva = val[:-1].unfold(0, CONTEXT, CONTEXT), val[1:].unfold(0, CONTEXT, CONTEXT)
    return xtr, ytr, xva, yva


def _digits_images() -> tuple:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(7).permutation(len(x))
    return _split(x[perm].reshape(-1, 1, 8, 8) / 16.0, y[perm], 360, long=True)


def _classes() -> tuple:
    from sklearn.datasets import make_classification

    # Six classes in 20 raw (unstandardized) features, 8 informative and 6 redundant, 3% of the
    # labels flipped: the validation loss rewards calibrated, not merely correct, logits.
    x, y = make_classification(
        n_samples=1536,
        n_features=20,
        n_informative=8,
        n_redundant=6,
        n_classes=6,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0.03,
        random_state=8,
    )
    return _split(x, y, 512, long=True)


def _linear(d: int) -> nn.Module:
    return nn.Linear(d, 1)


def _mlp(out: int, width: int) -> Callable[[int], nn.Module]:
    def make(d: int) -> nn.Module:
        return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, out))

    return make


class Block(nn.Module):
    """A pre-norm transformer block (nanoGPT's): causal self-attention, then an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, c = h.shape
        q, k, v = (
            z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
            for z in self.qkv(self.norm1(h)).split(c, dim=2)
        )
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, c))
        return h + self.mlp(self.norm2(h))


class CharTransformer(nn.Module):
    """A decoder-only character model: token and position embeddings, blocks, a linear head."""

    def __init__(self, vocab: int, context: int, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(Block(width, heads), Block(width, heads))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position(torch.arange(x.shape[1]))
        return self.head(self.norm(self.blocks(h)))


def _char_transformer(context: int) -> nn.Module:
    return CharTransformer(_corpus()[2], context)


def _cnn(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def _token_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per character: every position of every window is one prediction."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def _val_token_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(_token_ce(model(x), y))


PROBLEMS = {
    p.name: p
    for p in (
        Problem("ill_conditioned", "minimize", "val_mse", _ill_conditioned, _linear,
                nn.functional.mse_loss, _mse, 64),
        Problem("large_lr", "minimize", "val_mse", _large_lr, _linear,
                nn.functional.mse_loss, _mse, 128),
        Problem("noisy_regression", "minimize", "val_mse", _noisy_regression, _mlp(1, 32),
                nn.functional.mse_loss, _mse, 32),
        Problem("digits", "maximize", "val_accuracy", _digits, _mlp(10, 32),
                nn.functional.cross_entropy, _accuracy, 64),
        Problem("anneal", "minimize", "val_mse", _anneal, _linear,
                nn.functional.mse_loss, _mse, 16),
        Problem("moons", "minimize", "val_loss", _moons, _mlp(2, 16),
                nn.functional.cross_entropy, _ce, 32),
        Problem("char_transformer", "minimize", "val_loss", _char_text, _char_transformer,
                _token_ce, _val_token_ce, 16, epoch_size=384),
        Problem("digits_cnn", "minimize", "val_loss", _digits_images, _cnn,
                nn.functional.cross_entropy, _ce, 64),
        Problem("classifier_ce", "minimize", "val_loss", _classes, _mlp(6, 64),
                nn.functional.cross_entropy, _ce, 32),
    )
}  # fmt: skip
_DATA: dict[str, tuple[torch.Tensor, ...]] = {}


# ------------------------------------------------------------------------------------------
# Arms

# An arm's answer for one study: its best value, the range test tuner stored (None for the
# other arms), and how to build the best trial's optimizer again (None: no trial finished).
Outcome = tuple[float, dict[str, Any] | None, Build | None]

HAND_OPTIMIZERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr),
}


def run_hand(problem: Problem, seed: int, trials: int, epochs: int, sampler: str) -> Outcome:
    """The five-minute Optuna script, as a user writes it."""

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("optimizer", list(HAND_OPTIMIZERS))
        lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)

        def build(params, total_steps):
            opt = HAND_OPTIMIZERS[name](params, lr)
            return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)

        return problem.train(build, epochs, lambda v, s: None, seed * 1000 + trial.number)

    cls = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
    study = optuna.create_study(direction=problem.direction, sampler=cls(seed=seed))
    study.optimize(objective, n_trials=trials)
    done = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    best = _best_trial(done, problem.direction)

    def rebuild(params, total_steps):
        opt = HAND_OPTIMIZERS[best.params["optimizer"]](params, best.params["lr"])
        return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)

    return _best([t.value for t in done], problem.direction), None, rebuild if best else None


# The expert study (issue 16): what an experienced Optuna user writes in an hour, in plain
# Optuna and torch. One momentum-like knob, 1 - x: SGD's momentum, RMSprop's momentum, and
# Adam's and AdamW's beta1; sgd and adagrad have none.
EXPERT_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, lr, m: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr, m: torch.optim.SGD(p, lr=lr, momentum=m),
    "nesterov": lambda p, lr, m: torch.optim.SGD(p, lr=lr, momentum=m, nesterov=True),
    "adam": lambda p, lr, m: torch.optim.Adam(p, lr=lr, betas=(m, 0.999)),
    "adamw": lambda p, lr, m: torch.optim.AdamW(p, lr=lr, betas=(m, 0.999)),
    "rmsprop": lambda p, lr, m: torch.optim.RMSprop(p, lr=lr, momentum=m),
    "adagrad": lambda p, lr, m: torch.optim.Adagrad(p, lr=lr),
}
EXPERT_MOMENTUM = ("momentum", "nesterov", "adam", "adamw", "rmsprop")
EXPERT_SCHEDULES = ("constant", "cosine", "warmup_cosine")


def expert_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """The expert's ``LambdaLR`` factor: constant, cosine to 0, or a linear warmup over the
    first 5% of the steps, then cosine to 0.

    >>> f = expert_factor("warmup_cosine", 100)
    >>> f(0), f(4), f(5), round(f(100), 6)
    (0.2, 1.0, 1.0, 0.0)
    """
    warmup = max(1, round(0.05 * total_steps)) if schedule == "warmup_cosine" else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def run_expert(problem: Problem, seed: int, trials: int, epochs: int) -> Outcome:
    """The expert study: multivariate grouped TPE, the median pruner, a conditional space."""

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("optimizer", list(EXPERT_OPTIMIZERS))
        lr = trial.suggest_float("lr", 1e-5, 3.0, log=True)
        # Suggested only for the optimizers that use it: group=True gives each set of
        # co-occurring parameters its own joint model, so sgd's and adagrad's trials carry no
        # value they ignore, which would only blur what TPE learns about the knob.
        momentum = 0.0
        if name in EXPERT_MOMENTUM:
            momentum = 1.0 - trial.suggest_float("one_minus_momentum", 1e-3, 0.5, log=True)
        schedule = trial.suggest_categorical("schedule", EXPERT_SCHEDULES)
        build = functools.partial(_expert_build, name, lr, momentum, schedule)

        def report(value: float, epoch: int) -> None:
            trial.report(value, epoch)
            # A diverged run is pruned once its NaN is reported: TPE ranks a pruned trial whose
            # last value is NaN below every other, the median pruner skips it, and the study
            # goes on (returning NaN would mark the trial failed, which TPE ignores).
            if not math.isfinite(value) or trial.should_prune():
                raise optuna.TrialPruned()

        return problem.train(build, epochs, report, seed * 1000 + trial.number)

    study = optuna.create_study(
        direction=problem.direction,
        sampler=optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    )
    study.optimize(objective, n_trials=trials)
    done = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)
    ]
    best = _best_trial(done, problem.direction)
    rebuild = None
    if best is not None:
        p = best.params
        momentum = 1.0 - p.get("one_minus_momentum", 1.0)
        rebuild = functools.partial(_expert_build, p["optimizer"], p["lr"], momentum, p["schedule"])
    return _best([t.value for t in done], problem.direction), None, rebuild


def _expert_build(name: str, lr: float, momentum: float, schedule: str, params, total_steps):
    opt = EXPERT_OPTIMIZERS[name](params, lr, momentum)
    factor = expert_factor(schedule, total_steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def run_tuner(
    problem: Problem,
    seed: int,
    trials: int,
    epochs: int,
    pruner: str | dict | None,
    tpe: str,
    *,
    step_loss: bool = False,
) -> Outcome:
    """A study file with no ``search:`` section through tuner's worker loop.

    ``step_loss``: the objective also gives each step's training loss to
    ``trial.step_loss`` (where tuner.Trial has it) for the range test to read.
    """
    from tuner.catalog.export import OptimizerConfig
    from tuner.config.studyfile import StudyFile
    from tuner.core.keys import ATTR
    from tuner.db.session import open_session
    from tuner.worker.runner import Worker

    with tempfile.TemporaryDirectory() as tmp:
        doc = {
            "name": f"{problem.name}-{seed}",
            "objective": "bench.py:objective",
            "direction": problem.direction,
            "metric": problem.metric,
            "budget": {"trials": trials, "epochs": epochs},
            "storage": f"sqlite:///{tmp}/tuner.db",
            "sampler": {"name": "tpe", "seed": seed},
            "mlflow": {"tracking_uri": "off"},
            # The finalists' replicates (docs/answer.md) come after the search and are reported as
            # their own cost; this benchmark compares searches.
            "compare": {"seeds": 0},
        }
        if tpe == "indep":  # Optuna's default TPE, for comparison
            doc["sampler"].update(multivariate=False, group=False, n_startup_trials=10)
        if pruner is not None:
            doc["pruner"] = pruner if isinstance(pruner, dict) else {"name": pruner}
        sf = StudyFile.model_validate(doc)

        def objective(trial: tuner.Trial) -> float:
            hook = getattr(trial, "step_loss", None) if step_loss else None
            return problem.train(
                trial.build_optimizer, trial.max_epochs, trial.report, trial.seed, hook
            )

        session = open_session(sf)
        study = session.study
        Worker(study_file=sf, study=study, objective=objective, tracker=session.tracker).run()
        session.close(timeout=1.0)
        done = [
            t
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)
        ]
        best = _best_trial(done, problem.direction)
        rebuild = None
        if best is not None:  # the exported configuration, as `tuner best` writes it
            config = OptimizerConfig.from_dict(best.user_attrs[ATTR.CONFIG])
            rebuild = functools.partial(_tuner_build, config)
        value = _best([t.value for t in done], problem.direction)
        return value, study.user_attrs.get(ATTR.LR_RANGE_TEST), rebuild


def _tuner_build(config: Any, params, total_steps):
    from tuner.catalog.export import build_optimizer

    return build_optimizer(params, config, total_steps)


def _best_trial(trials: list[Any], direction: str) -> Any:
    """The best of finished trials (None when none finished)."""
    if not trials:
        return None
    return min(trials, key=lambda t: _rank(t.value, direction))


def _best(values: list[float], direction: str) -> float:
    if not values:
        return math.inf if direction == "minimize" else -math.inf
    return min(values) if direction == "minimize" else max(values)


ARMS: dict[str, Callable[[Problem, int, int, int], Outcome]] = {
    "hand": lambda p, s, t, e: run_hand(p, s, t, e, "tpe"),
    "expert": run_expert,
    "tuner": lambda p, s, t, e: run_tuner(p, s, t, e, None, "tuner"),
    "tuner-nopr": lambda p, s, t, e: run_tuner(p, s, t, e, "none", "tuner"),
    "random": lambda p, s, t, e: run_hand(p, s, t, e, "random"),
    "tuner-loss": lambda p, s, t, e: run_tuner(p, s, t, e, None, "tuner", step_loss=True),
    "tuner-hb": lambda p, s, t, e: run_tuner(p, s, t, e, "hyperband", "tuner"),
    "tuner-sh": lambda p, s, t, e: run_tuner(p, s, t, e, "successive_halving", "tuner"),
    "tuner-med": lambda p, s, t, e: run_tuner(p, s, t, e, "median", "tuner"),
    "tuner-smp": lambda p, s, t, e: run_tuner(p, s, t, e, "schedule_median", "tuner"),
    "tuner-smp3": lambda p, s, t, e: run_tuner(
        p, s, t, e, {"name": "schedule_median", "rungs": [0.2, 0.4, 0.6]}, "tuner"
    ),
    "tuner-k50": lambda p, s, t, e: run_tuner(  # the default before 2026-11-28
        p, s, t, e, {"name": "schedule_median", "keep": 0.5, "rungs": [0.2, 0.5]}, "tuner"
    ),
    "tuner-k60": lambda p, s, t, e: run_tuner(
        p, s, t, e, {"name": "schedule_median", "keep": 0.6, "rungs": [0.2, 0.5]}, "tuner"
    ),
    "tuner-k67": lambda p, s, t, e: run_tuner(
        p, s, t, e, {"name": "schedule_median", "keep": 0.67, "rungs": [0.2, 0.5]}, "tuner"
    ),
    "tuner-k67s8": lambda p, s, t, e: run_tuner(
        p,
        s,
        t,
        e,
        {"name": "schedule_median", "keep": 0.67, "n_startup_trials": 8, "rungs": [0.2, 0.5]},
        "tuner",
    ),
    "tuner-indep": lambda p, s, t, e: run_tuner(p, s, t, e, None, "indep"),
}
DEFAULT_ARMS = "hand,expert,tuner,tuner-nopr,random"


# ------------------------------------------------------------------------------------------
# The ceiling check: each probed family's best constant rate on a coarse grid

GRID_SPAN = (1e-5, 1e3)
GRID_STEPS_PER_DECADE = 2
GRID_SEED = 0


def ceiling_families() -> list[str]:
    """The optimizer tuner probes for each family on a full-catalog study."""
    from tuner.catalog.optim import OPTIMIZERS
    from tuner.search._range_test import probe_plan

    return list(probe_plan(OPTIMIZERS))


def ceiling_grid(family: str) -> list[float]:
    """Constant rates at half-decade steps over :data:`GRID_SPAN` and the family's ramp."""
    from tuner.search._range_test import probe_bounds

    ramp = probe_bounds(family)
    per = GRID_STEPS_PER_DECADE
    first = math.floor(per * math.log10(min(GRID_SPAN[0], ramp[0])) + 1e-9)
    last = math.ceil(per * math.log10(max(GRID_SPAN[1], ramp[1])) - 1e-9)
    return [10 ** (k / per) for k in range(first, last + 1)]


class _Diverged(Exception):
    """A grid run's training loss or validation value turned non-finite: no need to go on."""


def _finite(value: float, *_: int) -> None:
    # Only a non-finite value ends a grid run early: a loss far above its start is no proof of
    # a bad final value (Adagrad at rates in the hundreds blows up, then its accumulator tames
    # the steps and it ends among the best on large_lr and ill_conditioned).
    if not math.isfinite(value):
        raise _Diverged


def run_grid(problem: Problem, family: str, lr: float, epochs: int) -> float:
    """``family``'s catalog defaults at a constant ``lr``, built as tuner builds them; the
    final validation value, NaN when the run diverged."""
    from tuner.catalog.export import OptimizerConfig, build_optimizer
    from tuner.catalog.optim import get_optimizer

    spec = get_optimizer(family)
    kwargs = spec.to_kwargs({**spec.default_values, "lr": lr})
    config = OptimizerConfig(family, kwargs, {"name": "constant"}, None)
    try:
        return problem.train(
            lambda params, total: build_optimizer(params, config, total),
            epochs,
            _finite,  # the validation value, each epoch
            GRID_SEED,
            _finite,  # the training loss, each step
        )
    except _Diverged:
        return math.nan


# ------------------------------------------------------------------------------------------
# Running the cells


@dataclass(frozen=True)
class Cell:
    """One unit of the pool's work: a study (``arm``, ``seed``) or, with ``lr`` set, one
    ceiling-grid run (``arm`` is then the family probed)."""

    problem: str
    arm: str
    seed: int
    trials: int
    epochs: int
    lr: float | None = None
    retest: int = 0  # fresh seeds to train the study's best configuration with again


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    best: float  # a study's best value, or a grid run's final value (NaN: diverged)
    epochs: float  # epochs trained, probes and pruned trials included
    seconds: float  # wall time
    cpu: float  # this process's CPU time: what the cell costs on an idle core
    range_test: dict[str, Any] | None = None
    retest: float = math.nan  # the best configuration's mean value over the fresh seeds


# Results by (problem, arm), or by (problem, family) for the ceiling grid.
Results = dict[tuple[str, str], list[CellResult]]


def run_cell(cell: Cell) -> CellResult:
    """One cell in a pool process."""
    logging.getLogger("tuner").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    problem = PROBLEMS[cell.problem]
    if cell.problem not in _DATA:
        _DATA[cell.problem] = problem.data()
    COUNTER.steps = 0
    start, cpu = time.perf_counter(), time.process_time()
    range_test, rebuild = None, None
    if cell.lr is None:
        best, range_test, rebuild = ARMS[cell.arm](problem, cell.seed, cell.trials, cell.epochs)
    else:
        best = run_grid(problem, cell.arm, cell.lr, cell.epochs)
    spent = COUNTER.steps / problem.steps_per_epoch
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    retest = math.nan
    if rebuild is not None and cell.retest:
        retest = statistics.fmean(
            problem.train(rebuild, cell.epochs, lambda v, e: None, RETEST_SEED + k)
            for k in range(cell.retest)
        )
    return CellResult(cell, best, spent, seconds, cpu, range_test, retest)


# The re-test's training seeds: none of them is a seed any study trains with.
RETEST_SEED = 10**6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--arms", default=DEFAULT_ARMS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--candidate", default="tuner", help="the arm the targets judge (default: tuner)"
    )
    parser.add_argument(
        "--no-ceiling-check", action="store_true", help="skip the constant-rate grid"
    )
    parser.add_argument(
        "--retest",
        type=int,
        default=5,
        help="train each study's best configuration again with this many fresh seeds (0: skip)",
    )
    args = parser.parse_args()
    problems = args.problems.split(",")
    arms = args.arms.split(",")
    unknown = [p for p in problems if p not in PROBLEMS] + [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown problem or arm: {', '.join(unknown)}")
    if "tuner-loss" in arms and not hasattr(tuner.Trial, "step_loss"):
        print("note: tuner.Trial has no step_loss yet; the tuner-loss arm runs as tuner")
    cells = [
        Cell(p, a, s, args.trials, args.epochs, retest=args.retest)
        for p in problems
        for s in range(args.seeds)
        for a in arms  # arms interleaved: the machine's load lands on all alike
    ]
    families = [] if args.no_ceiling_check else ceiling_families()
    grid = [
        Cell(p, f, GRID_SEED, 1, args.epochs, lr)
        for p in problems
        for f in families
        for lr in ceiling_grid(f)
    ]
    print(
        f"search quality: {len(problems)} problems x {args.seeds} seeds x {len(arms)} arms, "
        f"{args.trials} trials x {args.epochs} epochs each ({len(cells)} studies)"
        + (f"; ceiling check: {len(grid)} constant-rate runs" if grid else ""),
        flush=True,
    )
    start = time.perf_counter()
    studies, grids = run_all(cells, grid, args.jobs)
    wall = time.perf_counter() - start
    print_results(problems, arms, studies)
    if args.retest:
        print_retest(problems, arms, studies, args.retest, args.candidate)
    print_wall_times(problems, arms, studies, grids, wall, args.jobs)
    ceilings = check_ceilings(problems, arms, studies, grids, families)
    print_targets(problems, studies, ceilings, args.candidate)


def run_all(cells: list[Cell], grid: list[Cell], jobs: int) -> tuple[Results, Results]:
    """Run every cell in a pool of ``jobs`` processes, printing each study as it ends and each
    (problem, family) grid once complete; the results by (problem, arm) and (problem, family)."""
    studies: Results = {}
    grids: Results = {}
    size: dict[tuple[str, str], int] = {}
    for c in grid:
        size[(c.problem, c.arm)] = size.get((c.problem, c.arm), 0) + 1
    n = len(cells) + len(grid)
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        # The grid's short runs go last: they fill the pool's tail.
        for i, r in enumerate(pool.imap_unordered(run_cell, cells + grid)):
            c = r.cell
            if c.lr is None:
                studies.setdefault((c.problem, c.arm), []).append(r)
                print(
                    f"  [{i + 1}/{n}] {c.problem:<17} {c.arm:<11} seed {c.seed}: best "
                    f"{r.best:.5g}, {r.epochs:.0f} epochs, {r.seconds:.1f}s"
                    + _ceilings_line(r.range_test),
                    flush=True,
                )
                continue
            runs = grids.setdefault((c.problem, c.arm), [])
            runs.append(r)
            if len(runs) == size[(c.problem, c.arm)]:
                lr, value = _grid_best(runs, PROBLEMS[c.problem].direction)
                print(
                    f"  [{i + 1}/{n}] {c.problem:<17} grid {c.arm:<8}: best constant lr "
                    f"{lr:.3g} ({value:.5g}), {sum(x.seconds for x in runs):.1f}s",
                    flush=True,
                )
    return studies, grids


# ------------------------------------------------------------------------------------------
# Reports


def _ceilings_line(range_test: dict[str, Any] | None) -> str:
    if not range_test or not range_test.get("families"):
        return ""
    tops = (f"{f['optimizer']} {_ceiling(f)[0]:.3g}" for f in range_test["families"])
    return f"; ceilings {', '.join(tops)}"


def _ceiling(family: dict[str, Any]) -> tuple[float, str]:
    """A stored probe's ceiling (its range's top) and the signal it read."""
    signal = str(family.get("signal") or "-")
    if family.get("range"):
        return float(family["range"][1]), signal
    # The probe failed: the search kept the catalog's range.
    from tuner.catalog.optim import get_optimizer

    lr = next(hp for hp in get_optimizer(family["optimizer"]).hparams if hp.name == "lr")
    return float(lr.default.high), "catalog"


def _rank(value: float, direction: str) -> float:
    """Lower is better; NaN is worst."""
    if math.isnan(value):
        return math.inf
    return value if direction == "minimize" else -value


def _grid_best(runs: list[CellResult], direction: str) -> tuple[float, float]:
    """The grid's best constant rate and its value."""
    best = min(runs, key=lambda r: (_rank(r.best, direction), r.cell.lr))
    return float(best.cell.lr or 0.0), best.best


def _medians(cells: list[CellResult]) -> tuple[float, float]:
    return statistics.median(c.best for c in cells), statistics.median(c.epochs for c in cells)


def print_results(problems: list[str], arms: list[str], studies: Results) -> None:
    print("\nmedian best value (median epochs spent) per arm")
    print(f"{'problem':<17} {'dir':<4}" + "".join(f" {a:>22}" for a in arms))
    for p in problems:
        row = f"{p:<17} {PROBLEMS[p].direction[:3]:<4}"
        for a in arms:
            cells = studies.get((p, a))
            if not cells:
                row += f" {'-':>22}"
                continue
            best, spent = _medians(cells)
            row += f" {best:>12.5g} ({spent:>6.0f})"
        print(row)


def print_retest(
    problems: list[str], arms: list[str], studies: Results, seeds: int, candidate: str
) -> None:
    """Each arm's answer trained again: the mean over ``seeds`` fresh seeds of each study's best
    configuration, median over studies. A study's best value is also the luckiest of its
    trials' training seeds; this is what its answer is worth on the next run."""
    print(
        f"\nre-test: each study's best configuration trained again with {seeds} fresh seeds "
        "(mean), median over studies"
    )
    print(f"{'problem':<17} {'dir':<4}" + "".join(f" {a:>13}" for a in arms))
    line = {"hand": 0, "expert": 0}
    for p in problems:
        direction = PROBLEMS[p].direction
        med = {}
        for a in arms:
            values = [c.retest for c in studies.get((p, a), [])]
            med[a] = statistics.median(values) if values else math.nan
        print(f"{p:<17} {direction[:3]:<4}" + "".join(f" {med[a]:>13.5g}" for a in arms))
        for ref in line:
            if candidate in med and ref in med:
                line[ref] += _rank(med[candidate], direction) <= _rank(med[ref], direction)
    print(
        f"re-tested, {candidate} >= hand on {line['hand']}/{len(problems)}, "
        f">= expert on {line['expert']}/{len(problems)}"
    )


def print_wall_times(
    problems: list[str],
    arms: list[str],
    studies: Results,
    grids: Results,
    wall: float,
    jobs: int,
) -> None:
    print("\nwall time: median seconds per study (the grid: its total)")
    print(f"{'problem':<17}" + "".join(f" {a:>11}" for a in arms) + f" {'grid':>11}")
    everything = [c for cs in studies.values() for c in cs] + [
        r for rs in grids.values() for r in rs
    ]
    for p in problems:
        row = f"{p:<17}"
        for a in arms:
            cells = studies.get((p, a))
            row += f" {statistics.median(c.seconds for c in cells):>11.1f}" if cells else " " * 12
        runs = [r for (q, _), rs in grids.items() if q == p for r in rs]
        row += f" {sum(r.seconds for r in runs):>11.1f}" if runs else f" {'-':>11}"
        print(row)
    by_arm = {a: [c for p in problems for c in studies.get((p, a), [])] for a in arms}
    by_arm["grid"] = [r for rs in grids.values() for r in rs]
    for label, total in (
        ("median s/study", lambda cells: statistics.median(c.seconds for c in cells)),
        ("total s", lambda cells: sum(c.seconds for c in cells)),
        ("total cpu s", lambda cells: sum(c.cpu for c in cells)),
    ):
        row = f"{label:<17}"
        for a in [*arms, "grid"]:
            cells = by_arm[a]
            shown = cells and (a != "grid" or label != "median s/study")
            row += f" {total(cells):>11.1f}" if shown else f" {'-':>11}"
        print(row)
    print(
        f"all cells: {sum(c.seconds for c in everything):.0f} s of wall time "
        f"({sum(c.cpu for c in everything):.0f} s of CPU) in {wall:.0f} s on {jobs} jobs"
    )


def check_ceilings(
    problems: list[str],
    arms: list[str],
    studies: Results,
    grids: Results,
    families: list[str],
) -> dict[tuple[str, str], str]:
    """Print each range-test ceiling beside the grid's best constant rate; the verdict per
    (problem, arm): ``ok``, ``CUT`` (a ceiling below the best rate) or ``-`` (not checked)."""
    verdicts: dict[tuple[str, str], str] = {}
    if not families:
        return verdicts
    probed = [
        a for a in arms if any(c.range_test for p in problems for c in studies.get((p, a), []))
    ]
    print(
        "\nceiling check: each family's best constant rate (catalog defaults, 10^(k/2) grid, "
        f"seed {GRID_SEED}) against the range test's ceilings over the seeds"
    )
    print(
        f"{'problem':<17} {'family':<8} {'best lr':>9} {'its value':>10} {'arm':<11} "
        f"{'min ceiling':>11} {'median':>9} {'signal':<12} check"
    )
    for p in problems:
        direction = PROBLEMS[p].direction
        for f in families:
            runs = grids.get((p, f))
            if not runs:
                continue
            lr, value = _grid_best(runs, direction)
            top = " (top of the grid)" if lr == max(r.cell.lr or 0.0 for r in runs) else ""
            rows = 0
            for a in probed:
                found = [
                    _ceiling(fam)
                    for c in studies.get((p, a), [])
                    for fam in (c.range_test or {}).get("families", [])
                    if fam["optimizer"] == f
                ]
                if not found:
                    continue
                tops = [t for t, _ in found]
                cut = not math.isnan(value) and min(tops) < lr
                verdict = "CUT" if cut else "ok"
                if verdicts.get((p, a)) != "CUT":
                    verdicts[(p, a)] = verdict
                if cut:
                    # What the lowest ceiling costs: the grid's best below it, against the best.
                    below = [r for r in runs if (r.cell.lr or 0.0) <= min(tops)]
                    kept = _grid_best(below, direction)[1] if below else math.nan
                    worse = _worse_pct(kept, value, direction) if not math.isnan(kept) else math.inf
                    verdict += f" (best below it {worse:+.2g}%)"
                signals = "/".join(sorted({s for _, s in found}))
                print(
                    f"{p:<17} {f:<8} {lr:>9.3g} {value:>10.4g} {a:<11} {min(tops):>11.3g} "
                    f"{statistics.median(tops):>9.3g} {signals:<12} {verdict}{top}"
                )
                rows += 1
            if not rows:
                print(f"{p:<17} {f:<8} {lr:>9.3g} {value:>10.4g} (no range test ran){top}")
    return verdicts


def _worse_pct(value: float, reference: float, direction: str) -> float:
    """How much worse ``value`` is than ``reference``, in percent of it (negative: better)."""
    if value == reference:
        return 0.0
    diff = value - reference if direction == "minimize" else reference - value
    return 100.0 * diff / abs(reference) if reference else math.copysign(math.inf, diff)


def print_targets(
    problems: list[str],
    studies: Results,
    ceilings: dict[tuple[str, str], str],
    candidate: str,
) -> None:
    """Issue 16's targets for ``candidate``, per problem, then how many problems meet each."""
    print(f"\ntargets for {candidate} (median over seeds)")
    print(f"{'problem':<17} {'>= hand':>8} {'vs expert':>17} {'epochs/hand':>12} {'ceilings':>9}")
    met = {"hand": 0, "expert": 0, "expert2": 0, "epochs": 0, "ceilings": 0}
    judged = {key: 0 for key in met}
    for p in problems:
        direction = PROBLEMS[p].direction
        mine = studies.get((p, candidate))
        hand, expert = studies.get((p, "hand")), studies.get((p, "expert"))
        row = f"{p:<17}"
        if mine and hand:
            (tb, te), (hb, he) = _medians(mine), _medians(hand)
            ok = _rank(tb, direction) <= _rank(hb, direction)
            ratio = te / he if he else math.inf
            met["hand"] += ok
            met["epochs"] += ratio <= 0.7
            judged["hand"] += 1
            judged["epochs"] += 1
            row += f" {'yes' if ok else 'NO':>8}"
        else:
            ratio = math.nan
            row += f" {'-':>8}"
        if mine and expert:
            tb, eb = _medians(mine)[0], _medians(expert)[0]
            worse = _worse_pct(tb, eb, direction)
            signed = 100.0 * (tb - eb) / abs(eb) if eb and math.isfinite(worse) else worse
            met["expert"] += worse <= 0
            met["expert2"] += worse <= 2.0
            judged["expert"] += 1
            judged["expert2"] += 1
            label = "worse" if worse > 0 else ("better" if worse < 0 else "equal")
            row += f" {signed:>+9.1f}% {label:<6}"
        else:
            row += f" {'-':>17}"
        row += f" {ratio:>12.2f}" if math.isfinite(ratio) else f" {'-':>12}"
        verdict = ceilings.get((p, candidate), "-")
        met["ceilings"] += verdict == "ok"
        judged["ceilings"] += verdict != "-"
        print(row + f" {verdict:>9}")
    n = len(problems)
    print(
        f"\ntargets met over {n} problems: {candidate} >= hand on {met['hand']}/{judged['hand']}; "
        f">= expert on {met['expert']}/{judged['expert']} (target: all but one) and within 2% "
        f"of expert on {met['expert2']}/{judged['expert2']} (target: all); epochs <= 0.7x "
        f"hand on {met['epochs']}/{judged['epochs']}; every ceiling at or above the grid's "
        f"best rate on {met['ceilings']}/{judged['ceilings']}"
    )


if __name__ == "__main__":
    main()
