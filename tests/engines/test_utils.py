from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines.utils import LoaderCycle, optimisation_step


class LoggedLoader:
    """A re-iterable list of batches that logs every ``iter()`` and every batch taken."""

    def __init__(self, name: str, batches: list, log: list) -> None:
        self.name, self.batches, self.log = name, batches, log

    def __iter__(self):
        self.log.append(f"iter {self.name}")  # logged when iter() is called, as a DataLoader draws its seed then
        return self._batches()

    def _batches(self):
        for batch in self.batches:
            self.log.append(f"next {self.name}")
            yield batch


def test_loader_cycle_restarts_the_loader_when_exhausted():
    log: list = []
    cycle = LoaderCycle(LoggedLoader("a", [1, 2], log), "the loader")
    assert log == []  # nothing is drawn before the first next()
    assert [next(cycle) for _ in range(5)] == [1, 2, 1, 2, 1]
    assert log.count("iter a") == 3
    assert iter(cycle) is cycle


def test_loader_cycle_restart_starts_a_new_pass_when_called():
    log: list = []
    cycle = LoaderCycle(LoggedLoader("a", [1, 2, 3], log), "the loader")
    cycle.restart()
    assert log == ["iter a"]
    assert next(cycle) == 1
    cycle.restart()
    assert next(cycle) == 1 and log.count("iter a") == 2


def test_loader_cycle_reshuffles_a_shuffling_dataloader_on_every_pass():
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(list(range(16)), batch_size=16, shuffle=True)
    cycle = LoaderCycle(loader, "the loader")
    first, second = next(cycle), next(cycle)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(16))
    assert not torch.equal(first, second)


def test_loader_cycle_names_an_empty_loader():
    cycle = LoaderCycle([], "Trainer: the target loader")
    with pytest.raises(ValueError, match="^Trainer: the target loader yields no batch.$"):
        next(cycle)


def _trainer(forward_and_loss) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    data = [{"image": torch.randn(4, 3), "label": torch.tensor([0, 1, 1, 0])}]

    class Trainer(SupervisedTrainer):
        def _iteration(self, engine, batchdata):
            inputs, targets = batchdata["image"], batchdata["label"]
            engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
            forward, loss = forward_and_loss(engine, inputs, targets)
            optimisation_step(engine, forward, loss)
            return engine.state.output

    return Trainer(
        "cpu", 1, data, net, torch.optim.SGD(net.parameters(), lr=0.5), nn.CrossEntropyLoss(), decollate=False
    )


def test_optimisation_step_fires_the_iteration_events_in_supervised_trainer_order():
    def forward_and_loss(engine, inputs, targets):
        def forward():
            events.append("forward")
            engine.state.output[Keys.PRED] = engine.network(inputs)
            return engine.state.output[Keys.PRED]

        def loss(pred):
            events.append("loss")
            engine.state.output[Keys.LOSS] = engine.loss_function(pred, targets)

        return forward, loss

    events: list = []
    trainer = _trainer(forward_and_loss)
    weight = trainer.network.weight.detach().clone()
    seen = {}
    events_to_watch = (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    )
    for event in events_to_watch:

        def handler(engine, event=event):
            events.append(event.name)
            seen[event.name] = (
                set(engine.state.output),
                engine.network.weight.grad is not None,
                not torch.equal(engine.network.weight, weight),
            )

        trainer.add_event_handler(event, handler)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: events.append("done"))
    trainer.run()
    assert events == [
        "forward",
        "FORWARD_COMPLETED",
        "loss",
        "LOSS_COMPLETED",
        "BACKWARD_COMPLETED",
        "MODEL_COMPLETED",
        "done",
    ]
    # what each event can see: the prediction, then the loss, then gradients, then the updated weights
    assert seen["FORWARD_COMPLETED"] == ({"image", "label", "pred"}, False, False)
    assert seen["LOSS_COMPLETED"] == ({"image", "label", "pred", "loss"}, False, False)
    assert seen["BACKWARD_COMPLETED"] == ({"image", "label", "pred", "loss"}, True, False)
    assert seen["MODEL_COMPLETED"][1:] == (True, True)
