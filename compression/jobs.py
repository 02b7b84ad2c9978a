"""Long-running work for the app's background worker (compression.worker), as plain functions.

Each takes `report(**fields)` to publish progress and `stop()` to ask whether to end early, and
returns its result (usually a Variant). They call the library like the CLI does; none knows about
Streamlit.
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

from .data import ImageSet
from .models import copy_model, create_model
from .schedule import accuracy_vs_sparsity, finetune, sensitivity
from .train import TrainConfig, TrainEvent, train
from .variant import Variant, measure_variant

Report = Callable[..., None]
Stop = Callable[[], bool]


def report_events(events: Iterable[TrainEvent], report: Report, phase: str = "") -> TrainEvent | None:
    last = None
    for last in events:
        report(phase=phase, **last.to_dict())
    return last


def train_model(arch: str, width: float, config: TrainConfig, train_set: ImageSet, eval_set: ImageSet,
                report: Report, stop: Stop, test_set: ImageSet | None = None, name: str | None = None) -> Variant:
    """Train a fresh model; returns it as a 'trained' variant (measured on the eval subset)."""
    model = create_model(arch, width)
    last = report_events(train(model, train_set, config, eval_set, stop=stop), report, "train")
    settings = {"arch": arch, "width": width, "epochs": config.epochs, "lr": config.lr,
                "batch_size": config.batch_size, "data": train_set.name, "images": len(train_set)}
    if last is not None and last.step < last.total_steps:
        settings["stopped_at_epoch"] = round(last.epoch, 2)
    report(phase="measure")
    return measure_variant(model, "trained", settings, name=name or f"{arch} trained ({config.epochs:g} ep)",
                           eval_set=eval_set, test_set=test_set, latency=True)


def finetune_variant(parent: Variant, model: nn.Module, technique: str, settings: dict, epochs: float,
                     train_set: ImageSet, eval_set: ImageSet, report: Report, stop: Stop, lr: float = 0.02,
                     name: str | None = None, test_set: ImageSet | None = None, **kw) -> Variant:
    """Fine-tune `model` (a compressed copy of `parent`'s model, e.g. pruned) and return it as a variant."""
    model = copy_model(model)
    report_events(finetune(model, train_set, epochs, eval_set, lr=lr, stop=stop, **kw), report, "finetune")
    report(phase="measure")
    settings = {**settings, "finetune_epochs": epochs, "finetune_lr": lr}
    return measure_variant(model, technique, settings, parent, name=name, eval_set=eval_set, test_set=test_set,
                           latency=True)


def pruning_curve(model: nn.Module, eval_set: ImageSet, method: str, scope: str, exempt: tuple[str, ...],
                  report: Report, stop: Stop, data: ImageSet | None = None,
                  amounts: Iterable[float] = (0, .1, .2, .3, .4, .5, .6, .7, .8, .85, .9, .95, .99)) -> list:
    """Eval accuracy after one-shot pruning at each amount: the accuracy-against-ratio curve."""
    points = []
    for a in amounts:
        if stop():
            break
        points += accuracy_vs_sparsity(model, eval_set, [a], method, scope, exempt, data)
        report(done=len(points))
    return points


def structured_curve(model: nn.Module, eval_set: ImageSet, criterion: str, report: Report, stop: Stop,
                     calib: ImageSet | None = None,
                     ratios: Iterable[float] = (0, .1, .2, .3, .4, .5, .6, .7, .8, .9)) -> list:
    """Eval accuracy after removing each ratio of filters (no fine-tuning)."""
    from .structured import largest_ratio, prune_filters
    from .train import evaluate

    points = []
    for r in [r for r in ratios if r <= largest_ratio(model)]:
        if stop():
            break
        points.append((r, evaluate(prune_filters(model, r, criterion, calib=calib), eval_set).accuracy))
        report(done=len(points))
    return points


def sensitivity_curves(model: nn.Module, eval_set: ImageSet, report: Report, stop: Stop,
                       method: str = "magnitude") -> dict:
    return sensitivity(model, eval_set, method=method, progress=lambda i, n: report(done=i, total=n))
