"""Techniques chained, as in the papers, with the same metrics after every stage.

Spiral (iterative prune ↔ distill): each round prunes the previous round's model a little further,
then distils the pruned student from that previous (unpruned-this-round) model as teacher, so each
round's knowledge is handed on before more weights go.

Deep Compression (Han et al. 2016): prune → fine-tune (the masks hold the zeros) → share weights with
per-layer k-means (optionally fine-tuning the centroids) → Huffman-code positions and indices (the
packed file). Every stage is a Variant, so the app and the report can show size against accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator


from .data import ImageSet
from .distill import distill
from .packed_sizes import fixed_width_bytes
from .prune import prune
from .schedule import finetune, iterative_amounts
from .share import bake_shared, cluster_weights, prepare_shared
from .train import TrainConfig, TrainEvent
from .variant import Variant, measure_variant

Report = Callable[..., None]


@dataclass
class Stage:
    """A finished stage: its variant (ready to join the others) and the bytes the stage's storage
    takes. Deep Compression counts, as the paper does: fixed-width codes until the Huffman stage."""
    name: str
    variant: Variant
    stage_bytes: int = 0

    def row(self) -> dict:
        m = self.variant.metrics
        return {"stage": self.name, "variant": self.variant.name, "eval_accuracy": m.eval_accuracy,
                "test_accuracy": m.test_accuracy, "sparsity": m.sparsity, "bytes": self.stage_bytes or m.bytes_packed,
                "ratio": m.reference_bytes / max(1, self.stage_bytes or m.bytes_packed)}


def _measure(model, technique, settings, parent, name, eval_set, test_set):
    return measure_variant(model, technique, settings, parent, name=name, eval_set=eval_set, test_set=test_set,
                           latency=False)


def spiral(base: Variant, train_set: ImageSet, eval_set: ImageSet, rounds: int = 3, amount: float = 0.9,
           epochs_per_round: float = 1.0, T: float = 4.0, alpha: float = 0.9, lr: float = 0.02,
           method: str = "magnitude", test_set: ImageSet | None = None,
           stop: Callable[[], bool] | None = None) -> Iterator[TrainEvent | Stage]:
    """Iterative prune ↔ distill. Yields training events and, per round, a Stage ('pruned' then
    'distilled'). Round r prunes to 1 − (1 − s)^(r/R), then distils from round r − 1's model."""
    teacher_variant = base
    for r, target in enumerate(iterative_amounts(amount, rounds), start=1):
        pruned = prune(teacher_variant.model, target, method)
        settings = {"round": r, "amount": round(target, 4), "T": T, "alpha": alpha}
        yield Stage("pruned", _measure(pruned, "spiral", {**settings, "stage": "pruned"}, teacher_variant,
                                       f"spiral r{r} pruned {100 * target:.0f}%", eval_set, test_set))
        config = TrainConfig(epochs=epochs_per_round, lr=lr, schedule="cosine", label_smoothing=0.0, seed=r)
        yield from distill(pruned, teacher_variant.model, train_set, config, T=T, alpha=alpha, test_set=eval_set,
                           stop=stop)
        distilled = _measure(pruned, "spiral", {**settings, "stage": "distilled"}, teacher_variant,
                             f"spiral r{r} distilled {100 * target:.0f}%", eval_set, test_set)
        yield Stage("distilled", distilled)
        if stop is not None and stop():
            return
        teacher_variant = distilled


def deep_compression(base: Variant, train_set: ImageSet, eval_set: ImageSet, amount: float = 0.9,
                     clusters: int = 16, finetune_epochs: float = 2.0, centroid_epochs: float = 0.0,
                     lr: float = 0.02, test_set: ImageSet | None = None, exempt: tuple[str, ...] = (),
                     stop: Callable[[], bool] | None = None) -> Iterator[TrainEvent | Stage]:
    """Prune → fine-tune → share → Huffman. Yields training events and a Stage per step; the last two
    stages share one variant (Huffman coding changes the file, not the weights)."""
    pruned = prune(base.model, amount, "magnitude", exempt=exempt)
    v = _measure(pruned, "deep-compression", {"stage": "pruned", "amount": amount}, base,
                 f"DC pruned {100 * amount:.0f}%", eval_set, test_set)
    yield Stage("1 pruned", v, fixed_width_bytes(pruned))
    if finetune_epochs > 0:
        yield from finetune(pruned, train_set, finetune_epochs, eval_set, lr=lr, stop=stop)
        v = _measure(pruned, "deep-compression", {"stage": "fine-tuned", "amount": amount,
                                                  "epochs": finetune_epochs}, v,
                     f"DC pruned {100 * amount:.0f}% + FT", eval_set, test_set)
        yield Stage("2 fine-tuned", v, fixed_width_bytes(pruned))
    shared = cluster_weights(pruned, clusters, exempt=exempt)
    if centroid_epochs > 0:
        shared = prepare_shared(shared, clusters, exempt=exempt)
        yield from finetune(shared, train_set, centroid_epochs, eval_set, lr=lr / 4, stop=stop, weight_decay=0.0)
        shared = bake_shared(shared)
    v = _measure(shared, "deep-compression", {"stage": "shared + Huffman", "amount": amount,
                                              "clusters": clusters, "centroid_epochs": centroid_epochs}, v,
                 f"DC pruned {100 * amount:.0f}% shared k={clusters}", eval_set, test_set)
    yield Stage("3 weight sharing", v, fixed_width_bytes(shared))
    yield Stage("4 Huffman coding", v, v.metrics.bytes_packed)
