from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.networks.nets import ResNet
from torch import nn

from medkd_ext.engines import MutualLearningTrainer, ONETrainer, loss_terms_output
from medkd_ext.networks.one import ONENetwork


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).mean((2, 3)))


def _toy_data(n: int = 8, dims: int = 2, size: int = 8) -> list[dict]:
    """Three classes told apart by the mean intensity of the image: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = torch.rand((n, 1) + (size,) * dims, generator=g) * 0.5 + labels.view(-1, *[1] * (dims + 1)) * 0.5
    return [{"image": images[i], "label": labels[i]} for i in range(n)]


def _loader(data: list[dict], batch_size: int = 8):
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


def _collect(trainer) -> list[dict]:
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    return outputs


def _one(dims: int = 2, output: str = "branch") -> ONENetwork:
    backbone = ResNet(
        block="basic",
        layers=(1, 1, 1, 1),
        block_inplanes=(4, 8, 8, 8),
        spatial_dims=dims,
        n_input_channels=1,
        num_classes=3,
    )
    return ONENetwork(backbone, num_branches=3, output=output)


@pytest.mark.parametrize("dims", [2, 3])
def test_one_trainer_returns_every_term_and_lowers_the_loss(dims):
    torch.manual_seed(0)
    network = _one(dims, output="ensemble")
    trainer = ONETrainer(
        device="cpu",
        max_epochs=12 if dims == 2 else 6,
        train_data_loader=_loader(_toy_data(dims=dims, size=8)),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=0.01),
        kd_weight=0.5,
        decollate=False,
    )
    out = _collect(trainer)
    for o in out:
        assert {"ce", "ce_ensemble", "kd", "gate_0", "gate_1", "gate_2"} <= set(o)
        torch.testing.assert_close(o["loss"].detach(), o["ce"] + o["ce_ensemble"] + 0.5 * o["kd"])
        torch.testing.assert_close(o["gate_0"] + o["gate_1"] + o["gate_2"], torch.tensor(1.0))
        assert o["pred"].shape == (8, 3)
    assert out[-1]["loss"] < 0.7 * out[0]["loss"]
    assert set(loss_terms_output(out[0])) >= {"loss", "ce", "ce_ensemble", "kd"}


def test_one_trainer_pred_is_the_chosen_branch():
    torch.manual_seed(1)
    network = _one(output="branch")
    network.branch = 2
    trainer = ONETrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_loader(_toy_data()),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        decollate=False,
    )
    start = copy.deepcopy(network)
    out = _collect(trainer)
    with torch.no_grad():
        expected = start.train()(torch.stack([d["image"] for d in _toy_data()]), output="all")["branches"][2]
    torch.testing.assert_close(out[0]["pred"], expected)


def test_one_trainer_refuses_other_networks():
    net = TinyNet()
    with pytest.raises(TypeError, match="ONENetwork"):
        ONETrainer("cpu", 1, _loader(_toy_data()), net, torch.optim.SGD(net.parameters(), lr=0.1))


def _dml(students, alternate=True, max_epochs=1, lr=0.1, **kwargs):
    optimizers = [torch.optim.SGD(s.parameters(), lr=lr) for s in students]
    return MutualLearningTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=_loader(_toy_data()),
        network=students[0],
        optimizer=optimizers[0],
        peers=students[1:],
        peer_optimizers=optimizers[1:],
        alternate=alternate,
        decollate=False,
        **kwargs,
    )


def _kd(student: torch.Tensor, peer: torch.Tensor, t: float = 4.0) -> torch.Tensor:
    q = F.softmax(peer / t, dim=1)
    return t * t * (q * (q.log() - F.log_softmax(student / t, dim=1))).sum(1).mean()


@pytest.mark.parametrize("alternate", [True, False])
def test_dml_losses_equal_a_hand_computation(alternate):
    torch.manual_seed(2)
    students = [TinyNet(), TinyNet()]
    start = [copy.deepcopy(s).train() for s in students]
    trainer = _dml(students, alternate=alternate)
    optimizer = trainer.optimizer
    out = _collect(trainer)[0]
    images = torch.stack([d["image"] for d in _toy_data()])
    labels = torch.stack([d["label"] for d in _toy_data()])
    with torch.no_grad():
        z0, z1 = start[0](images), start[1](images)
        z0_updated = students[0].train()(images)  # student 0 after its update (student 1 is updated after it)
    torch.testing.assert_close(out["ce_0"], F.cross_entropy(z0, labels))
    torch.testing.assert_close(out["kl_0"], _kd(z0, z1))
    torch.testing.assert_close(out["ce_1"], F.cross_entropy(z1, labels))
    # Zhang et al. update in turn: student 1 mimics student 0's prediction after student 0's step
    torch.testing.assert_close(out["kl_1"], _kd(z1, z0_updated if alternate else z0))
    assert not torch.allclose(z0_updated, z0)
    for k in (0, 1):
        torch.testing.assert_close(out[f"loss_{k}"], out[f"ce_{k}"] + out[f"kl_{k}"])
    torch.testing.assert_close(out["loss"], out["loss_0"] + out["loss_1"])
    torch.testing.assert_close(out["pred"].detach(), z0)
    assert trainer.optimizer is optimizer


def test_dml_cohort_of_three_updates_in_turn_with_current_peer_predictions():
    torch.manual_seed(5)
    students = [TinyNet(), TinyNet(), TinyNet()]
    start = [copy.deepcopy(s).train() for s in students]
    out = _collect(_dml(students))[0]
    images = torch.stack([d["image"] for d in _toy_data()])
    with torch.no_grad():
        z = [s(images) for s in start]
        updated = [s.train()(images) for s in students]
    torch.testing.assert_close(out["kl_0"], (_kd(z[0], z[1]) + _kd(z[0], z[2])) / 2)
    torch.testing.assert_close(out["kl_1"], (_kd(z[1], updated[0]) + _kd(z[1], z[2])) / 2)
    torch.testing.assert_close(out["kl_2"], (_kd(z[2], updated[0]) + _kd(z[2], updated[1])) / 2)


def test_dml_cohort_of_three_learns_the_toy_problem():
    torch.manual_seed(3)
    students = [TinyNet(), TinyNet(), TinyNet()]
    start = [[p.clone() for p in s.parameters()] for s in students]
    out = _collect(_dml(students, max_epochs=15, lr=0.2, temperature=2.0))
    assert {"ce_0", "kl_0", "ce_1", "kl_1", "ce_2", "kl_2"} <= set(out[0])
    for k in range(3):
        assert out[-1][f"ce_{k}"] < 0.8 * out[0][f"ce_{k}"]
    assert out[-1]["loss"] < out[0]["loss"]
    for s, p0 in zip(students, start):  # every student was updated by its own optimizer
        assert any(not torch.equal(p, q) for p, q in zip(s.parameters(), p0))


def test_dml_bad_setups_are_refused():
    a, b = TinyNet(), TinyNet()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    loader = _loader(_toy_data())
    with pytest.raises(ValueError, match="one optimizer per peer"):
        MutualLearningTrainer("cpu", 1, loader, a, opt_a, peers=[b], peer_optimizers=[opt_b, opt_b])
    with pytest.raises(ValueError, match="optimizer of student 1 .* must hold"):
        MutualLearningTrainer("cpu", 1, loader, a, opt_a, peers=[b], peer_optimizers=[opt_a])
    with pytest.raises(ValueError, match="share parameters"):
        MutualLearningTrainer("cpu", 1, loader, a, opt_a, peers=[a], peer_optimizers=[opt_a])
    with pytest.raises(ValueError, match="peers is empty"):
        MutualLearningTrainer("cpu", 1, loader, a, opt_a, peers=[], peer_optimizers=[])
    with pytest.raises(ValueError, match="kd_weight"):
        MutualLearningTrainer("cpu", 1, loader, a, opt_a, peers=b, peer_optimizers=opt_b, kd_weight=-1.0)
