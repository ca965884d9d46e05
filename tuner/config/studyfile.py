"""The study file (``study.yaml``): typed, validated once, with every default filled in.

:func:`load_study_file` reads the YAML, expands ``${ENV_VAR}`` in string values, and validates
every section into a frozen :class:`StudyFile`. Anything wrong is one
:class:`~tuner.core.errors.ConfigError` listing each problem as ``field.path: rule, but got value``;
nothing is written anywhere before the whole file validates. Passwords in URLs never appear in a
message.

Samplers and pruners come from the registries :data:`SAMPLERS` and :data:`PRUNERS`;
:func:`make_sampler` and :func:`make_pruner` build the Optuna objects from the typed sections.

Example::

    >>> study = load_study_file("studies/digits.yaml")  # doctest: +SKIP
    >>> study.budget.trials, study.sampler.name, study.mlflow.experiment  # doctest: +SKIP
    (60, 'tpe', 'digits-cnn')
    >>> sampler = make_sampler(study.sampler)  # doctest: +SKIP
    >>> pruner = make_pruner(study.pruner, max_resource=study.budget.epochs)  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NoReturn

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from tuner.config.objective_spec import split_objective_spec
from tuner.config.space import SearchSpace, parse_search
from tuner.core.durations import parse_duration
from tuner.core.errors import ConfigError, ObjectiveError
from tuner.core.redact import redact
from tuner.sampling.registry import (
    PRUNERS,
    SAMPLERS,
    Plugin,
    make_pruner,
    make_sampler,
    show_value,
)

__all__ = [
    "Budget",
    "CompareConfig",
    "MlflowConfig",
    "PrunerConfig",
    "SamplerConfig",
    "StudyFile",
    "WorkersConfig",
    "load_study_file",
    "with_overrides",
]


class _FieldError(ValueError):
    """A validator's complete message: ``rule, but got value`` for the field being validated.

    ``sub`` extends the field path (``[1]`` for a list item); ``absolute`` marks a message that
    already starts with its own field path (errors from ``tuner.config.space``).
    """

    def __init__(self, message: str, *, sub: str = "", absolute: bool = False) -> None:
        super().__init__(message)
        self.sub = sub
        self.absolute = absolute


def _known_name(registry: Mapping[str, Plugin], name: Any) -> str:
    if isinstance(name, str) and name in registry:
        return name
    message = f"must be one of {', '.join(sorted(registry))}, but got {name!r}"
    close = difflib.get_close_matches(str(name), list(registry), n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    raise _FieldError(message)


def _split_options(data: Any, default: str) -> Any:
    """``{name: tpe, seed: 0}`` -> ``{name: tpe, options: {seed: 0}}``; ``"tpe"`` -> name only."""
    if isinstance(data, str):
        return {"name": data}
    if isinstance(data, Mapping) and not (set(data) <= {"name", "options"} and "options" in data):
        options = {k: v for k, v in data.items() if k != "name"}
        return {"name": data.get("name", default), "options": options}
    return data


# --------------------------------------------------------------------------------------------
# Sections


def _not_bool(value: Any) -> Any:
    # YAML reads `yes`/`true` as booleans, which pydantic would quietly turn into 1.
    if isinstance(value, bool):
        raise _FieldError(f"must be an integer, but got {value!r}")
    return value


_Int = Annotated[int, BeforeValidator(_not_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Budget(_Section):
    """``budget:`` how much the study may spend.

    ``trials`` counts finished trials across all workers (complete, pruned and diverged);
    ``timeout`` is an optional wall-clock bound in seconds, written ``90s``, ``30m``, ``2h``,
    ``1h30m`` or a plain number (it also bounds running trials: past it they are stopped and
    queued again); ``trial_timeout`` bounds one trial the same way (a trial running longer is
    stopped and recorded failed, timed out); ``epochs`` is each trial's maximum resource
    (``trial.max_epochs`` and the pruner's max resource); the study stops once ``max_failures``
    trials have failed, so a crashing objective does not spin forever.

    >>> Budget(timeout="1h30m").timeout
    5400.0
    """

    trials: _Int = Field(20, ge=1)
    timeout: float | None = None
    epochs: _Int = Field(10, ge=1)
    max_failures: _Int = Field(10, ge=1)
    trial_timeout: float | None = None

    @field_validator("timeout", "trial_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _FieldError(str(exc)) from None


class _PluginSection(_Section):
    """A section naming a registry entry; every other key is an option for its class."""

    registry: ClassVar[Mapping[str, Plugin]]
    default: ClassVar[str]
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_options(cls, data: Any) -> Any:
        return _split_options(data, cls.default)

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, value: Any) -> str:
        return _known_name(cls.registry, value)


class SamplerConfig(_PluginSection):
    """``sampler:`` a name from :data:`SAMPLERS`; every other key goes to the Optuna class.

    >>> SamplerConfig.model_validate({"name": "tpe", "seed": 0}).options
    {'seed': 0}
    """

    registry: ClassVar[Mapping[str, Plugin]] = SAMPLERS
    default: ClassVar[str] = "tpe"
    name: str = "tpe"


class PrunerConfig(_PluginSection):
    """``pruner:`` a name from :data:`PRUNERS`; every other key goes to the Optuna class.

    >>> PrunerConfig.model_validate({"name": "median", "n_startup_trials": 3}).options
    {'n_startup_trials': 3}
    """

    registry: ClassVar[Mapping[str, Plugin]] = PRUNERS
    default: ClassVar[str] = "schedule_median"
    name: str = "schedule_median"


class MlflowConfig(_Section):
    """``mlflow:`` where trials are logged. ``tracking_uri: off`` disables MLflow (None here).

    ``experiment`` defaults to the study name when the section is part of a :class:`StudyFile`.
    A relative ``sqlite:///mlflow.db`` is relative to the current working directory.

    >>> MlflowConfig(tracking_uri="off").tracking_uri is None
    True
    """

    tracking_uri: str | None = "sqlite:///mlflow.db"
    experiment: str | None = None

    @field_validator("tracking_uri", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False.
        if value is None or value is False:
            return None
        if isinstance(value, str) and value.strip().lower() in ("off", "none", "false", ""):
            return None
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            yield key, _redact(value) if key == "tracking_uri" and value else value


class CompareConfig(_Section):
    """``compare:`` the answer to "which optimizer?" (docs/answer.md, :mod:`tuner.results.compare`).

    After the search, the best configuration of each of the top ``finalists`` optimizers runs
    again with ``seeds`` fresh seeds; ``seeds: 0`` turns this off. An interval needs at least
    two runs, so ``seeds`` is 0 or 2 and more.

    >>> CompareConfig().seeds, CompareConfig(seeds=0).seeds
    (3, 0)
    """

    finalists: _Int = Field(3, ge=1)
    seeds: _Int = Field(3, ge=0)

    @field_validator("seeds")
    @classmethod
    def _two_or_none(cls, value: int) -> int:
        if value == 1:
            raise _FieldError(
                "must be 0 (no replicates) or at least 2 (an interval needs two runs), but got 1"
            )
        return value


MAX_PER_DEVICE = 64
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_DEVICE_RULE = "must be 'cpu', 'cuda', 'cuda:<index>' or 'mps'"


class WorkersConfig(_Section):
    """``workers:`` where trials run: ``devices × per_device`` worker processes on this machine
    (``backend: local``), or ``count`` Ray actors on a Ray cluster (``backend: ray``,
    :mod:`tuner.launch.ray_backend`).

    ``devices: auto`` means every visible CUDA device, else the CPU; a single device or a list
    (``[cuda:0, cuda:1]``) names them. With ``backend: ray``, ``address`` is what
    ``ray.init(address=...)`` takes (``auto``: ``RAY_ADDRESS``, else this machine's cluster,
    else a new local one) and ``count`` defaults to the cluster's GPUs × ``per_device``.

    >>> WorkersConfig(devices=["cuda:0", "cpu"]).devices
    ('cuda:0', 'cpu')
    >>> WorkersConfig(backend="ray", count=8).address
    'auto'
    """

    devices: Literal["auto"] | tuple[str, ...] = "auto"
    # Each worker is a process with its own copy of the model and data: past a few dozen per
    # device they only compete for the same cores and memory.
    per_device: _Int = Field(1, ge=1, le=MAX_PER_DEVICE)
    # A worker records a heartbeat every `heartbeat_interval` seconds while a trial runs; a
    # trial silent for `grace_period` seconds is failed (its worker died) and queued again.
    # Past an hour of silence nobody is watching: a lost trial would wait that long to rerun.
    heartbeat_interval: _Int = Field(10, ge=1, le=600)
    grace_period: _Int = Field(45, ge=2, le=3600)
    backend: Literal["local", "ray"] = "local"
    address: str = Field("auto", min_length=1)
    count: _Int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> WorkersConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise _FieldError(
                "`grace_period > heartbeat_interval` must hold, but got "
                f"(heartbeat_interval={self.heartbeat_interval}, grace_period={self.grace_period})"
            )
        return self

    @model_validator(mode="after")
    def _backend_fields(self) -> WorkersConfig:
        if self.backend == "local":
            for key in ("address", "count"):
                if key in self.model_fields_set:
                    raise _FieldError(
                        "is only used with `backend: ray` (local workers are devices x "
                        f"per_device processes on this machine), but got {getattr(self, key)!r}",
                        sub=f".{key}",
                    )
        elif self.devices != "auto":
            raise _FieldError(
                "must be auto with `backend: ray` (Ray gives each worker a GPU, or one CPU on a "
                f"cluster without GPUs), but got {list(self.devices)!r}",
                sub=".devices",
            )
        return self

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise _FieldError(f"must be 'auto' or a non-empty list of devices, but got {value!r}")
        for i, device in enumerate(value):
            if not isinstance(device, str) or not _DEVICE.match(device):
                raise _FieldError(f"{_DEVICE_RULE}, but got {device!r}", sub=f"[{i}]")
        return tuple(value)


class StudyFile(_Section):
    """A validated study file (docs/study-file.md), every default filled in.

    ``search`` is the :class:`tuner.config.space.SearchSpace` built by
    ``tuner.config.space.parse_search``
    (omitted in the file: the whole catalog with its default ranges). ``storage`` is any
    SQLAlchemy URL Optuna accepts; as in SQLAlchemy, a relative SQLite path such as
    ``sqlite:///tuner.db`` is relative to the current working directory, not to the YAML file.
    ``path`` is the YAML file (absolute) and ``raw_text`` its text as written, with ``${VAR}``
    not expanded, so it can be logged without leaking secrets.

    >>> StudyFile(name="demo", objective="demo.py:objective").budget.trials  # doctest: +SKIP
    20
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    objective: str
    direction: Literal["minimize", "maximize"] = "minimize"
    metric: str = Field("value", min_length=1)
    budget: Budget = Field(default_factory=Budget)
    storage: str = Field("sqlite:///tuner.db", validate_default=True)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    search: Any = Field(None, validate_default=True)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    params: dict[str, Any] = Field(default_factory=dict)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    path: Path | None = None
    raw_text: str = Field("", repr=False)

    @property
    def base_dir(self) -> Path:
        """The directory a ``file.py:function`` objective is relative to: the YAML's folder."""
        return self.path.parent if self.path is not None else Path.cwd()

    @model_validator(mode="before")
    @classmethod
    def _fill_sections(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for key in ("budget", "sampler", "pruner", "compare", "mlflow", "workers", "params"):
            # `budget:` with nothing under it is YAML null: the section's defaults.
            if key in data and data[key] is None:
                del data[key]
        if data.get("mlflow") is False or (
            isinstance(data.get("mlflow"), str) and data["mlflow"].strip().lower() == "off"
        ):
            data["mlflow"] = {"tracking_uri": None}
        mlflow = data.get("mlflow", {})
        name = data.get("name")
        if isinstance(mlflow, Mapping) and "experiment" not in mlflow and isinstance(name, str):
            data["mlflow"] = {**mlflow, "experiment": name}
        elif isinstance(mlflow, MlflowConfig) and mlflow.experiment is None:
            data["mlflow"] = mlflow.model_copy(update={"experiment": name})
        return data

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Any:
        try:
            split_objective_spec(value)
        except ObjectiveError as exc:
            raise _FieldError(str(exc).removeprefix("objective: ")) from None
        return value

    @field_validator("storage", mode="before")
    @classmethod
    def _storage(cls, value: Any) -> Any:
        if isinstance(value, str):
            _check_url(value)
            value = _absolute_sqlite(value)
        return value

    @field_validator("search", mode="before")
    @classmethod
    def _search(cls, value: Any) -> Any:

        if isinstance(value, SearchSpace):
            return value
        try:
            return parse_search(value, path="search")
        except ConfigError as exc:
            raise _FieldError(str(exc), absolute=True) from None

    @model_validator(mode="after")
    def _build_plugins(self) -> StudyFile:
        # Build once to check option names and values now, before anything touches a database.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                make_sampler(self.sampler)
                make_pruner(self.pruner, max_resource=self.budget.epochs)
            except ConfigError as exc:
                text = str(exc) + (f" ({exc.hint})" if exc.hint else "")
                raise _FieldError(text, absolute=True) from None
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            yield key, _redact(value) if key == "storage" else value


def _check_url(url: str) -> None:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise _FieldError(
            "must be an SQLAlchemy URL such as sqlite:///tuner.db or "
            f"postgresql+psycopg://user:password@host/db, but got {url!r}"
        ) from None
    try:
        parsed.get_dialect()  # imports SQLAlchemy's dialect module only, not the driver
    except NoSuchModuleError:
        hint = (
            " (did you mean postgresql+psycopg?)"
            if parsed.drivername.startswith("postgres")
            else ""
        )
        raise _FieldError(
            f"unknown database dialect {parsed.drivername!r}{hint}, but got {url!r}"
        ) from None


def _absolute_sqlite(url: str) -> str:
    """An SQLite URL with its file made absolute (against the working directory, as SQLAlchemy
    reads it), once at load: every worker, the budget lock file and an objective that calls
    ``os.chdir`` then agree on one file. An in-memory database is refused: each worker process
    would get its own, and the trials would be lost with it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database or ""
    memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if memory or parsed.query.get("mode") == "memory":
        raise _FieldError(
            "must be a database that outlives the process (an SQLite file such as "
            "sqlite:///tuner.db, or PostgreSQL): each worker of an in-memory database gets its "
            f"own, and every trial is lost when it exits, but got {url!r}"
        )
    if database.startswith("file:"):
        return url  # a URI filename: SQLite resolves it; left as written
    path = os.path.abspath(os.path.expanduser(database))
    return parsed.set(database=path).render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------------
# Loading


def load_study_file(path: str | os.PathLike[str]) -> StudyFile:
    """Read and validate a study file; raise one ConfigError listing every problem.

    ``${ENV_VAR}`` in any string value is replaced by the variable's value (``$${X}`` keeps a
    literal ``${X}``); the values are strings, which numeric fields parse.

    >>> study = load_study_file("studies/quadratic.yaml")  # doctest: +SKIP
    >>> study.path.is_absolute(), "${" in study.raw_text  # doctest: +SKIP
    (True, False)
    """
    shown = str(path)
    file = Path(path).expanduser()
    try:
        raw_text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: study file not found ({file.resolve()})") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read the study file ({exc})") from None

    try:
        data = yaml.load(raw_text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_redact(f"{shown}:{_yaml_problem(exc)}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_redact(f"{shown}: malformed YAML: {exc}")) from None

    if data is None:
        raise ConfigError(
            f"{shown}: must be a mapping with at least `name` and `objective`, "
            "but the file is empty"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{shown}: the top level must be a mapping of sections (name:, objective:, ...), "
            f"but got a {type(data).__name__}"
        )
    for reserved in ("path", "raw_text"):
        # Fields the loader fills; a study file cannot set them.
        if reserved in data:
            raise ConfigError(f"{shown}: {_unknown_key(reserved, StudyFile)}")

    substituted: dict[str, str] = {}
    missing: list[str] = []
    data = _expand(data, "", os.environ, substituted, missing)
    if missing:
        _raise(shown, missing, substituted)

    try:
        return StudyFile.model_validate({**data, "path": file.resolve(), "raw_text": raw_text})
    except ValidationError as exc:
        _raise(shown, [_format_error(err) for err in exc.errors()], substituted)


def with_overrides(
    study_file: StudyFile, *, trials: int | None = None, timeout: str | float | None = None
) -> StudyFile:
    """``study_file`` with ``budget.trials`` / ``budget.timeout`` replaced (CLI flags).

    Errors name the flag: ``--timeout: must be a duration like 90s, ..., but got '5 minutes'``.

    >>> with_overrides(study, trials=5, timeout="10m").budget.timeout  # doctest: +SKIP
    600.0
    """
    update: dict[str, Any] = {}
    if trials is not None:
        update["trials"] = trials
    if timeout is not None:
        update["timeout"] = timeout
    if not update:
        return study_file
    try:
        budget = Budget.model_validate({**study_file.budget.model_dump(), **update})
    except ValidationError as exc:
        problems = [f"--{_format_error(err)}" for err in exc.errors()]
        raise ConfigError("; ".join(problems)) from None
    return study_file.model_copy(update={"budget": budget})


def _raise(shown: str, problems: list[str], substituted: dict[str, str]) -> NoReturn:
    if len(problems) == 1:
        message = f"{shown}: {problems[0]}"
    else:
        message = f"{shown}: {len(problems)} problems\n" + "\n".join(f"  {p}" for p in problems)
    # The value of an expanded variable may be a secret: show the ${NAME} the file wrote instead.
    for name, value in sorted(substituted.items(), key=lambda kv: -len(kv[1])):
        if len(value) >= 4:
            message = message.replace(value, f"${{{name}}}")
    raise ConfigError(_redact(message))


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:
            continue  # unhashable keys: construct_mapping reports them
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    # Built from the parts, not str(exc): that quotes the offending line, which may hold a secret.
    mark = exc.problem_mark or exc.context_mark
    where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else " "
    text = f"{where}malformed YAML: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark is not None:
        text += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return text


_ENV = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(
    node: Any,
    path: str,
    environ: Mapping[str, str],
    substituted: dict[str, str],
    missing: list[str],
) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            escaped, name = match.groups()
            if escaped:
                return "${" + name + "}"
            if name not in environ:
                missing.append(
                    f"{path or 'study file'}: environment variable {name} must be set, "
                    f"but it is not (the file writes ${{{name}}})"
                )
                return match.group(0)
            substituted[name] = environ[name]
            return environ[name]

        return _ENV.sub(replace, node)
    if isinstance(node, dict):
        return {
            key: _expand(
                value, f"{path}.{key}" if path else str(key), environ, substituted, missing
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [
            _expand(value, f"{path}[{i}]", environ, substituted, missing)
            for i, value in enumerate(node)
        ]
    return node


# --------------------------------------------------------------------------------------------
# Error messages


_RULES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "string_too_short": "must not be empty",
}


def _format_error(err: Mapping[str, Any]) -> str:
    """One pydantic error as ``field.path: rule, but got value``."""
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    path = _loc_path(loc)
    value = err.get("input")

    error = ctx.get("error")
    if kind == "value_error" and isinstance(error, _FieldError):
        if error.absolute:
            return str(error)
        path += error.sub
        return f"{path}: {error}" if path else str(error)
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        text = _unknown_key(loc[-1], owner)
        return f"{_loc_path(loc[:-1])}: {text}" if len(loc) > 1 else text
    if kind == "missing":
        return f"{path}: is required, but the study file does not set it"
    if kind == "literal_error":
        rule = f"must be {ctx.get('expected')}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">"}.get(kind) or (
            "<=" if kind == "less_than_equal" else "<"
        )
        bound = next(iter(ctx.values()), "?")
        rule = f"must be {op} {bound}"
    else:
        rule = _RULES.get(kind) or str(err.get("msg", kind))
    return f"{path}: {rule}, but got {show_value(value)}"


def _unknown_key(key: Any, owner: type[BaseModel] | None) -> str:
    known = [k for k in (owner.model_fields if owner else {}) if k not in ("path", "raw_text")]
    text = f"unknown key {key!r}"
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        text += f", did you mean {close[0]!r}?"
    if known:
        text += f" (known: {', '.join(known)})"
    return text


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = StudyFile
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _loc_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "options" and path in ("sampler", "pruner"):
            continue  # the file writes sampler options beside `name`, not under `options`
        else:
            path += f".{part}" if path else str(part)
    return path


def _redact(text: str) -> str:
    """Hide URL passwords (:func:`tuner.core.redact.redact`, also for URLs too broken to parse)."""
    return redact(str(text))
