"""*When* to prune, kept apart from *what* pruning is (prune.py, structured.py).

Every schedule aims at an `amount`: the fraction of the prunable weights set to zero, as prune.prune
takes it; its steps are amounts too. (`sparsity` is what prune.sparsity measures in a model.)

- one-shot: prune once to the target (prune.prune), optionally fine-tune after;
- iterative: prune a little, fine-tune, repeat (Han et al. 2015): after round r of R the sparsity is
  s_r = 1 − (1 − s)^(r/R), i.e. the same fraction of the surviving weights goes each round;
- gradual, AGP (Zhu & Gupta 2017): during training, at step t of n the sparsity is
  s_t = s_f + (s_i − s_f)(1 − t/n)³  — fast at first, gently at the end;
- sparse training: add an L1 penalty λ·Σ|w| (or λ·Σ|γ| over BN scales, network slimming) to the loss,
  so that the weights the network can do without drift to zero before they are pruned.

How much each layer tolerates is measured in analysis.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .data import ImageSet
from .prune import prunable_layers, prune, sparsity
from .train import LossFn, TrainConfig, TrainEvent, cross_entropy_loss, evaluate, train


def agp_amount(step: int, total_steps: int, amount: float, initial: float = 0.0) -> float:
    """s_t = s_f + (s_i − s_f)(1 − t/n)³ (s_f = `amount`, s_i = `initial`), clamped to the schedule's end."""
    t = min(max(step, 0), total_steps) / max(1, total_steps)
    return amount + (initial - amount) * (1 - t) ** 3


def agp_curve(amount: float, steps: int = 100, initial: float = 0.0) -> list[tuple[int, float]]:
    """(step, amount) points of the AGP schedule, for plotting."""
    return [(t, agp_amount(t, steps, amount, initial)) for t in range(steps + 1)]


def iterative_amounts(amount: float, rounds: int) -> list[float]:
    """s_r = 1 − (1 − s)^(r/R) for r = 1..R: each round removes the same share of what survives."""
    return [1 - (1 - amount) ** (r / rounds) for r in range(1, rounds + 1)]


def agp_step_hook(amount: float, method: str = "magnitude", scope: str = "global", exempt: Iterable[str] = (),
                  initial: float = 0.0, prune_every: int = 50, end_fraction: float = 0.75,
                  data: ImageSet | None = None) -> Callable[[int, int, nn.Module], None]:
    """A train() step_hook that re-prunes the model in place to the AGP amount every `prune_every`
    steps, reaching `amount` after `end_fraction` of training (the rest fine-tunes at full sparsity)."""
    exempt = tuple(exempt)

    def hook(step: int, total: int, model: nn.Module) -> None:
        end = max(1, int(end_fraction * total))
        if step % prune_every and step != end:
            return
        target = agp_amount(step, end, amount, initial)
        if target > sparsity(model, exempt) + 1e-6:
            prune(model, target, method, scope, exempt=exempt, data=data, inplace=True)

    return hook


def finetune(model: nn.Module, train_set: ImageSet, epochs: float, test_set: ImageSet | None = None,
             lr: float = 0.02, batch_size: int = 128, seed: int = 0, loss_fn: LossFn | None = None,
             step_hook=None, stop=None, events_every: int = 10, **config) -> Iterator[TrainEvent]:
    """Fine-tune in place (masks keep pruned weights at zero): a short cosine schedule from `lr`."""
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, schedule="cosine",
                      label_smoothing=config.pop("label_smoothing", 0.0), **config)
    yield from train(model, train_set, cfg, test_set, loss_fn=loss_fn, step_hook=step_hook, stop=stop,
                     events_every=events_every)


def gradual_prune(model: nn.Module, amount: float, train_set: ImageSet, epochs: float,
                  test_set: ImageSet | None = None, method: str = "magnitude", scope: str = "global",
                  exempt: Iterable[str] = (), lr: float = 0.02, prune_every: int = 50,
                  end_fraction: float = 0.75, **kw) -> Iterator[TrainEvent]:
    """AGP: prune gradually while fine-tuning, in place, reaching `amount` after `end_fraction` of the
    steps (the rest fine-tunes at full sparsity). Yields training events."""
    hook = agp_step_hook(amount, method, scope, exempt, prune_every=prune_every, end_fraction=end_fraction,
                         data=train_set if method == "gradient" else None)
    yield from finetune(model, train_set, epochs, test_set, lr=lr, step_hook=hook, **kw)
    prune(model, amount, method, scope, exempt=exempt, data=train_set, inplace=True)  # land exactly on target


@dataclass
class RoundResult:
    round: int
    sparsity: float
    accuracy_pruned: float | None       # right after pruning
    accuracy_finetuned: float | None    # after fine-tuning
    events: list[TrainEvent] = field(default_factory=list)


def iterative_prune(model: nn.Module, amount: float, rounds: int, train_set: ImageSet, epochs_per_round: float,
                    eval_set: ImageSet | None = None, method: str = "magnitude", scope: str = "global",
                    exempt: Iterable[str] = (), lr: float = 0.02, stop=None) -> Iterator[TrainEvent | RoundResult]:
    """Prune → fine-tune, `rounds` times, in place. Yields training events and a RoundResult per round."""
    for r, target in enumerate(iterative_amounts(amount, rounds), start=1):
        prune(model, target, method, scope, exempt=exempt, data=train_set, inplace=True)
        before = evaluate(model, eval_set).accuracy if eval_set is not None else None
        events = []
        for event in finetune(model, train_set, epochs_per_round, lr=lr, seed=r, stop=stop):
            events.append(event)
            yield event
        after = evaluate(model, eval_set).accuracy if eval_set is not None else None
        yield RoundResult(r, sparsity(model, exempt), before, after, events)
        if stop is not None and stop():
            return


def l1_penalty(model: nn.Module, on: str = "weights") -> torch.Tensor:
    """Σ|w| over conv/linear weights (on="weights") or Σ|γ| over BatchNorm scales (on="bn")."""
    if on == "bn":
        terms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    elif on == "weights":
        terms = [m.weight.abs().sum() for m in prunable_layers(model).values()]
    else:
        raise ValueError("on must be 'weights' or 'bn'")
    return torch.stack(terms).sum()


def sparse_training_loss_fn(strength: float, on: str = "weights", base: LossFn | None = None) -> LossFn:
    """loss = base loss + λ · L1 penalty: a train() loss_fn for sparse training."""
    base = base or cross_entropy_loss()

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        loss, logits = base(model, x, y)
        return loss + strength * l1_penalty(model, on), logits

    return loss_fn
