"""Choosing one setting per layer under a budget: greedy marginal analysis on convex hulls.

Both automatic modes (auto_prune.py: a sparsity per layer; auto_quant.py: a bit width per layer) solve
the same separable problem. Layer l has options j = 0 … J_l (sparsity levels, or bit widths from wide
to narrow), each spending r_lj of a resource (nonzero weights, or packed bytes; r_l0 > r_l1 > …) at a
predicted loss increase d_lj, measured with that layer alone changed (the sensitivity curve):

    minimise  D = Σ_l d_l(j_l)   subject to   R = Σ_l r_l(j_l) ≤ B.

Predicting D as a sum assumes the layers' damages add up (the usual assumption of sensitivity-based
allocation; it holds best for small changes).

Rule:
1. Replace each curve by its lower convex hull in the (resource, loss) plane: the options left have
   increasing prices  λ_lj = (d_l,j+1 − d_lj) / (r_lj − r_l,j+1),  the loss paid per unit saved.
2. Start every layer at its first option. While R > B, take the cheapest next step over all layers
   (smallest λ; ties to the layer listed first).
3. (A bound, when the resource is bytes.) Spend what the last step left over: while some layer can go
   back to an earlier option that still fits and lowers its loss, take the move that buys the most
   loss decrease per unit spent.

Every layer then stops where its price crosses one common λ: on the hulls this is the optimum of the
Lagrangian min Σ_l d_l + λ·(Σ_l r_l − B) (Everett 1963; Fox 1966), and the exact optimum of the
piecewise-linear relaxation whenever the budget falls on a vertex. With `exact=True` the last step is
taken only part of the way (a resource that is a count, e.g. nonzero weights), so that R = B exactly;
its loss is interpolated linearly along the hull edge.

A layer's predicted loss at any resource (`interpolate`) is the piecewise-linear interpolation of the
*measured* points, not of the hull, so that an allocation and the uniform one are compared on the
same terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


@dataclass
class Curve:
    """One layer's options: resource spent (strictly decreasing) and predicted loss increase."""

    resource: list[float]
    loss: list[float]

    def __post_init__(self):
        if len(self.resource) != len(self.loss) or not self.resource:
            raise ValueError("a curve needs as many losses as resource values, at least one")
        if any(a <= b for a, b in zip(self.resource, self.resource[1:])):
            raise ValueError(f"resource values must strictly decrease, got {self.resource}")


def lower_hull(curve: Curve) -> list[int]:
    """Indices of the lower convex hull's vertices, from the first option to the last (Andrew's
    monotone chain over points sorted by decreasing resource). Points on a hull edge are kept, so a
    budget can stop between them."""
    hull: list[int] = []
    for j in range(len(curve.resource)):
        while len(hull) >= 2 and _price(curve, hull[-2], hull[-1]) > _price(curve, hull[-1], j):
            hull.pop()
        hull.append(j)
    return hull


def _price(curve: Curve, a: int, b: int) -> float:
    """λ of the step from option a to option b (b further along): loss added per unit saved."""
    return (curve.loss[b] - curve.loss[a]) / (curve.resource[a] - curve.resource[b])


def greedy_steps(curves: dict[str, Curve]) -> Iterator[tuple[str, int, int]]:
    """Every hull step in the order the rule takes them: (layer, from option, to option)."""
    hulls = {name: lower_hull(c) for name, c in curves.items()}
    at = {name: 0 for name in curves}              # position along each hull
    order = list(curves)
    while True:
        open_ = [n for n in order if at[n] + 1 < len(hulls[n])]
        if not open_:
            return
        name = min(open_, key=lambda n: _price(curves[n], hulls[n][at[n]], hulls[n][at[n] + 1]))
        a, b = hulls[name][at[name]], hulls[name][at[name] + 1]
        at[name] += 1
        yield name, a, b


@dataclass
class Choice:
    """Where a layer ends: `option` when it sits on one, else between `option` and `next_option`,
    spending `resource`."""

    option: int
    resource: float
    next_option: int | None = None


def greedy_allocate(curves: dict[str, Curve], budget: float, exact: bool = False) -> dict[str, Choice]:
    """The rule of the module docstring: one Choice per layer with Σ resource ≤ budget (= budget
    when `exact`). ValueError when even every layer's last option spends more than the budget."""
    floor = sum(c.resource[-1] for c in curves.values())
    if floor > budget:
        raise ValueError(f"the budget {budget:g} is below the least any allocation can spend ({floor:g})")
    choice = {name: Choice(0, c.resource[0]) for name, c in curves.items()}
    spent = sum(ch.resource for ch in choice.values())
    for name, a, b in greedy_steps(curves):
        if spent <= budget:
            break
        curve = curves[name]
        saved = curve.resource[a] - curve.resource[b]
        if exact and spent - saved < budget:       # part of the way: land exactly on the budget
            choice[name] = Choice(a, curve.resource[a] - (spent - budget), b)
            return choice
        choice[name] = Choice(b, curve.resource[b])
        spent -= saved
    return choice


def spend_leftover(curves: dict[str, Curve], at: dict[str, int], budget: float) -> dict[str, int]:
    """Step 3 for a budget that is a bound (bytes): a hull step can overshoot, and options off the hull
    were skipped. While some layer can go back to an earlier option k < j that still fits
    (R + r_lk − r_lj ≤ B) and lowers its loss, take the move with the largest loss decrease per unit
    spent, (d_lj − d_lk) / (r_lk − r_lj). Each move lowers D, so this ends."""
    at = dict(at)
    spent = sum(curves[n].resource[j] for n, j in at.items())
    while True:
        best = None
        for name, j in at.items():
            c = curves[name]
            for k in range(j):
                extra, gain = c.resource[k] - c.resource[j], c.loss[j] - c.loss[k]
                if gain > 0 and spent + extra <= budget and (best is None or gain / extra > best[0]):
                    best = (gain / extra, name, k, extra)
        if best is None:
            return at
        _, name, k, extra = best
        at[name] = k
        spent += extra


def allocate_within(curves: dict[str, Curve], budget: float) -> dict[str, int]:
    """Steps 1–3 for a bound: greedy_allocate, then spend_leftover. {layer: option index}."""
    choice = greedy_allocate(curves, budget)
    return spend_leftover(curves, {n: ch.option for n, ch in choice.items()}, budget)


def interpolate(curve: Curve, resource: float) -> float:
    """The measured loss at `resource`, linear between neighbouring options (clamped at the ends)."""
    r, d = curve.resource, curve.loss
    if resource >= r[0]:
        return d[0]
    for j in range(1, len(r)):
        if resource >= r[j]:
            t = (r[j - 1] - resource) / (r[j - 1] - r[j])
            return d[j - 1] + t * (d[j] - d[j - 1])
    return d[-1]

