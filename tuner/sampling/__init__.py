"""Sampling: TPE settings and per-worker seeds, the default pruner, and the registries the
study file names samplers and pruners from."""
