from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceCELoss
from torch import nn

from medkd_ext.engines import DistillationTrainer, loss_parameters
from medkd_ext.engines.joint_teacher import multilevel_distillation_terms
from medkd_ext.handlers import DecayHandler, RampHandler


class Levels(nn.Module):
    """A stand-in segmentation network with the feature interface of SegUNet/TResUNet/JointTeacher."""

    def __init__(self, channels=(4, 8, 8)) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        c_in = 1
        for i, c in enumerate(channels[:-1]):
            self.encoder.append(nn.Conv3d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1))
            c_in = c
        self.bottleneck = nn.Conv3d(c_in, channels[-1], 3, stride=2, padding=1)
        self.head = nn.Conv3d(channels[-1], 2, 1)
        self.feature_layers = [f"encoder.{i}" for i in range(len(channels) - 1)] + ["bottleneck"]
        self.feature_channels = list(channels)

    def forward(self, x):
        size = x.shape[2:]
        for block in self.encoder:
            x = torch.relu(block(x))
        return nn.functional.interpolate(self.head(self.bottleneck(x)), size=size)


def test_where_selects_the_levels():
    student, teacher = Levels((4, 8, 8)), Levels((6, 6, 8, 8))
    names = {w: [t.name for t in multilevel_distillation_terms(student, teacher, DiceCELoss(), where=w)]
             for w in ("encoder", "bottleneck", "both")}
    assert names["both"] == ["seg", "con", "feat_0", "feat_1", "feat_2", "sim"]
    assert names["encoder"] == ["seg", "con", "feat_0", "feat_1", "sim"]
    assert names["bottleneck"] == ["seg", "con", "feat_0", "sim"]
    both = multilevel_distillation_terms(student, teacher, DiceCELoss())
    # levels are paired from the bottleneck up: the student's encoder.0 meets the teacher's encoder.1
    assert [(t.student, t.teacher) for t in both if t.name.startswith("feat")] == [
        ("encoder.0", "encoder.1"), ("encoder.1", "encoder.2"), ("bottleneck", "bottleneck")]
    with pytest.raises(ValueError, match="where must be"):
        multilevel_distillation_terms(student, teacher, DiceCELoss(), where="decoder")
    with pytest.raises(ValueError, match="fused channels"):
        multilevel_distillation_terms(student, Levels((4, 8, 16)), DiceCELoss())
    with pytest.raises(ValueError, match="feature_layers"):
        multilevel_distillation_terms(student, nn.Conv3d(1, 1, 1), DiceCELoss())


def test_terms_train_a_student_with_curriculum_and_annealing():
    torch.manual_seed(0)
    student, teacher = Levels((4, 8, 8)), Levels((6, 8, 8))
    terms = multilevel_distillation_terms(
        student, teacher, DiceCELoss(to_onehot_y=True, softmax=True), lambda_con=0.5, temperature=4.0
    )
    data = [{"image": torch.randn(1, 8, 8, 8), "label": (torch.rand(1, 8, 8, 8) > 0.5).float()} for _ in range(4)]
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=3,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=student,
        optimizer=torch.optim.Adam(list(student.parameters()) + loss_parameters(terms), 1e-3),
        teachers={"joint": teacher},
        loss_terms=terms,
        decollate=False,
    )
    distil = [t.name for t in terms if t.name != "seg"]
    RampHandler(warmup=0, ramp=2, term=distil, attribute="scale").attach(trainer)
    DecayHandler(start=4.0, decay=0.5, floor=1.5, term="con", attribute="loss.temperature").attach(trainer)
    rows = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: rows.append((e.state.epoch, {k: float(v) for k, v in e.state.output.items() if k in e.loss_terms},
                               float(e.state.output["loss"].detach()), e.loss_terms["con"].loss.temperature)),
    )
    trainer.run()
    for epoch, values, total, temperature in rows:
        scale = {1: 0.0, 2: 0.5, 3: 1.0}[epoch]
        expected = values["seg"] + scale * sum(t.weight * values[t.name] for t in terms if t.name != "seg")
        assert total == pytest.approx(expected, rel=1e-5)
        assert temperature == {1: 4.0, 2: 2.0, 3: 1.5}[epoch]
        assert all(v >= 0 for v in values.values())
