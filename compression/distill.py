"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

A trained teacher knows more than its top-1 answer: for a cat photo it may give "dog" 5% and "truck"
0.01%, and those small numbers say which classes look alike. Softening both networks' outputs with a
temperature T > 1,

    p_i(T) = softmax(z / T)_i = exp(z_i / T) / Σ_j exp(z_j / T),

makes the small probabilities visible (T = 1 is the ordinary softmax, T → ∞ the uniform one), and
the student learns to match the teacher's softened distribution as well as the true labels:

    L = α · T² · KL(p_teacher(T) ‖ p_student(T)) + (1 − α) · CE(z_student, y).

Why T²: the gradient of the soft term with respect to a student logit is
(p_student,i(T) − p_teacher,i(T)) / T, and for large T those differences shrink like 1/T as well, so
the gradient scales as 1/T². Multiplying by T² keeps its size independent of T, so changing the
temperature does not silently re-weight the soft term against the hard one.

The teacher is frozen (eval mode, no gradients); the student is trained by the one training loop,
`train.train`, with the distillation loss as its `loss_fn`.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn
import torch.nn.functional as F

from .data import ImageSet, to_float
from .models import eval_mode
from .train import LossFn, TrainConfig, TrainEvent, train
from .weights import copy_model

MAX_ENTROPY = math.log(10)   # nats: the uniform distribution over the 10 CIFAR classes


def soften(logits: torch.Tensor, T: float) -> torch.Tensor:
    """p = softmax(z / T) over the last dimension."""
    return F.softmax(logits / T, dim=-1)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T² · KL(p_t ‖ p_s) with p = softmax(z / T), averaged over the batch:

        KL(p_t ‖ p_s) = Σ_i p_t,i · (log p_t,i − log p_s,i)
    """
    log_p_student = F.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / T, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return T * T * kl


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            T: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> torch.Tensor:
    """L = α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α) · CE(z_s, y), batch mean.

    α = 0 is plain cross-entropy on the labels (with `label_smoothing`, if any); α = 1 learns from
    the teacher alone. T² keeps the soft term's gradient the same size at every temperature.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return hard
    soft = soft_target_loss(student_logits, teacher_logits, T)
    return alpha * soft + (1.0 - alpha) * hard


class MeanLogits(nn.Module):
    """An ensemble used as one teacher: its logits are the mean of its members' logits,

        z = (1/m) · Σ_k z_k,

    so several trained networks can teach a student together (Hinton et al. 2015, section 2)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def frozen(teacher: nn.Module) -> nn.Module:
    """A copy of the teacher in eval mode with requires_grad off: nothing can train it, its BN
    statistics stay fixed, and the caller's model is left as it was."""
    teacher = copy_model(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distillation_loss_fn(teacher: nn.Module, T: float = 4.0, alpha: float = 0.9,
                         label_smoothing: float = 0.0) -> LossFn:
    """A train.LossFn: loss_fn(student, x, y) -> (kd_loss, student logits).

    The teacher (a frozen copy, available as `loss_fn.teacher`) runs under no_grad and is put back
    in eval mode at every step, whatever happens to the student's mode.
    """
    teacher = frozen(teacher)

    def loss_fn(student: nn.Module, x: torch.Tensor, y: torch.Tensor):
        if next(teacher.parameters()).device != x.device:
            teacher.to(x.device)
        teacher.eval()
        with torch.no_grad():
            teacher_logits = teacher(x)
        student_logits = student(x)
        return kd_loss(student_logits, teacher_logits, y, T, alpha, label_smoothing), student_logits

    loss_fn.teacher = teacher
    return loss_fn


def distill(student: nn.Module, teacher: nn.Module, train_set: ImageSet, config: TrainConfig,
            T: float = 4.0, alpha: float = 0.9, test_set: ImageSet | None = None,
            stop: Callable[[], bool] | None = None,
            step_hook: Callable[[int, int, nn.Module], None] | None = None) -> Iterator[TrainEvent]:
    """Train `student` in place to mimic `teacher`: the train.train generator of TrainEvents.

    Copy the student first (weights.copy_model) to keep the original. Any model of the family can be
    the student, including masked (unstructured-pruned) and structured-pruned ones; the CE term uses
    config.label_smoothing. The teacher itself is not touched (a frozen copy does the work).
    """
    loss_fn = distillation_loss_fn(teacher, T, alpha, config.label_smoothing)
    return train(student, train_set, config, test_set, loss_fn=loss_fn, step_hook=step_hook, stop=stop)


@torch.no_grad()
def softened_probabilities(model: nn.Module, images: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """softmax(z / T) of the model's logits for uint8 images: (3, 32, 32) -> (10,), (N, 3, 32, 32)
    -> (N, 10). Computed in eval mode; the model's mode is restored afterwards."""
    single = images.ndim == 3
    batch = images.unsqueeze(0) if single else images
    device = next(model.parameters()).device
    with eval_mode(model):
        logits = model(to_float(batch.to(device))).float().cpu()
    probs = soften(logits, T)
    return probs[0] if single else probs


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_i p_i ln p_i in nats (divide by ln 2 for bits), over the last dimension.

    0 for a one-hot distribution, MAX_ENTROPY = ln 10 ≈ 2.30 nats for the uniform one over 10
    classes. Softening with a higher temperature raises it.
    """
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)

