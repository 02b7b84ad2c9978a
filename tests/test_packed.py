import json
import math
import zlib

import numpy as np
import pytest
import torch

from compression import huffman
from compression.files import ModelFileError, state_dict_bytes
from compression.layouts import gap_symbols, positions_from_gaps
from compression.models import create_model
from compression.packed import PREAMBLE, pack_model, unpack_model
from compression.packed_sizes import packed_breakdown
from compression.prune import is_pruned, prunable_layers, prune, strip
from compression.share import cluster_weights
from helpers import read_parts, rebuild, with_checksum
from compression.weights import copy_model, model_from_state_dict


# --- fixtures and helpers ------------------------------------------------------------------------------

def randomise_bn(model, seed=0):
    """Non-default BN parameters and statistics, so every raw tensor carries real numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(123)
    return model.eval()


@pytest.fixture
def tiny():
    return randomise_bn(create_model("resnet8", width=0.25))


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_round_trip(model, x, **pack_kwargs):
    """Pack, unpack, and check every tensor and the logits are bit-for-bit the same."""
    data = pack_model(model, **pack_kwargs)
    restored, meta = unpack_model(data, "test.cmpk")
    expected = strip(model).state_dict()          # masks baked in; strip works on a copy
    got = restored.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert expected[key].dtype == got[key].dtype, key
        assert torch.equal(expected[key], got[key]), key
    assert torch.equal(logits(model, x), logits(restored, x))
    return data, restored, meta


def layouts(data):
    header = read_parts(data)[0]
    return {d["name"]: (d.get("positions", "dense"), d.get("values", "raw"))
            for d in header["tensors"] if d["name"].endswith(".weight") and "bn" not in d["name"]
            and "shortcut.1" not in d["name"]}


def quantize_like(model, levels=7):
    """Round each conv/linear weight to a symmetric grid of 2·levels + 1 values (a 4-bit quantizer)."""
    model = copy_model(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                scale = m.weight.abs().max() / levels
                m.weight.copy_(torch.round(m.weight / scale) * scale)
    return model.eval()


def payload_span(header, name):
    """(start, end) of a tensor's bytes in the payload."""
    offset = 0
    for d in header["tensors"]:
        size = sum(d["bytes"].values()) if "bytes" in d else 4 * math.prod(d["shape"])
        if d["name"] == name:
            return offset, offset + size
        offset += size
    raise KeyError(name)


# --- Huffman coding ------------------------------------------------------------------------------------

def skewed(n, seed=0, p=0.3, top=200):
    return np.minimum(np.random.default_rng(seed).geometric(p, n) - 1, top)


@pytest.mark.parametrize("symbols", [
    np.random.default_rng(0).integers(0, 200, 5000),        # near-uniform
    skewed(20000),                                           # geometric
    np.random.default_rng(1).integers(0, 40000, 3000),      # wide alphabet (two-byte symbols)
    np.array([7, 7, 7, 7]),                                  # a single symbol
    np.array([3, 9]),                                        # two symbols
])
def test_huffman_round_trip(symbols):
    data, table = huffman.encode(symbols)
    table = huffman.table_from_bytes(huffman.table_to_bytes(table))   # and through its serialisation
    assert np.array_equal(huffman.decode(data, table, len(symbols)), symbols)


def test_huffman_empty():
    data, table = huffman.encode(np.array([], dtype=np.int64))
    assert data == b"" and table == {}
    assert huffman.decode(data, table, 0).size == 0
    assert huffman.huffman_bits(np.zeros(3, dtype=np.int64)) == 0


def test_single_symbol_costs_one_bit_each():
    data, table = huffman.encode(np.full(80, 5))
    assert table == {5: 1} and len(data) == 10


def test_codes_are_canonical_and_prefix_free():
    table = huffman.code_lengths(np.bincount(skewed(5000, p=0.2, top=60)))
    codes = huffman.canonical_codes(table)
    assert all(len(codes[s]) == table[s] for s in table)
    strings = list(codes.values())
    for a in strings:
        for b in strings:
            assert a == b or not b.startswith(a), (a, b)
    # canonical: ordered by (length, symbol), each code is the previous + 1, shifted to the new length
    order = sorted(table, key=lambda s: (table[s], s))
    for prev, cur in zip(order, order[1:]):
        expected = (int(codes[prev], 2) + 1) << (table[cur] - table[prev])
        assert int(codes[cur], 2) == expected
    assert int(codes[order[0]], 2) == 0
    # a Huffman code is complete: the Kraft sum is exactly 1
    assert sum(2.0 ** -l for l in table.values()) == 1.0


def test_coded_size_matches_huffman_bits_and_the_entropy_bound():
    symbols = skewed(30000, seed=3)
    counts = np.bincount(symbols)
    data, _ = huffman.encode(symbols)
    bits = huffman.huffman_bits(counts)
    assert len(data) == math.ceil(bits / 8)
    p = counts[counts > 0] / len(symbols)
    entropy = -(p * np.log2(p)).sum() * len(symbols)
    assert entropy <= bits < entropy + len(symbols)      # n·H ≤ bits < n·(H + 1)


def test_skewed_data_beats_fixed_width():
    symbols = skewed(10000, p=0.5, top=255)              # entropy ≈ 2 bits
    bits = huffman.huffman_bits(np.bincount(symbols))
    assert bits < len(symbols) * 8 / 3                   # bytes: 8 bits each
    assert bits < len(symbols) * math.ceil(math.log2(symbols.max() + 1)) / 2   # the tightest fixed width


def test_code_lengths_are_capped():
    fibonacci = [1, 1]
    while len(fibonacci) < 30:                            # the worst case: a 29-deep Huffman tree
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    frequencies = dict(enumerate(fibonacci))
    assert huffman._tree_depths(np.array(fibonacci)).max() == 29       # uncapped
    table = huffman.code_lengths(frequencies)
    assert max(table.values()) <= huffman.MAX_CODE_LENGTH
    assert sum(2.0 ** -l for l in table.values()) == 1.0                # still a complete code
    symbols = np.repeat(np.arange(30), np.minimum(fibonacci, 50))
    data, table = huffman.encode(symbols, table)
    assert np.array_equal(huffman.decode(data, table, len(symbols)), symbols)


@pytest.mark.parametrize("table", [{0: 1, 1: 1, 2: 1}, {0: 0}, {0: 17}, {-1: 2}])
def test_bad_tables_are_rejected(table):
    with pytest.raises(huffman.HuffmanError):
        huffman.decode(b"\x00\x00", table, 3)


def test_cut_or_corrupt_bits_are_rejected():
    symbols = skewed(2000, seed=5)
    data, table = huffman.encode(symbols)
    with pytest.raises(huffman.HuffmanError):
        huffman.decode(data[: len(data) // 2], table, len(symbols))
    with pytest.raises(huffman.HuffmanError):
        huffman.decode(data, {0: 1}, len(symbols))        # an incomplete code: "1…" starts no code
    with pytest.raises(huffman.HuffmanError):
        huffman.table_from_bytes(huffman.table_to_bytes(table)[:-1])


# --- gaps --------------------------------------------------------------------------------------------

def test_gaps_round_trip_with_long_runs_of_zeros():
    positions = np.array([0, 1, 5, 254, 255, 256, 511, 767, 10_000, 70_000])
    symbols = gap_symbols(positions)
    assert symbols.max() <= 255
    assert (symbols == 255).sum() == sum(g // 255 for g in np.diff(positions, prepend=-1) - 1)
    assert np.array_equal(positions_from_gaps(symbols), positions)


# --- round trips ----------------------------------------------------------------------------------------

def test_dense_model_round_trips_and_stays_near_fp32_size(tiny, images):
    data, restored, meta = assert_round_trip(tiny, images)
    assert meta["arch"] == "resnet8" and meta["width"] == 0.25 and restored.width == 0.25
    assert set(layouts(data).values()) == {("dense", "raw")}
    assert len(data) < len(state_dict_bytes(tiny)) * 1.1


def test_masked_pruned_model_round_trips(tiny, images):
    pruned = prune(tiny, 0.8)
    assert is_pruned(pruned)
    data, restored, _ = assert_round_trip(pruned, images)
    assert not is_pruned(restored)
    assert is_pruned(pruned), "packing must not strip the caller's model"
    assert ("sparse", "raw") in layouts(data).values()


def test_stripped_pruned_model_round_trips(tiny, images):
    assert_round_trip(strip(prune(tiny, 0.7, scope="layer")), images)


def test_quantized_model_uses_codebooks(tiny, images):
    model = quantize_like(tiny)
    data, _, _ = assert_round_trip(model, images)
    assert {v for _, v in layouts(data).values()} <= {"codebook", "grid", "channel_codebook"}


@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (3, True)])
def test_per_channel_quantized_model_packs_as_grids(images, bits, symmetric):
    """Per-channel quantization leaves hundreds of distinct values in a layer but a uniform grid per
    filter: stored as a step per filter plus Huffman-coded multiples, about `bits` bits per weight."""
    from compression.quantize import quantize_weights

    model = quantize_weights(create_model("resnet20"), bits, symmetric=symmetric, per_channel=True)
    data, _, _ = assert_round_trip(model, images)
    grids = [k for k, (_, v) in layouts(data).items() if v == "grid"]
    assert len(grids) >= 18, layouts(data)
    n_weights = sum(m.weight.numel() for m in prunable_layers(model).values())
    assert len(data) < (bits + 1.5) / 8 * n_weights + 16_000      # + BN tensors, grids and header


def test_corrupt_grid_payload_never_leaks_other_errors(images):
    from compression.quantize import quantize_weights

    packed = pack_model(quantize_weights(create_model("resnet8", width=0.5), 4))
    assert flip_payload_bits(packed, np.random.default_rng(1)) > 0


def flip_payload_bits(packed: bytes, rng, trials: int = 60) -> int:
    """Flip one random payload bit at a time, fixing the checksum: each load must either succeed (a
    flip that happens to decode) or raise ModelFileError, never IndexError, struct.error, …
    Returns how many were rejected."""
    _, payload = read_parts(packed)
    rejected = 0
    for _ in range(trials):
        def flip(p, i=int(rng.integers(len(payload))), bit=int(rng.integers(8))):
            p = bytearray(p)
            p[i] ^= 1 << bit
            return bytes(p)
        try:
            unpack_model(rebuild(packed, edit_payload=flip), "fuzz.cmpk")
        except ModelFileError:
            rejected += 1
    return rejected


def test_clustered_model_round_trips(tiny, images):
    data, _, _ = assert_round_trip(cluster_weights(prune(tiny, 0.9), 8), images)
    assert ("sparse", "codebook") in layouts(data).values()     # the larger layers
    assert ("dense", "codebook") in layouts(data).values()      # tiny ones: zero is one more codeword


def test_metadata_travels(tiny, images):
    extra = {"technique": "prune", "accuracy": 0.913, "settings": {"amount": 0.5, "exempt": ["fc"]}}
    _, _, meta = assert_round_trip(tiny, images, metadata=extra)
    assert {k: meta[k] for k in extra} == extra


def test_structured_pruned_shapes_round_trip(images):
    """A resnet8 at width 0.5 whose block-internal channels were cut (8 → 5 and 32 → 20), as filter
    pruning leaves it: the file must rebuild those narrower layers."""
    full = randomise_bn(create_model("resnet8", width=0.5)).state_dict()
    tensors = dict(full)
    for block, keep in (("layer1.0", 5), ("layer3.0", 20)):
        tensors[f"{block}.conv1.weight"] = full[f"{block}.conv1.weight"][:keep]
        for stat in ("weight", "bias", "running_mean", "running_var"):
            tensors[f"{block}.bn1.{stat}"] = full[f"{block}.bn1.{stat}"][:keep]
        tensors[f"{block}.conv2.weight"] = full[f"{block}.conv2.weight"][:, :keep]
    model = model_from_state_dict(tensors, "resnet8", 0.5).eval()
    _, restored, meta = assert_round_trip(model, images)
    assert meta["width"] == 0.5
    assert restored.layer1[0].conv1.out_channels == 5 and restored.layer3[0].conv2.in_channels == 20


def test_pruned_and_shared_model_is_much_smaller_than_fp32(images):
    """resnet8, 90% of weights pruned, 16 shared values per layer.

    fp32 spends 32 bits on each weight. Packed, each surviving weight costs a ≤ 4-bit index plus a
    gap code of about H(gap) ≈ 4.7 bits (gaps ~ geometric with p = 0.1), i.e. ≈ 9 bits per nonzero
    = 0.9 bits per weight: ~35× on the conv/linear weights. BN tensors stay raw and the header costs
    a few kB, so the whole file should still be well over 10× smaller.
    """
    model = randomise_bn(create_model("resnet8"))
    shared = cluster_weights(prune(model, 0.9), 16)
    data, _, _ = assert_round_trip(shared, images)
    fp32 = len(state_dict_bytes(model))
    assert fp32 / len(data) > 10
    rows = packed_breakdown(shared)
    weight_rows = [r for r in rows if r["params"]]
    weight_fp32 = 4 * sum(r["params"] for r in weight_rows)
    assert weight_fp32 / sum(r["total_bytes"] for r in weight_rows) > 20
    assert all(r["bits_per_nonzero"] < 16 for r in weight_rows if r["params"] > 5000)


def test_breakdown_adds_up_to_the_file(tiny):
    for model in (tiny, prune(tiny, 0.9), cluster_weights(prune(tiny, 0.5), 4)):
        rows = packed_breakdown(model)
        assert sum(r["total_bytes"] for r in rows) == len(pack_model(model))
        weights = [r for r in rows if r["params"]]
        assert len(weights) == 10                       # 9 convolutions and the classifier
        for r in weights:
            parts = r["position_bytes"] + r["index_bytes"] + r["codebook_bytes"] + r["raw_bytes"]
            assert parts == r["total_bytes"]


def test_packing_needs_an_architecture():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="arch"):
        pack_model(model)


# --- damaged and hostile files ---------------------------------------------------------------------------

@pytest.fixture
def packed(tiny):
    return pack_model(cluster_weights(prune(tiny, 0.9), 16), metadata={"note": "x"})


def test_every_truncation_is_a_clear_error(packed):
    header_len = PREAMBLE.unpack_from(packed)[2]
    points = {0, 1, 3, 4, 6, 10, 17, 18, 18 + header_len // 2, 18 + header_len, 18 + header_len + 1,
              len(packed) - 33, len(packed) - 32, len(packed) - 1}
    points |= set(range(0, len(packed), max(1, len(packed) // 40)))
    for cut in sorted(points):
        with pytest.raises(ModelFileError, match="truncated|not a packed"):
            unpack_model(packed[:cut], "m.cmpk")


def test_extra_bytes_are_rejected(packed):
    with pytest.raises(ModelFileError, match="unexpected bytes"):
        unpack_model(packed + b"\0", "m.cmpk")


def test_every_flipped_byte_is_a_clear_error(packed):
    positions = set(range(0, len(packed), max(1, len(packed) // 60))) | {0, 5, 9, 17, 18, len(packed) - 1}
    for i in sorted(positions):
        damaged = bytearray(packed)
        damaged[i] ^= 0x5A
        with pytest.raises(ModelFileError):
            unpack_model(bytes(damaged), "m.cmpk")


def test_not_a_packed_file():
    for data in (b"", b"PK\x03\x04" + bytes(100), state_dict_bytes(create_model("resnet8", 0.25))):
        with pytest.raises(ModelFileError, match="not a packed model file"):
            unpack_model(data, "upload.bin")


def first_weight(header):
    return next(d for d in header["tensors"] if d.get("positions") == "sparse")


def set_first_weight(key, value):
    def edit(header):
        first_weight(header)[key] = value
    return edit


HOSTILE_HEADERS = {
    "huge tensor": (set_first_weight("shape", [100_000, 100_000, 3, 3]), "claims"),
    "bad dtype": (set_first_weight("dtype", "object"), "dtype"),
    "negative dim": (set_first_weight("shape", [-4, 3, 3, 3]), "shape"),
    "unknown arch": (lambda h: h.update(arch="resnet19"), "architecture"),
    "bad width": (lambda h: h.update(width="wide"), "width"),
    "zero width": (lambda h: h.update(width=0), "width"),
    "no tensor list": (lambda h: h.update(tensors={"a": 1}), "tensor list"),
    "too many stored": (set_first_weight("stored", 10 ** 9), "stored"),
    "huge codebook": (set_first_weight("codebook", 100_000), "codebook"),
    "unknown layout": (set_first_weight("positions", "zigzag"), "layout"),
    "segments shuffled": (lambda h: first_weight(h).update(bytes=dict(reversed(first_weight(h)["bytes"].items()))),
                          "segments"),
    "segment sizes": (lambda h: first_weight(h)["bytes"].update(gaps=first_weight(h)["bytes"]["gaps"] + 1),
                      "payload bytes"),
    "duplicate name": (lambda h: h["tensors"].append(dict(h["tensors"][0])), "twice"),
    "wrong format": (lambda h: h.update(format="zip"), "format"),
    "metadata not a dict": (lambda h: h.update(metadata=[1, 2]), "metadata"),
    "bool as count": (set_first_weight("stored", True), "stored"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_hostile_headers_are_clear_errors(packed, case):
    edit, message = HOSTILE_HEADERS[case]
    with pytest.raises(ModelFileError, match=message):
        unpack_model(rebuild(packed, edit), "evil.cmpk")


def test_missing_tensor_is_a_clear_error(packed):
    header, _ = read_parts(packed)
    start, end = payload_span(header, "fc.bias")
    data = rebuild(packed, lambda h: h["tensors"].remove(next(d for d in h["tensors"] if d["name"] == "fc.bias")),
                   lambda p: p[:start] + p[end:])
    with pytest.raises(ModelFileError, match="does not hold"):
        unpack_model(data, "evil.cmpk")


def test_shapes_that_do_not_fit_the_model_are_clear_errors(packed):
    def reshape_bn(header):
        d = next(d for d in header["tensors"] if d["name"] == "bn1.weight")
        d["shape"] = [2, 2]
    with pytest.raises(ModelFileError, match="do not fit|should be a vector|cannot hold"):
        unpack_model(rebuild(packed, reshape_bn), "evil.cmpk")


def test_newer_version_is_a_clear_error(packed):
    with pytest.raises(ModelFileError, match="version 2"):
        unpack_model(rebuild(packed, version=2), "new.cmpk")


@pytest.mark.parametrize("raw_header,message", [
    (zlib.compress(b"{not json" + bytes(30)), "JSON"),
    (zlib.compress(b"[1, 2]"), "JSON object"),
    (zlib.compress(b'{"width": NaN}'), "JSON"),
    (b"plain text, not zlib", "zlib"),
    (zlib.compress(b"{}")[:-3], "incomplete"),
    (zlib.compress(b" " * (1 << 25)), "more than"),            # a decompression bomb
])
def test_malformed_header_is_a_clear_error(packed, raw_header, message):
    _, payload = read_parts(packed)
    with pytest.raises(ModelFileError, match=message):
        unpack_model(with_checksum(raw_header, payload), "evil.cmpk")


def test_corrupt_payload_with_valid_checksum_never_leaks_other_errors(packed):
    """Flip payload and header bytes but fix the checksum: loading either succeeds (a flip that
    happens to decode) or raises ModelFileError, never IndexError, struct.error, …"""
    rng = np.random.default_rng(0)
    header, payload = read_parts(packed)
    failures = flip_payload_bits(packed, rng)
    raw = json.dumps(header).encode()
    for trial in range(60):
        i = int(rng.integers(len(raw)))
        edited = raw[:i] + bytes([raw[i] ^ (1 << int(rng.integers(7)))]) + raw[i + 1:]
        try:
            unpack_model(with_checksum(zlib.compress(edited), payload), "fuzz.cmpk")
        except ModelFileError:
            failures += 1
    assert failures > 0
