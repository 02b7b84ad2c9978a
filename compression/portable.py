"""A model or a Variant as plain data, to cross a process or machine boundary (the job engine's
workers) and come back: never a live nn.Module, never a pickle of one.

- a model travels as its packed file (packed.pack_model: bit-exact), plus what the packed file does not
  hold: the layers' activation rounding (quantize.activation_settings, in the packed metadata) and the
  pruning masks of a model that still carries them (one bit per weight, numpy.packbits), so that
  fine-tuning a pruned model in a worker keeps its pruned weights at zero, as it does in the app;
- a Variant travels as that plus its record: name, technique, settings, parent id, metrics (a dict,
  per-layer rows included), artifacts (bytes, e.g. the int8 .pt2) and history.

Reading a payload runs no code from it: unpack_model validates the packed bytes (files.ModelFileError
on anything malformed) and the masks are checked against the layers' shapes.
"""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .weights import ModelFileError
from .metrics import Metrics
from .packed import pack_model, unpack_model
from .prune import prunable_layers
from .activations import activation_settings, set_activation_settings
from .variant import Variant

RECORD = ("id", "name", "technique", "settings", "parent", "created", "artifacts", "history")


def pack_weights(model: nn.Module) -> bytes:
    """The packed file a variant is stored as: weights plus activation rounding in the metadata."""
    return pack_model(model, metadata={"activation_settings": activation_settings(model)})


def unpack_weights(data: bytes, name: str = "file") -> nn.Module:
    """Inverse of pack_weights: the model in eval mode, activation rounding restored. ModelFileError
    for anything malformed (runs no code from the file)."""
    model, metadata = unpack_model(data, name)
    settings = metadata.get("activation_settings", {})
    try:
        if not isinstance(settings, dict):
            raise TypeError("not a JSON object")
        set_activation_settings(model, settings, inplace=True)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{name}: its activation rounding settings are invalid ({exc}). "
                             f"Pack the model again from the app.") from None
    return model.eval()


def model_payload(model: nn.Module) -> dict:
    """{"weights": packed bytes, "masks": {layer: packed bits}} for `model` (not modified)."""
    masks = {name: np.packbits(layer.weight_mask.detach().cpu().numpy().astype(bool).reshape(-1)).tobytes()
             for name, layer in prunable_layers(model).items() if hasattr(layer, "weight_mask")}
    return {"weights": pack_weights(model), "masks": masks}


def model_from_payload(payload: dict, name: str = "model") -> nn.Module:
    """Inverse of model_payload: the same logits bit for bit, the same masks, the same rounding."""
    model = unpack_weights(payload["weights"], name)
    layers = prunable_layers(model)
    for layer_name, bits in (payload.get("masks") or {}).items():
        if layer_name not in layers:
            raise ModelFileError(f"{name}: a pruning mask names layer {layer_name!r}, which the model lacks.")
        weight = layers[layer_name].weight
        flat = np.unpackbits(np.frombuffer(bits, dtype=np.uint8))
        if len(flat) < weight.numel() or flat[weight.numel():].any():
            raise ModelFileError(f"{name}: the pruning mask of {layer_name} does not fit its weight "
                                 f"{tuple(weight.shape)}.")
        mask = torch.from_numpy(flat[:weight.numel()].astype(np.float32)).reshape(weight.shape)
        torch_prune.custom_from_mask(layers[layer_name], "weight", mask.to(weight.dtype))
    return model


def variant_payload(variant: Variant) -> dict:
    """The variant as plain data: its record, its metrics as a dict, its model as model_payload."""
    record = {k: getattr(variant, k) for k in RECORD}
    return {**record, "metrics": variant.metrics.to_dict(with_layers=True), **model_payload(variant.model)}


def variant_from_payload(payload: dict, fresh_id: bool = False) -> Variant:
    """Inverse of variant_payload: the same id and parent, or a new id of this process (`fresh_id`)."""
    known = {f.name for f in fields(Metrics)}
    metrics = Metrics(**{k: v for k, v in payload["metrics"].items() if k in known})
    model = model_from_payload(payload, payload.get("name") or "variant")
    record = {k: payload[k] for k in RECORD if not (fresh_id and k == "id")}
    return Variant(model=model, metrics=metrics, **record)


def variants_from_result(payloads: list[dict]) -> list[Variant]:
    """Variants made elsewhere, ready to join this process's: each gets a fresh id of this process
    (another process numbers its variants from v1 too), and a parent that is one of the same batch
    points at that variant's new id. A parent from outside the batch (the variant the job started
    from) keeps its id."""
    variants = [variant_from_payload(p, fresh_id=True) for p in payloads]
    new_id = {p["id"]: v.id for p, v in zip(payloads, variants)}
    for v in variants:
        v.parent = new_id.get(v.parent, v.parent)
    return variants
