from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from medkd_ext.metrics import classification_report, evaluate_under_attack, fgsm, pgd, transferability

CE = nn.CrossEntropyLoss()


def _linear(in_shape, classes=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    n = 1
    for s in in_shape:
        n *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n, classes))


def _l2(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


@pytest.mark.parametrize("shape", [(2, 5, 5), (1, 3, 4, 4)])
def test_fgsm_l2_norm_equals_radius_and_direction_is_normalised_gradient(shape):
    model = _linear(shape, classes=1)
    x = torch.full((4, *shape), 0.5)
    w = model[1].weight.detach().reshape(shape)
    x_adv = fgsm(model, x, None, lambda out, _: out.sum(), radius=0.3, norm="l2")
    assert _l2(x_adv - x) == pytest.approx([0.3] * 4, abs=1e-5)
    # d(w.x)/dx = w, so the step is radius * w / ||w||
    assert torch.allclose(x_adv - x, (0.3 * w / w.norm()).expand_as(x), atol=1e-6)


def test_fgsm_linf_max_abs_equals_radius():
    model = _linear((1, 6, 6))
    x = torch.full((3, 1, 6, 6), 0.5)
    y = torch.tensor([0, 1, 2])
    x_adv = fgsm(model, x, y, CE, radius=0.05, norm="linf")
    assert (x_adv - x).abs().amax(dim=(1, 2, 3)) == pytest.approx([0.05] * 3, abs=1e-6)


def test_attacks_increase_loss_and_respect_ball_and_clamp():
    model = _linear((1, 8, 8))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    clean = CE(model(x), y).item()
    for norm, radius in (("l2", 0.5), ("linf", 0.03)):
        for attack in (partial(fgsm, norm=norm), partial(pgd, norm=norm, steps=5, random_start=True, generator=gen)):
            x_adv = attack(model, x, y, CE, radius=radius)
            assert CE(model(x_adv), y).item() > clean
            assert x_adv.min() >= 0 and x_adv.max() <= 1
            delta = x_adv - x
            size = _l2(delta) if norm == "l2" else delta.abs().flatten(1).amax(1)
            assert (size <= radius + 1e-5).all()


def test_pgd_l2_reaches_the_ball_boundary_without_clamp():
    model = _linear((2, 4, 4), classes=1)
    x = torch.zeros(2, 2, 4, 4)
    x_adv = pgd(model, x, None, lambda out, _: out.sum(), radius=1.0, steps=8, clamp=None)
    # a linear loss keeps growing along w: 8 steps of radius / 4 end on the sphere
    assert _l2(x_adv - x) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_pgd_linf_on_linear_model_ends_at_radius_times_sign():
    model = _linear((1, 4, 4), classes=1)
    x = torch.full((2, 1, 4, 4), 0.5)
    w = model[1].weight.detach().reshape(1, 4, 4)
    x_adv = pgd(model, x, None, lambda out, _: out.sum(), radius=0.1, step=0.04, steps=5, norm="linf")
    assert torch.allclose(x_adv - x, (0.1 * w.sign()).expand_as(x), atol=1e-6)


def test_model_mode_restored_no_param_grad_and_works_under_no_grad():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    x = torch.full((2, 1, 4, 4), 0.5)
    y = torch.tensor([0, 2])
    model.train()
    a = pgd(model, x, y, CE, radius=0.2, steps=3)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    # eval mode during the attack: dropout off, so the attack is deterministic
    assert torch.equal(a, pgd(model, x, y, CE, radius=0.2, steps=3))
    model.eval()
    with torch.inference_mode():
        b = fgsm(model, x, y, CE, radius=0.2)
    assert not model.training and not a.requires_grad and not b.requires_grad
    assert not torch.equal(b, x)


def test_random_start_is_reproducible_with_generator():
    model = _linear((1, 4, 4))
    x = torch.full((2, 1, 4, 4), 0.5)
    y = torch.tensor([0, 1])
    attack = partial(pgd, radius=0.3, steps=1, step=0.0, random_start=True)
    runs = [attack(model, x, y, CE, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert (_l2(runs[0] - x) > 0).all() and (_l2(runs[0] - x) <= 0.3 + 1e-6).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"radius": -1.0}, ValueError, "radius must be a non-negative"),
        ({"radius": 0.1, "norm": "l1"}, ValueError, "norm must be one of"),
        ({"radius": 0.1, "steps": 0}, ValueError, "steps must be an int >= 1"),
        ({"radius": 0.1, "clamp": (1.0, 0.0)}, ValueError, "clamp"),
        ({"radius": 0.1, "x": torch.zeros(2, 1, 4, 4, dtype=torch.long)}, TypeError, "floating-point"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model = _linear((1, 4, 4))
    x = kwargs.pop("x", torch.zeros(2, 1, 4, 4))
    with pytest.raises(error, match=match):
        pgd(model, x, torch.tensor([0, 1]), CE, **kwargs)


def test_evaluate_under_attack_feeds_classification_report():
    model = _linear((1, 6, 6))
    gen = torch.Generator().manual_seed(2)
    data = [
        {"image": torch.rand(4, 1, 6, 6, generator=gen), "label": torch.randint(0, 3, (4, 1), generator=gen)}
        for _ in range(3)
    ]
    model.train()
    out = evaluate_under_attack(model, data, attack=lambda m, x, y: fgsm(m, x, y[:, 0], CE, radius=0.5), device="cpu")
    assert model.training
    assert out["clean_probs"].shape == out["adv_probs"].shape == (12, 3)
    assert out["labels"].shape == (12,)
    assert torch.allclose(out["clean_probs"].sum(1), torch.ones(12))
    x_all = torch.cat([d["image"] for d in data])
    y_all = torch.cat([d["label"][:, 0] for d in data])
    assert torch.allclose(out["clean_probs"], torch.softmax(model(x_all), 1), atol=1e-6)
    # the attack lowers the probability of the true class for every sample of a linear model
    true_clean = out["clean_probs"].gather(1, y_all[:, None])
    true_adv = out["adv_probs"].gather(1, y_all[:, None])
    assert (true_adv < true_clean).all()
    clean_report = classification_report(out["clean_probs"], out["labels"])
    adv_report = classification_report(out["adv_probs"], out["labels"])
    assert adv_report["accuracy"] <= clean_report["accuracy"]

    pairs = [(d["image"], d["label"][:, 0]) for d in data]
    clean_only = evaluate_under_attack(model, pairs, multi_label=True)
    assert clean_only["adv_probs"] is None
    assert torch.allclose(clean_only["clean_probs"], torch.sigmoid(model(x_all)), atol=1e-6)
    with pytest.raises(ValueError, match="batches is empty"):
        evaluate_under_attack(model, [])


class _Threshold(nn.Module):
    """Class 1 when the image mean exceeds ``threshold``; its ``step`` says how far the test's attack moves an image."""

    def __init__(self, threshold: float, step: float) -> None:
        super().__init__()
        self.threshold, self.step = threshold, step
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        m = x.flatten(1).mean(1) * self.scale
        return torch.stack([self.threshold - m, m - self.threshold], dim=1)


def _push(model, x, y):
    """A stand-in attack: moves each image towards the other class by the source model's ``step``."""
    direction = torch.where(y == 0, 1.0, -1.0).view(-1, 1, 1, 1)
    return x + model.step * direction


def test_transferability_counts_only_images_both_models_classify_correctly():
    images = torch.tensor([0.1, 0.3, 0.6, 0.9]).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    labels = torch.tensor([0, 0, 1, 1])
    models = {"a": _Threshold(0.5, 0.35), "b": _Threshold(0.2, 0.05)}  # a: all correct; b: wrong on image 1
    result = transferability(models, images, labels, _push, batch_size=3)
    # from a (means 0.45, 0.65, 0.25, 0.55): a errs on images 1 and 2 of its 4; b errs on image 0 of the 3 both get
    assert result["a"]["a"] == {"fooled": 2, "both_correct": 4}
    assert result["b"]["a"] == {"fooled": 1, "both_correct": 3}
    # from b (means 0.15, 0.35, 0.55, 0.85): nothing that both classified correctly is misclassified
    assert result["a"]["b"] == {"fooled": 0, "both_correct": 3}
    assert result["b"]["b"] == {"fooled": 0, "both_correct": 3}
    only_a = transferability(models, images, labels, _push, sources=["a"])
    assert {t: list(row) for t, row in only_a.items()} == {"a": ["a"], "b": ["a"]}
    assert [m.training for m in models.values()] == [True, True]


def test_transferability_of_pgd_on_a_small_cnn_and_bad_arguments():
    torch.manual_seed(0)
    images, labels = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    models = {name: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 3)) for name in ("s", "t")}
    attack = partial(pgd, loss_fn=CE, radius=0.031, step=0.003, steps=20, norm="linf")
    result = transferability(models, images, labels, attack)
    for target in models:
        for source in models:
            cell = result[target][source]
            assert 0 <= cell["fooled"] <= cell["both_correct"] <= 6
    with pytest.raises(ValueError, match="5 images for 6 labels"):
        transferability(models, images[:5], labels, attack)
    with pytest.raises(ValueError, match=r"sources \['x'\] are not among the models \['s', 't'\]"):
        transferability(models, images, labels, attack, sources=["x"])
