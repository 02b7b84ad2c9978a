import pytest

from compression.models import create_model
from compression.pipelines import Stage, deep_compression, spiral
from compression.prune import sparsity
from compression.variant import measure_variant
from compression.views import distinct_values, layer_names
from helpers import toy_set


@pytest.fixture
def base():
    data = toy_set(64, seed=5)
    return measure_variant(create_model("resnet8", width=0.25), "trained", eval_set=data)


def test_deep_compression_stages_shrink_and_keep_their_promises(base):
    stages = [s for s in deep_compression(base, toy_set(128), toy_set(64, seed=5), amount=0.8, clusters=4,
                                          finetune_epochs=0.5, centroid_epochs=0.5)
              if isinstance(s, Stage)]
    assert [s.name for s in stages] == ["1 pruned", "2 fine-tuned", "3 weight sharing", "4 Huffman coding"]
    sizes = [s.stage_bytes for s in stages]
    assert sizes[2] < sizes[1] and sizes[3] < sizes[2], sizes
    final = stages[-1].variant.model
    assert sparsity(final) == pytest.approx(0.8, abs=0.002)
    for name in layer_names(final):
        assert distinct_values(final, name) <= 4 + 1          # k centroids and zero
    assert stages[-1].variant.parent == stages[1].variant.id
    assert stages[-1].row()["ratio"] > 5     # a tiny model: BN tensors and the header weigh a lot


def test_spiral_prunes_further_each_round_and_distils_from_the_last(base):
    stages = [s for s in spiral(base, toy_set(128), toy_set(64, seed=5), rounds=2, amount=0.75,
                                epochs_per_round=0.5) if isinstance(s, Stage)]
    assert [s.name for s in stages] == ["pruned", "distilled"] * 2
    sp = [s.variant.metrics.sparsity for s in stages]
    assert sp[0] == pytest.approx(0.5, abs=0.01) and sp[-1] == pytest.approx(0.75, abs=0.01)
    assert stages[2].variant.parent == stages[1].variant.id    # round 2 starts from round 1's student
