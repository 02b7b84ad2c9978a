"""Challenge definitions, judging and ranking (compression/challenges.py), bits per weight
(compression/remeasure.py), built-in exercises and reference points. No database here: tests/test_classes.py
covers the store's tables, submitting and the board."""
import json
import random
from fractions import Fraction

import pytest
import torch

from compression.board import reference_points
from compression.challenges import (KINDS, Challenge, ChallengeError, Constraint, Measured, Objective, judge,
                                    standing)
from compression.exercises import EXERCISES, exercise
from compression.models import create_model
from compression.prune import prune
from compression.activations import to_reduced_float
from compression.quantize import quantize_weights
from compression.remeasure import grid_levels, weight_bits
from compression.share import cluster_weights


def measured(**kw) -> Measured:
    base = dict(eval_correct=853, eval_images=1000, params=1000, weights=1000, zero_weights=700, macs=20,
                nonzero_macs=6, bytes_packed=65536, weight_bits=4000, int8_latency_ms=2.5, plain_correct=853)
    return Measured(**{**base, **kw})


START = Measured(eval_correct=873, eval_images=1000, params=1000, weights=1000, zero_weights=0, macs=40,
                 nonzero_macs=40, bytes_packed=1 << 20, weight_bits=32000)


def one(kind: str, limit, m: Measured = None):
    challenge = Challenge("t", (Constraint(kind, limit),), Objective("bytes_packed"))
    [check] = judge(challenge, m or measured(), START).checks
    return check


# Each constraint kind: (limit exactly on the measured value, a limit just past it on the wrong side).
BOUNDARIES = {
    "max_bytes": (65536, 65535),
    "min_accuracy": (0.853, 0.854),
    "max_drop": (2.0, 1.99),               # 87.3 % → 85.3 %: exactly 2 points
    "max_macs": (0.5, 0.49),               # 20 of the start's 40 MACs
    "max_nonzero_macs": (0.15, 0.149),     # 6 of 40
    "min_sparsity": (0.7, 0.701),
    "max_bits": (4.0, 3.99),
    "max_int8_latency": (2.5, 2.49),
}


@pytest.mark.parametrize("kind", sorted(BOUNDARIES))
def test_every_constraint_passes_exactly_on_its_limit_and_fails_just_past_it(kind):
    on, past = BOUNDARIES[kind]
    assert one(kind, on).passed, one(kind, on)
    assert not one(kind, past).passed
    assert one(kind, on).value == pytest.approx(on)


def test_boundaries_are_exact_where_floating_point_is_not():
    assert 100 * (0.873 - 0.853) > 2.0                      # what a float comparison would get wrong
    assert one("max_drop", 2.0).passed
    assert one("min_accuracy", 0.86, measured(eval_correct=860)).passed        # 0.86 is not a binary double


def test_beating_training_alone_is_strict_and_needs_the_twin():
    assert not one("beats_plain", 0.0, measured(eval_correct=800, plain_correct=800)).passed     # a tie
    check = one("beats_plain", 0.0, measured(eval_correct=801, plain_correct=800))
    assert check.passed and check.value == pytest.approx(0.1)
    assert not one("beats_plain", 0.1, measured(eval_correct=801, plain_correct=800)).passed
    missing = one("beats_plain", 0.0, measured(plain_correct=None))
    assert not missing.passed and missing.value is None and "trained alone" in missing.note


def test_an_unmeasured_latency_fails_with_a_note():
    check = one("max_int8_latency", 1000.0, measured(int8_latency_ms=None))
    assert (check.passed, check.value, check.note) == (False, None, "could not be measured")


def test_every_kind_has_a_boundary_test():
    assert set(BOUNDARIES) | {"beats_plain"} == set(KINDS)


@pytest.mark.parametrize("kind, limit, message", [
    ("max_potatoes", 1, "Unknown constraint kind"),
    ("min_accuracy", 1.5, r"must be ≥ 0 and ≤ 1"),
    ("min_accuracy", True, "finite number"),
    ("min_accuracy", float("nan"), "finite number"),
    ("max_bytes", 100.5, "whole number"),
    ("max_bits", 0, r"must be > 0"),
    ("max_macs", "0.5", "finite number"),
])
def test_bad_constraints_are_refused_with_a_message(kind, limit, message):
    with pytest.raises(ChallengeError, match=message):
        Constraint(kind, limit)


def test_bad_challenges_are_refused_with_a_message():
    c = (Constraint("min_accuracy", 0.8),)
    with pytest.raises(ChallengeError, match="title"):
        Challenge("  ", c, Objective("bytes_packed"))
    with pytest.raises(ChallengeError, match="once"):
        Challenge("t", c + c, Objective("bytes_packed"))
    with pytest.raises(ChallengeError, match="Unknown objective"):
        Challenge("t", c, Objective("happiness"))
    with pytest.raises(ChallengeError, match="deadline"):
        Challenge("t", c, Objective("bytes_packed"), deadline=-5)
    with pytest.raises(ChallengeError, match="Unknown challenge fields: colour"):
        Challenge.from_dict({"title": "t", "constraints": [], "objective": "macs", "colour": "red"})
    with pytest.raises(ChallengeError, match="not valid JSON"):
        Challenge.from_json("{title:")
    with pytest.raises(ChallengeError, match="constraints must be a list"):
        Challenge.from_dict({"title": "t", "constraints": [{"kind": "max_bytes"}], "objective": "macs"})


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_exercises_round_trip_through_json_and_have_two_sentence_hints(name):
    challenge = exercise(name)
    assert Challenge.from_json(challenge.to_json()) == challenge
    assert challenge.hint.count(". ") + challenge.hint.endswith(".") == 2, challenge.hint


def test_a_custom_challenge_round_trips_exactly():
    c = Challenge("  64 KiB at 85 % ", (Constraint("max_bytes", 65536.0), Constraint("min_accuracy", 0.85),
                                        Constraint("max_int8_latency", 3)), Objective("int8_latency_ms"),
                  start="resnet8", deadline=1_900_000_000, hint="Go small.")
    assert c.title == "64 KiB at 85 %" and c.constraints[0].limit == 65536 and isinstance(c.constraints[0].limit, int)
    assert Challenge.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["constraints"][0] == {"kind": "max_bytes", "limit": 65536}
    assert c.needs_int8 and not c.needs_plain
    assert c.goal() == ["packed size ≤ 64.0 KiB (65,536 bytes)", "eval accuracy ≥ 85 %",
                        "int8 latency at batch 1 on this server ≤ 3 ms", "lowest int8 latency wins"]


def test_unknown_exercise_lists_the_names():
    with pytest.raises(ChallengeError, match="smallest-85"):
        exercise("biggest")


# --- ranking -------------------------------------------------------------------------------------------

def rank(objective, items):
    challenge = Challenge("t", (Constraint("min_accuracy", 0.80), Constraint("min_sparsity", 0.5)),
                          Objective(objective))
    keyed = [(standing(challenge.objective, judge(challenge, m, START), m, t), name) for name, m, t in items]
    return [name for _, name in sorted(keyed)]


def test_ranking_passing_first_by_objective_then_the_tie_breaks():
    items = [
        ("small but failing one", measured(bytes_packed=10, eval_correct=700), 1.0),
        ("small but failing two", measured(bytes_packed=5, eval_correct=700, zero_weights=0), 1.0),
        ("big", measured(bytes_packed=900), 1.0),
        ("tie, less accurate", measured(bytes_packed=100, eval_correct=850), 1.0),
        ("tie, more accurate", measured(bytes_packed=100, eval_correct=900), 3.0),
        ("tie, same accuracy, later", measured(bytes_packed=100, eval_correct=850), 2.0),
    ]
    random.Random(0).shuffle(items)
    assert rank("bytes_packed", items) == ["tie, more accurate", "tie, less accurate", "tie, same accuracy, later",
                                           "big", "small but failing one", "small but failing two"]


def test_ranking_a_maximised_objective_and_accuracy_ties_broken_by_size():
    items = [("a", measured(eval_correct=900, bytes_packed=500), 0.0),
             ("b", measured(eval_correct=900, bytes_packed=400), 5.0),
             ("c", measured(eval_correct=950, bytes_packed=999), 9.0)]
    assert rank("eval_accuracy", items) == ["c", "b", "a"]


# --- bits per weight -----------------------------------------------------------------------------------

def tiny(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet8", width=0.5).eval()


def bits_per_weight(model) -> Fraction:
    from compression.prune import prunable_layers
    from compression.weights import effective_weight
    return Fraction(weight_bits(model), sum(effective_weight(m).numel() for m in prunable_layers(model).values()))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_k_bit_uniform_quantization_measures_k_bits_per_weight(bits, symmetric):
    assert bits_per_weight(quantize_weights(tiny(), bits, symmetric=symmetric, per_channel=True)) == bits


def test_bits_per_weight_of_floats_shared_weights_and_pruned_floats():
    model = tiny()
    assert bits_per_weight(model) == 32
    assert bits_per_weight(to_reduced_float(model, "fp16")) == 16
    assert bits_per_weight(quantize_weights(model, 4, per_channel=False)) == 4
    assert bits_per_weight(cluster_weights(model, 16)) == 4                  # a shared codebook per layer
    assert bits_per_weight(prune(model, 0.7)) == 32      # a pruned layer's distinct floats are no codebook


def test_grid_levels_finds_the_coarsest_exact_grid():
    step = torch.tensor(0.0123, dtype=torch.float32)
    values = (torch.tensor([-6, -2, 0, 2, 4, 6], dtype=torch.float32) * step).numpy()
    assert grid_levels(values) == 7                      # m in −3…3 on the step 2·0.0123
    assert grid_levels(torch.randn(50).numpy()) is None


# --- reference points ----------------------------------------------------------------------------------

def test_reference_points_carry_their_sources_and_what_they_were_measured_on():
    points = reference_points("resnet20")
    published = [p for p in points if p["kind"] == "published"]
    assert [(p["accuracy"], p["params"]) for p in published] == [(0.9125, 270_000)]
    assert "official CIFAR-10" in published[0]["note"] and "1512.03385" in published[0]["source"]
    project = {p["label"]: p for p in points if p["kind"] == "project"}
    assert project["resnet20 (pretrained)"]["accuracy"] == 0.8942                 # docs/results.json
    assert project["8-bit PTQ, weights + activations"]["bytes"] == 272 * 1024
    assert project["resnet20 (pretrained, shipped)"]["source"] == "assets/resnet20.json (its model card)"
    assert all("JPEG copy" in p["note"] for p in project.values())
    assert {p["label"] for p in reference_points("resnet8")} >= {"KD resnet20 → resnet8 (T = 4, α = 0.9)",
                                                                 "resnet8 (pretrained, shipped)"}
