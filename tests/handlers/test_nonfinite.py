"""medkd_ext.handlers.StopOnNonFiniteLoss: a NaN/Inf loss stops the run, naming the term, epoch and iteration, before
any saver writes the broken weights."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler

from medkd_ext.engines import DistillationTrainer, LossTerm, loss_terms_output
from medkd_ext.handlers import NonFiniteLossError, StateDictSaver, StopOnNonFiniteLoss

BATCHES = 4


def _loader() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(2, 3, generator=g), "label": torch.randint(0, 2, (2,), generator=g)}] * BATCHES


class _BreaksAt(torch.nn.Module):
    """``loss`` times 1, except at call ``at`` (1-based), where the value is ``value`` (NaN or Inf)."""

    def __init__(self, loss: torch.nn.Module, at: int | None, value: float = float("nan")) -> None:
        super().__init__()
        self.loss, self.at, self.value, self.calls = loss, at, value, 0

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        value = self.loss(*args)
        return value * self.value if self.calls == self.at else value


def _supervised(network, loss, handlers) -> SupervisedTrainer:
    return SupervisedTrainer(
        device="cpu", max_epochs=2, train_data_loader=_loader(), network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1), loss_function=loss, train_handlers=handlers,
    )


def test_supervised_trainer_stops_at_the_nan_iteration_and_keeps_the_last_checkpoint(tmp_path):
    path = tmp_path / "models" / "model.pt"
    # control: without a NaN, StateDictSaver writes the network at the end of the run (so the test below can fail)
    network = torch.nn.Linear(3, 2)
    _supervised(network, torch.nn.CrossEntropyLoss(), [StopOnNonFiniteLoss(), StateDictSaver(network, path)]).run()
    earlier = path.read_bytes()
    assert torch.equal(torch.load(path, weights_only=True)["weight"], network.weight)

    network = torch.nn.Linear(3, 2)
    loss = _BreaksAt(torch.nn.CrossEntropyLoss(), at=BATCHES + 2)  # epoch 2, its second iteration
    seen = []
    stats = StatsHandler(name="nonfinite_test", output_transform=loss_terms_output)  # as the bundles log the loss
    handlers = [StopOnNonFiniteLoss(), StateDictSaver(network, path), stats]
    trainer = _supervised(network, loss, handlers)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert "epoch 2, iteration 6 (2 of 4 in the epoch)" in message and "loss = nan" in message
    assert "last good ones) are kept" in message and "learning_rate" in message and "AMP" in message
    assert seen == [1, 2, 3, 4, 5]  # handlers attached after it never see the broken iteration
    assert path.read_bytes() == earlier  # the COMPLETED-time saver did not run


def test_distillation_trainer_names_the_infinite_term_and_the_finite_ones(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"earlier weights")
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    terms = [
        LossTerm("kd", _BreaksAt(torch.nn.MSELoss(), at=3, value=float("inf"))),
        LossTerm("ce", torch.nn.CrossEntropyLoss(), teacher="label"),
    ]
    trainer = DistillationTrainer(
        device="cpu", max_epochs=2, train_data_loader=_loader(), network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1), teachers=teacher, loss_terms=terms,
        train_handlers=[StopOnNonFiniteLoss(), StateDictSaver(student, path)],
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert "epoch 1, iteration 3 (3 of 4 in the epoch)" in message
    assert "loss = inf, kd = inf; finite: ce = " in message
    assert path.read_bytes() == b"earlier weights"


def test_finite_values_pass_and_the_output_may_be_decollated():
    engine = Engine(lambda e, b: b)
    StopOnNonFiniteLoss().attach(engine)
    decollated = [{"loss": torch.tensor(0.5), "kd": 1.0, "pred": torch.full((2,), float("nan"))}] * 2
    assert engine.run([decollated, {"loss": torch.tensor(0.1)}, None]).iteration == 3  # pred is not a loss
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 2 \(2 of 2 in the epoch\): at = -inf"):
        engine.run([{"loss": torch.tensor(1.0)}, [{"loss": torch.tensor(1.0), "at": torch.tensor(-float("inf"))}]])


def test_a_custom_output_transform_and_its_check():
    engine = Engine(lambda e, b: {"total": b})
    StopOnNonFiniteLoss(output_transform=lambda out: {"total": out["total"]}).attach(engine)
    with pytest.raises(NonFiniteLossError, match="total = nan"):
        engine.run([1.0, float("nan")])
    with pytest.raises(TypeError, match="output_transform must be callable"):
        StopOnNonFiniteLoss(output_transform="loss")
    assert loss_terms_output({"loss": torch.tensor(2.0), "image": torch.zeros(2)}) == {"loss": 2.0}
