"""Built-in exercises: challenges a teacher can start a lesson with in one call, in the spirit of MIT's
EfficientML labs (each lab asks for a compressed model that meets a stated bar).

Each is a Challenge (compression/challenges.py) with a two-sentence hint. The bars are set against the
shipped models as the board measures them, on the bundled 1,000-image eval subset: resnet20 scores
89.8 % there and resnet8 84.2 %, with 40.8 M and 12.5 M MACs per image.

    create_class(store, "Monday's lab", exercises=["prune-70", "smallest-85"])
"""
from __future__ import annotations

from .challenges import Challenge, ChallengeError, Constraint, Objective

EXERCISES: dict[str, Challenge] = {
    "prune-70": Challenge(
        title="Prune resnet20 to 70 % sparsity, losing at most 2 points",
        constraints=(Constraint("min_sparsity", 0.70), Constraint("max_drop", 2.0)),
        objective=Objective("eval_accuracy"), start="resnet20",
        hint="One-shot magnitude pruning to 70 % loses more than 2 points: fine-tune with the masks kept, "
             "or prune gradually (AGP) while fine-tuning. The sensitivity scan shows which layers to "
             "spare (often the first and the last)."),
    "fewest-bits": Challenge(
        title="Find the fewest bits per weight that keep 85 %",
        constraints=(Constraint("min_accuracy", 0.85),),
        objective=Objective("bits_per_weight"), start="resnet20",
        hint="Sweep the bit width on Quantize and watch where accuracy falls off a cliff; per-channel "
             "scales buy about a bit. Below 4 bits, quantization-aware training (QAT) wins back what "
             "rounding alone loses."),
    "distill-beats-plain": Challenge(
        title="Beat training alone with distillation on the same budget",
        constraints=(Constraint("beats_plain", 0.0),),
        objective=Objective("kd_gain"), start="resnet20",
        hint="On Distillation, run 'distillation vs training alone' with resnet20 as the teacher and keep "
             "both students: the board compares your distilled student with its twin trained alone on "
             "the same epochs, rate and data. Try the temperature T and the weight α of the soft targets."),
    "smallest-85": Challenge(
        title="Smallest model above 85 % — go",
        constraints=(Constraint("min_accuracy", 0.85),),
        objective=Objective("bytes_packed"), start="resnet20",
        hint="Size is the packed file: zeros, few distinct values and small integers all shrink it, so "
             "pruning, quantization and weight sharing stack. Fine-tune after each step, or the 85 % "
             "bar goes first."),
    "half-the-macs": Challenge(
        title="85 % at half the MACs",
        constraints=(Constraint("min_accuracy", 0.85), Constraint("max_macs", 0.5)),
        objective=Objective("macs"), start="resnet20",
        hint="Zeroed weights still cost MACs in a dense kernel: only removing whole filters (structured "
             "pruning) lowers them. Prune filters to about half, then fine-tune to climb back over 85 %."),
}


def exercise(name: str) -> Challenge:
    """The built-in exercise `name`; ChallengeError listing the names when unknown."""
    if name not in EXERCISES:
        raise ChallengeError(f"There is no built-in exercise {name!r}; choose one of {', '.join(EXERCISES)}.")
    return EXERCISES[name]
