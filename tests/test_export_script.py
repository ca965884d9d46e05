"""`tuner best --format python`: a complete script that runs with torch alone (docs/answer.md).

Every optimizer and every schedule of the catalog is rendered, run in a separate Python where
`import tuner` fails, and checked against `build_optimizer`: the same learning rates and the
same parameter updates, to the bit, for 50 steps.
"""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuner.catalog.export import build_optimizer, load_optimizer_config
from tuner.catalog.optim import OPTIMIZERS
from tuner.catalog.render import render_torch_script
from tuner.catalog.schedules import SCHEDULES

TESTS = Path(__file__).parent
STEPS = 50
WARMUPS = (None, {"fraction": 0.1}, {"steps": 4, "begin_lr": 1e-4})

# Runs each script as `python script.py` would, recording every optimizer step through torch's
# global step hooks: the lrs and gradients the step sees, the parameters before and after it.
HARNESS = """\
import runpy
import sys

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

try:
    import tuner  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("tuner is importable here: the test must run without it")

results = {}
for path in sys.argv[2:]:
    steps = []

    def pre(opt, args, kwargs, steps=steps):
        params = [p for g in opt.param_groups for p in g["params"]]
        steps.append({
            "lrs": [g["lr"] for g in opt.param_groups],
            "before": [p.detach().clone() for p in params],
            "grads": [p.grad.clone() for p in params],
        })

    def post(opt, args, kwargs, steps=steps):
        steps[-1]["after"] = [p.detach().clone() for g in opt.param_groups for p in g["params"]]

    hooks = [
        register_optimizer_step_pre_hook(pre),
        register_optimizer_step_post_hook(post),
    ]
    runpy.run_path(path, run_name="__main__")
    for hook in hooks:
        hook.remove()
    results[path] = steps
torch.save(results, sys.argv[1])
"""


@pytest.fixture(autouse=True)
def _custom_module_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def _configs() -> list[dict]:
    configs = []
    for i, (optimizer, schedule) in enumerate(itertools.product(OPTIMIZERS, SCHEDULES)):
        sched = {"name": "custom", "function": "custom_lr:halving"} if schedule == "custom" else {
            "name": schedule
        }  # fmt: skip
        doc = {"optimizer": optimizer, "schedule": sched, "warmup": WARMUPS[i % len(WARMUPS)]}
        if optimizer == "adadelta":
            doc["lr"] = 0.5
        configs.append(doc)
    return configs


def _unused_names(code: str) -> set[str]:
    """Module-level names assigned or imported and never read (pyflakes skips module scope)."""
    tree = ast.parse(code)
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    read |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name)}  # fmt: skip
    return bound - read


def test_every_optimizer_and_schedule_runs_without_tuner_and_matches_build_optimizer(
    tmp_path: Path,
) -> None:
    configs = [load_optimizer_config(doc) for doc in _configs()]
    assert {c.optimizer for c in configs} == set(OPTIMIZERS)
    assert {c.schedule["name"] for c in configs} == set(SCHEDULES)
    blocked = tmp_path / "blocked" / "tuner"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('tuner is not installed here')\n")
    scripts = []
    for i, config in enumerate(configs):
        code = render_torch_script(config, total_steps=STEPS, header=["the answer goes here"])
        assert "tuner" not in code.split("\n", 1)[1].replace("tuner/", "")
        assert f"total_steps = {STEPS}" in code
        assert not _unused_names(code), (config, _unused_names(code))
        path = tmp_path / f"script_{i}.py"
        path.write_text(code)
        scripts.append(path)
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    out = tmp_path / "records.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked.parent), str(TESTS)])}
    proc = subprocess.run(
        [sys.executable, str(harness), str(out), *map(str, scripts)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final loss") == len(scripts)
    records = torch.load(out)

    for config, path in zip(configs, scripts, strict=True):
        steps = records[str(path)]
        assert len(steps) == STEPS, config
        params = [p.clone().requires_grad_(True) for p in steps[0]["before"]]
        optimizer, scheduler = build_optimizer(params, config, total_steps=STEPS)
        for k, step in enumerate(steps):
            assert [g["lr"] for g in optimizer.param_groups] == step["lrs"], (config, k)
            for p, grad in zip(params, step["grads"], strict=True):
                p.grad = grad
            optimizer.step()
            scheduler.step()
            for p, after in zip(params, step["after"], strict=True):
                assert torch.equal(p.detach(), after), (config, k)


def test_unused_names_are_caught() -> None:
    assert _unused_names("import math\nx = 1\ny = x\n") == {"math", "y"}


@pytest.mark.parametrize("optimizer", ["yogi", "sgd"])
def test_script_prints_its_header_as_comments(optimizer: str) -> None:
    config = load_optimizer_config({"optimizer": optimizer})
    code = render_torch_script(config, total_steps=7, header=["adamw: 0.98 ± 0.01 over 3 seeds"])
    assert code.splitlines()[1] == "# adamw: 0.98 ± 0.01 over 3 seeds"
    assert "total_steps = 7" in code
