"""How tuner searches well by default: a learning-rate range test before the search, a
warm-start portfolio as its first trials, TPE set up for the conditional space with per-worker
seeds, and a pruner that compares like with like.

- :mod:`tuner.search._range_test`: the probe (an exponential lr ramp watched step by step).
- :mod:`tuner.search._phase`: running the probes through the user's objective, sharing the
  result through the study, and enqueueing the portfolio.
- :mod:`tuner.search._portfolio` and ``portfolio.yaml``: the known-good configurations.

Seeds, TPE settings and the default pruner are one layer down, in :mod:`tuner.sampling`.
"""

from __future__ import annotations

from tuner.search._phase import (
    RangeTest,
    apply_ranges,
    describe_range_test,
    prepare_search,
    run_probe,
)
from tuner.search._portfolio import PORTFOLIO, portfolio_trials
from tuner.search._range_test import LrProbe, ProbeOutcome, probe_bounds, search_range

__all__ = [
    "PORTFOLIO",
    "LrProbe",
    "ProbeOutcome",
    "RangeTest",
    "apply_ranges",
    "describe_range_test",
    "portfolio_trials",
    "prepare_search",
    "probe_bounds",
    "run_probe",
    "search_range",
]
