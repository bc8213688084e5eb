from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from torch import nn

from medkd_ext.engines import MultiHeadTrainer, RoundRobin


def test_round_robin_alternates_and_balances():
    order = [d for d, _ in RoundRobin([[1, 2, 3], ["a"]])]
    assert order == [0, 1, 0, 1, 0, 1]
    assert len(RoundRobin([[1, 2, 3], ["a"]])) == 6
    with pytest.raises(ValueError, match="at least one"):
        RoundRobin([])


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 2)])

    def forward(self, x, head=0):
        return self.heads[head](self.backbone(x))


def test_each_batch_goes_through_its_dataset_head():
    torch.manual_seed(0)
    net = TwoHeads()
    loaders = [
        [{"image": torch.randn(2, 3), "label": torch.tensor([0, 1])}] * 2,
        [{"image": torch.randn(2, 3), "label": torch.tensor([1, 1])}],
    ]
    trainer = MultiHeadTrainer("cpu", 1, loaders, net, torch.optim.SGD(net.parameters(), 0.1), nn.CrossEntropyLoss(),
                               decollate=False)
    seen = []

    def record(engine):
        seen.append((engine.state.output["head"], [h.weight.grad is not None and bool(h.weight.grad.abs().sum())
                                                   for h in net.heads]))
        net.zero_grad(set_to_none=True)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert seen == [(0, [True, False]), (1, [False, True]), (0, [True, False]), (1, [False, True])]
