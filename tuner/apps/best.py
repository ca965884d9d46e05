"""``tuner best``: the recommended configuration as YAML, JSON or plain torch code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.catalog.export import OptimizerConfig
from tuner.catalog.render import render_torch_script
from tuner.core.errors import TunerError
from tuner.core.keys import ATTR
from tuner.db.session import load_study
from tuner.results.compare import compute_answer

if TYPE_CHECKING:
    from tuner.config.studyfile import StudyFile

__all__ = ["FORMATS", "best_text"]

FORMATS = ("yaml", "json", "python")

# The steps a rendered script schedules over when the objective never called build_optimizer.
DEFAULT_TOTAL_STEPS = 10_000


def best_text(study_file: StudyFile, fmt: str) -> tuple[str, str]:
    """``(text, sentence)``: the answer's recommended configuration in ``fmt`` (docs/answer.md:
    the winner, or the cheapest of those tied with it; with replicates off or not run yet, the
    best search trial's), and the answer as one sentence."""
    study = load_study(study_file)
    answer = compute_answer(study, study_file.compare)
    chosen = answer.recommended
    if chosen is None:
        raise TunerError(
            f"study {study_file.name!r} has no complete trial yet",
            hint="run `tuner launch` first, or `tuner status` to see how the trials went",
        )
    sentence = answer.sentence()
    config = OptimizerConfig.from_dict(chosen.config)
    if fmt == "yaml":
        return f"# {sentence}\n" + config.to_yaml(), sentence
    if fmt == "json":
        return config.to_json(), sentence
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == chosen.trial)
    total_steps = trial.user_attrs.get(ATTR.TOTAL_STEPS)
    header = [f"{study_file.name}: {sentence}."]
    if not isinstance(total_steps, int):
        header.append("Its objective recorded no total_steps (it did not call build_optimizer).")
        total_steps = DEFAULT_TOTAL_STEPS
    return render_torch_script(config, total_steps=total_steps, header=header), sentence
