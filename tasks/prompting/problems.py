"""Few-shot problems by name: a Problem with the example pool it samples from (train) and its test examples.

The offline demo's held-out classification families register as `demo_<family>` (tasks/demo: generated reviews
and topic texts the multitask base never trained on). `register_problem` adds others from Python.
"""
from __future__ import annotations

import dataclasses
import difflib
import string
from typing import Dict, Sequence, Tuple

from tasks.demo import families
from tasks.prompting.core import Example, Template
from tasks.prompting.problem import Problem
from text2text.errors import UserError


@dataclasses.dataclass(frozen=True)
class RegisteredProblem:
    """A problem and its pools: `pool` (labelled rows few-shot sets are sampled from; the rest serve as the
    unlabelled set) and `test`."""
    problem: Problem
    pool: Tuple[Example, ...]
    test: Tuple[Example, ...]


_PROBLEMS: Dict[str, RegisteredProblem] = {}


def template_fields(template: Template) -> Tuple[str, ...]:
    """The example fields a template's inputs format, in order of first use."""
    names = [field for _, field, _, _ in string.Formatter().parse(template.inputs) if field]
    return tuple(dict.fromkeys(names))


def register_problem(problem: Problem, pool: Sequence[Example], test: Sequence[Example]) -> RegisteredProblem:
    """Registers `problem` under problem.name (replacing one of that name); UserError if a pool is empty."""
    if not pool or not test:
        raise UserError(f"few-shot problem {problem.name!r}: the {'pool' if not pool else 'test set'} is empty")
    entry = RegisteredProblem(problem, tuple(pool), tuple(test))
    _PROBLEMS[problem.name] = entry
    return entry


def get_problem(name: str) -> RegisteredProblem:
    """The registered problem `name`; UserError naming the closest registered names otherwise."""
    if name not in _PROBLEMS:
        close = difflib.get_close_matches(name, _PROBLEMS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(sorted(_PROBLEMS))}"
        raise UserError(f"no few-shot problem {name!r}{hint}")
    return _PROBLEMS[name]


def _register_demo_families() -> None:
    for family in families.FAMILIES:
        if not family.held_out:
            continue
        problem = Problem(f"demo_{family.name}", family.templates, family.verbalizer,
                          template_fields(family.templates[0]))
        register_problem(problem, families.generate(family.name, "train"),
                         families.generate(family.name, "validation"))


_register_demo_families()

__all__ = ["RegisteredProblem", "register_problem", "get_problem", "template_fields"]
