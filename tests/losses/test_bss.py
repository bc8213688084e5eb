from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medkd_ext.losses import (
    BoundarySupportingSamples,
    boundary_supporting_attack,
    sample_target_classes,
    select_base_samples,
)
from medkd_ext.networks import FrozenTeacher


class ConvNet(nn.Module):
    def __init__(self, dims: int = 2, width: int = 6, num_classes: int = 4) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.features = nn.Sequential(conv(1, width, 3, padding=1), norm(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(2).mean(2))


def _margin(model: nn.Module, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    return z.gather(1, base[:, None]).squeeze(1) - z.gather(1, target[:, None]).squeeze(1)


def test_base_samples_are_the_teacher_correct_ones():
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 2, 1])
    index = select_base_samples(teacher, torch.zeros(4, 3), labels, attack_size=8)
    assert index.tolist() == [0, 2]
    assert select_base_samples(teacher, teacher, torch.tensor([1, 0, 0, 2]), 8).numel() == 0


def test_base_samples_beyond_attack_size_are_chosen_by_disagreement_off_the_label():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    teacher = F.one_hot(labels, 3).float() * 5 + 0.1 * torch.randn(6, 3)
    student = torch.randn(6, 3)
    index = select_base_samples(teacher, student, labels, attack_size=3)
    diff = (teacher.softmax(1) - student.softmax(1)) ** 2
    score = torch.tensor([diff[i].sum() - diff[i, labels[i]] for i in range(6)])
    assert index.tolist() == score.argsort(descending=True)[:3].tolist()


def test_target_classes_never_the_top_class_and_drawn_by_teacher_probability():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 2.5, 0.0]])
    assert sample_target_classes(logits, "second").tolist() == [1, 2]
    g = torch.Generator().manual_seed(0)
    rows = logits[:1].repeat(6000, 1)
    drawn = sample_target_classes(rows, "sample", generator=g)
    assert not (drawn == 0).any()
    probs = logits[0].softmax(0)[1:]
    frequency = torch.bincount(drawn, minlength=4)[1:].float() / len(drawn)
    torch.testing.assert_close(frequency, probs / probs.sum(), atol=0.02, rtol=0)
    # other probabilities underflowing to 0: the second class
    assert sample_target_classes(torch.tensor([[0.0, -200.0, -300.0]]), "sample").tolist() == [1]


def test_one_attack_step_is_heo_update_on_a_linear_teacher():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    z = linear(x).detach()
    base = z.argmax(1)
    target = (base + 1) % 3
    adv = boundary_supporting_attack(linear, x, base, target, steps=1, step_size=0.1, max_epsilon=None)
    f = z.gather(1, base[:, None]) - z.gather(1, target[:, None])
    g = linear.weight.detach()[target] - linear.weight.detach()[base]  # d(z_k - z_b) / dx
    expected = x + 0.1 * (f + 1e-4) * g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(adv, expected)
    assert linear.weight.grad is None


@pytest.mark.parametrize("dims", [2, 3])
def test_attack_moves_samples_toward_the_boundary_within_eps(dims):
    torch.manual_seed(1)
    teacher = ConvNet(dims).eval()
    x = torch.rand((6, 1) + (6,) * dims)
    with torch.no_grad():
        z = teacher(x)
    base, target = z.argmax(1), z.topk(2, dim=1).indices[:, 1]
    eps = 16 / 255
    adv = boundary_supporting_attack(teacher, x, base, target, steps=10, max_epsilon=eps, clamp=(0.0, 1.0))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    before, after = _margin(teacher, x, base, target), _margin(teacher, adv, base, target)
    assert (after < before).all(), "the teacher's margin between base and target class must shrink"
    assert all(p.grad is None for p in teacher.parameters())


def test_attack_reaches_the_boundary_and_stops_there():
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        teacher[1].weight.mul_(20)  # ||grad f|| * step_size > 1: one step crosses the boundary
    x = torch.randn(5, 1, 4, 4)
    z = teacher(x).detach()
    base, target = z.argmax(1), z.topk(2, dim=1).indices[:, 1]
    one = boundary_supporting_attack(teacher, x, base, target, steps=1, max_epsilon=None)
    assert (teacher(one).argmax(1) != base).all()
    many = boundary_supporting_attack(teacher, x, base, target, steps=10, max_epsilon=None)
    torch.testing.assert_close(many, one)  # samples past the boundary no longer move
    # an unbounded attack with small steps ends close to the boundary: margin shrinks geometrically
    teacher2 = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    z2 = teacher2(x).detach()
    base2, target2 = z2.argmax(1), z2.topk(2, dim=1).indices[:, 1]
    adv = boundary_supporting_attack(teacher2, x, base2, target2, steps=10, max_epsilon=None)
    before, after = _margin(teacher2, x, base2, target2), _margin(teacher2, adv, base2, target2)
    assert (after < 0.9 * before).all()


def test_frozen_teacher_is_attacked_and_left_frozen():
    torch.manual_seed(3)
    net = ConvNet()
    teacher = FrozenTeacher(net)
    x = torch.rand(8, 1, 6, 6)
    with torch.no_grad():
        z = net(x)
    labels = z.argmax(1)
    labels[:2] = (labels[:2] + 1) % 4  # the teacher gets these two wrong
    finder = BoundarySupportingSamples(attack_size=4, target="second")
    samples, index, targets = finder(teacher, x, labels, z, torch.randn(8, 4))
    assert samples.shape == (len(index), 1, 6, 6) and 0 < len(index) <= 4
    assert not set(index.tolist()) & {0, 1}
    assert (targets != labels[index]).all()
    assert (_margin(net, samples, labels[index], targets) < _margin(net, x[index], labels[index], targets)).all()
    assert not net.training and all(p.grad is None and not p.requires_grad for p in net.parameters())
    # no sample right for the teacher: nothing to attack
    samples, index, targets = finder(teacher, x, (z.argmax(1) + 1) % 4, z, z)
    assert samples.shape[0] == index.numel() == targets.numel() == 0


def test_attack_restores_the_model_mode():
    model = ConvNet().train()
    x = torch.rand(3, 1, 6, 6)
    with torch.no_grad():
        z = model.eval()(x)
    model.train()
    boundary_supporting_attack(model, x, z.argmax(1), z.topk(2, 1).indices[:, 1], steps=2)
    assert model.training


def test_bad_inputs_give_clear_errors():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="BSS is defined for multi-class"):
        select_base_samples(torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), labels, 2)
    with pytest.raises(ValueError, match="attack_size"):
        select_base_samples(logits, logits, labels, 0)
    with pytest.raises(ValueError, match="same shape"):
        select_base_samples(logits, torch.randn(4, 5), labels, 2)
    with pytest.raises(ValueError, match="outside"):
        select_base_samples(logits, logits, torch.tensor([0, 1, 2, 3]), 2)
    with pytest.raises(TypeError, match="integer tensor"):
        select_base_samples(logits, logits, labels.float(), 2)
    with pytest.raises(ValueError, match="target must be one of"):
        sample_target_classes(logits, "random")
    with pytest.raises(ValueError, match="target must be one of"):
        BoundarySupportingSamples(target="third")
    with pytest.raises(ValueError, match="max_epsilon"):
        BoundarySupportingSamples(max_epsilon=-1.0)
    with pytest.raises(ValueError, match="norm"):
        BoundarySupportingSamples(norm="l1")
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(4, 1, 2, 2)
    with pytest.raises(ValueError, match="another class"):
        boundary_supporting_attack(model, x, labels, labels)
    with pytest.raises(ValueError, match="steps"):
        boundary_supporting_attack(model, x, labels, (labels + 1) % 3, steps=0)
    seg = nn.Conv2d(1, 3, 1)
    with pytest.raises(ValueError, match="BSS is defined for multi-class"):
        boundary_supporting_attack(seg, x, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
