"""Real int8 inference on the CPU: PyTorch 2 Export quantization (PT2E, from torchao) with the
X86InductorQuantizer, lowered by torch.compile (Inductor) onto oneDNN's int8 kernels.

quantize.py *simulates* quantization in float32; this module runs the real thing, in five steps:

1. export     torch.export.export captures the model as a graph of ATen operations.
2. prepare    the X86InductorQuantizer decides what becomes 8-bit (weights: int8, symmetric, per
              output channel; activations: uint8, asymmetric, per tensor) and inserts observers.
              BatchNorm is folded into the preceding convolution.
3. calibrate  a few batches flow through the observers, which record each activation's range
              (a histogram, from which a clipping range is chosen).
4. convert    observers become quantize → dequantize pairs with the chosen scale and zero point;
              weights are stored as int8 tensors.
5. compile    torch.compile with Inductor's `freezing` on: weights become constants, and each
              dequantize → conv → quantize pattern is replaced by one oneDNN int8 convolution
              (ReLU and the residual addition fused in) with its weight pre-packed. These rewrites
              are freezing passes: without freezing the int8 model ran barely faster than float
              (1.15× against 5× on resnet20, batch 256).

Compilation happens on the first call at each batch size (5–10 s on a 2-core machine) and needs a
C++ compiler. Shapes are compiled static, because the weight pre-packing wants the input shape (a
dynamic batch dimension fails to compile with freezing). After torch._dynamo's recompile limit
(8 batch sizes) further sizes run uncompiled, through the slow reference quantize/dequantize ops.
"""
from __future__ import annotations

import io
import logging
import time

import torch
from torch import nn

from .data import ImageSet, calibration_batches, to_float
from .models import InferenceOnly
from .weights import plain_model

MAX_BATCH = 4096


def import_torchao_quietly() -> None:
    """Import torchao without its import-time warnings: on a CPU build of torch it logs a "Failed to
    load" line for each of its CUDA-only extensions, and a deprecation notice through torch's pytree
    logger — noise in a student's terminal about code this module never uses."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def x86_quantizer():
    """The X86InductorQuantizer with its default static int8 configuration."""
    import_torchao_quietly()
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    return quantizer


def export_graph(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Step 1: the model as an ATen graph whose batch dimension may vary."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()


def drop_unused_parameters(program: torch.fx.GraphModule) -> None:
    """convert_pt2e leaves the float weights behind next to their int8 copies; remove them."""
    used = {node.target for node in program.graph.nodes if node.op == "get_attr"}
    for name, _ in list(program.named_parameters()):
        if name not in used:
            owner_name, _, attribute = name.rpartition(".")
            delattr(program.get_submodule(owner_name), attribute)


def quantize_pt2e(model: nn.Module, calib: ImageSet, batches: int = 4, batch_size: int = 128) -> torch.fx.GraphModule:
    """Steps 1–4: the converted graph, holding int8 weights and quantize/dequantize ops (not compiled)."""
    import_torchao_quietly()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = plain_model(model).eval()   # masks baked in, simulated rounding removed
    images = [to_float(batch.images) for batch in calibration_batches(calib, batches, batch_size)]
    with torch.no_grad():
        prepared = prepare_pt2e(export_graph(model, images[0]), x86_quantizer())
        for x in images:
            prepared(x)
        program = convert_pt2e(prepared)
    drop_unused_parameters(program)
    return program


class Int8Model(InferenceOnly):
    """The converted int8 program, compiled on first use at each batch size (step 5).

    Call it like the float model, on float images in [0, 1] of shape (N, 3, 32, 32). Inference only;
    it works with train.evaluate and metrics.latency_ms. `compile_seconds[batch]` records how long
    the first call at each batch size took.
    """

    kind = "an int8 model"

    def __init__(self, program: torch.fx.GraphModule):
        self.program = program
        self.compiled = torch.compile(program, dynamic=False)
        self.compile_seconds: dict[int, float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torch._inductor import config as inductor_config   # slow to import: only when needed

        # One memory layout, so strides never trigger a recompile; oneDNN prefers channels-last.
        x = x.float().contiguous(memory_format=torch.channels_last)
        first = x.shape[0] not in self.compile_seconds
        start = time.perf_counter()
        with torch.no_grad(), inductor_config.patch(freezing=True):
            out = self.compiled(x)
        if first:
            self.compile_seconds[x.shape[0]] = time.perf_counter() - start
        return out

    def parameters(self):
        return self.program.parameters()


def to_int8(model: nn.Module, calib: ImageSet, batches: int = 4, batch_size: int = 128) -> Int8Model:
    """Quantize `model` to real int8 (PT2E + X86InductorQuantizer), calibrated on `batches` batches of
    `calib`. The input is not modified; it may carry pruning masks or have fewer channels."""
    return Int8Model(quantize_pt2e(model, calib, batches, batch_size))


def int8_export_bytes(int8_model: Int8Model) -> bytes:
    """The converted int8 program as a .pt2 archive (torch.export.save): the graph as JSON, the int8
    weights, float biases and quantization parameters. Its length is the download size.

    Loading it back (torch.export.load) unpickles parts of the archive with weights_only=False, which
    can run arbitrary code: load only files you made yourself. This module offers no loader.
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = torch.rand(2, 3, 32, 32)    # stored in the archive, so small (batch 1 would fix the batch size)
    program = torch.export.export(int8_model.program, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()
