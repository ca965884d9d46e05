"""One exception root for tuner; ``tuner.cli`` maps these to exit codes in one place."""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "ConfigError",
    "ObjectiveError",
    "StorageError",
    "StorageFailure",
    "TunerError",
]


class TunerError(Exception):
    """Root of every error tuner raises on purpose. Runtime errors exit with code 1."""

    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(TunerError):
    """The user's input is wrong: the study file, a CLI flag, a hyperparameter. Exit code 2.

    Messages name the field path, the rule and the value, e.g.
    "search.optimizers.adam.lr.low: `low <= high` must hold, but got (low=3, high=1)".
    """

    exit_code = 2


class CatalogError(ConfigError):
    """An unknown optimizer or schedule, or a hyperparameter value outside its valid range."""


class ObjectiveError(ConfigError):
    """The objective named in the study file cannot be loaded."""


class StorageError(TunerError):
    """The study database cannot be reached or used. Messages never contain a password.

    ``transient`` marks a failure worth retrying later (a server restarting or unreachable).
    """

    transient: bool = False


class StorageFailure(StorageError):
    """The study database refused to work for a cause the user must fix: a full disk, a
    read-only file, a missing folder, permission denied, too many connections.

    The message is one line naming the cause and the database; ``tuner launch`` stops at the
    first one a worker meets (:func:`tuner.db.storage.storage_failure`).
    """
