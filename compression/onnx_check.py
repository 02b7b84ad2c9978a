"""Loading a user's .onnx file safely, with a clear ModelFileError for anything wrong with it.

An ONNX file is protobuf data: reading one runs no code. A damaged or hostile file can still make a
runtime read files from disk (external data), run operators that are not standard ONNX (custom domains
are native code), or allocate absurd amounts of memory (a convolution padded by a million pixels).
So `load_onnx` checks, in order, before ONNX Runtime ever sees the file:

1. size ≤ MAX_ONNX_BYTES;
2. it parses as an ONNX ModelProto (a truncated or garbled file fails here, or at step 3);
3. onnx.checker.check_model(full_check=True): structure, types, operator versions;
4. standard operators only: no domain but the default one (in opset_import or any node), no
   model-local functions, no subgraphs; every op type in ALLOWED_OPS (what CNN classifiers and
   QDQ quantization use); at most MAX_NODES nodes;
5. every initializer stored inside the file (no external data, no sparse initializers);
6. exactly one input, float32, shape (N, 3, 32, 32), and one output, float32, shape (N, 10);
7. shape inference with N = 1 gives every tensor a static shape of at most MAX_ELEMENTS values;
8. an ONNX Runtime CPU session runs a probe batch of 2 images to finite logits of shape (2, 10).

A file that passes is as safe to run as a model this app exported. (A changed weight that keeps the
file valid cannot be told from a different model: it is evaluated like any other.)
"""
from __future__ import annotations

import math

import torch

from .data import ImageSet
from .files import ModelFileError
from .metrics import latency_ms
from .onnx_export import OnnxModel
from .train import evaluate

MAX_ONNX_BYTES = 64 << 20     # resnet56 at width 2, fp32, is 14 MB
MAX_NODES = 10_000
MAX_ELEMENTS = 1 << 24         # per tensor, per image: 64 MB of float32
ALLOWED_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "Add", "Sub", "Mul", "Div",
    "GlobalAveragePool", "AveragePool", "MaxPool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
    "Transpose", "Concat", "Shape", "Gather", "Identity", "Constant", "Cast", "Round", "Softmax",
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
})
STANDARD_DOMAINS = ("", "ai.onnx")
ADVICE = "Export the model again (python -m compression export MODEL --format onnx), or upload another file."


def _bad(name: str, what: str) -> ModelFileError:
    return ModelFileError(f"{name} is not a usable ONNX model of a CIFAR-10 classifier: {what}. {ADVICE}")


def parse(data: bytes, name: str = "file"):
    """Steps 1–3: the checked onnx.ModelProto."""
    import onnx
    from google.protobuf.message import DecodeError

    if len(data) > MAX_ONNX_BYTES:
        raise ModelFileError(f"{name} is {len(data) / 2**20:.0f} MiB; ONNX uploads are limited to "
                             f"{MAX_ONNX_BYTES >> 20} MiB (the CIFAR ResNets are far smaller). {ADVICE}")
    if len(data) == 0:
        raise _bad(name, "the file is empty")
    try:
        proto = onnx.load_model_from_string(bytes(data))
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{name} is not an ONNX file, or it is truncated or damaged (protobuf: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). {ADVICE}") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise _bad(name, "it holds no graph (is it truncated?)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError) as exc:
        raise _bad(name, f"onnx.checker rejects it ({_first_line(exc)})") from None
    return proto


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def check_operators(proto, name: str = "file") -> None:
    """Steps 4–5: standard operators, no functions or subgraphs, weights inside the file."""
    import onnx

    domains = {op.domain for op in proto.opset_import} - set(STANDARD_DOMAINS)
    if domains:
        raise _bad(name, f"it imports operator domains {sorted(domains)}; only standard ONNX operators are allowed")
    if proto.functions:
        raise _bad(name, "it defines its own functions; only standard ONNX operators are allowed")
    if len(proto.graph.node) > MAX_NODES:
        raise _bad(name, f"it has {len(proto.graph.node)} operations, more than the {MAX_NODES} allowed")
    for node in proto.graph.node:
        if node.domain not in STANDARD_DOMAINS or node.op_type not in ALLOWED_OPS:
            where = f"{node.domain}::" if node.domain not in STANDARD_DOMAINS else ""
            raise _bad(name, f"operation {node.name or '?'} is {where}{node.op_type}, which is not among the "
                             f"standard operators allowed ({', '.join(sorted(ALLOWED_OPS))})")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise _bad(name, f"operation {node.name or '?'} holds a subgraph")
    if proto.graph.sparse_initializer:
        raise _bad(name, "it has sparse initializers, which this app does not read")
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise _bad(name, f"tensor {tensor.name!r} refers to data in another file; upload a self-contained "
                             f"model (weights inside the .onnx)")


def _dims(value_info) -> list:
    """A tensor's dimensions: ints where known, names (or None) where not."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def check_interface(proto, name: str = "file") -> None:
    """Step 6: one float input (N, 3, 32, 32), one float output (N, 10)."""
    import onnx

    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise _bad(name, f"it has {len(inputs)} inputs and {len(proto.graph.output)} outputs; a CIFAR-10 "
                         f"classifier has one of each")
    for value, role, shape in ((inputs[0], "input", (3, 32, 32)), (proto.graph.output[0], "output", (10,))):
        dtype = value.type.tensor_type.elem_type
        dims = _dims(value)
        if dtype != onnx.TensorProto.FLOAT or len(dims) != len(shape) + 1 or tuple(dims[1:]) != shape:
            kind = onnx.TensorProto.DataType.Name(dtype) if dtype in onnx.TensorProto.DataType.values() else "?"
            raise _bad(name, f"its {role} {value.name!r} is {kind} of shape {tuple(dims)}, expected FLOAT of "
                             f"shape (N, {', '.join(map(str, shape))})")


def check_sizes(proto, name: str = "file") -> None:
    """Step 7: with the batch set to 1 (or the file's fixed batch b), every tensor has a static shape of
    at most b · MAX_ELEMENTS values."""
    import onnx

    single = onnx.ModelProto()
    single.CopyFrom(proto)
    del single.graph.value_info[:]
    initializers = {t.name for t in single.graph.initializer}
    batch = 1
    for value in [*single.graph.input, *single.graph.output]:
        if value.name not in initializers:
            first = value.type.tensor_type.shape.dim[0]
            batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else batch
    for value in [*single.graph.input, *single.graph.output]:
        if value.name not in initializers:
            value.type.tensor_type.shape.dim[0].Clear()
            value.type.tensor_type.shape.dim[0].dim_value = batch
    try:
        inferred = onnx.shape_inference.infer_shapes(single, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        raise _bad(name, f"its tensor shapes do not fit together ({_first_line(exc)})") from None
    known = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    for node in inferred.graph.node:
        for output in node.output:
            dims = known.get(output)
            if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
                raise _bad(name, f"the size of tensor {output!r} cannot be determined before running it")
            if math.prod(dims) > batch * MAX_ELEMENTS:
                raise _bad(name, f"tensor {output!r} would hold {math.prod(dims) // batch:,} values per image, "
                                 f"more than the {MAX_ELEMENTS:,} allowed")


def check_onnx(data: bytes, name: str = "file"):
    """Steps 1–7 of the module docstring: the checked onnx.ModelProto, or ModelFileError."""
    try:
        proto = parse(data, name)
        check_operators(proto, name)
        check_interface(proto, name)
        check_sizes(proto, name)
    except ModelFileError:
        raise
    except Exception as exc:   # a damaged file can trip the protobuf and checker bindings in many ways
        raise _bad(name, f"it cannot be read ({type(exc).__name__}: {_first_line(exc)})") from None
    return proto


def session(proto, name: str = "file", threads: int | None = None) -> OnnxModel:
    """Step 8: an OnnxModel of a checked file, once a probe batch has given finite (2, 10) logits."""
    try:
        model = OnnxModel(proto.SerializeToString(), threads)
        probe = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    except Exception as exc:   # ONNX Runtime's own exception types (Fail, InvalidGraph, …) share no base class
        raise _bad(name, f"ONNX Runtime cannot run it ({type(exc).__name__}: {_first_line(exc)})") from None
    if probe.shape != (2, 10):
        raise _bad(name, f"on a probe batch it gives shape {tuple(probe.shape)} instead of (2, 10) class scores")
    if not torch.isfinite(probe).all():
        raise _bad(name, "on a probe batch it gives NaN or infinite class scores (broken weights?)")
    return model


def load_onnx(data: bytes, name: str = "file", threads: int | None = None) -> OnnxModel:
    """A user's ONNX file as an OnnxModel after every check of the module docstring; ModelFileError
    with a message that says what is wrong otherwise."""
    return session(check_onnx(data, name), name, threads)


def evaluate_onnx_upload(data: bytes, name: str, eval_set: ImageSet, latency: bool = True) -> dict:
    """What the app shows for an uploaded .onnx: accuracy on `eval_set`, file size, operators and
    CPU latency at batch 1 and 256 (median of several runs). ModelFileError for a bad file."""
    proto = check_onnx(data, name)
    model = session(proto, name)
    result = evaluate(model, eval_set, device="cpu")
    report = {"file": name, "bytes": len(data), "accuracy": result.accuracy, "images": result.images,
              "per_class": result.per_class, "producer": proto.producer_name,
              "opset": max(op.version for op in proto.opset_import if op.domain in STANDARD_DOMAINS),
              "operators": sorted({n.op_type for n in proto.graph.node})}
    if latency:
        report["latency_b1_ms"] = latency_ms(model, 1, repeats=20)
        report["latency_b256_ms"] = latency_ms(model, 256, repeats=5)
    return report
