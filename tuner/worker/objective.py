"""Loading the user's objective function named in the study file.

The study file names the objective as ``"file.py:function"`` (a path relative to the YAML file's
directory, or absolute) or ``"pkg.module:function"`` (an importable module). Either way the result
is the plain callable; every way this can go wrong is an :class:`~tuner.core.errors.ObjectiveError`
that says what was looked for and where.

Example::

    >>> fn = load_objective("digits.py:objective", base_dir=Path("studies"))  # doctest: +SKIP
    >>> fn = load_objective("math:sqrt", base_dir=Path("."))
    >>> fn(4.0)
    2.0
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

from tuner.config.objective_spec import is_file_spec, split_objective_spec
from tuner.core.errors import ObjectiveError
from tuner.core.redact import redact

__all__ = ["load_objective"]


def load_objective(spec: str, *, base_dir: Path) -> Callable[..., Any]:
    """Import and return the objective callable named by ``spec``.

    ``"file.py:function"`` is resolved against ``base_dir`` (the study file's directory) and
    imported under a module name unique to its path; the file's directory is on ``sys.path``
    while it is imported, so ``import helpers`` of a sibling file works. ``"pkg.module:function"``
    is imported normally, with ``base_dir`` and the working directory appended to ``sys.path``
    during the import so that a package next to the study file is found.

    >>> load_objective("math:sqrt", base_dir=Path(".")).__name__
    'sqrt'
    """
    target, attr = split_objective_spec(spec)
    if is_file_spec(target):
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        path = path.resolve()
        module = _import_file(path, spec=spec, base_dir=Path(base_dir))
        where = str(path)
    else:
        module = _import_module(target, spec=spec, base_dir=Path(base_dir))
        where = f"module {target!r}"
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = where if i == 0 else f"{where}: {'.'.join(attr.split('.')[:i])}"
            raise ObjectiveError(_not_found(part, obj, owner=owner, module=module))
        obj = getattr(obj, part)
    if not callable(obj):
        raise ObjectiveError(
            f"objective: {spec!r} must be callable (a function taking a tuner.Trial), "
            f"but got {_short(obj)} ({type(obj).__name__})"
        )
    return obj


def _import_file(path: Path, *, spec: str, base_dir: Path) -> ModuleType:
    if not path.is_file():
        problem = "is a directory, not a file" if path.exists() else "file not found"
        raise ObjectiveError(
            f"objective: {problem}: {path} (from {spec!r}, relative to {base_dir.resolve()})"
        )
    # A stable name per path: the same file gets the same module name in every worker process,
    # and two objectives called "objective.py" in different folders never collide.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"tuner_objective_{stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ObjectiveError(f"objective: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before executing, as a normal import does: dataclasses and pickle look it up.
    sys.modules[name] = module
    try:
        with _on_sys_path(str(path.parent), first=True):
            module_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if not isinstance(exc, Exception):
            raise
        raise ObjectiveError(
            f"objective: importing {path} raised {_describe(exc, str(path))}"
        ) from exc
    return module


def _import_module(target: str, *, spec: str, base_dir: Path) -> ModuleType:
    try:
        with _on_sys_path(str(base_dir.resolve()), first=False), _on_sys_path("", first=False):
            return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (target == missing or target.startswith(missing + ".")):
            raise ObjectiveError(
                f"objective: module {missing!r} not found (from {spec!r}); install it, put it "
                f"on PYTHONPATH, or name a file as 'file.py:function'"
            ) from exc
        raise ObjectiveError(
            f"objective: importing module {target!r} raised {_describe(exc, None)}"
        ) from exc
    except Exception as exc:
        raise ObjectiveError(
            f"objective: importing module {target!r} raised {_describe(exc, None)}"
        ) from exc


@contextmanager
def _on_sys_path(entry: str, *, first: bool) -> Iterator[None]:
    if entry in sys.path:
        yield
        return
    if first:
        sys.path.insert(0, entry)
    else:
        sys.path.append(entry)
    try:
        yield
    finally:
        with suppress(ValueError):
            sys.path.remove(entry)


def _describe(exc: Exception, filename: str | None) -> str:
    """``Type: message`` plus the line in the user's file where it happened."""
    text = f"{type(exc).__name__}: {exc}"
    line = None
    if isinstance(exc, SyntaxError):
        # str() of a SyntaxError already carries "(file, line n)"; keep the message alone.
        text, line = f"{type(exc).__name__}: {exc.msg}", exc.lineno
    elif filename is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        line = frames[-1].lineno if frames else None
    if line is not None:
        text += f" (line {line})"
    return redact(text)


def _not_found(name: str, owner_obj: Any, *, owner: str, module: ModuleType) -> str:
    if owner_obj is module:
        defined = sorted(
            key
            for key, value in vars(module).items()
            if callable(value)
            and not key.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
        )
    else:
        defined = sorted(k for k in dir(owner_obj) if not k.startswith("_"))
    message = f"objective: {owner} has no attribute {name!r}"
    close = difflib.get_close_matches(name, defined, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    listing = ", ".join(defined) if defined else "none"
    return f"{message} (callables defined there: {listing})"


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."
