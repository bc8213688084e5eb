from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

from medkd_ext.handlers import DANNLambdaHandler, DecayHandler, RampHandler, decay_value, ramp_value
from medkd_ext.losses import GradientReversal, dann_lambda


def test_ramp_values_linear_and_cosine():
    linear = [ramp_value(e, warmup=2, ramp=4, max_value=2.0) for e in range(8)]
    assert linear == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.0])  # min(1, max(0, (t - 2) / 4)) * 2
    cosine = [ramp_value(e, warmup=1, ramp=4, max_value=1.0, mode="cosine") for e in range(7)]
    assert cosine == pytest.approx([0, 0, (1 - 2**-0.5) / 2, 0.5, (1 + 2**-0.5) / 2, 1.0, 1.0])
    assert ramp_value(0, warmup=0, ramp=0, max_value=3.0) == 3.0
    # the first epoch after the warm-up is at the start value (the joint bundle's con weight: 0.05, not 0.065)
    assert ramp_value(1, warmup=1, ramp=4, max_value=1.0, start_value=0.2) == pytest.approx(0.2)
    assert ramp_value(3, warmup=1, ramp=4, max_value=1.0, start_value=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert ramp_value(0, warmup=0, ramp=10, max_value=0.2, start_value=0.05) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="linear"):
        ramp_value(0, 1, 1, mode="step")


def test_decay_value_reaches_floor():
    assert decay_value(0, 4.0, 0.5, 1.0) == 4.0
    assert decay_value(1, 4.0, 0.5, 1.0) == 2.0
    assert decay_value(5, 4.0, 0.5, 1.0) == 1.0
    with pytest.raises(ValueError, match="decay"):
        decay_value(0, 4.0, 1.5, 1.0)


class _Box:
    weight = 1.0
    temperature = 9.0


def _run(handler, epochs=5, epoch_length=3):
    seen = []
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(handler.value))
    engine.run(range(epoch_length), max_epochs=epochs)
    return seen


def test_ramp_handler_sets_an_attribute_each_epoch():
    box = _Box()
    seen = _run(RampHandler(warmup=1, ramp=2, max_value=4.0, target=box), epochs=5)
    assert seen == pytest.approx([0, 0, 2.0, 4.0, 4.0])
    assert box.weight == 4.0


def test_decay_handler_anneals_temperature():
    box = _Box()
    seen = _run(DecayHandler(start=4.0, decay=0.5, floor=1.5, target=box), epochs=4)
    assert seen == pytest.approx([4.0, 2.0, 1.5, 1.5])
    assert box.temperature == 1.5


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        RampHandler(1, 1)
    with pytest.raises(ValueError, match="no attribute 'gain'"):
        RampHandler(1, 1, target=_Box(), attribute="gain")
    engine = Engine(lambda e, b: None)
    RampHandler(1, 1, term="kd").attach(engine)
    with pytest.raises(ValueError, match="no loss term 'kd'"):
        engine.run(range(2), max_epochs=1)


def test_dann_lambda_handler_follows_progress():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), GradientReversal(), torch.nn.Sequential(GradientReversal()))
    handler = DANNLambdaHandler(model)
    values = []
    engine = Engine(lambda e, b: values.append([m.lambda_ for m in handler.layers]))
    handler.attach(engine)
    engine.run(range(5), max_epochs=2)  # 10 iterations
    assert values[0] == [0.0, 0.0]
    assert values[5] == pytest.approx([dann_lambda(0.5)] * 2)
    assert values[5][0] == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert all(a[0] < b[0] for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="no GradientReversal"):
        DANNLambdaHandler(torch.nn.Linear(2, 2))


def test_schedules_reach_several_terms_and_dotted_attributes():
    class Term:
        def __init__(self):
            self.scale = 1.0
            self.loss = _Box()

    engine = Engine(lambda e, b: None)
    engine.loss_terms = {"con": Term(), "feat": Term(), "seg": Term()}
    RampHandler(warmup=0, ramp=2, term=["con", "feat"], attribute="scale").attach(engine)
    DecayHandler(start=4.0, decay=0.5, floor=1.0, term="con", attribute="loss.temperature").attach(engine)
    seen = []
    engine.add_event_handler(
        Events.EPOCH_STARTED,
        lambda e: seen.append((e.loss_terms["con"].scale, e.loss_terms["feat"].scale, e.loss_terms["seg"].scale,
                               e.loss_terms["con"].loss.temperature)),
    )
    engine.run(range(1), max_epochs=4)
    assert seen == [(0.0, 0.0, 1.0, 4.0), (0.5, 0.5, 1.0, 2.0), (1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)]
    with pytest.raises(ValueError, match="no attribute 'loss.nope'"):
        RampHandler(1, 1, target=Term(), attribute="loss.nope")
