import math

import pytest
import torch
import torch.nn.functional as F

from compression.distill import (MAX_ENTROPY, distill, distillation_loss_fn, entropy, kd_loss, soften,
                                 soft_target_loss, softened_probabilities)
from compression.models import create_model
from compression.prune import prune, sparsity
from compression.structured import channel_counts, prune_filters
from helpers import toy_set
from compression.train import TrainConfig, run_to_end, train
from compression.weights import copy_model


# --- fixtures ---------------------------------------------------------------------------------------

def tiny_config(**kw):
    base = dict(epochs=1, batch_size=32, lr=0.05, seed=3, augment=False, device="cpu",
                label_smoothing=0.0, schedule="constant", eval_every_epoch=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return toy_set(128)


@pytest.fixture(scope="module")
def teacher(data):
    """A tiny model trained briefly on the toy task: confident, but not one-hot."""
    torch.manual_seed(0)
    model = create_model("resnet8", width=0.25)
    run_to_end(train(model, data, tiny_config(epochs=15, lr=0.1)))
    return model.eval()


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3, \
        torch.randint(0, 10, (16,), generator=g)


def kl_by_hand(student_logits, teacher_logits, T):
    """KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s), mean over the batch, written out."""
    p_t = torch.exp(teacher_logits / T) / torch.exp(teacher_logits / T).sum(1, keepdim=True)
    p_s = torch.exp(student_logits / T) / torch.exp(student_logits / T).sum(1, keepdim=True)
    return (p_t * (p_t.log() - p_s.log())).sum(1).mean()


# --- the loss ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_kd_loss_at_alpha_zero_is_cross_entropy(logits, label_smoothing):
    z_s, z_t, y = logits
    loss = kd_loss(z_s, z_t, y, T=4.0, alpha=0.0, label_smoothing=label_smoothing)
    assert torch.equal(loss, F.cross_entropy(z_s, y, label_smoothing=label_smoothing))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
def test_soft_term_is_t_squared_times_kl(logits, T):
    z_s, z_t, y = logits
    kl = kl_by_hand(z_s, z_t, T)
    assert torch.allclose(soft_target_loss(z_s, z_t, T), T * T * kl, rtol=1e-5, atol=1e-6)
    # at α = 1 only the soft term is left, and it is T² times the KL divergence at that temperature
    assert kd_loss(z_s, z_t, y, T=T, alpha=1.0) / kl == pytest.approx(T * T, rel=1e-5)


def test_kd_loss_mixes_the_two_terms(logits):
    z_s, z_t, y = logits
    T, alpha = 3.0, 0.7
    expected = alpha * T * T * kl_by_hand(z_s, z_t, T) + (1 - alpha) * F.cross_entropy(z_s, y)
    assert torch.allclose(kd_loss(z_s, z_t, y, T, alpha), expected, rtol=1e-5)


def test_soft_term_vanishes_when_the_student_matches_the_teacher(logits):
    z_s, _, _ = logits
    assert soft_target_loss(z_s, z_s.clone(), 4.0).abs() < 1e-6


def test_t_squared_keeps_the_soft_gradient_scale(logits):
    """Without T² the soft gradient would shrink like 1/T²; with it, it levels off as T grows."""
    z_s, z_t, _ = logits
    z_s, z_t = z_s / 3, z_t / 3   # small logits: the large-T regime starts early

    def grad_norm(T):
        z = z_s.clone().requires_grad_(True)
        soft_target_loss(z, z_t, T).backward()
        return z.grad.norm().item()

    assert grad_norm(20.0) == pytest.approx(grad_norm(40.0), rel=0.05)


def test_kd_loss_rejects_bad_settings(logits):
    z_s, z_t, y = logits
    with pytest.raises(ValueError):
        kd_loss(z_s, z_t, y, T=0.0)
    with pytest.raises(ValueError):
        kd_loss(z_s, z_t, y, alpha=1.5)


# --- the teacher stays frozen -------------------------------------------------------------------------

def test_teacher_gets_no_gradient_and_stays_in_eval_mode(data, teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = distillation_loss_fn(teacher, T=4.0, alpha=0.9)
    frozen = loss_fn.teacher
    seen = []   # (training?, grad enabled?, output requires grad?) at each teacher forward
    frozen.register_forward_hook(
        lambda m, i, out: seen.append((m.training, torch.is_grad_enabled(), out.requires_grad)))

    def check(step, total, student):
        assert not frozen.training and student.training
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())

    student = create_model("resnet8", width=0.25)
    run_to_end(train(student, data, tiny_config(epochs=2), loss_fn=loss_fn, step_hook=check))
    assert len(seen) == 8 and all(s == (False, False, False) for s in seen)
    assert all(p.grad is None for p in frozen.parameters())
    # the caller's teacher is untouched: same weights and BN statistics, still trainable
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())


def test_teacher_put_back_in_eval_mode_every_step(data, teacher):
    loss_fn = distillation_loss_fn(teacher)
    loss_fn.teacher.train()          # someone switches it to training mode ...
    student = create_model("resnet8", width=0.25)
    x, y = data.images[:8].float() / 255, data.labels[:8]
    running_mean = loss_fn.teacher.bn1.running_mean.clone()
    loss_fn(student, x, y)
    assert not loss_fn.teacher.training               # ... the next step puts it back
    assert torch.equal(loss_fn.teacher.bn1.running_mean, running_mean)


# --- training ---------------------------------------------------------------------------------------

def test_distill_decreases_the_loss(data, teacher):
    student = create_model("resnet8", width=0.25)
    events = list(distill(student, teacher, data, tiny_config(epochs=6), T=4.0, alpha=0.9, test_set=data))
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(epochs) == 6
    assert epochs[-1].loss < 0.7 * epochs[0].loss
    assert events[-1].kind == "done" and events[-1].test_acc is not None


def test_distill_trains_the_student_in_place_and_can_stop(data, teacher):
    student = create_model("resnet8", width=0.25)
    before = copy_model(student)
    events = list(distill(student, teacher, data, tiny_config(epochs=4), stop=lambda: True))
    assert events[-1].kind == "done" and events[-1].step == 0
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), student.state_dict().values()))
    run_to_end(distill(student, teacher, data, tiny_config(epochs=1)))
    assert not torch.equal(before.conv1.weight, student.conv1.weight)


def test_distill_into_a_masked_student_keeps_its_zeros(data, teacher):
    student = prune(create_model("resnet8", width=0.25), 0.5, "magnitude")
    run_to_end(distill(student, teacher, data, tiny_config(epochs=1)))
    assert sparsity(student) == pytest.approx(0.5, abs=1e-3)


def test_distill_into_a_structured_pruned_student(data, teacher):
    student = prune_filters(create_model("resnet8", width=0.5), 0.5, "l1")
    counts = channel_counts(student)
    events = list(distill(student, teacher, data, tiny_config(epochs=2)))
    assert channel_counts(student) == counts
    assert math.isfinite(events[-1].loss)
    assert student(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# --- the temperature slider ---------------------------------------------------------------------------

def test_entropy_rises_with_temperature_for_a_non_uniform_logit_vector():
    z = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, -4.0])
    temperatures = [0.25, 0.5, 1, 2, 4, 8, 16, 32]
    h = [entropy(soften(z, T)).item() for T in temperatures]
    assert all(a < b for a, b in zip(h, h[1:]))
    assert 0 < h[0] and h[-1] < MAX_ENTROPY


def test_entropy_in_nats():
    assert entropy(torch.full((10,), 0.1)).item() == pytest.approx(math.log(10))
    assert entropy(torch.eye(10)[3]).item() == 0.0
    assert entropy(torch.tensor([0.5, 0.5])).item() == pytest.approx(math.log(2))


def test_softened_probabilities_of_an_image_and_a_batch(data, teacher):
    image = data.images[0]
    teacher.train()
    probs = softened_probabilities(teacher, image, T=4.0)
    assert teacher.training                           # the mode is restored
    teacher.eval()
    assert probs.shape == (10,) and probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    batch = softened_probabilities(teacher, data.images[:5], T=4.0)
    assert batch.shape == (5, 10) and torch.allclose(batch[0], probs, atol=1e-6)
    h = [entropy(softened_probabilities(teacher, image, T)).item() for T in (1, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(h, h[1:]))


def test_an_ensemble_teacher_gives_the_mean_of_its_members_logits():
    from compression.distill import MeanLogits
    torch.manual_seed(0)
    a, b = create_model("resnet8", 0.25).eval(), create_model("resnet8", 0.25).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        za, zb, z = a(x), b(x), MeanLogits([a, b]).eval()(x)
    assert not torch.allclose(za, zb)
    torch.testing.assert_close(z, (za + zb) / 2)
    with pytest.raises(ValueError, match="at least one"):
        MeanLogits([])
