from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from torch import nn

from medkd_ext.data import overlapping_subsets
from medkd_ext.engines import DistillationTrainer, for_each
from medkd_ext.engines.roskd import (
    ROSKD_METHODS,
    check_teacher_list,
    load_teachers,
    method_teacher_indices,
    prepare_training_items,
    roskd_loss_terms,
    teacher_subset,
    uses_smoothing,
)
from medkd_ext.handlers import SmoothAveragingHandler
from medkd_ext.losses import KDLoss, MultiTeacherKDLoss
from medkd_ext.networks import save_state_dict


class TinyNet(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def _loader(n=12, batch=4, multi_label=False):
    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(n):
        label = torch.tensor([i % 2, 1, 0], dtype=torch.float32) if multi_label else torch.tensor(i % 3)
        data.append({"image": torch.randn(1, 6, 6, generator=g), "label": label})
    return torch.utils.data.DataLoader(data, batch_size=batch)


def _items(n=20, num_classes=3, patients=True):
    return [
        {"image": __file__, "label": i % num_classes, **({"patient": f"P{i // 2}"} if patients else {})}
        for i in range(n)
    ]


def test_method_switch():
    assert set(ROSKD_METHODS) == {"student_only", "hinton_kd", "uniform_mkd", "roskd_no_smoothing", "roskd"}
    assert [m for m in ROSKD_METHODS if uses_smoothing(m)] == ["roskd"]
    assert method_teacher_indices("student_only", 5, 4) == []
    assert method_teacher_indices("hinton_kd", 5, 4) == [4]
    assert method_teacher_indices("roskd", 5, 4) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="hinton_teacher=5"):
        method_teacher_indices("hinton_kd", 5, 5)
    with pytest.raises(ValueError, match="method must be one of"):
        uses_smoothing("rl_weights")


@pytest.mark.parametrize("multi_label", [False, True])
def test_loss_terms_of_each_method(multi_label):
    only = roskd_loss_terms("student_only", 0.5, 0.9, multi_label)
    assert [(t.name, t.weight, t.supervised) for t in only] == [("ce", 1.0, True)]
    ce_type = nn.BCEWithLogitsLoss if multi_label else nn.CrossEntropyLoss
    assert isinstance(only[0].loss, ce_type)
    for method, loss_type, weighting in [
        ("hinton_kd", KDLoss, None),
        ("uniform_mkd", MultiTeacherKDLoss, "uniform"),
        ("roskd_no_smoothing", MultiTeacherKDLoss, "exponential"),
        ("roskd", MultiTeacherKDLoss, "exponential"),
    ]:
        kd, ce = roskd_loss_terms(method, 0.5, 0.9, multi_label)
        assert (kd.name, ce.name) == ("kd", "ce")
        assert kd.weight == pytest.approx(0.9) and ce.weight == pytest.approx(0.1)  # RoS-KD eq. 3: alpha, 1 - alpha
        assert isinstance(kd.loss, loss_type) and kd.loss.temperature == 0.5 and kd.loss.multi_label == multi_label
        assert getattr(kd.loss, "weighting", None) == weighting
        assert isinstance(ce.loss, ce_type) and ce.supervised
    with pytest.raises(ValueError, match="alpha"):
        roskd_loss_terms("roskd", 0.5, 1.5)


@pytest.mark.parametrize("multi_label", [False, True])
def test_teacher_weights_are_drawn_every_iteration_and_total_follows_eq_4(multi_label):
    teachers = [TinyNet(5), TinyNet(6), TinyNet(7)]
    terms = roskd_loss_terms("roskd", temperature=0.5, alpha=0.9, multi_label=multi_label)
    torch.manual_seed(0)
    student = TinyNet()
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=_loader(multi_label=multi_label),
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.01),
        teachers=teachers,
        loss_terms=terms,
        decollate=False,
    )
    rows = []
    kd_loss = trainer.loss_terms["kd"].loss

    def record(engine):
        out = {k: float(engine.state.output[k].detach()) for k in ("loss", "kd", "ce")}
        rows.append((kd_loss.last_weights.clone(), out))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert len(rows) == 6
    weights = torch.stack([w for w, _ in rows])
    assert torch.allclose(weights.sum(1), torch.ones(6, dtype=weights.dtype))
    assert len({tuple(w.tolist()) for w in weights}) == 6  # a fresh draw at every iteration
    for _, out in rows:
        assert out["loss"] == pytest.approx(0.9 * out["kd"] + 0.1 * out["ce"], rel=1e-5)


def test_smoothing_matches_eq_1_on_a_toy_network():
    torch.manual_seed(0)
    student = TinyNet()
    loader = _loader()
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=5,
        train_data_loader=loader,
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
        teachers=[TinyNet(5), TinyNet(6)],
        loss_terms=roskd_loss_terms("roskd", 0.5, 0.9),
    )
    handler = SmoothAveragingHandler(student, warmup_epochs=2, bn_loader=loader)
    snapshots = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: snapshots.append([p.detach().clone() for p in student.parameters()])
    )
    handler.attach(trainer)
    trainer.run()
    assert handler.num_averaged == 3
    # W_smooth = (W_smooth * n + W) / (n + 1) from epoch 3 on is the mean of the epoch-3, 4 and 5 weights
    averaged = list(handler.averaged_network.parameters())
    for i, p_avg in enumerate(averaged):
        expected = torch.stack([snap[i] for snap in snapshots[2:]]).mean(0)
        assert torch.allclose(p_avg, expected, atol=1e-6)
    assert any(not torch.allclose(p_avg, last) for p_avg, last in zip(averaged, snapshots[-1]))
    # BatchNorm statistics recomputed for M_smooth on the loader (cumulative average)
    bn = handler.averaged_network.body[1]
    with torch.no_grad():
        feats = torch.cat([handler.averaged_network.body[0](b["image"]) for b in loader])
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)


def test_prepare_training_items_splits_by_patient_and_corrupts_training_labels_only():
    items = _items(200, num_classes=4)
    out = prepare_training_items(items, num_classes=4, multi_label=False, val_fraction=0.2, noise_rate=0.3, seed=1)
    train, val = out["train"], out["validation"]
    assert len(train) + len(val) == 200 and len(val) == 40
    assert not {i["patient"] for i in train} & {i["patient"] for i in val}
    assert all("clean_label" not in i for i in val)
    changed = sum(i["label"] != i["clean_label"] for i in train)
    assert 0.1 * len(train) < changed < 0.35 * len(train)  # symmetric noise may redraw the same class
    assert items[0]["label"] == 0 and "clean_label" not in items[0]  # inputs untouched
    again = prepare_training_items(items, 4, False, 0.2, 0.3, seed=1)
    assert again == out


def test_prepare_training_items_rejects_bad_labels_naming_the_case():
    items = _items(10)
    items[3]["label"] = 3
    with pytest.raises(ValueError, match=r"case 3 .*outside the classes \[0, 3\)"):
        prepare_training_items(items, 3, False, 0.1, 0.2)
    ml = [{"image": __file__, "label": [0, 1, 0]} for _ in range(5)]
    ml[2]["label"] = [0, 1]
    with pytest.raises(ValueError, match=r"case 2 .*multi-hot list of num_classes=3"):
        prepare_training_items(ml, 3, True, 0.0, 0.2)
    missing = _items(4)
    missing[1]["image"] = "/no/such/file.png"
    with pytest.raises(FileNotFoundError, match="/no/such/file.png"):
        prepare_training_items(missing, 3, False, 0.0, 0.0)


def test_teacher_subset_is_the_overlapping_subset_and_k_is_checked():
    train = _items(30)
    subsets = [teacher_subset(train, 5, 0.4, i, seed=3) for i in range(5)]
    assert subsets == overlapping_subsets(train, 5, 0.4, seed=3)
    assert all(len(s) == 6 + round(0.4 * 24) for s in subsets)
    with pytest.raises(ValueError, match="larger than the training set"):
        teacher_subset(train[:4], 5, 0.4, 0)
    with pytest.raises(ValueError, match="teacher_index"):
        teacher_subset(train, 5, 0.4, 5)


def test_teacher_list_and_missing_checkpoints(tmp_path):
    with pytest.raises(ValueError, match=r"lists 2 networks but num_teachers \(k\) is 3"):
        check_teacher_list([TinyNet(), TinyNet()], 3)
    defs = [TinyNet(5), TinyNet(6)]
    ckpts = [str(tmp_path / f"teacher_{i}.pt") for i in range(2)]
    stages = for_each("teacher", "train_teacher.json", "teacher_index", 2, ckpts)
    assert load_teachers("student_only", defs, ckpts, "cpu", 1, stages) == {}
    with pytest.raises(FileNotFoundError, match=r"teacher_1\.pt.*written by stage 'teacher_1'.*--teacher_index 1"):
        load_teachers("hinton_kd", defs, ckpts, "cpu", 1, stages)
    trained = TinyNet(6)
    save_state_dict(trained, ckpts[1])
    loaded = load_teachers("hinton_kd", defs, ckpts, "cpu", 1, stages)
    assert list(loaded) == ["1"]
    assert torch.equal(loaded["1"].head.weight, trained.head.weight)
    with pytest.raises(FileNotFoundError, match=r"teacher_0\.pt"):
        load_teachers("roskd", defs, ckpts, "cpu", 1, stages)
    save_state_dict(TinyNet(7), ckpts[0])
    with pytest.raises(ValueError, match="stage 'teacher_0'"):
        load_teachers("roskd", defs, ckpts, "cpu", 1, stages)
    with pytest.raises(ValueError, match="1 teacher checkpoints for 2 teacher_defs"):
        load_teachers("roskd", defs, ckpts[:1], "cpu", 1, stages)


def test_kd_term_is_eq_4_on_the_teachers_eval_mode_outputs():
    """The student's kd term is ``tau^2 * sum_m w_m KL(q_m || p)`` with ``q_m`` from each teacher in ``eval()``."""
    torch.manual_seed(0)
    teachers = [TinyNet(5), TinyNet(6)]
    shifted = torch.randn(8, 1, 6, 6) * 3 + 2  # running statistics unlike any training batch
    for teacher in teachers:
        teacher.train()
        for _ in range(5):
            teacher(shifted)
    tau, alpha = 0.5, 0.9
    student = TinyNet()
    loader = _loader(n=4, batch=4)
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.0),
        teachers=teachers,
        loss_terms=roskd_loss_terms("roskd", tau, alpha),
        decollate=False,
    )
    seen = {}

    def record(engine):
        seen.update({k: engine.state.output[k].detach().clone() for k in ("pred", "kd", "ce", "loss")})
        seen["weights"] = trainer.loss_terms["kd"].loss.last_weights.clone()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    assert all(not t.training and not any(p.requires_grad for p in t.parameters()) for t in trainer.teachers.values())
    batch = next(iter(loader))
    log_p = torch.log_softmax(seen["pred"] / tau, dim=1)

    def kd_of(logits):
        kl = [
            (torch.softmax(t / tau, 1) * (torch.log_softmax(t / tau, 1) - log_p)).sum(1).mean() for t in logits
        ]
        return tau**2 * sum(w * k for w, k in zip(seen["weights"].tolist(), kl))

    with torch.no_grad():
        eval_logits = [t.eval()(batch["image"]) for t in teachers]
        train_logits = [t.train()(batch["image"]) for t in teachers]
    assert float(seen["kd"]) == pytest.approx(float(kd_of(eval_logits)), rel=1e-5)
    assert abs(float(seen["kd"]) - float(kd_of(train_logits))) > 1e-3  # batch statistics would give another value
    ce = nn.functional.cross_entropy(seen["pred"], batch["label"])
    assert float(seen["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(seen["loss"]) == pytest.approx(alpha * float(seen["kd"]) + (1 - alpha) * float(ce), rel=1e-5)
