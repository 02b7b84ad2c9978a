"""How much does the data path cost? Images/s of the real training loop against a bare
forward+backward+step of the same model and batch size on a fixed tensor, measured in one run,
interleaved, so that a noisy shared machine affects both alike.

    python bench/train_throughput.py [--arch resnet20] [--batch-size 128] [--steps 60] [--rounds 3]

Goal (issue 2): ratio ≥ 0.9, i.e. loading, augmenting and bookkeeping cost under 10 %.
"""
import argparse
import json
import statistics
import time

import torch

from compression.data import ImageSet, has_cifar10, load_cifar10
from compression.models import create_model
from compression.train import TrainConfig, hardware_name, make_optimizer, pick_device, train


def bare_images_per_s(arch, batch_size, steps, device):
    model = create_model(arch).to(device).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(model, TrainConfig())
    x = torch.rand(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def loop_images_per_s(arch, batch_size, steps, data):
    model = create_model(arch)
    config = TrainConfig(epochs=(steps + 5) * batch_size / len(data), batch_size=batch_size)
    marks = {}
    for event in train(model, data, config, events_every=1):
        if event.step in (5, steps + 5):
            marks[event.step] = (time.perf_counter(), event.step)
    (t0, s0), (t1, s1) = marks[5], marks[steps + 5]
    return (s1 - s0) * batch_size / (t1 - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = pick_device()
    if has_cifar10():
        data = load_cifar10(split="train")
        source = "CIFAR-10 train"
    else:
        g = torch.Generator().manual_seed(0)
        data = ImageSet(torch.randint(0, 256, (20000, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (20000,), generator=g))
        source = "synthetic"
    bare, loop = [], []
    for _ in range(args.rounds):
        bare.append(bare_images_per_s(args.arch, args.batch_size, args.steps, device))
        loop.append(loop_images_per_s(args.arch, args.batch_size, args.steps, data))
    result = {"arch": args.arch, "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
              "data": source, "hardware": hardware_name(device),
              "bare_images_per_s": round(statistics.median(bare), 1),
              "loop_images_per_s": round(statistics.median(loop), 1),
              "ratio": round(statistics.median(l / b for l, b in zip(loop, bare)), 3)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
