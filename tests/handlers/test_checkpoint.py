from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medkd_ext.handlers import BestStateDictSaver, StateDictSaver, ValidationProtocol


def test_saved_at_completion_only(tmp_path):
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "models" / "model.pt"
    engine = Engine(lambda e, b: None)
    StateDictSaver(net, path).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(path.exists()))
    seen = []
    engine.run(range(2), max_epochs=2)
    assert seen == [False, False] and path.exists()
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["weight"], net.weight)


def test_failed_run_keeps_the_old_checkpoint(tmp_path):
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "model.pt"
    torch.save({"old": torch.ones(1)}, path)

    def fail(engine, batch):
        raise RuntimeError("boom")

    engine = Engine(fail)
    StateDictSaver(net, path).attach(engine)
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(range(2), max_epochs=1)
    assert set(torch.load(path, weights_only=True)) == {"old"}


# ---- BestStateDictSaver


def _evaluator(values):
    engine = Engine(lambda e, b: None)
    engine.state.key_metric_name = "score"
    scores = iter(values)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set(e):
        e.state.metrics["score"] = next(scores)

    return engine


@pytest.mark.parametrize("mode, values, best", [("max", [0.2, 0.5, 0.3], 0.5), ("min", [0.2, 0.5, 0.1], 0.1)])
def test_saves_on_improvement_only(tmp_path, mode, values, best):
    net = torch.nn.Linear(2, 1)
    path = tmp_path / "model.pt"
    saver = BestStateDictSaver(net, path, mode=mode)
    engine = _evaluator(values)
    saver.attach(engine)
    saved = []
    for v in values:
        with torch.no_grad():
            net.weight.fill_(v)
        engine.run([0], max_epochs=1)
        saved.append(float(torch.load(path, weights_only=True)["weight"][0, 0]))
    assert saver.best == best
    assert saved[-1] == pytest.approx(best)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        BestStateDictSaver(torch.nn.Linear(1, 1), tmp_path / "m.pt", mode="best")
    saver = BestStateDictSaver(torch.nn.Linear(1, 1), tmp_path / "m.pt", metric_name="auc")
    engine = _evaluator([0.1])
    saver.attach(engine)
    with pytest.raises(ValueError, match="metric 'auc' is not among"):
        engine.run([0], max_epochs=1)


def _protocol_run(tmp_path, scores, max_epochs, val_interval=1, patience=None):
    """A trainer validating every ``val_interval`` epochs with an evaluator whose metric follows ``scores``; the
    network's weight is set to the epoch number, so the saved file tells which epoch was kept."""
    network = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=1)
    trainer = Engine(lambda e, b: network.weight.data.fill_(float(e.state.epoch)))
    values = iter(scores)

    def evaluate(engine, batch):
        return None

    validator = Engine(evaluate)
    validator.state.key_metric_name = "dice"

    @validator.on(Events.COMPLETED)
    def metric(engine):
        engine.state.metrics["dice"] = next(values)

    protocol = ValidationProtocol(validator, network, tmp_path / "best.pt", lr_scheduler=scheduler,
                                  early_stop_patience=patience)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=val_interval), lambda e: validator.run([0]))
    protocol.attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    kept = torch.load(tmp_path / "best.pt", weights_only=True)["weight"].item()
    return trainer, protocol, kept, optimizer.param_groups[0]["lr"]


def test_validation_protocol_keeps_the_best_reduces_the_rate_and_stops_early(tmp_path):
    trainer, protocol, kept, lr = _protocol_run(tmp_path, [0.5, 0.7, 0.6, 0.65, 0.69, 0.1, 0.9], 7, patience=4)
    assert kept == 2.0  # the epoch of the best validation (0.7), not the last one
    assert lr == pytest.approx(0.01)  # reduced x0.1 after each second validation without improvement (patience 1)
    assert trainer.state.epoch == 6 and protocol.bad_validations == 4  # stopped before 0.9 was seen
    assert protocol.state_dict() == {"best": 0.7, "bad_validations": 4}


def test_validation_protocol_saves_the_final_network_when_no_validation_ran(tmp_path):
    _, protocol, kept, _ = _protocol_run(tmp_path, [], 2, val_interval=5)
    assert kept == 2.0 and protocol.saver.best is None
