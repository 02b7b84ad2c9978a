import json
import math
from pathlib import Path

import pytest
import torch

from compression.data import load_cifar10
from compression.files import load_model
from compression.models import create_model
from helpers import toy_set
from compression.train import (CheckpointError, TrainConfig, evaluate, hardware_name, lr_at, run_to_end,
                               threads_text, train)

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def tiny_config(**kw):
    base = dict(epochs=2, batch_size=32, lr=0.05, seed=3, augment=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_training_is_deterministic_under_a_seed():
    data = toy_set()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # different global state must not matter: the config's seed rules
        model = create_model("resnet8", width=0.25)
        run_to_end(train(model, data, tiny_config(epochs=1, augment=True)))
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_different_seeds_give_different_models():
    data = toy_set()
    a, b = create_model("resnet8", width=0.25), create_model("resnet8", width=0.25)
    run_to_end(train(a, data, tiny_config(epochs=1, seed=1)))
    run_to_end(train(b, data, tiny_config(epochs=1, seed=2)))
    assert not torch.equal(a.fc.weight, b.fc.weight)


def test_events_report_progress_and_learning_happens():
    data = toy_set()
    model = create_model("resnet8", width=0.25)
    events = list(train(model, data, tiny_config(epochs=6, lr=0.5), test_set=toy_set(200, seed=1), events_every=2))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("epoch") == 6
    steps = [e.step for e in events]
    assert steps == sorted(steps) and events[-1].step == events[-1].total_steps == 6 * (256 // 32)
    assert all(e.images_per_s > 0 and e.eta_s >= 0 for e in events)
    assert events[-1].test_acc > 0.5, "the toy task is easy: a few epochs must beat chance (0.1) widely"


def test_stop_cancels_between_steps():
    model = create_model("resnet8", width=0.25)
    stop_after = 3
    seen = []
    for event in train(model, toy_set(), tiny_config(epochs=5), stop=lambda: len(seen) >= stop_after,
                       events_every=1):
        seen.append(event)
    assert seen[-1].kind == "done" and seen[-1].step == stop_after


def test_closing_the_generator_stops_training():
    model = create_model("resnet8", width=0.25)
    gen = train(model, toy_set(), tiny_config(epochs=5), events_every=1)
    next(gen)
    before = model.fc.weight.clone()
    gen.close()
    assert torch.equal(before, model.fc.weight)


def stopped_after_epochs(epochs: int):
    """A stop() for train(): true once `epochs` epoch-end events have gone by (counted via the list)."""
    ends = []
    return ends, lambda: len(ends) >= epochs


@pytest.mark.parametrize("swa", [False, True], ids=["plain", "swa"])
def test_a_resumed_run_ends_with_the_same_weights_as_an_unbroken_one(tmp_path, swa):
    config = tiny_config(epochs=3, augment=True, cutout=8, swa=swa)   # shuffling, crops and cutout all draw random numbers
    torch.manual_seed(0)
    unbroken = create_model("resnet8", width=0.25)
    run_to_end(train(unbroken, toy_set(), config))

    checkpoint = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    first = create_model("resnet8", width=0.25)
    ends, stop = stopped_after_epochs(1)
    for event in train(first, toy_set(), config, stop=stop, checkpoint=checkpoint):
        if event.kind == "epoch":
            ends.append(event)
    assert not torch.equal(first.fc.weight, unbroken.fc.weight)
    torch.manual_seed(1234)          # other starting weights and global RNG state: the checkpoint must rule
    resumed = create_model("resnet8", width=0.25)
    events = list(train(resumed, toy_set(), config, checkpoint=checkpoint))
    assert events[0].step > 8, "the second sitting starts after the first epoch (8 steps), not from step 0"
    assert events[-1].step == events[-1].total_steps == 3 * 8
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in unbroken.state_dict().items())


def test_swa_ends_with_the_mean_of_every_epochs_weights_and_their_own_bn_statistics():
    data = toy_set()
    snapshots = []

    def at_epoch_end(step, total, model):
        if step % 8 == 0:                     # 256 images, batches of 32: 8 steps an epoch
            snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})

    model = create_model("resnet8", width=0.25)
    run_to_end(train(model, data, tiny_config(epochs=4, lr=0.2, schedule="constant", swa=True), step_hook=at_epoch_end))
    assert len(snapshots) == 4
    for name, value in model.named_parameters():
        mean = torch.stack([s[name] for s in snapshots]).mean(0)
        assert torch.allclose(value, mean, atol=1e-6), name
    assert not torch.allclose(model.fc.weight, snapshots[-1]["fc.weight"]), "the mean is not the last epoch"
    # The stem's batch norm was re-estimated for the mean: its running mean is the mean of the stem conv's
    # output over the training images (no augmentation, so the pass sees each image once as it is).
    with torch.no_grad():
        stem = model.conv1((data.images.float() / 255 - model.mean) / model.std)
    assert torch.allclose(model.bn1.running_mean, stem.mean((0, 2, 3)), atol=1e-4)


def test_a_checkpoint_from_other_settings_is_refused_with_a_clear_message(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    run_to_end(train(create_model("resnet8", width=0.25), toy_set(), tiny_config(epochs=1), checkpoint=checkpoint))
    with pytest.raises(CheckpointError, match="other settings.*lr"):
        run_to_end(train(create_model("resnet8", width=0.25), toy_set(), tiny_config(epochs=1, lr=0.1),
                         checkpoint=checkpoint))
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])   # truncated
    with pytest.raises(CheckpointError, match="not a readable training checkpoint"):
        run_to_end(train(create_model("resnet8", width=0.25), toy_set(), tiny_config(epochs=1), checkpoint=checkpoint))


def test_onecycle_schedule_warms_up_then_anneals_to_zero():
    config = TrainConfig(lr=0.2, schedule="onecycle", warmup=0.2)
    lrs = [lr_at(s, 100, config) for s in range(100)]
    assert max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 19
    assert lrs[0] < 0.02 and lrs[-1] < 1e-3
    assert lr_at(50, 100, TrainConfig(lr=0.1, schedule="cosine")) == pytest.approx(0.05, rel=0.05)


def test_divergence_is_reported_not_hidden():
    model = create_model("resnet8", width=0.25)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        run_to_end(train(model, toy_set(), tiny_config(lr=1e12, label_smoothing=0.0)))


def test_evaluate_confusion_matrix_is_consistent():
    data = toy_set(300)
    model = create_model("resnet8", width=0.25)
    result = evaluate(model, data)
    confusion = torch.tensor(result.confusion)
    assert confusion.sum() == 300 and torch.equal(confusion.sum(1), data.labels.bincount(minlength=10))
    assert result.accuracy == pytest.approx(confusion.diag().sum().item() / 300)


# --- real data -----------------------------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.parametrize("name", ["resnet20", "resnet8"])
def test_shipped_weights_reproduce_their_card(cifar_root, name):
    card = json.loads((ASSETS / f"{name}.json").read_text())
    model, meta = load_model(ASSETS / f"{name}.safetensors")
    assert meta["arch"] == card["arch"] == name
    accuracy = evaluate(model, load_cifar10(cifar_root, "test")).accuracy
    assert abs(accuracy - card["test_accuracy"]) <= 0.002


TARGETS = {"resnet20": 0.90, "resnet8": 0.84}


@pytest.mark.parametrize("name", [
    pytest.param("resnet20", marks=pytest.mark.xfail(
        reason="known gap: the shipped resnet20 (see its card's test_accuracy; one 180-epoch run from "
               "scratch) is under the foundation issue's 90 %", strict=True)),
    "resnet8",
])
def test_shipped_weights_meet_their_targets(name):
    card = json.loads((ASSETS / f"{name}.json").read_text())
    assert card["test_accuracy"] >= TARGETS[name]


@pytest.mark.realdata
@pytest.mark.slow
def test_short_training_on_real_data_beats_chance_widely(cifar_root):
    train_set = load_cifar10(cifar_root, "train").subset(slice(0, 16384))
    test_set = load_cifar10(cifar_root, "test").subset(slice(0, 2000))
    model = create_model("resnet8", width=0.5)
    last = run_to_end(train(model, train_set, TrainConfig(epochs=2, batch_size=128, lr=0.1), test_set))
    assert last.test_acc > 0.22, f"two epochs on 16k real images should reach well over 10 %, got {last.test_acc}"
    assert math.isfinite(last.loss)


def test_a_second_phase_keeps_the_first_in_its_card(tmp_path):
    from compression.cli import main

    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    common = ["--arch", "resnet8", "--sample", "--limit", "256", "--batch-size", "64"]
    assert main(["train", *common, "--width", "0.5", "--epochs", "1", "--out", str(first)]) == 0
    assert main(["train", *common, "--init", str(first), "--epochs", "0.5", "--lr", "0.05",
                 "--out", str(second)]) == 0
    card = json.loads(second.with_suffix(".json").read_text())
    first_card = json.loads(first.with_suffix(".json").read_text())
    assert card["width"] == 0.5                      # from the weights, not the --width default
    assert card["epochs"] == 1.5 and card["phase_epochs"] == 0.5
    assert card["previous_phase"]["sha256"] == first_card["sha256"]
    assert card["recipe"]["phase"] == 2
    assert load_model(second)[0].arch == "resnet8"


def test_a_third_phase_keeps_the_whole_chain_in_its_card(tmp_path):
    from compression.cli import main

    paths = [tmp_path / f"phase{i}.safetensors" for i in (1, 2, 3)]
    common = ["--arch", "resnet8", "--sample", "--limit", "128", "--batch-size", "64", "--epochs", "0.5"]
    assert main(["train", *common, "--out", str(paths[0])]) == 0
    assert main(["train", *common, "--init", str(paths[0]), "--out", str(paths[1])]) == 0
    assert main(["train", *common, "--init", str(paths[1]), "--out", str(paths[2])]) == 0
    cards = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    assert cards[2]["recipe"]["phase"] == 3 and cards[2]["epochs"] == 1.5
    assert cards[2]["previous_phase"]["sha256"] == cards[1]["sha256"]
    assert cards[2]["previous_phase"]["previous_phase"]["sha256"] == cards[0]["sha256"]


def test_the_cli_resumes_from_its_checkpoint_and_refuses_another_runs(tmp_path, capsys):
    from compression.cli import main

    ckpt, out, log = tmp_path / "run.ckpt", tmp_path / "m.safetensors", tmp_path / "log.txt"
    common = ["--arch", "resnet8", "--width", "0.25", "--sample", "--limit", "128", "--batch-size", "64",
              "--epochs", "1", "--checkpoint", str(ckpt), "--out", str(out), "--log", str(log)]
    assert main(["train", *common]) == 0 and ckpt.exists()
    first = load_model(out)[0].state_dict()
    assert log.read_text().count("[epoch]") == 1
    assert main(["train", *common]) == 0           # already at its end: resumes there, trains no step
    assert log.read_text().count("[epoch]") == 1 and log.read_text().count("[done]") == 2
    again = load_model(out)[0].state_dict()
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    capsys.readouterr()
    assert main(["train", *common, "--lr", "0.05"]) == 2
    assert "other settings (lr)" in capsys.readouterr().err


def test_training_with_a_teacher_distils_records_it_and_resumes_only_the_same_run(tmp_path, capsys):
    from compression.cli import main
    from compression.files import sha256_file

    teacher, ckpt = tmp_path / "teacher.safetensors", tmp_path / "run.ckpt"
    common = ["--arch", "resnet8", "--width", "0.25", "--sample", "--limit", "128", "--batch-size", "64",
              "--epochs", "1", "--seed", "5"]
    assert main(["train", *common, "--out", str(teacher)]) == 0
    alone, kd, kd_hot = (tmp_path / f"{n}.safetensors" for n in ("alone", "kd", "kd_hot"))
    assert main(["train", *common, "--out", str(alone)]) == 0
    assert main(["train", *common, "--teacher", str(teacher), "--checkpoint", str(ckpt), "--out", str(kd)]) == 0
    assert main(["train", *common, "--teacher", str(teacher), "-T", "8", "--out", str(kd_hot)]) == 0
    weights = [load_model(p)[0].fc.weight for p in (alone, kd, kd_hot)]
    assert not torch.equal(weights[0], weights[1]), "the teacher changes what the student learns"
    assert not torch.equal(weights[1], weights[2]), "so does its temperature"
    card = json.loads(kd.with_suffix(".json").read_text())
    assert card["recipe"]["distill"] == {"teacher": "teacher.safetensors", "teacher_sha256": sha256_file(teacher),
                                         "T": 4.0, "alpha": 0.9}
    ensemble = tmp_path / "ensemble.safetensors"
    assert main(["train", *common, "--teacher", str(teacher), str(kd_hot), "--out", str(ensemble)]) == 0
    assert not torch.equal(load_model(ensemble)[0].fc.weight, weights[1]), "two teachers teach otherwise than one"
    card = json.loads(ensemble.with_suffix(".json").read_text())
    assert card["recipe"]["distill"]["teacher"] == ["teacher.safetensors", "kd_hot.safetensors"]
    assert card["recipe"]["distill"]["teacher_sha256"] == [sha256_file(teacher), sha256_file(kd_hot)]
    capsys.readouterr()
    assert main(["train", *common, "--teacher", str(teacher), "-T", "8", "--checkpoint", str(ckpt),
                 "--out", str(kd_hot)]) == 2, "a checkpoint of another distillation run is refused"
    assert "distill" in capsys.readouterr().err


def test_the_cli_stops_quietly_when_its_reader_has_gone():
    import os
    import subprocess
    import sys
    read_end, write_end = os.pipe()
    os.close(read_end)                  # as `| head` does once it has its lines
    done = subprocess.run([sys.executable, "-m", "compression", "info", "assets/resnet8.safetensors", "--json"],
                          stdout=write_end, stderr=subprocess.PIPE, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    os.close(write_end)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr == ""


NARROW = """
import torch
from compression.data import ImageSet
from compression.models import create_model
from compression.qat import prepare_qat
from compression.train import TrainConfig, run_to_end, train
torch.manual_seed(0)
data = ImageSet(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (64,)))
for model in (create_model("resnet8", width=0.25), prepare_qat(create_model("resnet8", width=0.25), 4)):
    print(run_to_end(train(model, data, TrainConfig(epochs=3, batch_size=16, augment=False))).step)
"""


def test_a_narrow_model_trains_without_corrupting_memory():
    """Regression: with channels-last inputs, oneDNN's backward pass of a 1x1 stride-2 convolution reading
    2 to 7 channels (resnet8 at width 0.25: its first shortcut reads 4) corrupted the heap: a segfault with
    one OpenMP thread, a hang with two. Such a model trains in the plain memory format."""
    import os
    import subprocess
    import sys
    from compression.train import channels_last_trains_safely
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", NARROW], capture_output=True, text=True, timeout=300,
                          cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["12", "12"]
    assert not channels_last_trains_safely(create_model("resnet8", width=0.25))
    assert channels_last_trains_safely(create_model("resnet8", width=0.5)), "others keep the faster layout"


def test_the_hardware_name_counts_threads_in_good_english():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert hardware_name(torch.device("cpu")).endswith(", 1 thread")
        torch.set_num_threads(2)
        assert hardware_name(torch.device("cpu")).endswith(", 2 threads")
    finally:
        torch.set_num_threads(before)
    assert (threads_text(1), threads_text(16)) == ("1 thread", "16 threads")
