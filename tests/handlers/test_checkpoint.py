from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medkd_ext.handlers import BestStateDictSaver, StateDictSaver


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
