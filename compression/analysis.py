"""Analyses of how pruning hurts, with no fine-tuning: measurements, not schedules.

- accuracy against amount: one-shot pruning of copies of the model at several amounts, each evaluated;
- sensitivity (as Distiller draws it): prune one layer alone at several amounts, everything else
  dense, and measure the accuracy, to see which layers tolerate pruning and which do not.
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

from .data import ImageSet
from .prune import prunable_layers, prune
from .train import evaluate


def accuracy_vs_amount(model: nn.Module, eval_set: ImageSet, amounts: Iterable[float],
                         method: str = "magnitude", scope: str = "global", exempt: Iterable[str] = (),
                         data: ImageSet | None = None) -> list[tuple[float, float]]:
    """(amount, accuracy) for one-shot pruning of copies of `model` at each amount (no fine-tuning)."""
    return [(a, evaluate(prune(model, a, method, scope, exempt=exempt, data=data), eval_set).accuracy)
            for a in amounts]


def sensitivity(model: nn.Module, eval_set: ImageSet, amounts: Iterable[float] = (0.0, 0.3, 0.5, 0.7, 0.9, 0.95),
                method: str = "magnitude", layers: Iterable[str] | None = None,
                progress: Callable[[int, int], None] | None = None,
                stop: Callable[[], bool] | None = None) -> dict[str, list[tuple[float, float]]]:
    """For each layer alone: (sparsity, accuracy) after pruning only that layer, everything else dense."""
    names = list(layers) if layers is not None else list(prunable_layers(model))
    amounts = list(amounts)
    curves = {}
    for i, name in enumerate(names):
        if stop is not None and stop():
            break
        others = [n for n in prunable_layers(model) if n != name]
        curves[name] = [(a, evaluate(prune(model, a, method, "layer", exempt=others), eval_set).accuracy)
                        for a in amounts]
        if progress:
            progress(i + 1, len(names))
    return curves
