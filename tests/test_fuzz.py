"""Seeded fuzzing of everything a visitor can upload: mutated safetensors files, packed files (with their
checksum fixed, as a hostile file would have it) and CIFAR batch files. Each either loads or raises
ModelFileError / DataError, the errors that carry a message for the student; nothing else ever escapes."""
import json
import pickle
import random

import numpy as np
import pytest

from compression.data import DataError, load_cifar10
from compression.files import ModelFileError, load_any_bytes, state_dict_bytes
from compression.models import create_model
from compression.packed import pack_model
from compression.prune import prune
from helpers import read_parts, rebuild

CASES = 240      # per format; seeded, so every run tries the same files


def odd_value(rng: random.Random):
    """A value of a surprising type or size."""
    return rng.choice([None, True, -1, 0, 1, 2 ** 31, 2 ** 64, 10 ** 30, -(10 ** 30), 1e308, float("nan"),
                       float("inf"), 0.5, "", "x" * 300, "float32", "F32", "resnet56", "sparse", "raw", [], [0],
                       [2 ** 40, 3], [-1, 4], [[1]], {}, {"a": 1}, {"values": 2 ** 40}, list(range(20))])


def mutate_json(obj, rng: random.Random):
    """Replace one value somewhere inside obj (dicts and lists) by an odd one."""
    while True:
        if isinstance(obj, dict) and obj:
            key = rng.choice(sorted(obj, key=str))
            if rng.random() < 0.4 or not isinstance(obj[key], (dict, list)):
                obj[key] = odd_value(rng)
                return
            obj = obj[key]
        elif isinstance(obj, list) and obj:
            i = rng.randrange(len(obj))
            if rng.random() < 0.4 or not isinstance(obj[i], (dict, list)):
                obj[i] = odd_value(rng)
                return
            obj = obj[i]
        else:
            return


def mutate_field(entries: list[dict], fields: tuple[str, ...], rng: random.Random) -> None:
    """Give one field (present or not) of one entry an odd value: where a loader's type checks matter."""
    rng.choice(entries)[rng.choice(fields)] = odd_value(rng)


PACKED_FIELDS = ("name", "dtype", "shape", "positions", "values", "stored", "gap_symbols", "codebook", "bytes")
PACKED_TOP = ("format", "arch", "width", "metadata", "tensors")
SAFETENSORS_FIELDS = ("dtype", "shape", "data_offsets")


def flip_bytes(data: bytes, rng: random.Random, n: int) -> bytes:
    data = bytearray(data)
    for _ in range(n):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def expect_clear_error(data: bytes, name: str) -> None:
    try:
        load_any_bytes(data, name)
    except ModelFileError:
        pass


@pytest.fixture(scope="module")
def safetensors_file() -> bytes:
    return state_dict_bytes(create_model("resnet8", 0.25), {"arch": "resnet8", "width": "0.25"})


@pytest.fixture(scope="module")
def packed_file() -> bytes:
    return pack_model(prune(create_model("resnet8", 0.25).eval(), 0.6))


def test_mutated_safetensors_files(safetensors_file):
    rng = random.Random(1)
    header_len = int.from_bytes(safetensors_file[:8], "little")
    header = json.loads(safetensors_file[8:8 + header_len])
    body = safetensors_file[8 + header_len:]
    for case in range(CASES):
        kind = case % 3
        if kind == 0:
            data = flip_bytes(safetensors_file, rng, rng.randint(1, 8))
        elif kind == 1:
            data = safetensors_file[:rng.randrange(len(safetensors_file))]
        else:
            edited = json.loads(json.dumps(header))
            if rng.random() < 0.3:
                mutate_json(edited, rng)
            elif rng.random() < 0.3:
                edited["__metadata__"][rng.choice(["arch", "width"])] = str(odd_value(rng))
            else:
                mutate_field([v for k, v in edited.items() if k != "__metadata__"], SAFETENSORS_FIELDS, rng)
            raw = json.dumps(edited).encode()
            data = len(raw).to_bytes(8, "little") + raw + body
        expect_clear_error(data, f"fuzz-{case}.safetensors")


def test_mutated_packed_files_with_valid_checksums(packed_file):
    rng = random.Random(2)
    header, _ = read_parts(packed_file)
    for case in range(CASES):
        kind = case % 3
        if kind == 0:
            data = rebuild(packed_file, lambda h: rng.choice([
                lambda: mutate_json(h, rng), lambda: mutate_field([h], PACKED_TOP, rng),
                lambda: mutate_field(h["tensors"], PACKED_FIELDS, rng),
                lambda: mutate_field(h["tensors"], PACKED_FIELDS, rng)])())
        elif kind == 1:
            data = rebuild(packed_file, edit_payload=lambda p: flip_bytes(p, rng, rng.randint(1, 4)))
        else:
            data = packed_file[:rng.randrange(len(packed_file))]
        expect_clear_error(data, f"fuzz-{case}.cmpk")


def batch_like(rng: random.Random):
    """Something a hostile batch file could hold: CIFAR's dict with odd members, or not a dict at all."""
    n = rng.choice([0, 1, 10, 10_001])
    data = rng.choice([np.zeros((n, 3072), np.uint8), np.zeros((n, 3072), np.int64), np.zeros((n, 3071), np.uint8),
                       np.zeros((n, 3, 32, 32), np.uint8), [[0] * 3072] * n, "pixels", None, b"\0" * 3072])
    labels = rng.choice([[rng.randrange(10) for _ in range(n)], [str(i) for i in range(n)], [0.5] * n,
                         np.zeros(n, np.int8), np.zeros(n, np.float32), [[0]] * n, None, {"a": 1}, [-1] * n, [10] * n])
    return rng.choice([{"data": data, "labels": labels}, {"data": data}, [data, labels], 42])


def test_mutated_cifar_batch_files(tmp_path):
    rng = random.Random(3)
    valid = pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": [1] * 10}, protocol=2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(valid)
    for case in range(CASES // 2):
        if case % 2:
            content = pickle.dumps(batch_like(rng), protocol=rng.choice([2, 4]))
        else:
            content = flip_bytes(valid, rng, rng.randint(1, 6))
        (folder / "test_batch").write_bytes(content)
        try:
            test = load_cifar10(tmp_path, "test")
        except DataError:
            continue
        assert test.images.dtype.is_floating_point is False and test.labels.max() < 10
