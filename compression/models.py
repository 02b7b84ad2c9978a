"""The CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", section 4.2).

A 3x3 stem conv, then three stages of n basic blocks with 16, 32 and 64 channels (times a width
multiplier), global average pooling and a linear classifier: depth = 6n + 2, so resnet20 has n = 3.
Each block computes y = relu(F(x) + x), F = conv-bn-relu-conv-bn. Where a block halves the
resolution and doubles the channels, the shortcut is a 1x1 conv + BN ("option B"); this keeps every
residual addition a plain tensor sum that structured pruning can follow.

Models take float images in [0, 1], shape (N, 3, 32, 32), and normalise them themselves, so a
downloaded model needs nothing but the pixels.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

DEPTHS = {"resnet8": 1, "resnet14": 2, "resnet20": 3, "resnet32": 5, "resnet56": 9}
ARCHS = tuple(DEPTHS)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, width: float = 1.0, num_classes: int = 10, init: bool = True):
        super().__init__()
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        if init:
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def create_model(arch: str, width: float = 1.0, num_classes: int = 10, init: bool = True) -> CifarResNet:
    """Build `arch` (one of ARCHS) with channels scaled by `width`. `init=False` skips the weight
    initialisation: for a model whose weights are loaded next, or one on the meta device (shapes only)."""
    if arch not in DEPTHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if not 0 < width <= 8:
        raise ValueError(f"width multiplier must be in (0, 8], got {width}")
    model = CifarResNet(DEPTHS[arch], width, num_classes, init)
    model.arch, model.width = arch, width
    return model


def feature_map_side(layer: str) -> int:
    """The side of the square feature map a layer of this family writes, by its name: 32 for the stem,
    32, 16 and 8 in stages 1, 2 and 3 (layer1…layer3), and 1 for the classifier."""
    if layer.startswith("layer") and layer[5:6].isdigit():
        return 32 >> (int(layer[5]) - 1)
    return 32 if layer.startswith("conv1") else 1


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with the model in eval mode (BN uses its running statistics and leaves them as
    they are), then put back the mode it had, even if the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class InferenceOnly:
    """The float model's interface for what only runs forward (int8.Int8Model, a compiled program;
    onnx_export.OnnxModel, an ONNX Runtime session): `training` is False, eval() returns it, train(True)
    refuses. Subclasses name what they are in `kind`."""

    training = False
    kind = "this model"

    def eval(self):
        return self

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{self.kind} is for inference only; fine-tune the float PyTorch model instead")
        return self
