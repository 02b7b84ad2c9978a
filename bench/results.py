"""docs/RESULTS.md: every technique on the pretrained resnet20, measured the same way, in one run.

    python bench/results.py --data $CIFAR10_ROOT [--quick]

Accuracy is on the full 10,000-image CIFAR-10 test set; fine-tuning uses the 50,000 training images.
Every budget is stated in the table; nothing is tuned on the test set (settings are fixed in this file).
Latency ratios are measured in one run, models timed in turn. --quick shrinks every budget (a smoke
test of the script, not results). Writes docs/RESULTS.md and docs/results.json.
"""
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from compression import data as D
from compression.activations import quantize_model
from compression.distill import distill, distillation_loss_fn
from compression.files import load_model
from compression.counts import count_macs
from compression.int8 import int8_export_bytes, to_int8
from compression.metrics import compare_latency, fp32_bytes, int8_speedup, keep_freed_memory
from compression.models import create_model
from compression.packed import pack_model
from compression.prune import prune, sparsity
from compression.qat import convert_qat, prepare_qat
from compression.schedule import finetune, gradual_prune
from compression.share import bake_shared, cluster_weights, prepare_shared
from compression.structured import channel_counts, prune_to_macs, recalibrate_batchnorm
from compression.train import TrainConfig, cpu_model, evaluate, run_to_end, train
from doc_args import doc_parser

ROOT = Path(__file__).resolve().parent.parent

TEACHER_TARGET = 90.0   # % on the full test set (the foundation issue's target for resnet20)
# Epochs over the 50,000 training images. Each plan was fixed here before its run; no candidate setting
# was ever tried on the test set. The first plan (run against the 88.30 % teacher, full table in git
# history at commit 2d67f00) missed five targets. The second plan (commit 3e9107d) gave those rows more
# fine-tuning; its run was cut short. The third plan (commit 7d9b05c; its full table, against the 88.84 %
# teacher, is in git history at commit 866a41b) made 90 % and structured fine-tuning distil from the dense
# parent and picked the structured candidate on latency and held-out *training* images. This fourth plan
# gave the three rows that missed by a few tenths more of the same, and ran the KD comparison twice (its
# full table, against the 89.42 % teacher, is in git history at commit 096d13b). This fifth plan takes
# the fine-tuning learning rates (and, for the 50 % model, label smoothing) from comparisons on held-out
# *training* images (`bench/finetune_heldout.py`), and gives the 90 % and structured rows a few more
# epochs within the 2 h. PLAN_CHANGES says what differs from the fourth plan, in the table's words.
FIRST_PLAN = {"qat": 2, "prune50": 0, "prune90": 10, "structured": 8, "kd": 15, "centroids": 0}
SECOND_PLAN = {"qat": 2, "prune50": 1, "prune90": 15, "structured": 10, "kd": 15, "centroids": 2}
THIRD_PLAN = {"qat": 2, "prune50": 1, "prune90": 15, "structured": 15, "kd": 15, "centroids": 2}
FOURTH_PLAN = {"qat": 2, "prune50": 1, "prune90": 20, "structured": 15, "kd": 12, "centroids": 4}
BUDGET = {"qat": 2, "prune50": 1, "prune90": 24, "structured": 18, "kd": 12, "centroids": 4}
KD_SEEDS = (0, 1)       # the KD row trains both students once per seed (third plan: seed 0 only)
PLAN = 5
PLAN_CHANGES = [
    "50 % sparsity, fine-tuned: lr 0.002 with label smoothing 0.1 instead of lr 0.01 with plain cross-entropy "
    "(the best of the recipes `python bench/finetune_heldout.py --row prune50` compared on 5,000 held-out "
    "training images)",
    "90 % sparsity: 24 epochs instead of 20 (lr 0.05 kept: on held-out training images, "
    "`--row prune90`, it beat lr 0.02 even in a 3-epoch proxy that favours small rates)",
    "structured pruning: lr 0.02 instead of 0.05 (`--row structured`: 87.60 % against 86.78 % on held-out "
    "training images after 3 epochs), and 18 epochs instead of 15",
]
PRUNE50_FINETUNE = {"lr": 0.002, "label_smoothing": 0.1}   # held-out comparison, fifth plan
PRUNE90_LR = 0.05         # held-out comparison, fifth plan: kept (it beat 0.02)
STRUCTURED_LR = 0.02    # held-out comparison, fifth plan (fourth plan: 0.05)
AGP_END = 0.5           # fraction of the 90 % run's steps at which AGP reaches 90 % (first plan: 0.75)
KD_FINETUNE = {"T": 4.0, "alpha": 0.9}   # distillation from the dense parent while fine-tuning (third plan)
# Structured pruning: every candidate is pruned (L1 filters) to at most STRUCTURED_MACS of the dense
# MACs. Those measuring at least STRUCTURED_PICK times faster than the dense model at batch 256 are
# eligible (the margin over the 1.6× target absorbs the noise between this and the table's separate
# measurement after fine-tuning); among them the best on PICK_IMAGES training images, before any
# fine-tuning but after adaptive BN on RECALIBRATION_IMAGES others, is kept. The test set plays no part.
STRUCTURED_MACS = 0.5
STRUCTURED_CANDIDATES = {   # name: (global ranking, round widths to)
    "local, multiples of 8": (False, 8),
    "local, any width": (False, None),
    "global, multiples of 8": (True, 8),
    "global, any width": (True, None),
}
STRUCTURED_PICK = 1.7
PICK_IMAGES = 2000      # the last images of the training split
RECALIBRATION_IMAGES = 2048   # the first ones

def main():
    p = doc_parser("RESULTS.md", "tiny budgets: checks the script runs")
    args = p.parse_args()
    if args.render:
        saved = json.loads((Path(args.out) / "results.json").read_text())
        (Path(args.out) / "RESULTS.md").write_text(render(saved["meta"], saved["rows"]))
        return
    budget = {k: (0.05 if args.quick else v) for k, v in BUDGET.items()}
    keep_freed_memory()     # one allocator state for the whole run: latency is the convolutions' own
    started = time.time()
    train_set, test_set = D.load_cifar10(args.data, "train"), D.load_cifar10(args.data, "test")
    if args.quick:
        test_set = test_set.subset(slice(0, 1000))
    calib = train_set.subset(slice(0, 512), "calibration")
    base, _ = load_model(args.model)
    base_acc = evaluate(base, test_set).accuracy
    base_bytes = len(fp32_bytes(base))
    rows = []

    def acc(model) -> float:
        return evaluate(model, test_set).accuracy

    def emit(r: dict) -> None:
        r["minutes"] = round((time.time() - started) / 60, 1)
        rows.append(r)
        print(json.dumps(r), flush=True)

    def row(item, settings, budget_text, model_acc, target_pt, size=None, extra="", met=None, note=""):
        drop = 100 * (base_acc - model_acc) if model_acc is not None else None
        ok = met if met is not None else (drop is not None and target_pt is not None and drop <= target_pt)
        emit({"item": item, "settings": settings, "budget": budget_text,
              "accuracy": None if model_acc is None else round(100 * model_acc, 2),
              "drop_pt": None if drop is None else round(drop, 2),
              "size": size, "extra": extra, "target": "" if target_pt is None else f"≤ {target_pt} pt drop",
              "met": ok, "note": note})

    row("resnet20 (pretrained)", "fp32, dense", "—", base_acc, None, f"{base_bytes / 1024:.0f} KiB fp32",
        met=True)

    # Quantization ------------------------------------------------------------------------------------
    w8a8 = quantize_model(base, 8, 8, calib, symmetric=True, per_channel=True, a_method="percentile")
    row("8-bit PTQ, weights + activations", "w8 sym per-channel, a8 asym per-tensor (percentile, 4×128 images)",
        "none (calibration only)", acc(w8a8), 0.3, f"{len(pack_model(w8a8)) / 1024:.0f} KiB packed")
    for bits, target in ((4, 1.0), (2, None)):
        qat = prepare_qat(base, bits, symmetric=True, per_channel=True, a_bits=8, calib=calib)
        run_to_end(finetune(qat, train_set, budget["qat"], lr=0.01))
        q = convert_qat(qat)
        ptq = quantize_model(base, bits, 8, calib, symmetric=True, per_channel=True)
        row(f"{bits}-bit weights / 8-bit activations, QAT", "w sym per-channel (STE), a8 asym minmax",
            f"{budget['qat']} epochs QAT, lr 0.01 cosine", acc(q), target,
            f"{len(pack_model(q)) / 1024:.0f} KiB packed", extra=f"PTQ without QAT: {100 * acc(ptq):.2f} %",
            met=None if target else True, note="" if target else "reported, no target")

    int8 = to_int8(base, calib)
    timing = int8_speedup(base, int8, batch_size=256, repeats=25)
    int8_acc = evaluate(int8, test_set, batch_size=250).accuracy
    blob = int8_export_bytes(int8)
    speed_ok = timing["speedup"] >= 2.0
    drop_ok = 100 * (base_acc - int8_acc) <= 0.5
    row("Real int8 on CPU (PT2E, X86InductorQuantizer, torch.compile)", "int8 weights per-channel, uint8 activations",
        "calibration only", int8_acc, 0.5, f"{len(blob) / 1024:.0f} KiB .pt2",
        extra=f"batch 256: fp32 eager {timing['fp32_ms']:.0f} ms, int8 {timing['int8_ms']:.0f} ms, "
              f"**{timing['speedup']:.2f}×** ({timing['threads']} threads); target ≥ 2×",
        met=speed_ok and drop_ok)

    # Pruning -----------------------------------------------------------------------------------------
    p50 = prune(base, 0.5, "magnitude", "global")
    row("50 % global magnitude sparsity", "one-shot, all conv + fc", "none", acc(p50), 0.3,
        f"{len(pack_model(p50)) / 1024:.0f} KiB packed")
    run_to_end(finetune(p50, train_set, budget["prune50"], **PRUNE50_FINETUNE))
    row("50 % global magnitude sparsity, fine-tuned", "the row above, then fine-tuned with its masks",
        f"{budget['prune50']} epoch, lr {PRUNE50_FINETUNE['lr']} cosine, label smoothing "
        f"{PRUNE50_FINETUNE['label_smoothing']}", acc(p50), 0.3, f"{len(pack_model(p50)) / 1024:.0f} KiB packed",
        extra=f"sparsity {100 * sparsity(p50):.2f} %")
    p90 = create_model("resnet20")
    p90.load_state_dict(base.state_dict())
    run_to_end(gradual_prune(p90, 0.9, train_set, budget["prune90"], lr=PRUNE90_LR, end_fraction=AGP_END,
                             loss_fn=distillation_loss_fn(base, **KD_FINETUNE)))
    p90_acc = acc(p90)
    row("90 % global magnitude sparsity, fine-tuned",
        f"AGP from 0 to 90 % over the first {100 * AGP_END:.0f} % of fine-tuning",
        f"{budget['prune90']} epochs, lr {PRUNE90_LR} cosine, distilling from the dense resnet20 (T = 4, α = 0.9)",
        p90_acc, 1.5, f"{len(pack_model(p90)) / 1024:.0f} KiB packed",
        extra=f"sparsity {100 * sparsity(p90):.2f} %")

    name, small, pick_text = pick_structured(base, train_set.subset(slice(0, RECALIBRATION_IMAGES), "recalibration"),
                                             train_set.subset(slice(-PICK_IMAGES, None), "held-out"))
    before_ft = acc(small)
    run_to_end(finetune(small, train_set, budget["structured"], lr=STRUCTURED_LR,
                        loss_fn=distillation_loss_fn(base, **KD_FINETUNE)))
    macs = count_macs(small)[0] / count_macs(base)[0]
    lat = compare_latency({"dense": base, "pruned": small}, batch_size=256, repeats=25)
    speedup = lat["dense"] / lat["pruned"]
    drop = 100 * (base_acc - acc(small))
    classifier = next(n for n, m in small.named_modules() if isinstance(m, torch.nn.Linear))
    widths = sorted({c for n, c in channel_counts(small).items() if n != classifier})   # conv widths only
    row("Structured filter pruning to ≤ half the MACs", f"L1 filters, {name} (Torch-Pruning groups); "
        f"conv widths {widths}", f"{budget['structured']} epochs, lr {STRUCTURED_LR} cosine, distilling from the dense "
        f"resnet20 (T = 4, α = 0.9)", acc(small), 1.5,
        f"{sum(p.numel() for p in small.parameters()):,} params",
        extra=f"MACs {100 * macs:.1f} % of dense; CPU batch 256: {lat['dense']:.0f} → {lat['pruned']:.0f} ms, "
              f"**{speedup:.2f}×** (target ≥ 1.6×); before fine-tuning (after adaptive BN) {100 * before_ft:.2f} %; "
              f"candidates ({pick_text})",
        met=drop <= 1.5 and speedup >= 1.6 and macs <= 0.5)

    # Distillation --------------------------------------------------------------------------------------
    kd_accs, alone_accs = [], []
    for seed in KD_SEEDS:
        student = create_model("resnet8")
        config = TrainConfig(epochs=budget["kd"], lr=0.2, label_smoothing=0.0, seed=seed)
        run_to_end(distill(student, base, train_set, config, T=4.0, alpha=0.9))
        alone = create_model("resnet8")
        run_to_end(train(alone, train_set, TrainConfig(epochs=budget["kd"], lr=0.2, seed=seed)))
        kd_accs.append(acc(student))
        alone_accs.append(acc(alone))
        print(f"KD seed {seed}: KD {100 * kd_accs[-1]:.2f} %, alone {100 * alone_accs[-1]:.2f} %", flush=True)
    kd_acc, alone_acc = statistics.mean(kd_accs), statistics.mean(alone_accs)

    def runs(accs):
        return ", ".join(f"{100 * a:.2f}" for a in accs)
    seeds = " and ".join(map(str, KD_SEEDS))
    emit({"item": "KD resnet20 → resnet8 (T = 4, α = 0.9)", "settings": "same budget and schedule, seeds " + seeds,
          "budget": f"{budget['kd']} epochs each, one-cycle lr 0.2",
          "accuracy": round(100 * kd_acc, 2), "drop_pt": None, "size": "78,042 params",
          "extra": f"mean of {len(KD_SEEDS)} runs each (seeds {seeds}); KD runs {runs(kd_accs)} %; resnet8 alone: "
                   f"{100 * alone_acc:.2f} % (runs {runs(alone_accs)} %); KD "
                   f"{'wins' if kd_acc > alone_acc else 'loses'} by {100 * (kd_acc - alone_acc):+.2f} pt",
          "target": "KD beats training alone", "met": kd_acc > alone_acc, "note": "",
          "runs": {"kd": [round(100 * a, 2) for a in kd_accs], "alone": [round(100 * a, 2) for a in alone_accs]}})

    # Weight sharing and Deep Compression -----------------------------------------------------------------
    shared = cluster_weights(p90, 16)
    before_centroids = acc(shared)
    if budget["centroids"]:
        trainable = prepare_shared(shared)
        run_to_end(finetune(trainable, train_set, budget["centroids"], lr=0.005, weight_decay=0.0))
        shared = bake_shared(trainable)
    s_acc = acc(shared)
    packed = pack_model(shared)
    emit({"item": "16-cluster weight sharing on the 90 %-sparse model", "settings": "per-layer k-means, "
          "linear init; then only the centroids are fine-tuned (zeros stay zero)",
          "budget": f"{budget['centroids']} epochs centroids, lr 0.005 cosine" if budget["centroids"] else "none",
          "accuracy": round(100 * s_acc, 2),
          "drop_pt": round(100 * (p90_acc - s_acc), 2), "size": f"{len(packed) / 1024:.1f} KiB packed",
          "extra": f"drop measured against the 90 % model; before centroid fine-tuning "
                   f"{100 * before_centroids:.2f} %", "target": "≤ 0.5 pt further drop",
          "met": 100 * (p90_acc - s_acc) <= 0.5, "note": ""})
    ratio = base_bytes / len(packed)
    row("Deep Compression: prune 90 % → fine-tune → 16 clusters → Huffman", "the two rows above, packed",
        f"{budget['prune90']} + {budget['centroids']} epochs", s_acc, 1.5, f"{len(packed) / 1024:.1f} KiB packed",
        extra=f"**{ratio:.1f}×** smaller than fp32 ({base_bytes / 1024:.0f} KiB); target ≥ 15×",
        met=ratio >= 15 and 100 * (base_acc - s_acc) <= 1.5)

    elapsed = time.time() - started
    meta = {"date": time.strftime("%Y-%m-%d"), "hardware": f"{cpu_model()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "python": platform.python_version(), "minutes": round(elapsed / 60, 1),
            "baseline_accuracy": round(100 * base_acc, 2), "quick": args.quick, "model": Path(args.model).name,
            "budget": BUDGET, "first_plan": FIRST_PLAN, "second_plan": SECOND_PLAN, "third_plan": THIRD_PLAN,
            "fourth_plan": FOURTH_PLAN,
            "kd_seeds": list(KD_SEEDS), "plan": PLAN,
            "plan_changes": PLAN_CHANGES}
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if not args.quick:
        (out / "RESULTS.md").write_text(render(meta, rows))
    print(f"done in {elapsed / 60:.1f} min")


def pick_structured(base, recalibration, held_out):
    """(name, pruned model, what was measured): each of STRUCTURED_CANDIDATES pruned to ≤ STRUCTURED_MACS
    of the MACs; those ≥ STRUCTURED_PICK× faster than `base` at batch 256 (or the fastest, if none is)
    are eligible, and the one most accurate on `held_out` training images before fine-tuning, once its
    BatchNorm statistics are re-estimated on `recalibration` images, is kept."""
    candidates = {name: prune_to_macs(base, STRUCTURED_MACS, "l1", global_pruning=g, round_to=r)
                  for name, (g, r) in STRUCTURED_CANDIDATES.items()}
    lat = compare_latency({"dense": base, **candidates}, batch_size=256, repeats=25)
    speedups = {name: lat["dense"] / lat[name] for name in candidates}
    eligible = [n for n in candidates if speedups[n] >= STRUCTURED_PICK] or [max(speedups, key=speedups.get)]
    for model in candidates.values():
        recalibrate_batchnorm(model, recalibration)
    held = {n: evaluate(candidates[n], held_out).accuracy for n in candidates}
    name = max(eligible, key=held.get)
    shown = "; ".join(f"{n}: MACs {100 * count_macs(m)[0] / count_macs(base)[0]:.1f} %, {speedups[n]:.2f}×, "
                      f"held-out {100 * held[n]:.1f} %" for n, m in candidates.items())
    print(f"structured pick: {name} from {shown}", flush=True)
    return name, candidates[name], shown


PLAN_HISTORY = {
    2: "This is the second plan. The first plan's run missed five targets (its table is in the git history of "
       "this file, commit 2d67f00). The budgets of the rows that missed were raised once, before this run, "
       "without trying candidates on the test set:",
    3: "This is the third plan. The first plan's run missed five targets (its table is in the git history of "
       "this file, commit 2d67f00). A second plan gave those rows more fine-tuning (commit 3e9107d); its run "
       "was cut short after the structured row, with 90 % sparsity and structured pruning still missing. Each "
       "plan was fixed in `bench/results.py` before its run, without trying candidates on the test set. What "
       "this plan changes against the first:",
    4: "This is the fourth plan. The first plan's run missed five targets (its table is in the git history of "
       "this file, commit 2d67f00); the second gave those rows more fine-tuning (commit 3e9107d; its run was "
       "cut short); the third made the 90 % and structured fine-tuning distil from the dense resnet20 and "
       "picked the structured candidate on latency and held-out training images (its full table, against the "
       "88.84 % teacher, is in the git history of this file, commit 866a41b). Each plan was fixed in "
       "`bench/results.py` before its run, without trying candidates on the test set. What this plan changes "
       "against the third:",
    5: "This is the fifth plan. The first plan's run missed five targets (its table is in the git history of "
       "this file, commit 2d67f00); the second gave those rows more fine-tuning (commit 3e9107d; its run was "
       "cut short); the third made the 90 % and structured fine-tuning distil from the dense resnet20 "
       "(commit 866a41b); the fourth gave the rows that missed a little more of the same (its full table, "
       "against the same 89.42 % teacher, is in the git history of this file, commit 096d13b). Each plan was "
       "fixed in `bench/results.py` before its run, without trying candidates on the test set; this one takes "
       "its learning rates from runs scored on held-out training images. What it changes against the fourth:",
}


def plan_history(meta) -> list[str]:
    """The paragraph saying which plan made the table and what it changed, with its bullet list."""
    plan = meta.get("plan", 2 if meta.get("plan_changes") else None)
    if plan not in PLAN_HISTORY:
        return []
    return [PLAN_HISTORY[plan], "", *[f"- {change}" for change in meta["plan_changes"]], ""]


def render(meta, rows) -> str:
    lines = [
        "# Results: every technique on the pretrained resnet20",
        "",
        "Made by one command (it rewrites this file and `docs/results.json`):",
        "",
        "    python bench/results.py --data $CIFAR10_ROOT",
        "",
        f"Run on {meta['date']}, {meta['hardware']}, torch {meta['torch']}; took {meta['minutes']} minutes. "
        f"Data: the CIFAR-10 copy in `../shared/cifar10` (JPEG-derived pixels, so about 1–2 points below "
        f"published figures for the same recipe). Accuracy is on the full 10,000-image test set; the "
        f"baseline is **{meta['baseline_accuracy']} %**; \"drop\" is in points against it. Fine-tuning uses "
        f"the 50,000 training images. Budgets were fixed in `bench/results.py` before the run; nothing was "
        f"tuned on the test set.",
        "",
        *plan_history(meta),
        *(["**This table was made with earlier budgets** (each row states its own). `bench/results.py` now "
           f"holds a later plan ({', '.join(f'{k} {v}' for k, v in BUDGET.items())} epochs), so rerunning "
           "the command above measures that plan and rewrites this table.", ""]
          if meta.get("budget") != BUDGET else []),
        *([f"The teacher itself is under the 90 % its card aims at (`assets/{Path(meta['model']).stem}.json`); "
           "every drop below is measured against the teacher as shipped.", ""]
          if meta["baseline_accuracy"] < TEACHER_TARGET else []),
        "| what | settings | fine-tuning budget | accuracy (%) | drop (pt) | size | measured | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['item']} | {r['settings']} | {r['budget']} | {r['accuracy']} | "
                     f"{'' if r['drop_pt'] is None else r['drop_pt']} | {r['size'] or ''} | {r['extra']} | "
                     f"{r['target']} | {'yes' if r['met'] else '**no**'} |")
    missed = [r for r in rows if not r["met"]]
    lines += ["", "## Where a target is missed", ""]
    if not missed:
        lines.append("Every target was met in this run.")
    for r in missed:
        lines.append(f"- **{r['item']}**: {r['note'] or why_missed(r, meta)}")
    lines += close_calls(rows)
    lines.append("")
    return "\n".join(lines)


def close_calls(rows) -> list[str]:
    """A met KD row whose margin is smaller than the spread between seeds of either student: the table
    cannot tell the methods apart, whatever the rule says."""
    out = []
    for r in rows:
        if not (r["met"] and "runs" in r):
            continue
        kd, alone = r["runs"]["kd"], r["runs"]["alone"]
        margin = abs(statistics.mean(kd) - statistics.mean(alone))
        spread = max(max(kd) - min(kd), max(alone) - min(alone))
        if margin < spread:
            out += ["", "## Met, but too close to call", "",
                    f"- **{r['item']}**: the means differ by {margin:.2f} pt, while the seed alone moves one "
                    f"student by up to {spread:.2f} pt; by its rule (fixed before the run) the row is met, but "
                    "these runs do not show that KD wins at this budget."]
    return out


# Why a row can miss its target: the mechanism, in words (the figures are the row's own).
WHY = {
    "50 % global magnitude sparsity": "one-shot means no fine-tuning at all: the weights that stay were trained "
    "together with the ones removed. The next row is the same model after 1 epoch of fine-tuning.",
    "50 % global magnitude sparsity, fine-tuned": "with the fourth plan's recipe (lr 0.01, plain cross-entropy) "
    "this model reached 88.84 % against the same teacher (commit 096d13b); the recipe here, the best of those "
    "`python bench/finetune_heldout.py --row prune50` compared on held-out training images (docs/HELDOUT.md, not "
    "the test set), gains on it, but one epoch does not win the whole drop back.",
    "90 % global magnitude sparsity, fine-tuned": "nine weights in ten go from a network that is small to begin "
    "with (0.27 M weights), and more of the same fine-tuning no longer moves it: with the same AGP and "
    "distillation, 15 epochs reached 87.32 % (third plan, commit 866a41b), 20 epochs 87.39 % (fourth, commit "
    "096d13b) and 24 epochs the figure above, while the drop is measured against a teacher that gained 0.58 pt "
    "between the third and fourth plans. That points at the capacity of the 27,000 weights left rather than at "
    "the budget.",
    "Structured filter pruning to ≤ half the MACs": "speed: in fp32 eager mode every BatchNorm, ReLU and residual "
    "addition is its own pass over the feature maps, and these passes shrink more slowly than the MACs, so the "
    "pruned model gains less time than MACs; when no candidate reaches the 1.7× the pick asks for, the fastest is "
    "kept (the candidates are listed in the row). Timed in a fresh process with glibc's default allocator "
    "settings, the same pair reads faster, because there the dense model also pays to page-fault its large "
    "activations in at many passes; the table's timings leave that cost out (docs/BENCHMARKS.md, "
    "`python bench/latency_allocator.py`). Accuracy: "
    "pruning a residual stream changes every block of its stage at once, and the fine-tuning budget and rate "
    "hardly move where the pruned network lands: 15 epochs at lr 0.05 reached 86.93 % (third plan) and 86.92 % "
    "(fourth), 18 epochs at lr 0.02 (picked on held-out training images) the figure above.",
    "KD resnet20 → resnet8 (T = 4, α = 0.9)": "the two students end within a few tenths of a point of each other; "
    "with α = 0.9 the student learns almost only from the teacher's soft targets, and {kd_runs} (the first "
    "plan's run, against the 88.30 % teacher, had KD ahead).",
    "16-cluster weight sharing on the 90 %-sparse model": "16 shared values per layer replace the surviving "
    "weights; the {centroids} epochs of centroid fine-tuning won back most, not all, of the k-means error.",
    "Deep Compression: prune 90 % → fine-tune → 16 clusters → Huffman": "its drop is the 90 % model's drop plus the "
    "clustering's (the two rows above); when either misses, so does this row's accuracy target.",
}


def why_missed(row: dict, meta: dict) -> str:
    """The measured figures beside the target they miss (the row's own words), then why (WHY, filled in
    with the budgets of the plan that made the row)."""
    measured = [f"accuracy {row['accuracy']} %"]
    if row["drop_pt"] is not None:
        measured.append(f"drop {row['drop_pt']} pt")
    if row["extra"]:
        measured.append(row["extra"])
    seeds = len(meta.get("kd_seeds", [0]))
    kd_runs = ("one run per side cannot separate the methods at such a margin" if seeds == 1 else
               f"the row lists all {seeds} runs per side, to set the margin against how far the seed alone "
               "moves each student")
    why = f" Why: {WHY[row['item']].format(centroids=meta['budget']['centroids'], kd_runs=kd_runs)}" \
        if row["item"] in WHY else ""
    return f"target {row['target']}; measured {'; '.join(measured)}.{why}"


if __name__ == "__main__":
    main()
