"""The files a variant can be downloaded as.

- packed (.cmpk): sparse positions, codebooks and Huffman-coded indices (compression/packed.py); the
  smallest, and it reloads to the same logits bit for bit;
- safetensors: the plain fp32 state_dict (weights.plain_model: masks baked in), for any PyTorch code;
- int8 (.pt2): the real int8 program from compression/int8.py, where the variant has one;
- ONNX (.onnx): the model as it computes, fp32 or int8 QDQ, for ONNX Runtime or any ONNX runtime
  (compression/onnx_export.py; jobs.onnx_file makes the files Compare & Download offers).
"""
from __future__ import annotations

from .files import model_metadata, state_dict_bytes
from .packed import pack_model
from .variant import Variant
from .weights import plain_model


def variant_metadata(variant: Variant) -> dict:
    return {"name": variant.name, "technique": variant.technique, "recipe": variant.recipe,
            "eval_accuracy": "" if variant.metrics.eval_accuracy is None else f"{variant.metrics.eval_accuracy:.4f}"}


def packed_bytes(variant: Variant) -> bytes:
    return pack_model(variant.model, metadata=variant_metadata(variant))


def safetensors_bytes(variant: Variant) -> bytes:
    plain = plain_model(variant.model)
    return state_dict_bytes(plain, {**model_metadata(plain), **variant_metadata(variant)})
