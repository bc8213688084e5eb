from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
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


def test_round_robin_starts_every_loader_before_the_first_batch_and_restarts_short_ones():
    log = []

    class Logged:
        def __init__(self, name, batches):
            self.name, self.batches = name, batches

        def __len__(self):
            return len(self.batches)

        def __iter__(self):
            log.append(f"iter {self.name}")  # logged when iter() is called, as a DataLoader draws its seed then
            return self._batches()

        def _batches(self):
            for batch in self.batches:
                log.append(f"next {self.name}")
                yield batch

    batches = list(RoundRobin([Logged("a", [1, 2]), Logged("b", ["x"])]))
    assert batches == [(0, 1), (1, "x"), (0, 2), (1, "x")]
    # where a shuffling DataLoader draws its seeds: both passes start before any batch is taken
    assert log == ["iter a", "iter b", "next a", "next b", "next a", "iter b", "next b"]
    with pytest.raises(ValueError, match="RoundRobin: loader 1 yields no batch"):
        list(RoundRobin([Logged("a", [1]), Logged("empty", [])]))


def test_forward_and_loss_events_are_fired_with_pred_and_loss_set():
    torch.manual_seed(0)
    net = TwoHeads()
    loaders = [[{"image": torch.randn(2, 3), "label": torch.tensor([0, 1])}],
               [{"image": torch.randn(2, 3), "label": torch.tensor([1, 1])}]]
    trainer = MultiHeadTrainer("cpu", 1, loaders, net, torch.optim.SGD(net.parameters(), 0.1), nn.CrossEntropyLoss(),
                               decollate=False)
    calls = []
    trainer.add_event_handler(
        IterationEvents.FORWARD_COMPLETED,
        lambda e: calls.append(("forward", e.state.output["head"], tuple(e.state.output["pred"].shape),
                                Keys.LOSS in e.state.output)),
    )
    trainer.add_event_handler(
        IterationEvents.LOSS_COMPLETED,
        lambda e: calls.append(("loss", e.state.output["head"], e.state.output[Keys.LOSS].ndim,
                                net.backbone.weight.grad is not None and bool(net.backbone.weight.grad.any()))),
    )
    trainer.run()
    assert calls == [("forward", 0, (2, 2), False), ("loss", 0, 0, False),
                     ("forward", 1, (2, 2), False), ("loss", 1, 0, False)]
