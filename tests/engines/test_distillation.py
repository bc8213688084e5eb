from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler
from torch import nn

from medkd_ext.engines import DistillationTrainer, LossTerm, loss_terms_output
from medkd_ext.handlers import RampHandler
from medkd_ext.losses import AttentionTransferLoss, FitNetLoss, KDLoss, MultiTeacherKDLoss
from medkd_ext.networks import FrozenTeacher


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _loader(n: int = 8, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = [
        {"image": torch.randn(1, 8, 8, generator=g), "label": torch.tensor(i % 3)} for i in range(n)
    ]
    return torch.utils.data.DataLoader(data, batch_size=batch)


def _trainer(terms, teachers, student=None, extra_params=(), **kwargs):
    torch.manual_seed(0)
    student = student or TinyNet()
    params = list(student.parameters()) + list(extra_params)
    return DistillationTrainer(
        device="cpu",
        max_epochs=kwargs.pop("max_epochs", 1),
        train_data_loader=kwargs.pop("loader", None) or _loader(),
        network=student,
        optimizer=torch.optim.SGD(params, lr=0.1),
        teachers=teachers,
        loss_terms=terms,
        **kwargs,
    )


def test_every_term_is_returned_and_the_loss_is_their_weighted_sum():
    teacher = TinyNet(width=6)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    terms = [
        LossTerm("ce", nn.CrossEntropyLoss(), weight=0.5, teacher="label"),
        LossTerm("kd", KDLoss(temperature=2.0), weight=2.0),
        LossTerm("at", AttentionTransferLoss(), weight=3.0, student="block", teacher="block"),
    ]
    trainer = _trainer(terms, teacher, decollate=False)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    assert len(outputs) == 2
    for out in outputs:
        assert {"image", "label", "pred", "loss", "ce", "kd", "at"} <= set(out)
        expected = 0.5 * out["ce"] + 2.0 * out["kd"] + 3.0 * out["at"]
        assert torch.allclose(out["loss"].detach(), expected, atol=1e-6)
        assert out["kd"] > 0 and out["at"] > 0
    # teacher frozen: parameters and BatchNorm statistics bit-identical, eval mode, no gradients
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_student_learns_from_the_teacher_and_terms_are_logged():
    teacher = TinyNet(width=6)
    student = TinyNet()
    start = [p.clone() for p in student.parameters()]
    trainer = _trainer([LossTerm("kd", KDLoss())], teacher, student=student)
    logged = loss_terms_output
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(logged(e.state.output)))
    StatsHandler(output_transform=loss_terms_output, iteration_log=True).attach(trainer)
    trainer.run()
    assert any(not torch.equal(a, b) for a, b in zip(start, student.parameters()))
    assert set(seen[0]) == {"loss", "kd"} and seen[0]["loss"] == pytest.approx(seen[0]["kd"])


def test_teacher_called_train_is_put_back_in_eval_each_iteration():
    teacher = TinyNet(width=6)
    trainer = _trainer([LossTerm("kd", KDLoss())], teacher)
    stats = teacher.stem[1].running_mean.clone()
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: teacher.train())
    trainer.run()
    assert torch.equal(teacher.stem[1].running_mean, stats)


def test_all_teachers_reach_a_multi_teacher_loss_and_weights_are_fresh():
    teachers = {"a": TinyNet(5), "b": TinyNet(6), "c": TinyNet(7)}
    loss = MultiTeacherKDLoss(temperature=2.0)
    trainer = _trainer([LossTerm("mkd", loss, teachers="all")], teachers)
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(loss.last_weights.clone()))
    trainer.run()
    assert len(weights) == 2 and weights[0].shape == (3,)
    assert not torch.allclose(weights[0], weights[1])


def test_handler_changes_a_term_weight_during_training():
    teacher = TinyNet(width=6)
    terms = [LossTerm("ce", nn.CrossEntropyLoss(), teacher="label"), LossTerm("kd", KDLoss(), weight=5.0)]
    trainer = _trainer(terms, teacher, max_epochs=2, decollate=False)
    RampHandler(warmup=0, ramp=1, max_value=5.0, term="kd").attach(trainer)
    rows = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: rows.append((e.state.epoch, float(e.state.output["loss"].detach()), float(e.state.output["ce"]),
                               float(e.state.output["kd"]), e.loss_terms["kd"].weight)),
    )
    trainer.run()
    for epoch, total, ce, kd, weight in rows:
        assert weight == (0.0 if epoch == 1 else 5.0)
        assert total == pytest.approx(ce + weight * kd, rel=1e-5)


def test_learnable_adapter_must_be_optimised():
    teacher = TinyNet(width=6)
    fitnet = FitNetLoss(student_channels=4, teacher_channels=6, spatial_dims=2)
    term = LossTerm("fit", fitnet, student="block", teacher="block")
    with pytest.raises(ValueError, match="optimizer does not update"):
        _trainer([term], teacher)
    trainer = _trainer([term], teacher, extra_params=fitnet.parameters())
    w0 = fitnet.regressor.weight.clone() if hasattr(fitnet, "regressor") else None
    trainer.run()
    if w0 is not None:
        assert not torch.equal(w0, fitnet.regressor.weight)


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="set its 'teachers'"):
        _trainer([LossTerm("kd", KDLoss())], [TinyNet(), TinyNet()])
    with pytest.raises(ValueError, match="does not exist"):
        _trainer([LossTerm("kd", KDLoss(), teachers="z")], {"a": TinyNet()})
    with pytest.raises(ValueError, match="unique"):
        _trainer([LossTerm("kd", KDLoss()), LossTerm("kd", KDLoss())], TinyNet())
    with pytest.raises(ValueError, match="reserved"):
        LossTerm("loss", KDLoss())
    with pytest.raises(ValueError, match="nosuchlayer"):
        _trainer([LossTerm("at", AttentionTransferLoss(), student="nosuchlayer", teacher="block")], TinyNet())


def test_trainer_builds_from_a_bundle_style_config():
    config = {
        "device": "cpu",
        "network": {"_target_": "tests.engines.test_distillation.TinyNet"},
        "teacher": {"_target_": "tests.engines.test_distillation.TinyNet", "width": 6},
        "kd": {"_target_": "medkd_ext.losses.KDLoss", "temperature": 3.0},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 1e-3},
        "trainer": {
            "_target_": "medkd_ext.engines.DistillationTrainer",
            "device": "@device",
            "max_epochs": 1,
            "train_data_loader": {"_target_": "tests.engines.test_distillation._loader"},
            "network": "@network",
            "optimizer": "@optimizer",
            "teachers": {"t": "@teacher"},
            "loss_terms": [
                {"name": "ce", "loss": "$torch.nn.CrossEntropyLoss()", "weight": 0.1, "teacher": "label"},
                {"name": "kd", "loss": "@kd", "weight": 0.9, "teachers": "t"},
            ],
        },
    }
    parser = ConfigParser(config)
    parser.parse()
    trainer = parser.get_parsed_content("trainer")
    trainer.run()
    assert set(trainer.loss_terms) == {"ce", "kd"}
    assert trainer.state.iteration == 2


def test_teachers_are_frozen_teachers_around_the_given_networks():
    bare, wrapped = TinyNet(width=6), FrozenTeacher(TinyNet(width=5))
    trainer = _trainer([LossTerm("mkd", MultiTeacherKDLoss(2.0), teachers="all")], {"a": bare, "b": wrapped})
    assert isinstance(trainer.teachers["a"], FrozenTeacher) and trainer.teachers["a"].network is bare
    assert trainer.teachers["b"] is wrapped
    assert not bare.training and not any(p.requires_grad for p in bare.parameters())  # frozen in place
    values = trainer._run_teachers(torch.randn(2, 1, 8, 8), (), {})
    for name in ("a", "b"):
        # ordinary tensors without history: a loss may save them for backward
        assert not values[name]["pred"].is_inference() and not values[name]["pred"].requires_grad


def test_iteration_events_are_fired():
    trainer = _trainer([LossTerm("kd", KDLoss())], TinyNet(width=6))
    fired = []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: fired.append(("forward", "pred" in
                              e.state.output, "loss" in e.state.output)))
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: fired.append(("loss", "kd" in e.state.output,
                              "loss" in e.state.output)))
    trainer.run()
    assert fired == [("forward", True, False), ("loss", True, True)] * 2


def test_a_batch_smaller_than_a_terms_min_batch_trains_without_that_term():
    """RKD needs 2 (distances) and 3 (angles) samples: an epoch of 9 cases in batches of 4 ends with a batch of 1,
    which trains on the other terms (the relational ones logged as 0) instead of failing."""
    from medkd_ext.losses import RKDAngleLoss, RKDDistanceLoss

    terms = [
        LossTerm("ce", nn.CrossEntropyLoss(), teacher="label"),
        LossTerm("rkd_d", RKDDistanceLoss(), weight=25.0, student="block", teacher="block", embed=True, min_batch=2),
        LossTerm("rkd_a", RKDAngleLoss(), weight=50.0, student="block", teacher="block", embed=True, min_batch=3),
    ]
    trainer = _trainer(terms, TinyNet(width=6), decollate=False, loader=_loader(n=9, batch=4))
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    assert [len(o["label"]) for o in outputs] == [4, 4, 1]
    assert all(o["rkd_d"] > 0 and o["rkd_a"] > 0 for o in outputs[:2])
    last = outputs[-1]
    assert last["rkd_d"] == 0 and last["rkd_a"] == 0
    assert torch.allclose(last["loss"].detach(), last["ce"], atol=1e-6)
    # without min_batch the loss itself refuses the batch, naming it
    with pytest.raises(Exception, match="at least 2 samples"):
        bare = _trainer([LossTerm("rkd_d", RKDDistanceLoss(), student="block", teacher="block", embed=True)],
                        TinyNet(width=6), loader=_loader(n=1, batch=1))
        bare.run()


@pytest.mark.parametrize("min_batch", [0, -1, 1.5, True])
def test_min_batch_must_be_a_positive_int(min_batch):
    with pytest.raises(ValueError, match=r"LossTerm 'rkd_d': min_batch must be a positive int"):
        LossTerm("rkd_d", nn.MSELoss(), min_batch=min_batch)
