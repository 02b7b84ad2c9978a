"""A class challenge: a goal written as constraints and an objective, and how a submission is judged.

A teacher writes a challenge as data (JSON round-trips through Challenge.to_json / from_json):

    {"title": "Smallest model above 85 %", "start": "resnet20",
     "constraints": [{"kind": "min_accuracy", "limit": 0.85}], "objective": "bytes_packed",
     "deadline": null, "hint": "..."}

Constraints. The server measures the submitted weights itself (compression/remeasure.py) and checks
value OP limit for each constraint:

    kind              value                                                       OP   limit
    max_bytes         size of the stored packed file (.cmpk), bytes                ≤    bytes, an integer
    min_accuracy      eval accuracy = correct / images on the bundled eval subset ≥    fraction in [0, 1]
    max_drop          100 · (starting model's eval accuracy − eval accuracy)      ≤    points in [0, 100]
    max_macs          dense MACs / the starting model's dense MACs                ≤    fraction > 0
    max_nonzero_macs  MACs of nonzero weights / the starting model's              ≤    fraction > 0
    min_sparsity      zero weights / weights (Conv2d and Linear)                  ≥    fraction in [0, 1]
    max_bits          bits per weight (remeasure.layer_bits: index bits, zeros included)  ≤  bits in (0, 32]
    max_int8_latency  real int8 latency at batch 1 on this server, ms (slow: measured once per weights file)  ≤  ms > 0
    beats_plain       100 · (eval accuracy − that of the student trained alone on the same budget)  >  points ≥ 0

Dense MACs are what a dense kernel runs: structured (filter) pruning lowers them, unstructured zeros do
not. Every value but the latency is a ratio of integers the server counted, and it is compared as an
exact fraction with the limit as written in decimal (Fraction(repr(limit))): 850 of 1,000 images meets
"≥ 0.85", and a drop from 87.3 % to 85.3 % is exactly 2 points (in floating point, 87.3 − 85.3 =
2.0000000000000018, which would fail "≤ 2"). So a value exactly on its limit always passes ("beats"
is strict: an equal accuracy does not beat).

Objective: one measured metric; its direction follows from its meaning (bytes, MACs, bits, latency:
fewer wins; accuracy, sparsity, gain over training alone: more wins). The score is that metric's value.
Ranking: entries meeting every constraint first, by score; then the others, fewest failed constraints
first, then by score. Ties: higher eval accuracy, then fewer packed bytes, then the earlier submission.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any


class ChallengeError(ValueError):
    """A challenge definition is invalid; the message says which field and what is allowed."""


@dataclass(frozen=True)
class Kind:
    metric: str
    op: str                      # "<=", ">=" or ">"
    label: str
    low: float                   # allowed limits: low ≤ limit ≤ high (low excluded when open_low)
    high: float
    open_low: bool = False
    integer: bool = False


KINDS: dict[str, Kind] = {
    "max_bytes": Kind("bytes_packed", "<=", "packed size", 1, 1e12, integer=True),
    "min_accuracy": Kind("eval_accuracy", ">=", "eval accuracy", 0, 1),
    "max_drop": Kind("accuracy_drop", "<=", "accuracy drop from the starting model", 0, 100),
    "max_macs": Kind("macs_fraction", "<=", "MACs, as a share of the starting model's", 0, 100, open_low=True),
    "max_nonzero_macs": Kind("nonzero_macs_fraction", "<=", "MACs of nonzero weights, as a share of the "
                             "starting model's", 0, 100, open_low=True),
    "min_sparsity": Kind("sparsity", ">=", "sparsity", 0, 1),
    "max_bits": Kind("bits_per_weight", "<=", "bits per weight", 0, 32, open_low=True),
    "max_int8_latency": Kind("int8_latency_ms", "<=", "int8 latency at batch 1 on this server", 0, 1e6,
                             open_low=True),
    "beats_plain": Kind("kd_gain", ">", "gain over the same budget trained alone", 0, 100),
}

# objective metric -> (more is better, what the board says)
OBJECTIVES: dict[str, tuple[bool, str]] = {
    "bytes_packed": (False, "fewest packed bytes wins"),
    "eval_accuracy": (True, "highest eval accuracy wins"),
    "macs": (False, "fewest MACs wins"),
    "nonzero_macs": (False, "fewest MACs of nonzero weights wins"),
    "bits_per_weight": (False, "fewest bits per weight wins"),
    "sparsity": (True, "highest sparsity wins"),
    "int8_latency_ms": (False, "lowest int8 latency wins"),
    "kd_gain": (True, "largest gain over training alone wins"),
}
COUNTS = ("bytes_packed", "macs", "nonzero_macs")             # metrics that are whole numbers
MAX_CONSTRAINTS = 10
MAX_TITLE = 120
MAX_HINT = 600
MAX_START = 80


def exact(x: float | int | Fraction) -> Fraction:
    """A number as the exact fraction it was written as: 0.85 -> 17/20 (not the binary double)."""
    return x if isinstance(x, Fraction) else Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ChallengeError(f"{what} must be a finite number, got {value!r}.")
    return value


@dataclass(frozen=True)
class Constraint:
    """One rule a submission must meet: KINDS[kind]'s value OP limit (module docstring)."""
    kind: str
    limit: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ChallengeError(f"Unknown constraint kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        k = KINDS[self.kind]
        limit = _number(self.limit, f"The limit of {self.kind}")
        if k.integer and limit != int(limit):
            raise ChallengeError(f"The limit of {self.kind} is a whole number of bytes, got {limit!r}.")
        if limit < k.low or limit > k.high or (k.open_low and limit == k.low):
            side = ">" if k.open_low else "≥"
            raise ChallengeError(f"The limit of {self.kind} must be {side} {k.low:g} and ≤ {k.high:g}, got {limit!r}.")
        object.__setattr__(self, "limit", int(limit) if k.integer else float(limit))

    def describe(self) -> str:
        """The rule in words: 'packed size ≤ 64.0 KiB (65,536 bytes)'."""
        k = KINDS[self.kind]
        sign = {"<=": "≤", ">=": "≥", ">": ">"}[k.op]
        if self.kind == "max_bytes":
            return f"packed size ≤ {format_value('bytes_packed', self.limit)} ({self.limit:,} bytes)"
        if self.kind == "beats_plain":
            return (f"beats the same-budget student trained alone by more than {self.limit:g} points "
                    f"of eval accuracy")
        return f"{k.label} {sign} {format_value(k.metric, self.limit)}"


@dataclass(frozen=True)
class Objective:
    """What ranks the entries that pass: one metric of OBJECTIVES, in its natural direction."""
    metric: str

    def __post_init__(self):
        if self.metric not in OBJECTIVES:
            raise ChallengeError(f"Unknown objective {self.metric!r}; use one of {', '.join(OBJECTIVES)}.")

    @property
    def maximise(self) -> bool:
        return OBJECTIVES[self.metric][0]

    def describe(self) -> str:
        return OBJECTIVES[self.metric][1]


@dataclass(frozen=True)
class Challenge:
    """A challenge's goal. `start` names the model students start from: a pretrained model's name
    ("resnet20", "resnet8") or a pretrained variant's id in the store. `deadline`: Unix time or None."""
    title: str
    constraints: tuple[Constraint, ...]
    objective: Objective
    start: str = "resnet20"
    deadline: float | None = None
    hint: str = ""

    def __post_init__(self):
        title = self.title.strip() if isinstance(self.title, str) else ""
        if not title or len(title) > MAX_TITLE:
            raise ChallengeError(f"A challenge needs a title of 1 to {MAX_TITLE} characters.")
        constraints = tuple(self.constraints)
        if not all(isinstance(c, Constraint) for c in constraints) or len(constraints) > MAX_CONSTRAINTS:
            raise ChallengeError(f"A challenge has at most {MAX_CONSTRAINTS} constraints, each a Constraint.")
        kinds = [c.kind for c in constraints]
        if len(set(kinds)) != len(kinds):
            raise ChallengeError("Each kind of constraint may appear once in a challenge; merge the duplicates.")
        if not isinstance(self.objective, Objective):
            raise ChallengeError("A challenge's objective must be an Objective.")
        if not isinstance(self.start, str) or not self.start.strip() or len(self.start) > MAX_START:
            raise ChallengeError("A challenge's start must name a pretrained model, e.g. 'resnet20'.")
        if self.deadline is not None and _number(self.deadline, "The deadline") <= 0:
            raise ChallengeError("The deadline must be a Unix time (seconds), or None for no deadline.")
        if not isinstance(self.hint, str) or len(self.hint) > MAX_HINT:
            raise ChallengeError(f"A hint is text of at most {MAX_HINT} characters.")
        object.__setattr__(self, "title", title)
        object.__setattr__(self, "constraints", constraints)
        object.__setattr__(self, "start", self.start.strip())
        object.__setattr__(self, "deadline", None if self.deadline is None else float(self.deadline))

    @property
    def metrics(self) -> set[str]:
        """Every metric the challenge reads (its constraints' and its objective's)."""
        return {KINDS[c.kind].metric for c in self.constraints} | {self.objective.metric}

    @property
    def needs_int8(self) -> bool:
        return "int8_latency_ms" in self.metrics

    @property
    def needs_plain(self) -> bool:
        return "kd_gain" in self.metrics

    def goal(self) -> list[str]:
        """The goal in words, one line per constraint, then the objective."""
        return [c.describe() for c in self.constraints] + [self.objective.describe()]

    def with_deadline(self, deadline: float | None) -> "Challenge":
        return replace(self, deadline=deadline)

    def to_dict(self) -> dict:
        return {"title": self.title, "start": self.start, "objective": self.objective.metric,
                "constraints": [{"kind": c.kind, "limit": c.limit} for c in self.constraints],
                "deadline": self.deadline, "hint": self.hint}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Any) -> "Challenge":
        """The challenge a dict describes; ChallengeError naming the first thing wrong."""
        if not isinstance(d, dict):
            raise ChallengeError("A challenge is a JSON object with title, constraints and objective.")
        unknown = set(d) - {"title", "start", "objective", "constraints", "deadline", "hint"}
        if unknown:
            raise ChallengeError(f"Unknown challenge fields: {', '.join(sorted(map(str, unknown)))}.")
        rules = d.get("constraints", [])
        if not isinstance(rules, list) or not all(isinstance(r, dict) and set(r) == {"kind", "limit"}
                                                  for r in rules):
            raise ChallengeError('constraints must be a list of {"kind": ..., "limit": ...} objects.')
        return cls(title=d.get("title"), constraints=tuple(Constraint(r["kind"], r["limit"]) for r in rules),
                   objective=Objective(d.get("objective")), start=d.get("start", "resnet20"),
                   deadline=d.get("deadline"), hint=d.get("hint", ""))

    @classmethod
    def from_json(cls, text: str) -> "Challenge":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ChallengeError(f"The challenge is not valid JSON ({exc.msg} at line {exc.lineno}).") from None


# --- what the server measured, and the judgement --------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """What the server counted on one model (compression/remeasure.py): integers, so checks are exact."""
    eval_correct: int
    eval_images: int
    params: int
    weights: int                          # Conv2d and Linear weights
    zero_weights: int
    macs: int                             # dense, per 32x32 image
    nonzero_macs: int
    bytes_packed: int                     # the stored packed file
    weight_bits: int                      # Σ over layers of (bits per weight of the layer) · (its weights)
    arch: str = ""
    width: float = 1.0
    int8_latency_ms: float | None = None
    plain_correct: int | None = None      # the same-budget student trained alone (beats_plain)
    plain_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Measured":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def value(self, metric: str, start: "Measured | None" = None) -> Fraction | None:
        """A metric's exact value (None when it cannot be known, e.g. no plain twin was found)."""
        accuracy = Fraction(self.eval_correct, max(1, self.eval_images))
        if metric == "eval_accuracy":
            return accuracy
        if metric in ("bytes_packed", "macs", "nonzero_macs"):
            return Fraction(getattr(self, metric))
        if metric == "sparsity":
            return Fraction(self.zero_weights, max(1, self.weights))
        if metric == "bits_per_weight":
            return Fraction(self.weight_bits, max(1, self.weights))
        if metric == "int8_latency_ms":
            return None if self.int8_latency_ms is None else exact(self.int8_latency_ms)
        if metric == "kd_gain":
            return None if self.plain_correct is None else 100 * (
                accuracy - Fraction(self.plain_correct, max(1, self.eval_images)))
        if start is None:
            return None
        if metric == "accuracy_drop":
            return 100 * (start.value("eval_accuracy") - accuracy)
        if metric in ("macs_fraction", "nonzero_macs_fraction"):
            base = metric.removesuffix("_fraction")
            return Fraction(getattr(self, base), max(1, getattr(start, base)))
        raise KeyError(metric)

    def row(self, start: "Measured | None" = None) -> dict:
        """Every metric as a float (None when unknown), for tables and charts."""
        names = ("eval_accuracy", "bytes_packed", "macs", "nonzero_macs", "sparsity", "bits_per_weight",
                 "int8_latency_ms", "kd_gain", "accuracy_drop", "macs_fraction")
        out = {}
        for name in names:
            v = self.value(name, start)
            out[name] = None if v is None else int(v) if name in COUNTS else float(v)
        return {**out, "params": self.params, "arch": self.arch, "width": self.width}


@dataclass(frozen=True)
class Check:
    kind: str
    rule: str                             # Constraint.describe()
    value: float | None
    limit: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    passed: bool
    score: float | None                   # the objective's value
    failed: int = field(default=0)


def judge(challenge: Challenge, measured: Measured, start: Measured) -> Verdict:
    """Check every constraint on the server's measurement (exact fractions, module docstring)."""
    checks = []
    for c in challenge.constraints:
        k = KINDS[c.kind]
        value = measured.value(k.metric, start)
        if value is None:
            note = ("no student trained alone on the same budget was found in your workspace: run "
                    "'distillation vs training alone' and keep both" if c.kind == "beats_plain"
                    else "could not be measured")
            checks.append(Check(c.kind, c.describe(), None, c.limit, False, note))
            continue
        limit = exact(c.limit)
        passed = value <= limit if k.op == "<=" else value >= limit if k.op == ">=" else value > limit
        checks.append(Check(c.kind, c.describe(), float(value), c.limit, bool(passed)))
    score = measured.value(challenge.objective.metric, start)
    failed = sum(not c.passed for c in checks)
    return Verdict(tuple(checks), failed == 0, None if score is None else float(score), failed)


def standing(objective: Objective, verdict: Verdict, measured: Measured, submitted: float) -> tuple:
    """Sort key, smaller first (module docstring): passing entries by score, then the others by the
    number of constraints they fail and by score; ties by accuracy, packed bytes, submission time."""
    score = measured.value(objective.metric)
    by_score = (1, 0) if score is None else (0, -score if objective.maximise else score)
    return (not verdict.passed, verdict.failed, *by_score, -measured.value("eval_accuracy"),
            measured.bytes_packed, submitted)


def format_value(metric: str, value: float | None) -> str:
    """A metric's value as the board shows it: '64.0 KiB', '85.3 %', '4.0 bits', '+0.4 pt'."""
    if value is None:
        return "—"
    if metric == "bytes_packed":
        return f"{value / 1024:.1f} KiB" if value >= 1024 else f"{int(value)} bytes"
    if metric in ("eval_accuracy", "sparsity", "macs_fraction", "nonzero_macs_fraction"):
        return f"{100 * value:.4g} %"
    if metric in ("macs", "nonzero_macs"):
        return f"{value / 1e6:.2f} M"
    if metric == "bits_per_weight":
        return f"{value:.3g} bits"
    if metric == "int8_latency_ms":
        return f"{value:.3g} ms"
    if metric == "kd_gain":
        return f"{value:+.2f} pt"
    return f"{value:g} points" if metric == "accuracy_drop" else f"{value:g}"
