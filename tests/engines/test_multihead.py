from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines import DatasetRounds, MultiHeadTrainer


def test_dataset_rounds_take_a_batch_of_every_dataset_for_each_target_batch():
    rounds = DatasetRounds([[1, 2, 3], ["a"], ["x", "y", "z", "w"]])
    assert list(rounds) == [[(0, 1), (1, "a"), (2, "x")], [(0, 2), (1, "a"), (2, "y")], [(0, 3), (1, "a"), (2, "z")]]
    assert len(rounds) == 3  # the target (first loader) sets the epoch's length
    with pytest.raises(ValueError, match="at least one"):
        DatasetRounds([])


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 2)])

    def forward(self, x, head=0):
        return self.heads[head](self.backbone(x))


def test_the_losses_of_every_dataset_are_summed_before_one_update():
    """Each iteration runs a batch of every dataset through its head and makes one step on the sum of the losses
    (the paper's multi-head baseline), so both heads get a gradient in every iteration."""
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
        out = engine.state.output
        seen.append(([h.weight.grad is not None and bool(h.weight.grad.abs().sum()) for h in net.heads],
                     float(out["loss"]), float(out["loss_0"]) + float(out["loss_1"])))
        net.zero_grad(set_to_none=True)

    steps = []
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: steps.append(e.state.iteration))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert [grads for grads, _, _ in seen] == [[True, True], [True, True]]  # 2 target batches: 2 iterations
    assert all(total == pytest.approx(summed) for _, total, summed in seen)
    assert steps == [1, 2]  # one optimizer step per iteration


def test_dataset_rounds_start_every_loader_before_the_first_batch_and_restart_short_ones():
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

    batches = list(DatasetRounds([Logged("a", [1, 2]), Logged("b", ["x"])]))
    assert batches == [[(0, 1), (1, "x")], [(0, 2), (1, "x")]]
    # where a shuffling DataLoader draws its seeds: both passes start before any batch is taken
    assert log == ["iter a", "iter b", "next a", "next b", "next a", "iter b", "next b"]
    with pytest.raises(ValueError, match="DatasetRounds: loader 1 yields no batch"):
        list(DatasetRounds([Logged("a", [1]), Logged("empty", [])]))


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
        lambda e: calls.append(("forward", tuple(e.state.output["pred"].shape), Keys.LOSS in e.state.output)),
    )
    trainer.add_event_handler(
        IterationEvents.LOSS_COMPLETED,
        lambda e: calls.append(("loss", e.state.output[Keys.LOSS].ndim,
                                net.backbone.weight.grad is not None and bool(net.backbone.weight.grad.any()))),
    )
    trainer.run()
    assert calls == [("forward", (2, 2), False), ("loss", 0, False)]
