"""ONNX export: the model as a standard graph that ONNX Runtime (or any ONNX runtime) runs without PyTorch.

- fp32 (`export_fp32`): torch.onnx.export with the torch.export-based exporter (`dynamo=True`, the
  maintained default since torch 2.9; it needs onnxscript, which also folds each BatchNorm into its
  conv). The model is exported as it computes: pruning masks baked in (pruned weights are plain
  zeros), structured-pruned layers at their real smaller shapes, QAT weights converted onto their grid,
  simulated activation rounding kept (as Round/Clip ops). The batch dimension is dynamic. Debug
  metadata (Python stack traces, local paths) is removed from the nodes.
- int8 (`export_int8`): ONNX Runtime's static quantization (onnxruntime.quantization.quantize_static)
  of the fp32 export of the model's plain weights, in the QDQ format: QuantizeLinear/DequantizeLinear
  pairs around every Conv, Add and Gemm, which ONNX Runtime fuses into integer kernels (QLinearConv,
  QLinearAdd, QGemm). Weights int8, symmetric, per output channel, with `reduce_range` (7 bits);
  activations uint8, asymmetric, per tensor, ranges calibrated (MinMax) on the same
  `batches` × `batch_size` training images int8.to_int8 calibrates on. These are ONNX Runtime's own
  settings for x86 CPUs without VNNI (AVX2 only, like most student laptops and this project's
  machine), whose uint8 × int8 kernels add pairs of products in 16 bits and can saturate; 7-bit
  weights leave room. Measured here (resnet20 unless said; eval subset; one thread):
    uint8/int8, 8-bit weights     saturates: resnet8 84.2 → 81.0 %
    uint8/int8, 7-bit weights     (chosen) resnet8 84.2 %; fully fused (21 QLinearConv, 9 QLinearAdd,
                                  QGemm): batch 256 in 255 ms against 404 ms for the fp32 export
    int8/int8                     accurate, but only 9 of 21 convs fused: 608 ms, slower than fp32
    torch.onnx.export of the      the same arithmetic as PT2E (99.6 % same top-1), but ONNX Runtime
    PT2E graph (int8.py)          fuses none of its convs (the X86 quantizer leaves conv outputs
                                  unquantized before ReLU and the residual add): float convs between
                                  Q/DQ pairs, 771 ms against 410 ms for fp32 — no int8 speed-up.

`OnnxModel` runs an ONNX file in ONNX Runtime behind the interface of a float model (float images in
[0, 1], shape (N, 3, 32, 32) → logits), so train.evaluate and metrics.compare_latency take it.
`verify` measures an export against the PyTorch model it came from: accuracy, top-1 agreement, the
largest logit difference and batch-1 / batch-256 CPU latency, timed alternately in one run.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import ImageSet, calibration_batches, to_float
from .int8 import to_int8
from .metrics import compare_latency
from .models import InferenceOnly
from .qat import convert_qat
from .train import predict_logits
from .weights import plain_model

OPSET = 20
INPUT, OUTPUT = "images", "logits"
MAX_BATCH = 4096
QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration", "torch.onnx", "onnxscript")


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's chatter for the length of an export: a warning per torchvision op it
    cannot register (torchvision is not installed), deprecation notices from torch.export internals."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def exportable(model: nn.Module) -> nn.Module:
    """A plain copy in eval mode that computes what `model` computes: masks baked in, QAT converted;
    simulated activation rounding stays (it exports as ordinary ops)."""
    return convert_qat(model).eval()


def strip_debug_info(proto) -> None:
    """Remove what the exporter records for debugging (per node: the Python stack trace with local
    file paths, the FX node, name scopes); it is most of a small model's file."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    proto.graph.doc_string = ""
    proto.doc_string = ""


def export_proto(model: nn.Module, metadata: dict | None = None):
    """torch.onnx.export of `model` (already plain, eval mode) as an onnx.ModelProto: input "images"
    (batch, 3, 32, 32) float, output "logits" (batch, 10), batch dynamic."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(model, (torch.rand(2, 3, 32, 32),), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT], output_names=[OUTPUT], verbose=False,
                                    dynamic_shapes=({0: batch},), optimize=True)
    proto = program.model_proto
    strip_debug_info(proto)
    proto.producer_name = "model-compression-playground"
    info = {"arch": getattr(model, "arch", ""), "width": str(getattr(model, "width", 1.0)), **(metadata or {})}
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in info.items()})
    return proto


def export_fp32(model: nn.Module, metadata: dict | None = None) -> bytes:
    """The model as it computes, as an fp32 ONNX file (module docstring); checked with onnx.checker."""
    import onnx

    proto = export_proto(exportable(model), metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def drop_unused_domains(proto) -> None:
    """Keep only the operator sets the nodes use: the quantization tool imports eight more (com.microsoft,
    ai.onnx.ml, …), which a careful loader (onnx_check) would rightly refuse."""
    used = {node.domain for node in proto.graph.node} | {""}
    keep = [op for op in proto.opset_import if op.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader over float batches: {"images": array} each."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches = iter([{INPUT: b.numpy()} for b in batches])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def export_int8(model: nn.Module, calib: ImageSet, batches: int = 4, batch_size: int = 128,
                metadata: dict | None = None, calibrate: str = "MinMax") -> bytes:
    """The model's plain weights as an int8 QDQ ONNX file, calibrated on `batches` batches of `calib`
    (the same images int8.to_int8 calibrates on); checked with onnx.checker. `calibrate` names
    onnxruntime's CalibrationMethod for the activation ranges: MinMax (the default, as PT2E's observers),
    Percentile (99.999th) or Entropy (bench/onnx_int8_agreement.py compares them)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = export_proto(plain_model(model).eval(), {"quantization": "int8 QDQ (onnxruntime)", **(metadata or {})})
    with tempfile.TemporaryDirectory() as folder, quiet_exporter():
        fp32, prepared, out = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(proto, fp32)
        quant_pre_process(str(fp32), str(prepared))          # shape inference + graph clean-up, as ORT advises
        images = [to_float(batch.images) for batch in calibration_batches(calib, batches, batch_size)]
        quantize_static(str(prepared), str(out), CalibrationReader(images),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[calibrate])
        data = out.read_bytes()
    result = onnx.load_model_from_string(data)
    drop_unused_domains(result)
    onnx.helper.set_model_props(result, {p.key: p.value for p in proto.metadata_props})
    onnx.checker.check_model(result, full_check=True)
    return result.SerializeToString()


class OnnxModel(InferenceOnly):
    """An ONNX file in an ONNX Runtime CPU session, called like the float model: float images in [0, 1]
    of shape (N, 3, 32, 32) → logits (N, 10), as torch tensors. Inference only. `threads` defaults to
    torch's, so that comparisons with PyTorch use the same cores. Trusted bytes only: a user's file
    goes through onnx_check.load_onnx first."""

    kind = "an ONNX model"

    def __init__(self, data: bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3                     # errors only
        # No busy-waiting between runs: spinning threads would steal the cores from PyTorch's when the two
        # are timed in turn (PyTorch at batch 1 measured 100× slower beside a spinning session).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.size_bytes = len(data)
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) and batch > 0 else None   # a file exported with a fixed batch
        self._device = torch.zeros(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        if self.batch is None:
            return torch.from_numpy(self.session.run(None, {self.input: array})[0])
        n = len(array)                                     # fixed batch: run it in chunks, the last one padded
        padded = np.concatenate([array, np.zeros((-n % self.batch, *array.shape[1:]), array.dtype)])
        chunks = [self.session.run(None, {self.input: padded[i:i + self.batch]})[0]
                  for i in range(0, len(padded), self.batch)]
        return torch.from_numpy(np.concatenate(chunks)[:n])

    def parameters(self):
        """One empty CPU tensor: where train.predict_logits looks for the model's device."""
        return iter([self._device])


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of images with the same top-1 class."""
    return (logits.argmax(1) == reference.argmax(1)).float().mean().item()


def verify(onnx_model: OnnxModel, references: dict[str, nn.Module], eval_set: ImageSet,
           latency: bool = True, repeats: int = 7) -> dict:
    """How an export compares with the PyTorch models it should match, on `eval_set`:
    {"onnx": {accuracy, bytes}, name: {accuracy, agreement (same top-1 as ONNX), max_abs_diff}, …,
    "latency_ms": {batch 1 and 256: {"onnx": ms, name: ms, …}}} — latency timed alternately in one run
    (metrics.compare_latency), median of `repeats`."""
    logits = predict_logits(onnx_model, eval_set.images, device="cpu")
    labels = eval_set.labels
    result = {"images": len(eval_set), "onnx": {"accuracy": (logits.argmax(1) == labels).float().mean().item(),
                                                "bytes": onnx_model.size_bytes}}
    for name, model in references.items():
        ref = predict_logits(model, eval_set.images, device="cpu")
        result[name] = {"accuracy": (ref.argmax(1) == labels).float().mean().item(),
                        "agreement": agreement(logits, ref), "max_abs_diff": (logits - ref).abs().max().item()}
    if latency:
        models = {"onnx": onnx_model, **references}
        result["latency_ms"] = {f"batch {b}": compare_latency(models, b, repeats=repeats * (4 if b == 1 else 1))
                                for b in (1, 256)}
    return result


def export_and_verify(model: nn.Module, eval_set: ImageSet, int8: bool = False, calib: ImageSet | None = None,
                      latency: bool = True, metadata: dict | None = None) -> tuple[bytes, dict]:
    """One call for the CLI and the app: (ONNX bytes, verify() against the PyTorch models). fp32 is
    compared with the model in PyTorch (eager); int8 with the float model and with PT2E int8
    (int8.to_int8, calibrated on the same images; compiled on first use, which needs a C++ compiler)."""
    if int8:
        if calib is None:
            raise ValueError("an int8 export needs calibration images (calib)")
        data = export_int8(model, calib, metadata=metadata)
        references = {"pytorch_fp32": plain_model(model).eval(), "pt2e_int8": to_int8(model, calib)}
    else:
        data = export_fp32(model, metadata)
        references = {"pytorch_fp32": exportable(model)}
    report = verify(OnnxModel(data), references, eval_set, latency)
    report["format"] = "int8 QDQ" if int8 else "fp32"
    return data, report

