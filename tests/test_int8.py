"""Real int8 inference (torchao PT2E). The fast tests check the converted, uncompiled program; the
compiled model is tested separately under @pytest.mark.slow (each batch size compiles, ~5-10 s)."""
import io
import zipfile

import pytest
import torch

pytest.importorskip("torchao")

from compression import int8                                   # noqa: E402
from compression.data import ImageSet                           # noqa: E402
from compression.files import state_dict_bytes                  # noqa: E402
from compression.metrics import int8_speedup                    # noqa: E402
from compression.models import create_model                     # noqa: E402
from compression.prune import prune, strip                      # noqa: E402
from compression.train import evaluate                          # noqa: E402


def random_images(n: int, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n,), generator=g))


def odd_width_model() -> torch.nn.Module:
    # 5, 10 and 19 channels: the irregular shapes a structured-pruned model has
    return create_model("resnet8", width=0.3).eval()


def int8_weights(program) -> list[torch.Tensor]:
    return [t for t in [*program.parameters(), *program.buffers(), *vars(program).values()]
            if isinstance(t, torch.Tensor) and t.dtype == torch.int8]


def cpu_has_vnni() -> bool:
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def assert_close_to_float(out: torch.Tensor, ref: torch.Tensor, rel: float = 0.05, top1: float = 0.95) -> None:
    # 8-bit rounding of ~10 layers leaves about 1 % relative error here (measured 0.5-1.3 %);
    # a wrong scale or zero point anywhere gives errors of tens of percent.
    assert ((out - ref).norm() / ref.norm()).item() < rel
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= top1
    assert not torch.equal(out, ref)        # it really was quantized


def test_converted_int8_program_agrees_with_the_float_model():
    model = odd_width_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    program = int8.quantize_pt2e(model, random_images(64), batches=2, batch_size=32)
    assert len(int8_weights(program)) == 10     # 9 convs and the classifier hold int8 weights
    x = torch.rand(256, 3, 32, 32)
    with torch.no_grad():
        assert_close_to_float(program(x), model(x))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # input untouched


def test_pruned_model_quantizes_with_its_zeros():
    pruned = prune(odd_width_model(), 0.5)
    program = int8.quantize_pt2e(pruned, random_images(64), batches=2, batch_size=32)
    zeros = sum(int((w == 0).sum()) for w in int8_weights(program))
    assert zeros >= 0.45 * sum(w.numel() for w in int8_weights(program))
    x = torch.rand(128, 3, 32, 32)
    with torch.no_grad():
        assert_close_to_float(program(x), strip(pruned)(x))


def test_export_is_a_pt2_archive_with_int8_weights_smaller_than_fp32():
    model = create_model("resnet8").eval()
    program = int8.quantize_pt2e(model, random_images(32), batches=1, batch_size=32)
    data = int8.int8_export_bytes(int8.Int8Model(program))
    fp32 = len(state_dict_bytes(model))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        weights = sum(i.file_size for i in archive.infolist() if "/data/weights/" in i.filename)
        names = archive.namelist()
    assert any(n.endswith("models/model.json") for n in names)
    assert weights <= 0.3 * fp32          # int8 weights: a quarter of fp32, plus biases and scales
    assert len(data) < fp32               # the graph's JSON description comes on top


@pytest.mark.slow
def test_compiled_int8_model_matches_the_program_and_works_with_evaluate():
    model = odd_width_model()
    data = random_images(48, seed=1)
    q = int8.to_int8(model, random_images(64), batches=2, batch_size=32)
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        out, ref = q(x), q.program(x)
    if cpu_has_vnni():
        assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max().item())   # the same int8 numbers, fused kernels
        assert_close_to_float(out, model(x).detach())
    else:   # without VNNI, oneDNN multiplies u8 by s8 into saturating 16-bit pairs (vpmaddubsw): close, not equal
        assert_close_to_float(out, ref, rel=0.25, top1=0.75)      # a wrong scale anywhere gives far more
        assert_close_to_float(out, model(x).detach(), rel=0.25, top1=0.75)
    result = evaluate(q, data, batch_size=24)
    with torch.no_grad():
        expected = (q.program(data.images.float() / 255).argmax(1) == data.labels).float().mean().item()
    assert result.accuracy == pytest.approx(expected)
    assert set(q.compile_seconds) == {16, 24}
    timing = int8_speedup(model, q, batch_size=16, repeats=2, warmup=1)
    assert timing["fp32_ms"] > 0 and timing["int8_ms"] > 0
    assert timing["speedup"] == pytest.approx(timing["fp32_ms"] / timing["int8_ms"])


def test_importing_torchao_prints_no_warnings_about_its_unused_extensions():
    # On a CPU build of torch, a bare `import torchao` logs "Failed to load …" for each CUDA-only
    # extension and a pytree deprecation notice; the CLI's int8 export should not show students that.
    import subprocess
    import sys
    from pathlib import Path
    code = "from compression.int8 import x86_quantizer; x86_quantizer(); print('quantizer ready')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "quantizer ready"
    assert "Failed to load" not in done.stderr
    assert "register_constant" not in done.stderr
