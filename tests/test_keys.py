"""tuner's vocabulary is defined once (tuner/core/keys.py): no module spells a tuner:* key
itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tuner.core.keys import ATTR, OUTCOMES, Outcome

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


def test_keys_and_outcomes_are_distinct():
    keys = [v for k, v in vars(ATTR).items() if k.isupper()]
    assert len(keys) == len(set(keys))
    assert OUTCOMES == ("complete", "pruned", "diverged", "failed", "interrupted")
    assert Outcome("failed") is Outcome.FAILED and Outcome.LOST.value not in OUTCOMES
