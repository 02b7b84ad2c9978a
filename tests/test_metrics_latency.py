"""Latency is timed as inference: no autograd graph is recorded while a model is being timed, and
freed memory stays in the process so no model pays the OS for its activations at every pass."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest
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



WHERE = """
import sys, torch
from compression.metrics import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()

def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(a, 16) for a in line.split()[0].split("-"))
            return start, end
    return 0, 0

blocks = [torch.empty(4 * 1024 * 1024).fill_(1.0) for _ in range(4)]   # 4 × 16 MiB, like batch-256 activations
start, end = heap()
in_heap = sum(start <= b.data_ptr() < end for b in blocks)
del blocks
print(in_heap, end - start == heap()[1] - heap()[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="keep_freed_memory changes glibc's malloc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    """With glibc's defaults a fresh process maps each 16 MiB block anew from the OS (and unmaps it when
    freed); kept, the blocks come from the heap, and freeing them does not shrink it."""
    def run(mode):
        out = subprocess.run([sys.executable, "-c", WHERE, mode], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        in_heap, heap_kept = out.stdout.split()
        return int(in_heap), heap_kept == "True"
    assert run("default")[0] == 0
    assert run("keep") == (4, True)
