"""docs/AUTO.md: automatic per-layer compression and the ONNX exports, on the pretrained resnet20.

    CIFAR10_ROOT=$PWD/data/cifar10 python bench/auto_results.py [--quick]

Accuracy is on the full 10,000-image CIFAR-10 test set. Everything below was fixed in this file before
the run; nothing was tuned on the test set.

- Sensitivity (both automatic modes) is measured on CALIB_IMAGES training images (the last ones of
  the training split), never on test images.
- Pruning: every conv and the classifier (no layer exempt), magnitude ranking, at 70 % and 90 %
  sparsity: auto (auto_prune: per-layer sparsities from the sensitivity curves at the levels
  auto_prune.DEFAULT_LEVELS, exact target), both as predicted (greedy allocation, choose="predicted")
  and as checked on the calibration images (choose="measured", the default), against uniform (every
  layer at the target: prune scope="layer") and global magnitude (prune scope="global"). Each is then fine-tuned
  the same way: FINETUNE epochs over the 50,000 training images, lr FINETUNE_LR cosine, batch 128,
  seed 0, plain cross-entropy, masks kept.
- Mixed precision (weights only, symmetric per-channel, no fine-tuning): budgets = the packed size of
  uniform 4-bit and of uniform 3-bit; auto (auto_quantize, criterion "loss", and the data-free "sqnr")
  against that uniform width.
- ONNX: the fp32 export against PyTorch fp32 (eager), and the int8 QDQ export (onnxruntime's
  quantize_static, calibrated on the same 4 × 128 training images as PT2E) against PT2E int8
  (torch.compile'd) and fp32: accuracy, batch-1 and batch-256 CPU latency (medians, the models timed
  in turn within one loop) and file size.

--quick runs everything on the bundled sample with tiny budgets: a smoke test of the script, not results.
Writes docs/AUTO.md and docs/auto_results.json.

--finetune-only fills in the fine-tuned column of an earlier run (docs/auto_results.json) without
measuring the sensitivity again: it makes the eight pruned models again from the saved per-layer
allocations (each layer's zeros at its lowest magnitudes, as auto_prune does; uniform and global from
prune()), checks that each has the saved sparsity and one-shot accuracy to the last digit, and fine-tunes
each as above, with the saved run's epochs:

    CIFAR10_ROOT=$PWD/data/cifar10 python bench/auto_results.py --finetune-only
"""
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compression import data as D  # noqa: E402
from compression.auto_prune import AutoPruneConfig, auto_prune, measure_sensitivity, packed_size  # noqa: E402
from compression.auto_quant import AutoQuantConfig, auto_quantize, measure_sensitivity as bit_sensitivity  # noqa: E402
from compression.files import load_model, state_dict_bytes  # noqa: E402
from compression.int8 import int8_export_bytes, to_int8  # noqa: E402
from compression.metrics import keep_freed_memory  # noqa: E402
from compression.onnx_export import OnnxModel, export_fp32, export_int8, verify  # noqa: E402
from compression.prune import prune, sparsity, strip  # noqa: E402
from compression.quantize import quantize_weights  # noqa: E402
from compression.schedule import finetune  # noqa: E402
from compression.train import cpu_model, evaluate, run_to_end  # noqa: E402
from compression.weights import plain_model  # noqa: E402
from doc_args import doc_parser  # noqa: E402

TARGETS = (0.7, 0.9)
CALIB_IMAGES = 1024
FINETUNE = 0.5            # epochs (1 was the plan; 8 models × 1 epoch would not fit an hour on the loaded machine)
FINETUNE_LR = 0.01
BIT_BUDGETS = (4, 3)      # budget = packed size of uniform b-bit weights
LATENCY_REPEATS = 7


def main():
    p = doc_parser("AUTO.md", "bundled sample, tiny budgets: checks the script runs")
    p.add_argument("--parts", default="prune,bits,onnx", help="comma-separated sections to run (prune, bits, onnx)")
    p.add_argument("--calib-images", type=int, default=CALIB_IMAGES, help="training images sensitivity is measured on")
    p.add_argument("--finetune", type=float, default=FINETUNE, help="fine-tuning epochs of each pruned model")
    p.add_argument("--finetune-only", action="store_true",
                   help="fine-tune the pruned models of the saved run again from its allocations (see the docstring)")
    args = p.parse_args()
    if args.finetune_only:
        return finetune_saved(args)
    if args.render:
        saved = json.loads((Path(args.out) / "auto_results.json").read_text())
        (Path(args.out) / "AUTO.md").write_text(render(saved.pop("meta"), saved))
        return
    keep_freed_memory()
    started, loads = time.time(), []
    if args.quick:
        train_set, test_set = D.load_sample()
        calib_images, epochs = 128, 0.02
    else:
        train_set, test_set = D.load_cifar10(args.data, "train"), D.load_cifar10(args.data, "test")
        calib_images, epochs = args.calib_images, args.finetune
    calib = train_set.subset(slice(len(train_set) - calib_images, len(train_set)), "calibration")
    base, _ = load_model(args.model)
    results = {"pruning": [], "layers": {}, "bits": [], "onnx": {}}

    def log(what: str) -> None:
        loads.append(os.getloadavg()[0])
        print(f"[{(time.time() - started) / 60:5.1f} min, load {loads[-1]:.1f}] {what}", flush=True)

    def acc(model) -> float:
        return round(100 * evaluate(model, test_set).accuracy, 2)

    base_acc = acc(base)
    log(f"baseline {base_acc} %")

    parts = set(args.parts.split(","))
    # Pruning --------------------------------------------------------------------------------------------
    if "prune" in parts:
        prune_section(base, calib, calib_images, train_set, epochs, results, acc, log)
    if "bits" in parts:
        bits_section(base, calib, calib_images, results, acc, log)
    if "onnx" in parts:
        onnx_section(base, train_set, test_set, results, log)
    finish(args, started, loads, test_set, base_acc, calib_images, epochs, results)


def prune_section(base, calib, calib_images, train_set, epochs, results, acc, log):
    config = AutoPruneConfig(target_sparsity=TARGETS[0], calib_images=calib_images)
    t0 = time.time()
    sensitivity = measure_sensitivity(base, config, calib)
    results["sensitivity_minutes"] = round((time.time() - t0) / 60, 1)
    log("pruning sensitivity measured")
    trials = []
    for target in TARGETS:
        greedy, by_prediction = auto_prune(base, AutoPruneConfig(target_sparsity=target, calib_images=calib_images,
                                                                 choose="predicted"), calib, sensitivity=sensitivity)
        auto, allocation = auto_prune(base, AutoPruneConfig(target_sparsity=target, calib_images=calib_images),
                                      calib, sensitivity=sensitivity)
        models = {"auto (predicted)": greedy, "auto (measured)": auto, "uniform": prune(base, target, scope="layer"),
                  "global": prune(base, target)}
        predicted = {"auto (predicted)": by_prediction.predicted, "auto (measured)": allocation.predicted,
                     "uniform": allocation.uniform_predicted, "global": allocation.global_predicted}
        results["layers"][str(target)] = [{**row, "predicted": first["auto"]}
                                          for first, row in zip(by_prediction.rows(), allocation.rows())]
        results.setdefault("candidates", {})[str(target)] = {k: round(v, 4) for k, v in allocation.measured.items()}
        results.setdefault("rules", {})[str(target)] = {"predicted": by_prediction.rule, "measured": allocation.rule}
        log(json.dumps({"layers": results["layers"][str(target)], "candidates": results["candidates"][str(target)],
                        "rules": results["rules"][str(target)], "target": target}))
        for name, model in models.items():      # every one-shot result first, then the fine-tuning
            row = {"target": target, "allocation": name, "sparsity": round(sparsity(model), 6),
                   "predicted_calib_loss": round(predicted[name], 4),
                   "calib_loss": round(evaluate(model, calib).loss, 4), "one_shot": acc(model), "finetuned": None,
                   "packed_kib": round(packed_size(model) / 1024, 1)}
            results["pruning"].append(row)
            trials.append((row, model))
            log(json.dumps(row))
    for row, model in trials:
        run_to_end(finetune(model, train_set, epochs, lr=FINETUNE_LR, seed=0))
        row["finetuned"] = acc(model)
        log(json.dumps(row))


def saved_models(base, saved: dict) -> dict[tuple[float, str], torch.nn.Module]:
    """The pruned models of a saved run, made again from its per-layer allocations."""
    from compression.auto_prune import layer_scores, prune_to_counts

    scores = layer_scores(base, AutoPruneConfig(target_sparsity=TARGETS[0]), calib=None)
    models = {}
    for target in TARGETS:
        rows = saved["layers"][str(target)]
        for name, column in (("auto (predicted)", "predicted"), ("auto (measured)", "auto")):
            models[target, name] = prune_to_counts(base, {r["layer"]: round(r[column] * r["params"]) for r in rows},
                                                   scores)
        models[target, "uniform"] = prune(base, target, scope="layer")
        models[target, "global"] = prune(base, target)
    return models


def finetune_saved(args) -> None:
    out = Path(args.out)
    saved = json.loads((out / "auto_results.json").read_text())
    meta = saved.pop("meta")
    started, loads = time.time(), []
    train_set, test_set = D.load_cifar10(args.data, "train"), D.load_cifar10(args.data, "test")
    base, _ = load_model(args.model)
    models = saved_models(base, saved)
    for row in saved["pruning"]:
        model = models[row["target"], row["allocation"]]
        again = {"sparsity": round(sparsity(model), 6), "one_shot": round(100 * evaluate(model, test_set).accuracy, 2)}
        if again != {k: row[k] for k in again}:
            raise SystemExit(f"{row['target']} {row['allocation']}: made again {again}, saved {row}: not the same model")
        run_to_end(finetune(model, train_set, meta["finetune_epochs"], lr=FINETUNE_LR, seed=0))
        row["finetuned"] = round(100 * evaluate(model, test_set).accuracy, 2)
        loads.append(os.getloadavg()[0])
        print(f"[{(time.time() - started) / 60:5.1f} min, load {loads[-1]:.1f}] {json.dumps(row)}", flush=True)
    notes = meta.setdefault("notes", [])
    while notes and not notes[-1].startswith("The fine-tuned column"):
        notes.pop()
    if notes:
        notes.pop()
    notes += [f"The fine-tuned column: every model made again from the allocations above (same sparsity and "
              f"one-shot accuracy to the last digit, checked) and fine-tuned for {meta['finetune_epochs']} epoch, "
              f"run on {time.strftime('%Y-%m-%d')} in {(time.time() - started) / 60:.1f} minutes, load average "
              f"(1 minute) {min(loads):.1f} to {max(loads):.1f}, mean {statistics.mean(loads):.1f}:", "",
              "    CIFAR10_ROOT=$PWD/data/cifar10 python bench/auto_results.py --finetune-only"]
    (out / "auto_results.json").write_text(json.dumps({"meta": meta, **saved}, indent=1) + "\n")
    (out / "AUTO.md").write_text(render(meta, saved))
    print(f"wrote {out / 'AUTO.md'}", flush=True)


def bits_section(base, calib, calib_images, results, acc, log):
    for criterion in ("loss", "sqnr"):
        probe = AutoQuantConfig(1, criterion=criterion, calib_images=calib_images)
        bits_sensitivity = bit_sensitivity(base, probe, calib)
        log(f"bit sensitivity ({criterion}) measured")
        for bits in BIT_BUDGETS:
            uniform = quantize_weights(base, bits)
            budget = packed_size(uniform)
            model, allocation = auto_quantize(base, AutoQuantConfig(budget, criterion=criterion,
                                                                    calib_images=calib_images),
                                              calib, sensitivity=bits_sensitivity)
            row = {"budget_bytes": budget, "uniform_bits": bits, "criterion": criterion,
                   "uniform_accuracy": acc(uniform), "auto_accuracy": acc(model),
                   "auto_bytes": allocation.packed_bytes, "mean_bits": round(allocation.mean_bits, 3),
                   "predicted": round(allocation.predicted, 4), "uniform_predicted": round(allocation.uniform_predicted, 4),
                   "rule": allocation.rule, "bits": allocation.bits}
            results["bits"].append(row)
            log(json.dumps(row))


def onnx_section(base, train_set, test_set, results, log):
    fp32_onnx = export_fp32(base)
    results["onnx"]["fp32"] = verify(OnnxModel(fp32_onnx), {"pytorch_fp32": plain_model(base).eval()}, test_set,
                                     repeats=LATENCY_REPEATS)
    log("fp32 ONNX verified")
    int8_onnx = export_int8(base, train_set)
    pt2e = to_int8(base, train_set)
    results["onnx"]["int8"] = verify(OnnxModel(int8_onnx), {"pt2e_int8": pt2e, "pytorch_fp32": plain_model(base).eval()},
                                     test_set, repeats=LATENCY_REPEATS)
    results["onnx"]["bytes"] = {"safetensors fp32": len(state_dict_bytes(strip(base))), "onnx fp32": len(fp32_onnx),
                                "onnx int8 QDQ": len(int8_onnx), "pt2 int8 (PT2E)": len(int8_export_bytes(pt2e))}
    log("int8 ONNX verified")


def finish(args, started, loads, test_set, base_acc, calib_images, epochs, results):
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "minutes": round((time.time() - started) / 60, 1),
            "load_min": min(loads), "load_mean": round(statistics.mean(loads), 1), "load_max": max(loads),
            "quick": args.quick, "test_set": test_set.name, "test_images": len(test_set), "baseline": base_acc,
            "calib_images": calib_images, "finetune_epochs": epochs}
    out = Path(args.out)
    (out / "auto_results.json").write_text(json.dumps({"meta": meta, **results}, indent=1) + "\n")
    (out / "AUTO.md").write_text(render(meta, results))
    print(f"wrote {out / 'AUTO.md'}", flush=True)


def pct(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def onnx_lines(onnx: dict) -> list[str]:
    lines = ["", "## ONNX exports in ONNX Runtime", "",
              "Latency: median CPU time of one forward pass, the models of a row group timed in turn within "
              "one loop (PT2E int8 compiled by torch.compile first).", "",
              "| export | runtime | accuracy (%) | same top-1 as the ONNX model | batch 1 (ms) | batch 256 (ms) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for kind, report in (("fp32", onnx["fp32"]), ("int8", onnx["int8"])):
        lat = report["latency_ms"]
        lines.append(f"| {kind} | ONNX Runtime | {100 * report['onnx']['accuracy']:.2f} | — | "
                     f"{lat['batch 1']['onnx']:.2f} | {lat['batch 256']['onnx']:.0f} |")
        for name in (k for k in report if k not in ("onnx", "latency_ms", "images")):
            ref = report[name]
            lines.append(f"| {kind} | {name.replace('_', ' ')} | {100 * ref['accuracy']:.2f} | "
                         f"{100 * ref['agreement']:.2f} % (max logit diff {ref['max_abs_diff']:.2g}) | "
                         f"{lat['batch 1'][name]:.2f} | {lat['batch 256'][name]:.0f} |")
    lines += ["", "File sizes: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in onnx["bytes"].items()) + ".", ""]
    return lines


IN_THE_APP = "**In the app.** The Prune and Quantize pages have a *Manual | Auto* switch. In Auto mode the student sets the budget (Prune: the target sparsity, met exactly; Quantize: the packed size in KiB) and the number of calibration images; the sensitivity pass runs as a job of the job engine (tasks `auto_prune` and `auto_quant` of `compression/tasks.py`), and the page then draws the chosen per-layer sparsities or bit widths beside the uniform ones at the same budget, with both models' accuracy on the eval subset and the drop from the model in hand (an allowed accuracy drop is not a budget the library takes, so the drop is measured and shown). Both models join the workspace's variants as children of the model in hand; the allocation is kept in the auto variant's history, so the page draws it again after a reload. Compare & Download offers every variant as an fp32 and an int8 (QDQ) `.onnx`, made when clicked; *Check ONNX* runs both files in ONNX Runtime on the eval subset against the model in PyTorch (pretrained resnet20: fp32 89.8 %, as PyTorch; int8 89.7 %, the same top-1 class on 98.9 % of the images), and an uploaded `.onnx` is checked and evaluated in ONNX Runtime. Screenshots: [Prune, Auto](screenshots/auto-prune.png), [Quantize, Auto](screenshots/auto-quantize.png), [Compare & Download, ONNX](screenshots/compare-onnx.png)."


def render(meta: dict, r: dict) -> str:
    """The results as docs/AUTO.md."""
    lines = ["# Automatic per-layer compression and ONNX exports, on the pretrained resnet20", "",
             "Made by one command (it rewrites this file and `docs/auto_results.json`):", "",
             "    CIFAR10_ROOT=$PWD/data/cifar10 python bench/auto_results.py", "",
             f"Run on {meta['date']}, {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}; took "
             f"{meta['minutes']} minutes. Load average (1 minute) during the run: {meta['load_min']:.1f} to "
             f"{meta['load_max']:.1f}, mean {meta['load_mean']} — on a 2-core machine shared with other work, so "
             f"latencies are noisy; compare the models timed together, not with other tables. "
             f"Accuracy is on {meta['test_images']:,} images ({meta['test_set']}); the baseline is "
             f"**{meta['baseline']:.2f} %**. Sensitivity is measured on {meta['calib_images']:,} training images; "
             f"every budget was fixed in `bench/auto_results.py` before the run (its docstring), nothing was "
             f"tuned on the test set." + (" **QUICK RUN: a smoke test, not results.**" if meta["quick"] else ""), ""]
    lines += [*meta.get("notes", []), ""] if meta.get("notes") else []
    lines += [IN_THE_APP, ""]
    lines += ["## Pruning: auto against uniform and global magnitude", "",
              f"One-shot, then the same fine-tuning for every model ({meta['finetune_epochs']:g} epoch over the "
              f"training set, lr {FINETUNE_LR} cosine, masks kept). The predicted loss is the calibration loss "
              f"the sensitivity curves predict (base + Σ per-layer increases); the measured one is the same "
              f"loss measured on the pruned model. Measuring the curves took {r.get('sensitivity_minutes', '—')} minutes "
              f"(22 layers × 13 levels); allocating a target from them takes a moment.", "",
              "| target | allocation | sparsity | predicted calib loss | measured calib loss | one-shot (%) | "
              "fine-tuned (%) | packed (KiB) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["pruning"]:
        lines.append(f"| {row['target']:.0%} | {row['allocation']} | {row['sparsity']:.4f} | "
                     f"{row['predicted_calib_loss']:.3f} | {row['calib_loss']:.3f} | {pct(row['one_shot'])} | "
                     f"{pct(row['finetuned'])} | {row['packed_kib']} |")
    lines += [""]
    for t, rules in r.get("rules", {}).items():
        candidates = ", ".join(f"{k} {v:.3f}" for k, v in r["candidates"][t].items())
        lines.append(f"- {float(t):.0%}: by prediction, {rules['predicted']} won; measured on the calibration "
                     f"images (loss: {candidates}), {rules['measured']} won.")
    lines += ["", "Per-layer sparsity (what the app's bar chart draws):", ""] if r.get("layers") else []
    lines += [] if not r.get("layers") else [
              "| layer | weights | " + " | ".join(f"{float(t):.0%} auto (predicted) | auto (measured) | uniform | global"
                                                  for t in r["layers"]) + " |",
              "| --- | --- | " + " | ".join("--- | --- | --- | ---" for _ in r["layers"]) + " |"]
    tables = list(r.get("layers", {}).values())
    for i, first in enumerate(tables[0] if tables else []):
        cells = " | ".join(f"{t[i]['predicted']:.2f} | {t[i]['auto']:.2f} | {t[i]['uniform']:.2f} | {t[i]['global']:.2f}"
                           for t in tables)
        lines.append(f"| {first['layer']} | {first['params']:,} | {cells} |")
    lines += ["", "## Mixed precision: auto bit widths against uniform at the same packed size", "",
              "Weights only, symmetric per-channel grids, no fine-tuning. The budget is the packed size of the "
              "uniform model; the auto model's packed size is at most that. Criterion \"loss\": calibration "
              f"loss with one layer rounded (on {meta.get('bits_calib_images', meta['calib_images']):,} training "
              "images); \"sqnr\": the layer's relative noise power (data-free).", "",
              "| budget (bytes) | uniform | uniform (%) | criterion | auto (%) | auto bytes | mean bits | "
              "predicted loss auto / uniform | rule | widths (conv1 … fc) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["bits"]:
        widths = " ".join(str(b) for b in row["bits"].values())
        lines.append(f"| {row['budget_bytes']:,} | {row['uniform_bits']}-bit | {pct(row['uniform_accuracy'])} | "
                     f"{row['criterion']} | {pct(row['auto_accuracy'])} | {row['auto_bytes']:,} | {row['mean_bits']} | "
                     f"{row['predicted']:.3f} / {row['uniform_predicted']:.3f} | {row['rule']} | {widths} |")
    if r.get("onnx"):
        lines += onnx_lines(r["onnx"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
