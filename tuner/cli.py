"""The ``tuner`` command line. Thin: parse, call the library, map errors to exit codes here.

Exit codes: 0 success; 1 a runtime error (storage unreachable, workers failed); 2 a usage or
configuration error (the study file, a flag, the objective path); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tuner.core.errors import ConfigError, TunerError
from tuner.core.redact import redact
from tuner.tracking import HTTP_DEFAULTS

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile
    from tuner.launch.supervisor import Stop
    from tuner.results.summary import StudySummary

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

# Each command's library code, imported when the command runs (the one place cli imports
# lazily): `tuner --help` and a mistyped command answer without loading Optuna, pydantic,
# SQLAlchemy, matplotlib, MLflow or torch.
_LIBRARY = {
    "config": "tuner.config.studyfile",
    "launch": "tuner.launch.launcher",
    "worker": "tuner.launch.worker_main",
    "status": "tuner.apps.status",
    "best": "tuner.apps.best",
    "report": "tuner.apps.report",
    "sync": "tuner.apps.sync",
}


def _library(name: str) -> ModuleType:
    return importlib.import_module(_LIBRARY[name])


STUDY_ARG = click.argument(
    "study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False, path_type=Path)
)


def _echo(message: str) -> None:
    click.echo(redact(message), err=True)


def _handle_errors(fn: F) -> F:
    """The one place where exceptions become messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunerError as exc:
            _echo(f"error: {exc}")
            if exc.hint:
                _echo(f"hint: {exc.hint}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _echo(
                "interrupted: the running trial was recorded as interrupted and will run again; "
                "run the same command to resume the study"
            )
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _setup_logging(quiet: bool = False) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # MLflow and its migrations announce table creation at INFO; users need none of that.
    # MLflow sets its logger's level when it is imported (lazily, later), from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Bounded MLflow requests (see HTTP_DEFAULTS); workers that launch starts inherit them.
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logger = logging.getLogger("tuner")
    for old in [h for h in logger.handlers if getattr(h, "tuner_cli", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.tuner_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_RedactingFormatter("tuner: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _load(study_path: Path, *, trials: int | None = None, timeout: str | None = None) -> StudyFile:
    config = _library("config")
    study_file = config.load_study_file(study_path)
    if trials is not None or timeout is not None:
        study_file = config.with_overrides(study_file, trials=trials, timeout=timeout)
    return study_file


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tuner")
def cli() -> None:
    """tuner: find the optimizer, learning rate, schedule and warmup to train your model with.

    \b
    tuner launch study.yaml     create or resume the study and run it to its budget here
    tuner worker study.yaml     join the same study from another machine
    tuner status study.yaml     trials by outcome, best so far, running trials
    tuner best study.yaml       the winning configuration (yaml, json or torch code)
    tuner report study.yaml     plots and a summary, also logged to MLflow
    tuner sync study.yaml       backfill MLflow from the study database
    """


@cli.command()
@STUDY_ARG
@click.option("--trials", type=click.IntRange(min=1), help="Override budget.trials.")
@click.option("--timeout", metavar="DURATION", help="Override budget.timeout (90s, 30m, 2h).")
@click.option("--quiet", is_flag=True, help="Only the summary.")
@_handle_errors
def launch(study_path: Path, trials: int | None, timeout: str | None, quiet: bool) -> None:
    """Create or resume the study in STUDY.yaml and run it to its budget on this machine."""
    if not quiet:
        # At once: validating the file imports torch (the catalog), which takes seconds.
        _echo(f"tuner launch: checking {study_path.resolve()}")
    run_launch = _library("launch").launch
    _setup_logging(quiet)
    study_file = _load(study_path, trials=trials, timeout=timeout)

    def show(summary: StudySummary, stop: Stop) -> None:
        click.echo(summary.format())
        _echo(stop.line)  # the last line says why it stopped; the exit code agrees

    _, stop = run_launch(
        study_file,
        echo=(lambda _: None) if quiet else _echo,
        live=sys.stderr.isatty(),
        quiet=quiet,
        show=show,
    )
    _SKIP_TEARDOWN.append(stop.exit_code)
    if stop.exit_code:
        sys.exit(stop.exit_code)


@cli.command()
@STUDY_ARG
@click.option(
    "--device",
    help="Device for this worker: cpu, cuda, cuda:1. Default: the first of workers.devices.",
)
@click.option("--device-tag", hidden=True, help="The device name recorded in tags.")
@click.option("--deadline", type=float, hidden=True, help="Unix time after which no trial starts.")
@click.option("--trials", type=click.IntRange(min=1), help="Override budget.trials.")
@click.option("--timeout", metavar="DURATION", help="Override budget.timeout (90s, 30m, 2h).")
@click.option("--supervised-by", type=int, hidden=True, help="The pid of the tuner launch.")
@click.option("--events-fd", type=int, hidden=True, help="Where to report trials to launch.")
@click.option("--quiet", is_flag=True, help="No line per trial.")
@_handle_errors
def worker(
    study_path: Path, device: str | None, device_tag: str | None, deadline: float | None,
    trials: int | None, timeout: str | None, supervised_by: int | None, events_fd: int | None,
    quiet: bool,
) -> None:  # fmt: skip
    """Join the study in STUDY.yaml and run trials on one device until its budget is spent."""
    run_worker = _library("worker").run_worker
    _setup_logging(quiet)
    if supervised_by is not None:
        import faulthandler

        # A crash in native code (a segfault) prints where the trial was before the worker
        # dies; launch relays it and fails that trial.
        faulthandler.enable(all_threads=False)
    study_file = _load(study_path, trials=trials, timeout=timeout)
    try:
        reason = run_worker(
            study_file,
            echo=(lambda _: None) if quiet else _echo,
            device=device,
            device_tag=device_tag,
            deadline=deadline,
            supervisor_pid=supervised_by,
            events_fd=events_fd,
        )
    except KeyboardInterrupt:
        if supervised_by is None:
            raise
        sys.exit(130)  # launch asked; it tells the user what became of the trials
    if not quiet:
        _echo(f"worker done ({reason})")


@cli.command()
@STUDY_ARG
@_handle_errors
def status(study_path: Path) -> None:
    """Trials by outcome, the best so far, and running trials with their worker and device."""
    _setup_logging()
    click.echo(_library("status").status_text(_load(study_path)))


@cli.command()
@STUDY_ARG
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json", "python"]), default="yaml",
    show_default=True, help="yaml/json: the configuration; python: plain torch code.",
)  # fmt: skip
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
@_handle_errors
def best(study_path: Path, fmt: str, output: Path | None) -> None:
    """The winning configuration, ready for `tuner.load_optimizer_config` or as torch code.

    The answer's recommended optimizer (its finalists re-run with fresh seeds, docs/answer.md:
    the winner, or the cheapest of those tied with it); with replicates off or not run yet, the
    best search trial's configuration.
    """
    _setup_logging()
    text, sentence = _library("best").best_text(_load(study_path), fmt)
    if fmt == "json":
        _echo(sentence)  # JSON has no comments: the answer goes to stderr
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        output.write_text(text)
        _echo(f"wrote {output}")


@cli.command()
@STUDY_ARG
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the images, summary.md and answer.json. Default: reports/<study name>.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text: the summary; json: the answer document (docs/answer.md) on standard output.",
)  # fmt: skip
@_handle_errors
def report(study_path: Path, out_dir: Path | None, fmt: str) -> None:
    """Plots and a summary of the study, also logged to its MLflow parent run."""
    report_app = _library("report")
    _setup_logging()
    study_file = _load(study_path)
    study, written = report_app.report_study_file(study_file, out_dir)
    if fmt == "json":
        click.echo(written.files["answer"].read_text(), nl=False)
    else:
        click.echo(written.summary_text)
    for path in written.files.values():
        _echo(f"wrote {path}")
    for name, why in written.skipped.items():
        _echo(f"skipped {name}: {why}")
    _echo(report_app.log_report(study_file, study, written))


@cli.command()
@STUDY_ARG
@_handle_errors
def sync(study_path: Path) -> None:
    """Backfill MLflow from the study database: every trial missing or incomplete there."""
    _setup_logging()
    study_file = _load(study_path)
    result = _library("sync").sync_study_file(study_file)
    click.echo(
        f"synced study {study_file.name!r} to MLflow run {result.parent_run_id}: "
        f"{result.created} runs created, {result.completed} completed, "
        f"{result.already_ok} already complete, {result.skipped} still running; "
        f"parent {'updated' if result.parent_updated else 'already up to date'}, "
        f"{result.parent_status}"
    )


# Set by `launch` once its work is done: its exit code (see _skip_teardown).
_SKIP_TEARDOWN: list[int] = []


def _skip_teardown() -> None:
    """The last exit handler of a finished ``tuner launch``: end the process without Python's
    teardown of its modules.

    By then the summary is printed, MLflow's queue is delivered or reported, every worker is
    reaped and the study database holds everything; and the launch process runs no user code
    (its workers do, and they exit normally), so no user object waits on a finalizer. Tearing
    down torch and MLflow's modules would still take 0.7-1.2 s on our machines, after the
    answer is on the screen. Registered first, so every other exit handler (logging's flush,
    libraries' own) has run before it.
    """
    if _SKIP_TEARDOWN:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(_SKIP_TEARDOWN[-1])


def main() -> None:
    """Console entry point."""
    import atexit

    atexit.register(_skip_teardown)
    try:
        cli.main(prog_name="tuner", standalone_mode=True)
    except ConfigError as exc:  # pragma: no cover - commands handle their own
        _echo(f"error: {exc}")
        sys.exit(2)
