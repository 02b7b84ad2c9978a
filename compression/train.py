"""One training loop for everything: training from scratch, fine-tuning after pruning,
quantization-aware training and knowledge distillation.

`train()` is a generator of progress events, so the CLI prints them, the app's worker stores them and
the tests assert on them, all from the same code. Stop early by closing the generator or by setting
`stop` (checked between steps). With a `checkpoint` file a run saves itself at every epoch's end and a
later call with the same file and settings carries on from there, ending with the very same weights as
an uninterrupted run (a long schedule can span several sittings).
"""
from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, update_bn

from .data import ImageSet, augment, cutout, to_float
from .models import eval_mode

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainConfig:
    epochs: float = 30
    batch_size: int = 128
    lr: float = 0.2                 # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "onecycle"      # "onecycle" (warm up, then cosine down), "cosine" or "constant"
    warmup: float = 0.15            # fraction of steps spent warming up (onecycle)
    augment: bool = True            # pad-4 random crop + horizontal flip
    cutout: int = 0                 # side of the cutout square (0: none)
    swa: bool = False               # stochastic weight averaging: end with the mean of every epoch's weights
    distill: dict | None = None     # when the caller's loss_fn distils: teacher (file, sha256), T, alpha; a record
                                    # for cards and checkpoints (the loop itself only calls loss_fn)
    seed: int = 0
    device: str = "auto"
    eval_every_epoch: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainEvent:
    kind: str                        # "step", "epoch" or "done"
    step: int
    total_steps: int
    epoch: float
    loss: float
    train_acc: float                 # running accuracy over the current epoch
    lr: float
    images_per_s: float
    eta_s: float
    test_acc: float | None = None    # filled on "epoch" and "done" events when a test set is given
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {threads_text()}"


def threads_text(threads: int | None = None) -> str:
    """ "1 thread", "4 threads": torch's threads by default."""
    threads = torch.get_num_threads() if threads is None else threads
    return f"{threads} thread{'' if threads == 1 else 's'}"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    return loss_fn


def channels_last_trains_safely(model: nn.Module) -> bool:
    """Whether the model may train channels-last on the CPU (about a third faster). Not when a 1x1,
    stride-2 convolution reads fewer than 8 channels (resnet8 at width 0.25: its first shortcut reads 4):
    with channels-last inputs, oneDNN's backward pass of such a convolution corrupts the heap (torch 2.13
    on an AVX2 CPU: a segfault with one OpenMP thread, a hang with two; tests/test_train.py)."""
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels < 8 for m in model.modules())


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Learning rate after `step` of `total` steps.

    onecycle: linear warm-up to `lr` over the first `warmup` fraction, then cosine to zero;
    cosine: cosine from `lr` to zero; constant: `lr` throughout.
    """
    if config.schedule == "constant":
        return config.lr
    warm = int(config.warmup * total) if config.schedule == "onecycle" else 0
    if step < warm:
        return config.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 0.5 * config.lr * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on BN parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def train(model: nn.Module, train_set: ImageSet, config: TrainConfig, test_set: ImageSet | None = None, *,
          loss_fn: LossFn | None = None, step_hook: Callable[[int, int, nn.Module], None] | None = None,
          stop: Callable[[], bool] | None = None, events_every: int = 10,
          checkpoint: str | os.PathLike | None = None) -> Iterator[TrainEvent]:
    """Train `model` in place, yielding a TrainEvent every `events_every` steps and at each epoch end.

    loss_fn(model, images, labels) -> (loss, logits): the objective (default: cross-entropy with
    label smoothing); distillation and regularised training pass their own.
    step_hook(step, total_steps, model): called after each optimiser step (pruning schedules).
    checkpoint: a file the run saves to at each epoch's end; when it exists already (same config and
    training-set size) the run resumes from it instead of starting over.
    With config.swa the run keeps the running mean of the weights taken at every epoch's end
    (stochastic weight averaging, Izmailov et al. 2018: w_swa = (1/n) Σ_i w_i), recomputes the batch-norm
    statistics of that mean on the training images, and leaves the mean in `model` at the end.
    """
    device = pick_device(config.device)
    generator = seed_everything(config.seed)
    model.to(device)
    channels_last = device.type == "cpu" and channels_last_trains_safely(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn or cross_entropy_loss(config.label_smoothing)
    optimizer = make_optimizer(model, config)
    n = len(train_set)
    steps_per_epoch = max(1, n // config.batch_size) if n >= config.batch_size else 1
    total = max(1, round(config.epochs * steps_per_epoch))
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    start = time.perf_counter()
    step, seen, correct, loss_sum, count = 0, 0, 0, 0.0, 0
    last_loss, last_acc = float("nan"), float("nan")
    order = torch.randperm(n, generator=generator).to(device)
    position = 0
    averaged = AveragedModel(model) if config.swa else None

    def training_batch(index: torch.Tensor) -> torch.Tensor:
        x = images[index]
        if config.augment:
            x = augment(x, generator)
        if config.cutout:
            x = cutout(x, config.cutout, generator)
        x = to_float(x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, config, n)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        order, position, step, seen = state["order"].to(device), state["position"], state["step"], state["seen"]
        last_loss, last_acc = state["last_loss"], state["last_acc"]
        if averaged is not None:
            averaged.load_state_dict(state["averaged"])
        start -= state["elapsed_s"]        # the card's training time counts every sitting
    rate, mark = None, (time.perf_counter(), seen)   # recent images/s (moving average), and where it was last taken
    while step < total:
        if stop is not None and stop():
            break
        if position + config.batch_size > n and position > 0:
            order, position = torch.randperm(n, generator=generator).to(device), 0
        index = order[position:position + config.batch_size]
        position += config.batch_size
        x, y = training_batch(index), labels[index]
        lr = lr_at(step, total, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss, logits = loss_fn(model, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step_hook is not None:
            step_hook(step, total, model)
        seen += len(y)
        count += len(y)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        epoch_end = step % steps_per_epoch == 0 or step == total
        if epoch_end and averaged is not None:
            averaged.update_parameters(model)
        if step % events_every == 0 or epoch_end:
            now = time.perf_counter()
            elapsed = now - start
            recent = (seen - mark[1]) / max(now - mark[0], 1e-9)
            rate = recent if rate is None else 0.7 * rate + 0.3 * recent
            test_acc = None
            if epoch_end and test_set is not None and (config.eval_every_epoch or step == total):
                test_acc = evaluate(model, test_set, device=device).accuracy
            yield TrainEvent("epoch" if epoch_end else "step", step, total, step / steps_per_epoch,
                             loss_sum / count, correct / count, lr, rate,
                             (total - step) * config.batch_size / rate, test_acc, elapsed)
            mark = (time.perf_counter(), seen)   # time spent evaluating or in the consumer is not training
            if epoch_end:
                last_loss, last_acc = loss_sum / count, correct / count
                correct, loss_sum, count = 0, 0.0, 0
                if checkpoint is not None:
                    save_checkpoint(checkpoint, config, n, model=model.state_dict(),
                                    optimizer=optimizer.state_dict(), generator=generator.get_state(),
                                    torch_rng=torch.get_rng_state(), order=order.cpu(), position=position,
                                    step=step, seen=seen, last_loss=last_loss, last_acc=last_acc,
                                    elapsed_s=time.perf_counter() - start,
                                    **({"averaged": averaged.state_dict()} if averaged is not None else {}))
    if averaged is not None and int(averaged.n_averaged) > 0:
        batches = (training_batch(order[i:i + config.batch_size]) for i in range(0, n, config.batch_size))
        update_bn(batches, averaged.module)   # the mean's own batch-norm statistics, one pass over the data
        model.load_state_dict(averaged.module.state_dict())
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)   # stored models are always plain contiguous
    elapsed = time.perf_counter() - start
    final_acc = evaluate(model, test_set, device=device).accuracy if test_set is not None else None
    yield TrainEvent("done", step, total, step / steps_per_epoch, last_loss, last_acc, 0.0, seen / max(elapsed, 1e-9), 0.0, final_acc, elapsed)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from (unreadable, or another run's)."""


def save_checkpoint(path: str | os.PathLike, config: TrainConfig, train_images: int, **state) -> None:
    """Write a resumable training state (written beside, then renamed over: a crash mid-write leaves
    the previous checkpoint whole)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": config.to_dict(), "train_images": train_images, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, config: TrainConfig, train_images: int) -> dict:
    """A checkpoint written by save_checkpoint for this very run (tensors and plain values only: loading
    executes no code). Raises CheckpointError when it belongs to a run with other settings."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable training checkpoint ({err}); delete it to start over") from err
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint; delete it to start over")
    ours = {**config.to_dict(), "device": None}
    # A run may resume on another device; checkpoints older than swa and distill lack them.
    theirs = {"swa": False, "distill": None, **state["config"], "device": None}
    if theirs != ours or state["train_images"] != train_images:
        changed = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise CheckpointError(f"{path} was written by a run with other settings ({', '.join(changed) or 'training images'}); "
                         "resume with the same settings, or delete it to start over")
    return state


def run_to_end(events: Iterator[TrainEvent], log: Callable[[TrainEvent], None] | None = None) -> TrainEvent:
    """Drain a training generator; returns the last event."""
    last = None
    for last in events:
        if log:
            log(last)
    return last


@dataclass
class EvalResult:
    accuracy: float
    images: int
    per_class: list[float]
    confusion: list[list[int]]   # confusion[true][predicted]
    loss: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 250,
                   device: torch.device | str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Logits for uint8 images (N, 3, 32, 32), in eval mode, on the model's device.

    On the CPU the batch goes in channels-last (NHWC): oneDNN's convolutions run about a third faster
    that way. Every accuracy in the project is computed through here, so all see the same numbers.
    `progress(images done, images in all)` is called after each batch; it may raise to stop early."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size].to(device))
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
            if progress is not None:
                progress(min(i + batch_size, len(images)), len(images))
    return torch.cat(out) if out else torch.empty(0, 10)


def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 250, device=None,
             num_classes: int = 10, progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Accuracy, per-class accuracy, confusion matrix and mean cross-entropy on `data`
    (`progress` as in predict_logits)."""
    logits = predict_logits(model, data.images, batch_size, device, progress)
    labels = data.labels.cpu()
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, -1)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    return EvalResult(accuracy=(pred == labels).float().mean().item(), images=len(labels),
                      per_class=per_class, confusion=confusion.tolist(),
                      loss=F.cross_entropy(logits, labels).item())
