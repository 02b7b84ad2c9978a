"""The files a variant can be downloaded as.

- packed (.cmpk): sparse positions, codebooks and Huffman-coded indices (compression/packed.py); the
  smallest, and it reloads to the same logits bit for bit;
- safetensors: the plain fp32 state_dict (weights.plain_model: masks baked in), for any PyTorch code;
- int8 (.pt2): the real int8 program from compression/int8.py, where the variant has one;
- ONNX (.onnx): the model as it computes, fp32, for ONNX Runtime or any ONNX runtime
  (compression/onnx_export.py; the int8 QDQ one needs calibration images: jobs.onnx_export).
"""
from __future__ import annotations

from typing import Callable

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


def downloads(variant: Variant) -> list[tuple[str, str, Callable[[], bytes]]]:
    """(button label, file extension, function making the bytes) for each download of `variant`."""
    files = [("Packed (.cmpk)", "cmpk", lambda: packed_bytes(variant)),
             ("Weights (.safetensors)", "safetensors", lambda: safetensors_bytes(variant))]
    if "int8" in variant.artifacts:
        files.append(("Real int8 (.pt2)", "int8.pt2", lambda: variant.artifacts["int8"]))
    files.append(("ONNX fp32 (.onnx)", "onnx", lambda: onnx_bytes(variant)))
    if "onnx_int8" in variant.artifacts:    # made (and verified) by jobs.onnx_export(int8=True)
        files.append(("ONNX int8 (.onnx)", "int8.onnx", lambda: variant.artifacts["onnx_int8"]))
    return files


def onnx_bytes(variant: Variant) -> bytes:
    from .onnx_export import export_fp32   # imports onnx and onnxscript: only when asked for

    return export_fp32(variant.model, variant_metadata(variant))
