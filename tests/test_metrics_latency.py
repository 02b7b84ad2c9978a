"""Latency is timed as inference: no autograd graph is recorded while a model is being timed."""
import torch
from torch import nn

from compression.metrics import compare_latency, latency_ms


class RecordsGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.grad_enabled = []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.conv(x)


def test_compare_latency_times_forward_passes_without_autograd():
    a, b = RecordsGrad(), RecordsGrad()
    times = compare_latency({"a": a, "b": b}, batch_size=2, repeats=3, warmup=1)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    assert a.grad_enabled == [False] * 4 and b.grad_enabled == [False] * 4


def test_latency_ms_times_forward_passes_without_autograd():
    m = RecordsGrad()
    assert latency_ms(m, 2, repeats=2, warmup=1) > 0
    assert m.grad_enabled == [False] * 3
