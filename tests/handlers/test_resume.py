"""TrainingState: the full training state saved at each epoch end and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.transforms import Compose, RandGaussianNoised, RandScaleIntensityd
from monai.utils import set_determinism

from medkd_ext.handlers import TrainingState, state_path


class _Crash(RuntimeError):
    pass


def _trainer(path, resume=False, config=None, crash_at=None, max_epochs=3):
    """A small trainer: random augmentations (one nested in RandScaleIntensityd), shuffling, Adam, a step LR."""
    set_determinism(seed=0)
    data = [{"image": torch.randn(1, 4), "label": torch.tensor([i % 2], dtype=torch.float32)} for i in range(10)]
    transform = Compose([RandGaussianNoised("image", prob=0.5), RandScaleIntensityd("image", factors=0.2, prob=0.5)])
    loader = DataLoader(Dataset(data, transform), batch_size=3, shuffle=True)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.Dropout(0.3),
                                  torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    handlers = [LrScheduleHandler(scheduler, print_lr=False),
                TrainingState(path, resume=resume, stage="toy", config=config or {"lr": 0.01})]
    trainer = SupervisedTrainer(device="cpu", max_epochs=max_epochs, train_data_loader=loader, network=network,
                                optimizer=optimizer, loss_function=torch.nn.BCEWithLogitsLoss(),
                                train_handlers=handlers)
    if crash_at is not None:
        @trainer.on(Events.ITERATION_COMPLETED(once=crash_at))
        def crash(_):
            raise _Crash("killed")
    return trainer, network


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    reference, reference_net = _trainer(tmp_path / "a" / "state.pt")
    reference.run()
    path = tmp_path / "b" / "state.pt"
    crashed, _ = _trainer(path, crash_at=6)  # 4 iterations per epoch: in the second epoch
    with pytest.raises(_Crash):
        crashed.run()
    saved = torch.load(path, weights_only=True)  # loadable without pickled objects
    assert saved["epoch"] == 1 and saved["iteration"] == 4 and len(saved["rng"]["transforms"]) >= 4
    resumed, resumed_net = _trainer(path, resume="true")
    resumed.run()
    assert resumed.state.epoch == 3
    for a, b in zip(reference_net.state_dict().values(), resumed_net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    fresh, fresh_net = _trainer(tmp_path / "c" / "state.pt", crash_at=6)
    with pytest.raises(_Crash):
        fresh.run()  # resuming is what makes them equal: a run restarted from scratch after a crash differs
    assert not torch.equal(fresh_net[1].weight, reference_net[1].weight)


def test_resume_is_refused_under_other_settings(tmp_path):
    path = tmp_path / "state.pt"
    crashed, _ = _trainer(path, config={"lr": 0.01, "num_threads": 2}, crash_at=6, max_epochs=2)
    with pytest.raises(_Crash):
        crashed.run()
    other, _ = _trainer(path, resume=True, config={"lr": 0.1}, max_epochs=2)
    with pytest.raises(ValueError, match=r"stage 'toy': cannot resume from .*state.pt.*lr: saved 0.01, now 0.1"):
        other.run()
    same, _ = _trainer(path, resume=True, config={"lr": 0.01, "num_threads": 1}, max_epochs=2)
    same.run()  # num_threads changes how a run executes, not what it computes
    assert same.state.epoch == 2 and same.state.iteration == 8


def test_an_earlier_state_is_announced_and_a_broken_one_named(tmp_path, caplog):
    path = tmp_path / "state.pt"
    crashed, _ = _trainer(path, crash_at=6, max_epochs=2)
    with pytest.raises(_Crash):
        crashed.run()
    saved = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="medkd_ext.handlers.resume"):
        again, _ = _trainer(path, max_epochs=2)
        again.run()
    assert "found the state of an earlier run" in caplog.text and "--resume true" in caplog.text
    path.write_bytes(saved[:100])
    broken, _ = _trainer(path, resume=True, max_epochs=1)
    with pytest.raises(ValueError, match=r"state.pt cannot be read.*delete it"):
        broken.run()


def test_only_an_interrupted_run_leaves_its_state(tmp_path):
    """A finished trainer removes its state, after its other handlers ran: the next run of a stage trained alone
    through its overlay does not take it for an interrupted one. A crash keeps the state to resume from."""
    path = tmp_path / "state" / "model.pt"
    crashed, _ = _trainer(path, crash_at=6, max_epochs=2)
    with pytest.raises(_Crash):
        crashed.run()
    assert path.is_file()
    finished, _ = _trainer(path, max_epochs=2)
    seen = []
    finished.add_event_handler(Events.COMPLETED, lambda _: seen.append(path.is_file()))  # a handler given before
    finished.run()
    assert seen == [True] and not path.exists()
    stopped, _ = _trainer(path, max_epochs=3)
    stopped.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())  # early stopping
    stopped.run()
    assert stopped.state.epoch == 1 and not path.exists()


def test_state_path_is_beside_the_checkpoint():
    assert state_path("models/teacher_0.pt").as_posix() == "models/state/teacher_0.pt"
