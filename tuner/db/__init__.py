"""The database: Optuna's storage with retries and locks, the per-trial reads and writes, and
opening a study with its sampler, pruner and tracker."""
