"""Built-in exercises: challenges a teacher can start a lesson with in one call, in the spirit of MIT's
EfficientML labs (each lab asks for a compressed model that meets a stated bar).

Each is a Challenge (compression/challenges.py) with a two-sentence hint, written as data in
exercises.json (the format of Challenge.to_dict). The bars are set against the
shipped models as the board measures them, on the bundled 1,000-image eval subset: resnet20 scores
89.8 % there and resnet8 84.2 %, with 40.8 M and 12.5 M MACs per image.

    create_class(store, "Monday's lab", exercises=["prune-70", "smallest-85"])
"""
from __future__ import annotations

import json
from pathlib import Path

from .challenges import Challenge, ChallengeError

EXERCISES: dict[str, Challenge] = {
    name: Challenge.from_dict(spec)
    for name, spec in json.loads((Path(__file__).parent / "exercises.json").read_text(encoding="utf-8")).items()
}


def exercise(name: str) -> Challenge:
    """The built-in exercise `name`; ChallengeError listing the names when unknown."""
    if name not in EXERCISES:
        raise ChallengeError(f"There is no built-in exercise {name!r}; choose one of {', '.join(EXERCISES)}.")
    return EXERCISES[name]
