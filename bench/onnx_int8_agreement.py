"""How often the int8 QDQ ONNX export gives the same top-1 class as PyTorch, on the eval subset (1,000
bundled test images), for several ways of calibrating its activation ranges:

    python bench/onnx_int8_agreement.py [--arch resnet8] [--methods MinMax:4,MinMax:16,Percentile:16,Entropy:16]

Each method is onnx_export.export_int8's `calibrate` with that many batches of 128 bundled training
images. Printed per method: the ONNX model's accuracy and its top-1 agreement with PyTorch fp32, with
PT2E int8 (the converted program, uncompiled: the same arithmetic) and with either; and the floor that
rounding to 8 bits sets, PT2E int8 against fp32. Also PT2E int8 compiled (int8.to_int8), whose oneDNN
kernels on a CPU without VNNI add pairs of u8 × s8 products in saturating 16-bit arithmetic. Writes
nothing; tests/test_onnx.py and docs/AUTO.md quote the figures.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compression import data as D  # noqa: E402
from compression.files import load_model  # noqa: E402
from compression.int8 import quantize_pt2e, to_int8  # noqa: E402
from compression.onnx_export import OnnxModel, export_int8  # noqa: E402
from compression.train import predict_logits, threads_text  # noqa: E402


def same(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{100 * (a == b).float().mean().item():.1f} %"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet8", help="a shipped model: assets/ARCH.safetensors")
    p.add_argument("--methods", default="MinMax:4,MinMax:16,Percentile:16,Entropy:16",
                   help="comma-separated CalibrationMethod:batches")
    args = p.parse_args()
    model, _ = load_model(ROOT / "assets" / f"{args.arch}.safetensors")
    train, test = D.load_sample()
    ev = D.eval_subset(test)
    fp32 = predict_logits(model, ev.images).argmax(1)
    with torch.no_grad():
        pt2e = quantize_pt2e(model, train)(D.to_float(ev.images)).argmax(1)
    print(f"{args.arch}, {len(ev)} eval-subset images, {threads_text()}, "
          f"load {os.getloadavg()[0]:.1f}")
    compiled = predict_logits(to_int8(model, train), ev.images, device="cpu").argmax(1)
    print(f"fp32 accuracy {same(fp32, ev.labels)}; PT2E int8 accuracy {same(pt2e, ev.labels)}, "
          f"same top-1 as fp32 on {same(pt2e, fp32)}; compiled {same(compiled, ev.labels)}, same top-1 as fp32 on "
          f"{same(compiled, fp32)}")
    print("| calibration | batches | accuracy | same as fp32 | same as PT2E int8 | same as either | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for item in args.methods.split(","):
        method, batches = item.split(":")
        start = time.time()
        onnx = predict_logits(OnnxModel(export_int8(model, train, int(batches), calibrate=method)), ev.images,
                              device="cpu").argmax(1)
        either = same((onnx == fp32) | (onnx == pt2e), torch.ones_like(onnx, dtype=torch.bool))
        print(f"| {method} | {batches} | {same(onnx, ev.labels)} | {same(onnx, fp32)} | {same(onnx, pt2e)} | "
              f"{either} | {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
