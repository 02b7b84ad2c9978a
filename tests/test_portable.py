import pytest
import torch

from compression.data import to_float
from compression.files import ModelFileError
from compression.models import create_model
from compression.portable import (model_from_payload, model_payload, variant_from_payload, variant_payload,
                                  variants_from_result)
from compression.prune import prune, sparsity
from compression.activations import activation_settings, quantize_model
from compression.schedule import finetune
from compression.train import run_to_end
from compression.variant import measure_variant
from helpers import toy_set

# resnet8 at width 0.5: at 0.25 the 1x1 stride-2 shortcut has 4 input channels, which oneDNN's AVX2 kernel
# for channels-last weight gradients (torch 2.13) crashes on with 1 thread and hangs on with 2
WIDTH = 0.5


def logits(model, images):
    with torch.no_grad():
        return model.eval()(to_float(images))


def test_a_pruned_model_comes_back_bit_exact_and_still_masked():
    data = toy_set(64)
    pruned = prune(create_model("resnet8", WIDTH), 0.6)
    back = model_from_payload(model_payload(pruned))
    assert torch.equal(logits(back, data.images), logits(pruned, data.images))
    masks = {n: m.weight_mask for n, m in back.named_modules() if hasattr(m, "weight_mask")}
    assert masks and all(torch.equal(masks[n], m.weight_mask) for n, m in pruned.named_modules() if n in masks)
    run_to_end(finetune(back, data, 0.5, batch_size=32, lr=0.1))      # the masks hold the zeros while it learns
    assert sparsity(back) == pytest.approx(0.6, abs=1e-3)


def test_activation_rounding_travels_with_the_weights():
    data = toy_set(64)
    quantized = quantize_model(create_model("resnet8", WIDTH), 4, a_bits=4, calib=data)
    back = model_from_payload(model_payload(quantized))
    assert activation_settings(back) == activation_settings(quantized) != {}
    assert torch.equal(logits(back, data.images), logits(quantized, data.images))


def test_a_variant_keeps_its_record_and_a_batch_gets_fresh_ids_linked_to_each_other():
    data = toy_set(64)
    parent = measure_variant(create_model("resnet8", WIDTH), "trained", {"epochs": 1}, eval_set=data)
    child = measure_variant(prune(parent.model, 0.5), "pruned", {"amount": 0.5}, parent, eval_set=data,
                            artifacts={"int8": b"\x00program"}, history=[{"round": 1}])
    grandchild = measure_variant(prune(child.model, 0.7), "pruned", {"amount": 0.7}, child, eval_set=data)
    same = variant_from_payload(variant_payload(child))
    assert (same.id, same.parent, same.name, same.settings, same.artifacts, same.history, same.metrics) == \
           (child.id, parent.id, child.name, child.settings, child.artifacts, child.history, child.metrics)
    made = variants_from_result([variant_payload(child), variant_payload(grandchild)])
    assert {v.id for v in made}.isdisjoint({child.id, grandchild.id})
    assert made[0].parent == parent.id and made[1].parent == made[0].id


def test_a_mask_that_does_not_fit_is_refused_with_a_message():
    payload = model_payload(prune(create_model("resnet8", WIDTH), 0.5))
    payload["masks"]["fc"] = b"\xff"
    with pytest.raises(ModelFileError, match="mask of fc does not fit"):
        model_from_payload(payload)
