"""How fast can the eval subset be evaluated on this CPU? Every accuracy in the app goes through
compression.train.predict_logits; this times ways of running it on the shipped pretrained models and
the fixed 1,000-image eval subset, interleaved round by round (median of the rounds), so that a noisy
shared machine affects every way alike:

- before: predict_logits as it was (torch.no_grad, batch 250, input channels-last, weights as stored);
- input NCHW: the same without the channels-last input (what that conversion gives);
- weights channels-last: the model's weights converted too (on a copy: stored models stay contiguous);
- inference_mode instead of no_grad; batch 100 / 500 / 1000;
- now: compression.train.predict_logits as it is in this checkout;
- torch.compile: compile seconds on a cold and a warm Inductor cache, the time per eval after, and
  whether weights swapped in, other copies, pruned (torch.nn.utils.prune) and quantized variants and
  other batch shapes recompile.

    python bench/eval_speed.py [--archs resnet20 resnet8] [--rounds 7] [--no-compile] [--out eval.json]

Prints a JSON result and markdown tables, with the 1-minute load average.
"""
import os
import tempfile

# A fresh Inductor cache, so that "cold" compile seconds are what a new server pays (before torch loads).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="eval-speed-inductor-"))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from compression import data as D  # noqa: E402
from compression.files import load_model  # noqa: E402
from compression.models import eval_mode  # noqa: E402
from compression.prune import FIRST_AND_LAST, prune  # noqa: E402
from compression.quantize import quantize_weights  # noqa: E402
from compression.structured import prune_filters  # noqa: E402
from compression.train import hardware_name, predict_logits  # noqa: E402
from compression.weights import copy_model  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def logits_before(model, images, batch_size=250, nhwc_input=True, inference=False):
    """predict_logits as it was before issue 19's speed work (the baseline every row is compared with)."""
    out = []
    with (torch.inference_mode() if inference else torch.no_grad()), eval_mode(model):
        for i in range(0, len(images), batch_size):
            x = D.to_float(images[i:i + batch_size])
            if nhwc_input:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float())
    return torch.cat(out)


def channels_last_copy(model):
    return copy_model(model).to(memory_format=torch.channels_last)


def ways(model):
    """name -> (callable images -> logits). The channels-last copy is made once, outside the timing."""
    cl = channels_last_copy(model)
    return {
        "before (no_grad, batch 250, NHWC input)": lambda x: logits_before(model, x),
        "input NCHW": lambda x: logits_before(model, x, nhwc_input=False),
        "weights channels-last (copy)": lambda x: logits_before(cl, x),
        "inference_mode": lambda x: logits_before(model, x, inference=True),
        "batch 100": lambda x: logits_before(model, x, 100),
        "batch 500": lambda x: logits_before(model, x, 500),
        "batch 1000": lambda x: logits_before(model, x, 1000),
        "predict_logits now": lambda x: predict_logits(model, x),
    }


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def eager_rows(model, images, labels, rounds):
    fns = ways(model)
    ref = fns["before (no_grad, batch 250, NHWC input)"](images)
    times = {name: [] for name in fns}
    outs = {}
    for name, fn in fns.items():       # one warm-up call each
        outs[name] = fn(images)
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, images)[0])
    base = statistics.median(times["before (no_grad, batch 250, NHWC input)"])
    rows = []
    for name in fns:
        med = statistics.median(times[name])
        rows.append({"way": name, "ms": round(1000 * med, 1), "speedup": round(base / med, 3),
                     "bit_exact": bool(torch.equal(outs[name], ref)),
                     "max_abs_diff": float((outs[name] - ref).abs().max()),
                     "accuracy": float((outs[name].argmax(1) == labels).float().mean())})
    return rows


def conversion_costs(model, rounds):
    """What keeping a shared model contiguous costs when channels-last weights are wanted for one eval."""
    copies, to_cl, back = [], [], []
    for _ in range(rounds):
        dt, c = timed(copy_model, model)
        copies.append(dt)
        to_cl.append(timed(lambda: c.to(memory_format=torch.channels_last))[0])
        back.append(timed(lambda: c.to(memory_format=torch.contiguous_format))[0])
    return {"copy_model_ms": round(1000 * statistics.median(copies), 2),
            "to_channels_last_ms": round(1000 * statistics.median(to_cl), 2),
            "back_to_contiguous_ms": round(1000 * statistics.median(back), 2)}


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def compile_rows(model, images, labels, rounds):
    """torch.compile: cold and warm compile seconds, per-eval time against eager, recompiles."""
    out = {}
    torch._dynamo.reset()
    ref = logits_before(model, images)
    work = copy_model(model)
    compiled = torch.compile(work)
    out["compile_cold_s"], logits = timed(predict_logits, compiled, images)   # includes one eval
    out["compiled_max_abs_diff"] = float((logits - ref).abs().max())
    out["compiled_accuracy"] = float((logits.argmax(1) == labels).float().mean())
    out["eager_accuracy"] = float((ref.argmax(1) == labels).float().mean())
    eager, comp = [], []
    for _ in range(rounds):
        eager.append(timed(predict_logits, model, images)[0])
        comp.append(timed(predict_logits, compiled, images)[0])
    out["eager_ms"] = round(1000 * statistics.median(eager), 1)
    out["compiled_ms"] = round(1000 * statistics.median(comp), 1)
    out["speedup"] = round(out["eager_ms"] / out["compiled_ms"], 3)
    saved = (out["eager_ms"] - out["compiled_ms"]) / 1000
    out["evals_to_repay_cold_compile"] = round(out["compile_cold_s"] / saved) if saved > 0 else None
    torch._dynamo.reset()
    out["compile_warm_s"] = timed(predict_logits, torch.compile(copy_model(model)), images)[0]
    out["evals_to_repay_warm_compile"] = round(out["compile_warm_s"] / saved) if saved > 0 else None

    # Recompiles: each case runs one eval after the reference compile; a new graph means a recompile.
    torch._dynamo.reset()
    work = copy_model(model)
    compiled = torch.compile(work)
    predict_logits(compiled, images)
    cases = {}

    def case(name, fn):
        before = graphs()
        dt, _ = timed(fn)
        cases[name] = {"new_graphs": graphs() - before, "seconds": round(dt, 2)}

    case("same model again", lambda: predict_logits(compiled, images))
    q4 = quantize_weights(model, 4)
    case("load_state_dict in place (4-bit weights)", lambda: (work.load_state_dict(q4.state_dict()),
                                                             predict_logits(compiled, images)))
    case("another copy, torch.compile(copy)", lambda: predict_logits(torch.compile(copy_model(model)), images))
    case("quantized copy (4-bit, plain weights)", lambda: predict_logits(torch.compile(q4), images))
    p50 = prune(model, 0.5)
    case("pruned 50 % (prune reparametrisation)", lambda: predict_logits(torch.compile(p50), images))
    case("pruned 70 % (same layers pruned)", lambda: predict_logits(torch.compile(prune(model, 0.7)), images))
    case("pruned 70 %, conv1 and fc exempt (other layers)",
         lambda: predict_logits(torch.compile(prune(model, 0.7, exempt=FIRST_AND_LAST)), images))
    case("structured: filters pruned 30 % (smaller shapes)",
         lambda: predict_logits(torch.compile(prune_filters(model, 0.3)), images))
    case("structured: filters pruned 50 %", lambda: predict_logits(torch.compile(prune_filters(model, 0.5)), images))
    case("batch 100 (the Compare page)", lambda: predict_logits(compiled, images, batch_size=100))
    case("1,000 images at batch 300 (last batch 100)", lambda: predict_logits(compiled, images, batch_size=300))
    out["recompiles"] = cases
    torch._dynamo.reset()
    return out


def markdown(result) -> str:
    lines = []
    for arch, r in result["archs"].items():
        lines += [f"\n### {arch}: eval subset ({result['images']} images), median of {result['rounds']} "
                  f"interleaved rounds, load {r['load1_start']} → {r['load1_end']}\n",
                  "| way | ms per eval | speedup | bit-exact | accuracy |", "| --- | --- | --- | --- | --- |"]
        for row in r["eager"]:
            lines.append(f"| {row['way']} | {row['ms']} | {row['speedup']:.2f}× | "
                         f"{'yes' if row['bit_exact'] else 'no (%.1e)' % row['max_abs_diff']} | "
                         f"{100 * row['accuracy']:.1f} % |")
        c = r["conversion"]
        lines.append(f"\nKeeping a shared model contiguous: copy_model {c['copy_model_ms']} ms, to channels-last "
                     f"{c['to_channels_last_ms']} ms, back {c['back_to_contiguous_ms']} ms.")
        if "compile" in r:
            k = r["compile"]
            lines += [f"\ntorch.compile: cold {k['compile_cold_s']:.1f} s, warm cache {k['compile_warm_s']:.1f} s "
                      f"(each with its first eval); then {k['compiled_ms']} ms per eval against eager "
                      f"{k['eager_ms']} ms ({k['speedup']:.2f}×); repays a cold compile after "
                      f"{k['evals_to_repay_cold_compile']} evals, a warm one after {k['evals_to_repay_warm_compile']}; "
                      f"accuracy {100 * k['compiled_accuracy']:.1f} % (eager {100 * k['eager_accuracy']:.1f} %), "
                      f"logits differ by up to {k['compiled_max_abs_diff']:.1e}.\n",
                      "| after the first compile | new graphs (recompiles) | seconds |", "| --- | --- | --- |"]
            for name, v in k["recompiles"].items():
                lines.append(f"| {name} | {v['new_graphs']} | {v['seconds']} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet20", "resnet8"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    subset = D.eval_subset(D.load_sample(splits=("test",)))
    result = {"images": len(subset), "rounds": args.rounds, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "hardware": hardware_name(torch.device("cpu")),
              "inductor_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"], "archs": {}}
    for arch in args.archs:
        model, _ = load_model(ASSETS / f"{arch}.safetensors")
        r = {"load1_start": load1()}
        r["eager"] = eager_rows(model, subset.images, subset.labels, args.rounds)
        r["conversion"] = conversion_costs(model, args.rounds)
        if not args.no_compile:
            r["compile"] = compile_rows(model, subset.images, subset.labels, args.rounds)
        r["load1_end"] = load1()
        result["archs"][arch] = r
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
