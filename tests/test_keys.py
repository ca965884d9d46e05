"""tuner's vocabulary is defined once (tuner/core/keys.py): no module spells a tuner:* key or
a tuner.* MLflow tag itself, and none gives a key a second name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tuner.core.keys import ATTR, EVENT, OUTCOMES, TAG, Outcome

PACKAGE = Path(__file__).resolve().parents[1] / "tuner"
KEY = re.compile(r"^tuner:[a-z_]+$")


def test_every_tuner_key_is_spelled_only_in_keys_py():
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and KEY.match(node.value)
            ):
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value}")
    assert not spelled, "use tuner.core.keys.ATTR instead:\n" + "\n".join(spelled)


def _constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_every_mlflow_tag_is_spelled_only_in_keys_py():
    tags = {v for k, v in vars(TAG).items() if k.isupper()}
    spelled = [
        f"{path.relative_to(PACKAGE)}:{line}: {value}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "keys.py"
        for line, value in _constants(path)
        if value in tags
    ]
    assert not spelled, "use tuner.core.keys.TAG instead:\n" + "\n".join(spelled)


def test_no_module_gives_a_key_a_second_name():
    # ``REPLICATE_ATTR = ATTR.REPLICATE``: a second name for one key, which the next reader
    # has to look up; modules use ATTR.REPLICATE itself.
    aliases = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id in ("ATTR", "TAG", "EVENT")
            ):
                aliases.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not aliases, "import the key from tuner.core.keys instead:\n" + "\n".join(aliases)


def test_keys_and_outcomes_are_distinct():
    for names in (ATTR, TAG, EVENT):
        keys = [v for k, v in vars(names).items() if k.isupper()]
        assert len(keys) == len(set(keys)), names
    assert OUTCOMES == ("complete", "pruned", "diverged", "failed", "interrupted")
    assert Outcome("failed") is Outcome.FAILED and Outcome.LOST.value not in OUTCOMES
