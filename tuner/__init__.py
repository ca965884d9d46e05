"""tuner: hyperparameter tuning for PyTorch training."""

from __future__ import annotations

__version__ = "0.1.0"
