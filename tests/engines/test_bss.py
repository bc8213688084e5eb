from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from torch import nn

from medkd_ext.engines import BSSDistillationTrainer, LossTerm, bss_weight_scale, heo_kd_weight
from medkd_ext.losses import BoundarySupportingSamples, KDLoss, boundary_supporting_attack, select_base_samples
from tests.losses.test_bss import ConvNet as _ConvNet


def ConvNet(dims: int = 2, width: int = 4, num_classes: int = 3) -> nn.Module:  # noqa: N802 - the tests' network
    """The BSS loss tests' network, with this file's smaller default width and three classes."""
    return _ConvNet(dims, width, num_classes)


def _data(teacher: nn.Module, n: int = 8, dims: int = 2, wrong: int = 0) -> list[dict]:
    """Images labelled by the teacher (so that it classifies them correctly), the first ``wrong`` mislabelled."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand((n, 1) + (6,) * dims, generator=g)
    with torch.no_grad():
        labels = teacher.eval()(images).argmax(1)
    labels[:wrong] = (labels[:wrong] + 1) % 3
    return [{"image": images[i], "label": labels[i]} for i in range(n)]


def _trainer(teacher, student, data, batch_size=8, terms=None, **kwargs):
    terms = terms or [LossTerm("ce", nn.CrossEntropyLoss(), teacher="label"), LossTerm("kd", KDLoss(4.0), weight=0.5)]
    return BSSDistillationTrainer(
        device="cpu",
        max_epochs=kwargs.pop("max_epochs", 1),
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=batch_size),
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.05),
        teachers=teacher,
        loss_terms=terms,
        decollate=False,
        **kwargs,
    )


def _outputs(trainer) -> list[dict]:
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    return outputs


@pytest.mark.parametrize("dims", [2, 3])
def test_bss_term_is_kd_on_the_attacked_samples_and_enters_the_loss(dims):
    torch.manual_seed(0)
    teacher, student = ConvNet(dims, width=6), ConvNet(dims)
    data = _data(teacher, dims=dims, wrong=2)
    finder = BoundarySupportingSamples(attack_size=4, target="second")
    trainer = _trainer(teacher, student, data, boundary_samples=finder, max_epochs=4)
    start = copy.deepcopy(student).train()
    teacher_before = copy.deepcopy(teacher.state_dict())
    out = _outputs(trainer)
    assert {"ce", "kd", "bss", "bss_samples", "loss"} <= set(out[0])
    # the first iteration recomputed by hand from the student's starting weights
    images = torch.stack([d["image"] for d in data])
    labels = torch.stack([d["label"] for d in data])
    with torch.no_grad():
        t_logits, s_logits = teacher(images), start(images)
    index = select_base_samples(t_logits, s_logits, labels, 4)
    assert not set(index.tolist()) & {0, 1} and out[0]["bss_samples"] == len(index) == 4
    targets = t_logits[index].topk(2, dim=1).indices[:, 1]
    samples = boundary_supporting_attack(teacher, images[index], labels[index], targets)
    with torch.no_grad():
        expected = KDLoss(4.0)(start(samples), teacher(samples))
    torch.testing.assert_close(out[0]["bss"], expected, rtol=1e-4, atol=1e-6)
    # the weighted sum, with Heo's default weight 2 / T^2 decaying linearly to 0 at 75% of training
    for epoch, o in enumerate(out):
        scale = bss_weight_scale(epoch, 4)
        expected_loss = o["ce"] + 0.5 * o["kd"] + (2.0 / 16.0) * scale * o["bss"]
        torch.testing.assert_close(o["loss"].detach(), expected_loss, rtol=1e-5, atol=1e-6)
    assert [float(o["bss_samples"]) for o in out] == [4.0, 4.0, 4.0, 0.0]  # beta = 0 at 75% of training: no attack
    assert out[-1]["bss"] == 0
    # the teacher stays frozen
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_bss_gradient_reaches_the_student():
    torch.manual_seed(1)
    teacher, student = ConvNet(width=6), ConvNet()
    data = _data(teacher)
    terms = [LossTerm("ce", nn.CrossEntropyLoss(), weight=0.0, teacher="label")]
    trainer = _trainer(teacher, student, data, terms=terms, bss_weight=1.0, bss_decay_end=None)
    start = [p.clone() for p in student.parameters()]
    out = _outputs(trainer)
    assert out[0]["bss"] > 0 and out[0]["loss"] > 0
    assert any(not torch.equal(p, p0) for p, p0 in zip(student.parameters(), start))


def test_schedules_follow_heo():
    assert bss_weight_scale(0, 200) == 1.0 and bss_weight_scale(1, 200) == pytest.approx(1 - 1 / 150)
    assert bss_weight_scale(75, 200) == pytest.approx(0.5)
    assert bss_weight_scale(150, 200) == 0.0 and bss_weight_scale(199, 200) == 0.0
    assert heo_kd_weight(0, 200, 4.0, 1.0) == 4.0 and heo_kd_weight(200, 200, 4.0, 1.0) == 1.0
    assert heo_kd_weight(100, 200, 4.0, 1.0) == pytest.approx(2.5)
    torch.manual_seed(2)
    teacher, student = ConvNet(width=6), ConvNet()
    trainer = _trainer(teacher, student, _data(teacher), max_epochs=2, kd_weight_schedule=(0.25, 0.0625))
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(e.loss_terms["kd"].weight))
    trainer.run()
    assert weights == pytest.approx([0.25, heo_kd_weight(1, 2, 0.25, 0.0625)])


def test_no_sample_right_for_the_teacher_gives_a_zero_term():
    torch.manual_seed(3)
    teacher, student = ConvNet(width=6), ConvNet()
    data = _data(teacher, wrong=8)
    out = _outputs(_trainer(teacher, student, data))
    assert out[0]["bss"] == 0 and out[0]["bss_samples"] == 0 and torch.isfinite(out[0]["loss"])


def test_multi_label_and_bad_setups_are_refused():
    teacher, student = ConvNet(), ConvNet()
    data = _data(teacher)
    with pytest.raises(ValueError, match="BSS .* multi-class"):
        _trainer(teacher, student, data, multi_label=True)
    with pytest.raises(ValueError, match="BSS .* multi-class"):
        _trainer(teacher, student, data, multi_label="true")  # as a command line gives it
    terms = [LossTerm("ce", nn.BCEWithLogitsLoss(), teacher="label")]
    with pytest.raises(ValueError, match="multi-label loss .* BSS"):
        _trainer(teacher, student, data, terms=terms)
    with pytest.raises(ValueError, match="multi-label loss .* BSS"):
        _trainer(teacher, student, data, bss_loss=KDLoss(4.0, multi_label=True))
    with pytest.raises(ValueError, match="set bss_teacher"):
        _trainer(
            {"a": teacher, "b": ConvNet()},
            student,
            data,
            terms=[LossTerm("ce", nn.CrossEntropyLoss(), teacher="label")],
        )
    with pytest.raises(ValueError, match="not a teacher"):
        _trainer(teacher, student, data, bss_teacher="x")
    with pytest.raises(ValueError, match="reserved"):
        _trainer(teacher, student, data, terms=[LossTerm("bss", KDLoss(4.0))])
    with pytest.raises(ValueError, match="no loss term 'kd'"):
        _trainer(
            teacher,
            student,
            data,
            terms=[LossTerm("ce", nn.CrossEntropyLoss(), teacher="label")],
            kd_weight_schedule=(4.0, 1.0),
        )
    # multi-hot labels reaching the trainer
    multi_hot = [{"image": d["image"], "label": torch.nn.functional.one_hot(d["label"], 3).float()} for d in data]
    trainer = _trainer(teacher, ConvNet(), multi_hot, terms=[LossTerm("kd", KDLoss(4.0))])
    with pytest.raises(ValueError, match="multi-class classification"):
        trainer.run()


def test_teacher_chosen_by_index_among_several():
    torch.manual_seed(4)
    teacher, other, student = ConvNet(width=6), ConvNet(width=5), ConvNet()
    terms = [LossTerm("ce", nn.CrossEntropyLoss(), teacher="label")]
    trainer = _trainer([other, teacher], student, _data(teacher), terms=terms, bss_teacher=1, multi_label="false")
    assert trainer.bss_teacher == "1" and trainer.loss_terms["bss"].weight == pytest.approx(0.125)
    out = _outputs(trainer)
    assert out[0]["bss_samples"] > 0
