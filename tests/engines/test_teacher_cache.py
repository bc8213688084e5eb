"""Tests of medkd_ext/engines/teacher_cache.py and medkd_ext/data/views.py: the teachers of a DistillationTrainer run
once per (case, view), and later epochs read their outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, EnsureTyped, RandCropByPosNegLabeld, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism
from torch import nn

from medkd_ext.data import TeacherCacheDataset, draw_view, view_seed
from medkd_ext.engines import DistillationTrainer, LossTerm, TeacherOutputCache, teacher_output_cache, teacher_views
from medkd_ext.losses import AttentionTransferLoss, KDLoss, MultiTeacherKDLoss
from tests.engines.test_distillation import TinyNet

N_CASES = 10


def _data(n: int = N_CASES, seed: int = 0, size: int = 8) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((1, size, size)).astype(np.float32), "label": i % 3} for i in range(n)]


def _transform(random: bool = True, std: float = 0.1) -> Compose:
    chain = [EnsureTyped(keys="image", track_meta=False)]
    if random:
        chain += [RandFlipd(keys="image", prob=0.5, spatial_axis=0)]
        chain += [RandGaussianNoised(keys="image", prob=1.0, std=std)]
    return Compose(chain)


def _views(views: int = 2, seed: int = 0, data=None, transform=None, cache: bool = True) -> TeacherCacheDataset:
    data = _data() if data is None else data
    transform = _transform() if transform is None else transform
    dataset = CacheDataset(data, transform, progress=False) if cache else Dataset(data, transform)
    return TeacherCacheDataset(dataset, views, seed)


class Counted:
    """Teachers whose forward passes are counted (number of images seen), by forward hooks on the networks."""

    def __init__(self, k: int = 3, seed: int = 1) -> None:
        torch.manual_seed(seed)
        self.nets = {str(i): TinyNet(width=6) for i in range(k)}
        self.images = {name: 0 for name in self.nets}
        for name, net in self.nets.items():
            net.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, args, output):
            self.images[name] += args[0].shape[0]

        return hook

    def reset(self) -> None:
        self.images = {name: 0 for name in self.nets}


def _terms(kind: str = "all") -> list[LossTerm]:
    terms = {
        "kd": LossTerm("kd", MultiTeacherKDLoss(2.0), weight=1.0, teachers="all"),
        "kd1": LossTerm("kd1", KDLoss(2.0), weight=0.5, teachers="0"),
        "at": LossTerm("at", AttentionTransferLoss(), weight=2.0, student="block", teacher="block", teachers="1"),
        "ce": LossTerm("ce", nn.CrossEntropyLoss(), weight=0.3, teacher="label"),
    }
    names = {"all": ["kd", "kd1", "at", "ce"], "logits": ["kd", "kd1", "ce"], "features": ["at", "ce"]}[kind]
    return [terms[n] for n in names]


def _trainer(dataset, teachers: Counted, cache=None, terms=None, max_epochs=3, lr=0.1, batch_size=4, shuffle=True):
    torch.manual_seed(0)
    student = TinyNet()
    return DistillationTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(dataset, batch_size=batch_size, shuffle=shuffle),
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=lr),
        teachers=teachers.nets,
        loss_terms=_terms() if terms is None else terms,
        teacher_cache=cache,
        decollate=False,
    )


def _record(trainer, names=("loss", "kd", "kd1", "at", "ce")) -> list[dict]:
    """The loss terms of every iteration; the global RNG is seeded alike before each (MultiTeacherKDLoss draws its
    teacher weights from it)."""
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: torch.manual_seed(0))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: outputs.append({k: float(e.state.output[k].detach()) for k in names if k in e.state.output}),
    )
    return outputs


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


# -- views: seeds, replay, resume --------------------------------------------------------------------------------


def test_view_seeds_and_draws_depend_only_on_their_arguments():
    assert view_seed(0, 3, 1) == view_seed(0, 3, 1)
    assert len({view_seed(0, c, v) for c in range(5) for v in range(3)} | {view_seed(1, 0, 0)}) == 16
    # each case sees each of its V views once per cycle of V epochs
    for case in range(6):
        assert sorted(draw_view(0, e, case, 3) for e in (1, 2, 3)) == [0, 1, 2]
        assert sorted(draw_view(0, e, case, 3) for e in (4, 5, 6)) == [0, 1, 2]
    orders = {tuple(draw_view(0, e, case, 3) for e in (1, 2, 3)) for case in range(20)}
    assert len(orders) > 1  # the order is drawn per case


def test_same_case_and_view_give_the_same_image_in_two_runs():
    """Two datasets built independently, after different global seeds (the transforms' random states differ at
    construction), give view v of case i identically; another view gives another image."""
    set_determinism(seed=1)
    first = _views(views=3, seed=7)
    set_determinism(seed=2)
    second = _views(views=3, seed=7)
    set_determinism(seed=None)
    for case in range(N_CASES):
        images = [first.item(case, v)["image"] for v in range(3)]
        for v in range(3):
            again = second.item(case, v)
            assert again["case_index"] == case and again["view"] == v and again["crop_index"] == 0
            assert torch.equal(again["image"], images[v])
        assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    # reading other cases in between does not change a view (its random state is set from its seed alone)
    assert torch.equal(first.item(4, 2)["image"], second.item(4, 2)["image"])
    # a plain Dataset (the whole Compose runs per item) replays the same views as a CacheDataset
    plain = _views(views=3, seed=7, cache=False)
    assert torch.equal(plain.item(5, 1)["image"], first.item(5, 1)["image"])
    # another seed gives other views
    assert not torch.equal(_views(views=3, seed=8).item(5, 1)["image"], first.item(5, 1)["image"])


def test_multi_sample_crops_are_one_view_with_a_crop_index():
    """RandCropByPosNegLabeld(num_samples=2) returns a list per case: the view names the whole list, each crop has its
    own crop_index, and the nested cropper is seeded too (same crops from independently built transforms)."""

    def build(global_seed):
        set_determinism(seed=global_seed)
        rng = np.random.default_rng(0)
        data = [
            {"image": rng.standard_normal((1, 8, 8)).astype(np.float32), "seg": (rng.random((1, 8, 8)) > 0.7) * 1.0,
             "label": i % 3}
            for i in range(4)
        ]
        crop = RandCropByPosNegLabeld(keys=["image", "seg"], label_key="seg", spatial_size=(4, 4), num_samples=2)
        transform = Compose([EnsureTyped(keys=["image", "seg"], track_meta=False), crop])
        return TeacherCacheDataset(CacheDataset(data, transform, progress=False), views=2, seed=3)

    first, second = build(1), build(2)
    set_determinism(seed=None)
    for case in range(4):
        for view in range(2):
            a, b = first.item(case, view), second.item(case, view)
            assert isinstance(a, list) and [d["crop_index"] for d in a] == [0, 1]
            assert all(d["case_index"] == case and d["view"] == view for d in a)
            for x, y in zip(a, b):
                assert torch.equal(x["image"], y["image"])
    views = [torch.cat([d["image"] for d in first.item(0, v)]) for v in range(2)]
    assert not torch.equal(views[0], views[1])


def test_loader_workers_draw_the_views_of_the_epoch():
    """Worker processes (created by each epoch's iterator) get the epoch set before it, and a pickled copy of the
    dataset (as "spawn" workers receive) gives the same views."""
    import pickle

    dataset = _views(views=3, seed=2)
    copy = pickle.loads(pickle.dumps(dataset))
    loader = DataLoader(dataset, batch_size=5, num_workers=2)
    for epoch in (1, 2, 4):
        dataset.set_epoch(epoch)
        batches = list(loader)
        views = torch.cat([b["view"] for b in batches]).tolist()
        assert views == [draw_view(2, epoch, c, 3) for c in range(N_CASES)]
        images = torch.cat([b["image"] for b in batches])
        assert torch.equal(images, torch.stack([copy.item(c, v)["image"] for c, v in enumerate(views)]))


def _epoch_records(trainer) -> dict[int, dict[int, tuple[int, bytes]]]:
    """{epoch: {case: (view, image bytes)}} of what the trainer's loader gave it."""
    seen: dict[int, dict[int, tuple[int, bytes]]] = {}

    def keep(engine):
        batch = engine.state.batch
        for case, view, image in zip(batch["case_index"].tolist(), batch["view"].tolist(), batch["image"]):
            seen.setdefault(engine.state.epoch, {})[case] = (view, image.numpy().tobytes())

    trainer.add_event_handler(Events.ITERATION_STARTED, keep)
    return seen


def test_a_resumed_run_draws_the_same_views_and_images():
    """An uninterrupted 3-epoch run and a run resumed at epoch 2 (a fresh dataset, trainer and cache, the engine
    state set as TrainingState sets it) see, in epochs 2 and 3, the same view and the same image of every case."""
    teachers = Counted()
    dataset = _views(seed=5)
    full = _trainer(dataset, teachers, TeacherOutputCache(dataset))
    uninterrupted = _epoch_records(full)
    full.run()
    assert set(uninterrupted) == {1, 2, 3} and all(len(v) == N_CASES for v in uninterrupted.values())
    for epoch, cases in uninterrupted.items():  # the draw of each epoch is the one draw_view gives
        assert {c: v for c, (v, _) in cases.items()} == {c: draw_view(5, epoch, c, 2) for c in range(N_CASES)}

    set_determinism(seed=123)  # other global random states: nothing may depend on them
    dataset = _views(seed=5)
    resumed = _trainer(dataset, teachers, TeacherOutputCache(dataset))
    resumed.state.epoch, resumed.state.iteration = 1, len(resumed.data_loader)
    after = _epoch_records(resumed)
    resumed.run()
    set_determinism(seed=None)
    assert set(after) == {2, 3}
    for epoch in (2, 3):
        assert after[epoch] == uninterrupted[epoch]


# -- the cache in the trainer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logits", "features"])
@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_cached_loss_equals_the_computed_loss(tmp_path, kind, storage):
    """The same batch of the same (case, view)s: computed by the teachers in epoch 1, read from the cache in epoch 2
    (no teacher runs), and computed by a trainer without cache: every term agrees within 1e-6. The student does not
    move (lr 0), so only the teachers' values could differ."""
    teachers = Counted()
    dataset = _views(views=1)
    memory = 4096 if storage == "memory" else 0
    cache = TeacherOutputCache(dataset, folder=tmp_path / "cache", max_memory_mb=memory)
    trainer = _trainer(dataset, teachers, cache, terms=_terms(kind), max_epochs=2, lr=0.0, batch_size=N_CASES,
                       shuffle=False)
    outputs = _record(trainer)
    per_epoch = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: per_epoch.append(dict(teachers.images)))
    trainer.run()
    assert cache.stats == {"computed": 1, "cached": 1}
    assert per_epoch[0] == per_epoch[1] == {n: N_CASES for n in teachers.nets}  # no teacher ran in epoch 2
    assert cache.plan.slots(storage) and not cache.plan.slots("disk" if storage == "memory" else "memory")

    plain = _trainer(_views(views=1), Counted(), None, terms=_terms(kind), max_epochs=1, lr=0.0,
                     batch_size=N_CASES, shuffle=False)
    reference = _record(plain)
    plain.run()
    names = [t.name for t in _terms(kind)] + ["loss"]
    for name in names:
        assert outputs[1][name] == pytest.approx(outputs[0][name], abs=1e-6), name
        assert outputs[1][name] == pytest.approx(reference[0][name], abs=1e-6), name
    assert outputs[0]["loss"] > 0


@pytest.mark.parametrize("memory", [4096, 0])
def test_cached_values_are_the_teachers_values(tmp_path, memory):
    """Over shuffled batches of three epochs (V=2), what the cache returns for each batch equals, element by element,
    what the teachers compute on that batch: the entries are never mixed up, in memory or on disk."""
    teachers = Counted()
    dataset = _views(views=2)
    cache = TeacherOutputCache(dataset, folder=tmp_path, max_memory_mb=memory)
    trainer = _trainer(dataset, teachers, cache)
    loader = DataLoader(dataset, batch_size=3, shuffle=True)
    for epoch in (1, 2, 3):
        dataset.set_epoch(epoch)
        for batch in loader:
            inputs = batch["image"]
            values = cache.teacher_values(trainer, batch, inputs, (), {})
            direct = trainer._run_teachers(inputs, (), {})
            assert set(direct) == set(values) == {"0", "1", "2"} and set(direct["1"]) == {"pred", "block"}
            for name, outputs in direct.items():
                for source, value in outputs.items():
                    assert torch.allclose(values[name][source], value, atol=1e-6), (epoch, name, source)
    assert cache.stats == {"computed": 2 * len(loader), "cached": len(loader)}
    assert bool(cache._disk) == (memory == 0)


def test_teachers_run_once_per_view():
    """3 epochs, V=2: each teacher sees every (case, view) exactly once (cases * V images), against 3 * cases
    without the cache, and the third epoch is read from the cache entirely."""
    teachers = Counted()
    dataset = _views(views=2)
    cache = TeacherOutputCache(dataset)
    trainer = _trainer(dataset, teachers, cache)
    trainer.run()
    assert teachers.images == {n: N_CASES * 2 for n in teachers.nets}
    batches = len(trainer.data_loader)
    assert cache.stats == {"computed": 2 * batches, "cached": batches}
    assert cache.num_cached() == N_CASES * 2

    uncached = Counted()
    _trainer(_views(views=2), uncached, None).run()
    assert uncached.images == {n: N_CASES * 3 for n in uncached.nets}


def test_a_term_that_does_not_fit_keeps_running_its_teacher(tmp_path, caplog):
    """With room for the logits only, the feature-map term's teacher ('1') runs on every batch while the others are
    read from the cache; the decision is logged with the sizes."""
    teachers = Counted()
    dataset = _views(views=1)
    # logits: 3 teachers x 3 classes x 4 bytes x 10 cases = 360 B; the 6x8x8 feature map of teacher 1 is far more
    cache = TeacherOutputCache(dataset, folder=None, max_memory_mb=1000 / 2**20)
    trainer = _trainer(dataset, teachers, cache, max_epochs=2)
    with caplog.at_level("INFO", logger="medkd_ext.engines.teacher_cache"):
        trainer.run()
    assert cache.plan.terms == {"kd": "memory", "kd1": "memory", "at": "teacher"}
    assert cache.plan.run_teachers == ["1"]
    assert teachers.images == {"0": N_CASES, "1": 2 * N_CASES, "2": N_CASES}
    assert "term 'at' reads 1:block: 1.5 KiB per case and view" in caplog.text
    assert "keeps running its teachers" in caplog.text


def test_the_memory_mapped_cache_equals_the_memory_cache(tmp_path):
    """Forced to disk (memory limit 0), the outputs are memory-mapped files under the cache folder, and training gives
    the same weights as with the memory cache; a multi-sample crop transform works through the cache too."""
    runs = {}
    for storage, memory in (("memory", 4096), ("disk", 0)):
        teachers = Counted()
        dataset = _views(views=2)
        cache = TeacherOutputCache(dataset, folder=tmp_path / storage, max_memory_mb=memory)
        trainer = _trainer(dataset, teachers, cache)
        trainer.run()
        runs[storage] = (_weights(trainer), cache)
        assert teachers.images == {n: N_CASES * 2 for n in teachers.nets}
    disk = runs["disk"][1]
    assert disk.memory_bytes() == 0 and not disk._memory and disk.num_cached() == N_CASES * 2
    files = sorted(p.name for p in disk.disk_dir.iterdir())
    assert "filled.bin" in files and "teacher_cache.json" in files and sum(f.startswith("slot") for f in files) == 4
    assert disk.disk_dir.parent == tmp_path / "disk"
    assert not (tmp_path / "memory").exists()  # nothing written when everything fits in memory
    for key, value in runs["memory"][0].items():
        assert torch.equal(value, runs["disk"][0][key]), key


def test_crops_of_a_view_are_cached_each(tmp_path):
    rng = np.random.default_rng(0)
    data = [
        {"image": rng.standard_normal((1, 8, 8)).astype(np.float32), "seg": (rng.random((1, 8, 8)) > 0.7) * 1.0,
         "label": i % 3}
        for i in range(6)
    ]
    crop = RandCropByPosNegLabeld(keys=["image", "seg"], label_key="seg", spatial_size=(4, 4), num_samples=2)
    transform = Compose([EnsureTyped(keys=["image", "seg"], track_meta=False), crop])
    dataset = TeacherCacheDataset(CacheDataset(data, transform, progress=False), views=2, seed=0)
    teachers = Counted()
    cache = TeacherOutputCache(dataset, folder=tmp_path, max_memory_mb=0)
    trainer = _trainer(dataset, teachers, cache, batch_size=3)
    trainer.run()
    assert cache.plan.crops == 2 and cache.num_cached() == 6 * 2 * 2
    assert teachers.images == {n: 6 * 2 * 2 for n in teachers.nets}
    assert cache.stats["cached"] == len(trainer.data_loader)


# -- invalidation --------------------------------------------------------------------------------------------------


def test_changed_teacher_weights_rebuild_the_memory_cache():
    teachers = Counted()
    dataset = _views(views=2)
    cache = TeacherOutputCache(dataset)
    trainer = _trainer(dataset, teachers, cache, max_epochs=2)
    trainer.run()
    assert teachers.images["0"] == N_CASES * 2
    teachers.reset()
    trainer.run()  # a second run with the same teachers reads everything
    assert teachers.images == {n: 0 for n in teachers.nets}
    with torch.no_grad():
        teachers.nets["2"].head.bias.add_(1.0)
    trainer.run()
    assert teachers.images == {n: N_CASES * 2 for n in teachers.nets}


def test_the_disk_cache_is_reused_and_rebuilt_when_the_data_or_views_change(tmp_path):
    folder = tmp_path / "cache" / "student"

    def run(views=2, data=None, weights_bump=0.0):
        teachers = Counted()
        if weights_bump:
            with torch.no_grad():
                teachers.nets["0"].stem[0].weight.add_(weights_bump)
        dataset = _views(views=views, data=data)
        cache = TeacherOutputCache(dataset, folder=folder, max_memory_mb=0)
        _trainer(dataset, teachers, cache, max_epochs=views).run()
        return teachers.images["0"], cache

    computed, first = run()
    assert computed == N_CASES * 2
    # a new run (a resume) with the same teachers, data and views reads the files; only its first batch is computed,
    # which gives the outputs' sizes
    again, second = run()
    assert again == 4 and second.disk_dir == first.disk_dir
    assert second.stats == {"computed": 1, "cached": 2 * 3 - 1}
    changed = _data()
    changed[3]["image"] = changed[3]["image"] + 1
    for kwargs, expected in (({"data": changed}, N_CASES * 2), ({"views": 3}, N_CASES * 3),
                             ({"weights_bump": 0.1}, N_CASES * 2)):
        computed, cache = run(**kwargs)
        assert computed == expected, kwargs
        assert cache.disk_dir != first.disk_dir
        assert [p for p in folder.iterdir()] == [cache.disk_dir]  # the stale folders were removed


def test_the_key_covers_transforms_seed_and_inferer():
    teachers = Counted()
    base = TeacherOutputCache(_views())
    base.prepare(_trainer(base.dataset, teachers, base))
    for dataset in (_views(transform=_transform(std=0.2)), _views(seed=1)):
        other = TeacherOutputCache(dataset)
        other.prepare(_trainer(dataset, teachers, other))
        assert other.key != base.key
    same = TeacherOutputCache(_views())
    same.prepare(_trainer(same.dataset, teachers, same))
    assert same.key == base.key


# -- off by default ------------------------------------------------------------------------------------------------


def test_views_zero_leaves_the_trainer_as_it_was():
    """teacher_views(..., 0) returns the dataset itself and teacher_output_cache then gives None: the trainer is
    built without a cache, and its weights after 3 epochs equal those of a trainer built without the argument."""
    plain = CacheDataset(_data(), _transform(), progress=False)
    assert teacher_views(plain, 0, seed=0) is plain
    assert teacher_output_cache(plain, "unused", 4096) is None
    assert isinstance(teacher_output_cache(teacher_views(plain, 2, seed=0), None, 4096), TeacherOutputCache)
    with pytest.raises(ValueError, match="teacher_cache_views"):
        teacher_views(plain, -1, seed=0)

    results = []
    for cache_kwargs in ({}, {"teacher_cache": None}):
        set_determinism(seed=0)
        dataset = CacheDataset(_data(), _transform(), progress=False)
        torch.manual_seed(0)
        student = TinyNet()
        trainer = DistillationTrainer(
            device="cpu", max_epochs=3, train_data_loader=DataLoader(dataset, batch_size=4, shuffle=True),
            network=student, optimizer=torch.optim.SGD(student.parameters(), lr=0.1), teachers=Counted().nets,
            loss_terms=_terms(), **cache_kwargs,
        )
        trainer.run()
        results.append(_weights(trainer))
    set_determinism(seed=None)
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


def test_the_cache_refuses_a_loader_without_views():
    dataset = _views()
    cache = TeacherOutputCache(dataset)
    with pytest.raises(ValueError, match="not the TeacherCacheDataset"):
        _trainer(CacheDataset(_data(), _transform(), progress=False), Counted(), cache)
    with pytest.raises(TypeError, match="TeacherCacheDataset"):
        TeacherOutputCache(CacheDataset(_data(), _transform(), progress=False))
    with pytest.raises(ValueError, match="views must be an integer"):
        TeacherCacheDataset(dataset.dataset, 0)


# -- the RoS-KD bundle ---------------------------------------------------------------------------------------------


def test_roskd_student_stage_with_teacher_cache_views(tmp_path):
    """bundles/roskd_classification's student stage (train.json + train_student.json) with teacher_cache_views 2, 3
    epochs, five untrained teachers at 32x32: the teachers' outputs are cached in the third epoch; with the default
    0 the loader reads the plain dataset and the trainer has no cache."""
    from monai.bundle import ConfigWorkflow

    from medkd_ext.data import make_classification_demo
    from medkd_ext.engines import save_settings
    from medkd_ext.networks.checkpoint import save_state_dict

    configs = Path(__file__).resolve().parents[2] / "bundles" / "roskd_classification" / "configs"
    make_classification_demo(tmp_path / "mc", seed=0, n_cases=24, n_test=4, size=32)
    overrides = {
        "bundle_root": str(configs.parent), "dataset_dir": str(tmp_path / "mc"), "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"), "device": "cpu", "batch_size": 8, "image_size": 32, "max_epochs": 3,
        "warmup_epochs": 1, "teacher_cache_max_memory_mb": 0,
    }

    def workflow(files, **extra):
        flow = ConfigWorkflow(config_file=[str(configs / f) for f in files], meta_file=str(configs / "metadata.json"),
                              workflow_type="train", **{**overrides, **extra})
        flow.initialize()
        return flow

    parser = workflow(["train.json"]).parser
    assert parser.get_parsed_content("train#views") is parser.get_parsed_content("train#dataset")
    assert parser.get_parsed_content("train#teacher_cache") is None
    for net, path in zip(parser.get_parsed_content("teacher_defs"), parser.get_parsed_content("teacher_ckpts")):
        save_state_dict(net, path)
        save_settings(path, parser.get_parsed_content("teacher_settings"), parser.get_parsed_content("data_settings"))
    assert workflow(["train.json"]).parser.get_parsed_content("train#trainer").teacher_cache is None
    teacher_stage = workflow(["train.json", "train_teacher.json"], teacher_cache_views=2).parser
    assert not isinstance(teacher_stage.get_parsed_content("train#dataloader").dataset, TeacherCacheDataset)

    flow = workflow(["train.json", "train_student.json"], teacher_cache_views=2)
    flow.run()
    trainer = flow.parser.get_parsed_content("train#trainer")
    cache = trainer.teacher_cache
    assert isinstance(trainer.data_loader.dataset, TeacherCacheDataset) and cache.dataset.views == 2
    batches = len(trainer.data_loader)
    assert cache.stats == {"computed": 2 * batches, "cached": batches}
    assert cache.plan.terms == {"kd": "disk"} and cache.disk_dir.parent == tmp_path / "models" / "cache" / "student"
    assert (tmp_path / "models" / "model.pt").is_file()
