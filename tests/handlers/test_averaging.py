from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from medkd_ext.handlers import SmoothAveragingHandler, recompute_batchnorm


def _epoch_weights(epoch: int) -> torch.Tensor:
    return torch.full((2, 3), float(epoch**2))


def _train_with_epoch_weights(handler, net, epochs):
    def step(engine, batch):
        with torch.no_grad():
            net.weight.copy_(_epoch_weights(engine.state.epoch))
            net.bias.fill_(-engine.state.epoch)

    engine = Engine(step)
    handler.attach(engine)
    engine.run(range(2), max_epochs=epochs)


def test_average_follows_eq1_after_warmup(tmp_path):
    net = nn.Linear(3, 2)
    path = tmp_path / "smooth.pt"
    handler = SmoothAveragingHandler(net, warmup_epochs=2, save_path=path)
    _train_with_epoch_weights(handler, net, epochs=5)
    # epochs 3, 4, 5 averaged: (9 + 16 + 25) / 3
    assert handler.num_averaged == 3
    assert torch.allclose(handler.averaged_network.weight, torch.full((2, 3), 50 / 3))
    assert torch.allclose(handler.averaged_network.bias, torch.full((2,), -4.0))
    # the trained network is untouched
    assert torch.equal(net.weight, _epoch_weights(5))
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"weight", "bias"}
    assert torch.allclose(saved["weight"], handler.averaged_network.weight)


def test_training_shorter_than_warmup_keeps_final_network():
    net = nn.Linear(3, 2)
    handler = SmoothAveragingHandler(net, warmup_epochs=10)
    _train_with_epoch_weights(handler, net, epochs=2)
    assert handler.num_averaged == 1
    assert torch.equal(handler.averaged_network.weight, net.weight)


def test_batchnorm_statistics_recomputed_on_loader():
    net = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 1))
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(2, generator=g) * 3 + torch.tensor([5.0, -1.0])} for _ in range(40)]
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    net.eval()
    assert recompute_batchnorm(net, loader)
    stacked = torch.stack([d["image"] for d in data])
    assert torch.allclose(net[0].running_mean, stacked.mean(0), atol=1e-5)
    assert not net.training
    assert net[0].momentum == 0.1
    assert not recompute_batchnorm(nn.Linear(2, 2), loader)
    with pytest.raises(ValueError, match="no batch"):
        recompute_batchnorm(net, [])


def test_handler_recomputes_batchnorm_of_the_average():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    data = [{"image": torch.tensor([float(i), 2.0 * i])} for i in range(10)]
    loader = torch.utils.data.DataLoader(data, batch_size=5)
    handler = SmoothAveragingHandler(net, warmup_epochs=0, bn_loader=loader)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run(range(1), max_epochs=2)
    avg = handler.averaged_network
    with torch.no_grad():
        expected = avg[0](torch.stack([d["image"] for d in data])).mean(0)
    assert torch.allclose(avg[1].running_mean, expected, atol=1e-5)


def test_warmup_must_be_non_negative():
    with pytest.raises(ValueError, match="warmup_epochs"):
        SmoothAveragingHandler(nn.Linear(1, 1), warmup_epochs=-1)
