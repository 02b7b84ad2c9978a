"""A class board's data: everything the Class board page draws for one challenge, in one call.

    b = board(store, join_code or teacher_token, challenge_id, workspace=None)

  b.rows        the ranked table (challenges.standing): entries meeting every constraint first, ranked
                1, 2, …; then the others (rank None). Each row holds the display name (raw, and HTML-escaped
                as name_html), pass/fail per constraint, the score, every measured metric and the recipe.
  b.points      the Pareto chart's points: x = b.x (the objective's size-like metric, else packed bytes),
                y = eval accuracy, each with its recipe and whether it is on the frontier
  b.frontier    ids of the entries no other entry beats on both x and accuracy (variant.pareto_frontier)
  b.regions     each constraint as numbers to shade: the metric, and the allowed side (min or max)
  b.start       the starting model, measured like the entries
  b.references  published results on the same architecture (at width 1) and this project's own rows
                (docs/results.json, the model cards), each with its source and what it was measured on
  b.version     changes whenever an entry is added, hidden or removed: board_version() reads only it,
                so a page can poll every second and rebuild the board only when it moved

Hidden and superseded entries are left out (the teacher sees them with classes.entries). Nothing in a
board identifies a workspace; with `workspace`, a student's own row is marked mine=True.
"""
from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select

# The library's public names this module relies on (repoint here if the package's API moves).
from .data import PROJECT_ROOT
from .store import Store
from .variant import pareto_frontier

from .challenges import KINDS, Measured, format_value, standing
from .class_access import ChallengeInfo, challenge_info, challenge_row, class_row, load_entries, safe_display_name, student_key
from .lineage import recipe_text
from .store_schema import SUBMISSIONS, Workspace, db_errors

SIZE_METRICS = ("bytes_packed", "macs", "nonzero_macs", "bits_per_weight", "int8_latency_ms")
RESULTS_JSON = PROJECT_ROOT / "docs" / "results.json"
CARDS = PROJECT_ROOT / "assets"

PUBLISHED = [
    {"label": "ResNet-20 (He et al. 2016)", "arch": "resnet20", "accuracy": 0.9125, "params": 270_000,
     "bytes": 4 * 270_000, "bytes_kind": "fp32, from the paper's 0.27 M parameters",
     "source": "K. He, X. Zhang, S. Ren, J. Sun, Deep Residual Learning for Image Recognition, CVPR 2016 "
               "(arXiv:1512.03385), Table 6: 8.75 % test error",
     "note": "measured on the official CIFAR-10 test set, not this JPEG copy (expect this copy 1–2 points "
             "lower); the paper's shortcuts carry no weights, this app's resnet20 uses 1×1 convolutions"},
]


@dataclass
class Board:
    class_name: str
    challenge_id: str
    title: str
    goal: list[str]
    hint: str
    deadline: float | None
    open: bool
    x: str
    rows: list[dict]
    points: list[dict]
    frontier: list[str]
    regions: list[dict]
    start: dict
    references: list[dict] = field(default_factory=list)
    version: tuple = ()


def board(store: Store, key: str, challenge_id: str, *, workspace: Workspace | None = None,
          now: float | None = None) -> Board:
    """The board of one challenge (module docstring); `key` is the join code or the teacher token."""
    with db_errors(store.engine), store.engine.connect() as conn:
        klass = class_row(conn, key)
        info = challenge_info(challenge_row(conn, klass.id, challenge_id))
        found = load_entries(conn, info.id)
        version = _version(conn, info.id)
    challenge = info.challenge
    x = challenge.objective.metric if challenge.objective.metric in SIZE_METRICS else "bytes_packed"
    found.sort(key=lambda e: standing(challenge.objective, e.verdict, e.measured, e.submitted))
    mine = student_key(klass.id, workspace.id) if workspace is not None else None
    rows, rank = [], 0
    for e in found:
        rank += e.verdict.passed
        rows.append(_row(e, info, rank if e.verdict.passed else None, e.student == mine))
    frontier = pareto_frontier([r for r in rows if r[x] is not None], size=x, accuracy="eval_accuracy")
    points = [{"id": r["id"], "name_html": r["name_html"], "x": r[x], "y": r["eval_accuracy"], "passed": r["passed"],
               "on_frontier": r["id"] in frontier, "recipe": r["recipe"], "rank": r["rank"], "mine": r["mine"],
               **{m: r[m] for m in SIZE_METRICS}} for r in rows]
    start = {"label": f"start: {challenge.start}", **info.start.row()}
    return Board(klass.name, info.id, challenge.title, challenge.goal(), challenge.hint, challenge.deadline,
                 info.open_at(time.time() if now is None else now), x, rows, points, frontier,
                 regions(info), start, reference_points(info.start.arch) if info.start.width == 1 else [], version)


def board_version(store: Store, key: str, challenge_id: str) -> tuple:
    """A value that changes whenever the challenge's board does (an entry added, hidden or removed)."""
    with db_errors(store.engine), store.engine.connect() as conn:
        klass = class_row(conn, key)
        challenge_row(conn, klass.id, challenge_id)
        return _version(conn, str(challenge_id))


def _version(conn, challenge_id: str) -> tuple:
    """(entries ever kept, the latest submission time, hidden entries) of the challenge."""
    row = conn.execute(select(func.count(), func.max(SUBMISSIONS.c.submitted),
                              func.count().filter(SUBMISSIONS.c.hidden.is_(True)))
                       .where(SUBMISSIONS.c.challenge_id == challenge_id)).one()
    return tuple(row)


def _row(e, info: ChallengeInfo, rank: int | None, mine: bool) -> dict:
    metric = info.challenge.objective.metric
    return {"rank": rank, "id": e.id, "name": e.name, "name_html": safe_display_name(e.name),
            "passed": e.verdict.passed, "failed": e.verdict.failed, "score": e.verdict.score,
            "score_text": format_value(metric, e.verdict.score),
            "checks": [{"rule": c.rule, "value": c.value, "limit": c.limit, "passed": c.passed, "note": c.note}
                       for c in e.verdict.checks],
            "recipe": recipe_text(e.recipe), "steps": list(e.recipe), "submitted": e.submitted, "mine": mine,
            **e.measured.row(info.start)}


def regions(info: ChallengeInfo) -> list[dict]:
    """Each constraint as a shading rule on one metric's axis: {"metric", "min" or "max", "strict",
    "rule"}. Relative limits become absolute numbers (drop → accuracy, MAC share → MACs)."""
    start: Measured = info.start
    out = []
    for c in info.challenge.constraints:
        k = KINDS[c.kind]
        metric, limit, side = k.metric, float(c.limit), "max" if k.op == "<=" else "min"
        if c.kind == "max_drop":                # at most p points below the start = accuracy ≥ start − p/100
            metric, limit, side = "eval_accuracy", float(start.value("eval_accuracy")) - limit / 100, "min"
        elif c.kind in ("max_macs", "max_nonzero_macs"):
            metric = metric.removesuffix("_fraction")
            limit = limit * getattr(start, metric)
        out.append({"metric": metric, side: limit, "strict": k.op == ">", "rule": c.describe()})
    return out


@functools.lru_cache(maxsize=8)
def reference_points(arch: str) -> list[dict]:
    """Published results on `arch` and this project's own (docs/results.json, the model cards), each
    {"kind", "label", "arch", "accuracy" (fraction), "bytes", "bytes_kind", "params", "source", "note"}.
    Accuracies are on full test sets, not the board's eval subset: the note says which."""
    out = [{"kind": "published", **p} for p in PUBLISHED if p["arch"] == arch]
    return out + [p for p in _project_points() if p["arch"] == arch]


def _project_points() -> list[dict]:
    note = ("this project's run on the full 10,000-image test set of its JPEG copy of CIFAR-10; the board's "
            "points use 1,000 of those images (the eval subset)")
    points = []
    try:
        results = json.loads(RESULTS_JSON.read_text())
        date = results.get("meta", {}).get("date", "")
        for row in results.get("rows", []):
            arch = "resnet8" if "resnet8" in row["item"] and "→" in row["item"] else "resnet20"
            size, kind, params = _size(row.get("size", ""))
            points.append({"kind": "project", "label": row["item"], "arch": arch, "accuracy": round(row["accuracy"] / 100, 6),
                           "bytes": size, "bytes_kind": kind, "params": params, "settings": row.get("settings", ""),
                           "source": f"docs/RESULTS.md (python bench/results.py, run {date})", "note": note})
    except (OSError, ValueError, KeyError, TypeError):
        pass                                            # no results file: the published points remain
    for card_path in sorted(CARDS.glob("*.json")):
        try:
            card = json.loads(card_path.read_text())
            points.append({"kind": "project", "label": f"{card['arch']} (pretrained, shipped)", "arch": card["arch"],
                           "accuracy": card["test_accuracy"], "bytes": (card_path.with_suffix(".safetensors")
                                                                        .stat().st_size),
                           "bytes_kind": "fp32 safetensors", "params": None, "settings": "",
                           "source": f"assets/{card_path.name} (its model card)", "note": note})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return points


def _size(text: str) -> tuple[int | None, str, int | None]:
    """'272 KiB packed' -> (278528, 'packed', None); '148,322 params' -> (None, '', 148322)."""
    kib = re.search(r"([\d.]+) KiB (\S+)", text)
    if kib:
        return round(float(kib.group(1)) * 1024), kib.group(2), None
    params = re.search(r"([\d,]+) params", text)
    return None, "", int(params.group(1).replace(",", "")) if params else None
