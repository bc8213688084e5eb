from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medkd_ext.handlers import StateDictSaver


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


def test_best_metric_saves_on_improvement(tmp_path):
    net = torch.nn.Linear(1, 1)
    path = tmp_path / "best.pt"
    evaluator = Engine(lambda e, b: None)
    StateDictSaver(net, path, best_metric=True).attach(evaluator)
    saved_values = []
    for epoch, (_score, improved) in enumerate([(0.5, True), (0.4, False), (0.7, True)], start=1):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        evaluator.state.epoch = epoch
        evaluator.state.best_metric_epoch = epoch if improved else evaluator.state.best_metric_epoch
        evaluator.fire_event(Events.COMPLETED)
        saved_values.append(float(torch.load(path, weights_only=True)["weight"]))
    assert saved_values == [1.0, 1.0, 3.0]
