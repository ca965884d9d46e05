"""Loading the objective named in a study file: both forms, and a clear message for each failure."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuner.config.objective_spec import split_objective_spec
from tuner.core.errors import ConfigError, ObjectiveError
from tuner.worker.objective import load_objective


@pytest.fixture
def tag() -> str:
    """A unique suffix, so module names never collide with another test's."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True)
def _restore_import_state() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    assert sys.path == path, "loading an objective must leave sys.path as it was"
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def failure(spec: str, base_dir: Path) -> str:
    with pytest.raises(ObjectiveError) as info:
        load_objective(spec, base_dir=base_dir)
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Success


def test_file_relative_to_the_study_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    studies = tmp_path / "studies"
    write(studies / "obj.py", "def objective(trial):\n    return 42.0\n")
    monkeypatch.chdir(tmp_path)  # obj.py is not in the cwd
    fn = load_objective("obj.py:objective", base_dir=studies)
    assert fn(None) == 42.0


def test_subdirectory_and_absolute_path(tmp_path: Path) -> None:
    path = write(tmp_path / "sub" / "obj.py", "def objective(trial):\n    return 1.0\n")
    assert load_objective("sub/obj.py:objective", base_dir=tmp_path)(None) == 1.0
    assert load_objective(f"{path}:objective", base_dir=tmp_path / "elsewhere")(None) == 1.0


def test_sibling_import(tmp_path: Path, tag: str) -> None:
    write(tmp_path / f"helpers_{tag}.py", "SCALE = 7\n")
    write(
        tmp_path / "obj.py",
        f"from helpers_{tag} import SCALE\n\ndef objective(trial):\n    return SCALE * 2\n",
    )
    assert load_objective("obj.py:objective", base_dir=tmp_path)(None) == 14


def test_same_file_name_in_two_folders_does_not_collide(tmp_path: Path) -> None:
    write(tmp_path / "a" / "objective.py", "def objective(trial):\n    return 'a'\n")
    write(tmp_path / "b" / "objective.py", "def objective(trial):\n    return 'b'\n")
    fa = load_objective("objective.py:objective", base_dir=tmp_path / "a")
    fb = load_objective("objective.py:objective", base_dir=tmp_path / "b")
    assert (fa(None), fb(None)) == ("a", "b")
    assert fa.__module__ != fb.__module__
    assert sys.modules[fa.__module__].__file__ == str((tmp_path / "a" / "objective.py").resolve())


def test_module_form_on_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
    package = tmp_path / "site" / f"pkg_{tag}"
    write(package / "__init__.py", "")
    write(package / "train.py", "def objective(trial):\n    return 'pkg'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fn = load_objective(f"pkg_{tag}.train:objective", base_dir=tmp_path)
    assert fn(None) == "pkg"
    monkeypatch.undo()


def test_module_form_next_to_the_study_file(tmp_path: Path, tag: str) -> None:
    write(tmp_path / f"pkg_{tag}" / "__init__.py", "")
    write(tmp_path / f"pkg_{tag}" / "train.py", "def objective(trial):\n    return 3\n")
    assert load_objective(f"pkg_{tag}.train:objective", base_dir=tmp_path)(None) == 3


def test_installed_module_and_nested_attribute(tmp_path: Path) -> None:
    assert load_objective("math:sqrt", base_dir=tmp_path)(9.0) == 3.0
    write(
        tmp_path / "obj.py",
        "class Holder:\n    @staticmethod\n    def run(trial):\n        return 5\n",
    )
    assert load_objective("obj.py:Holder.run", base_dir=tmp_path)(None) == 5


def test_split_objective_spec() -> None:
    assert split_objective_spec("digits.py:objective") == ("digits.py", "objective")
    assert split_objective_spec("pkg.mod:fn") == ("pkg.mod", "fn")
    assert split_objective_spec(r"C:\studies\obj.py:fn") == (r"C:\studies\obj.py", "fn")


# --------------------------------------------------------------------------------------------
# Failures, each with the message the user sees


@pytest.mark.parametrize("spec", ["obj.py", "obj.py:", ":objective", "pkg mod:fn", "obj.py:1fn"])
def test_bad_spec(tmp_path: Path, spec: str) -> None:
    message = failure(spec, tmp_path)
    assert message.startswith("objective: ")
    assert "must be 'file.py:function' or 'pkg.module:function'" in message
    assert f"but got {spec!r}" in message


def test_missing_file_shows_the_resolved_path(tmp_path: Path) -> None:
    message = failure("nope.py:objective", tmp_path / "studies")
    resolved = (tmp_path / "studies" / "nope.py").resolve()
    assert message.startswith(f"objective: file not found: {resolved} ")
    assert "from 'nope.py:objective'" in message


def test_module_not_found(tmp_path: Path, tag: str) -> None:
    message = failure(f"no_such_{tag}.train:objective", tmp_path)
    assert message.startswith(f"objective: module 'no_such_{tag}' not found")
    assert "name a file as 'file.py:function'" in message


def test_missing_dependency_inside_a_module_is_not_blamed_on_the_module(
    tmp_path: Path, tag: str
) -> None:
    write(tmp_path / f"mod_{tag}.py", f"import dep_{tag}\n\ndef objective(trial):\n    pass\n")
    message = failure(f"mod_{tag}:objective", tmp_path)
    assert message == (
        f"objective: importing module 'mod_{tag}' raised ModuleNotFoundError: "
        f"No module named 'dep_{tag}'"
    )


def test_exception_while_importing_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "obj.py", "import math\n\nRATE = 1 / 0\n")
    before = {m for m in sys.modules if m.startswith("tuner_objective_obj_")}
    message = failure("obj.py:objective", tmp_path)
    raised = "raised ZeroDivisionError: division by zero (line 3)"
    assert message == f"objective: importing {path.resolve()} {raised}"
    # The half-imported module is not left behind (other tests' objectives may be).
    assert {m for m in sys.modules if m.startswith("tuner_objective_obj_")} == before


def test_syntax_error_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "obj.py", "def objective(trial):\n    return (\n\nx = 1\n")
    message = failure("obj.py:objective", tmp_path)
    assert message.startswith(f"objective: importing {path.resolve()} raised SyntaxError: ")
    assert message.endswith("(line 2)")


def test_function_not_found_lists_the_callables_defined_there(tmp_path: Path) -> None:
    path = write(
        tmp_path / "obj.py",
        "from math import sqrt\n\nRATE = 0.1\n\n"
        "def objective(trial):\n    pass\n\n"
        "def _private():\n    pass\n\n"
        "class Model:\n    pass\n",
    )
    message = failure("obj.py:objectve", tmp_path)
    assert message == (
        f"objective: {path.resolve()} has no attribute 'objectve'; did you mean 'objective'? "
        "(callables defined there: Model, objective)"
    )


def test_function_not_found_in_a_module(tmp_path: Path) -> None:
    message = failure("math:sqrtt", tmp_path)
    assert message.startswith("objective: module 'math' has no attribute 'sqrtt'; did you mean")


def test_not_callable(tmp_path: Path) -> None:
    write(tmp_path / "obj.py", "objective = 3\n")
    message = failure("obj.py:objective", tmp_path)
    assert message == (
        "objective: 'obj.py:objective' must be callable (a function taking a tuner.Trial), "
        "but got 3 (int)"
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "obj.py").mkdir()
    message = failure("obj.py:objective", tmp_path)
    assert message.startswith(f"objective: is a directory, not a file: {tmp_path / 'obj.py'}")
