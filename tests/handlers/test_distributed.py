"""DistributedTraining and the collectives of ``medkd_ext.distributed``, on two CPU processes (gloo).

Each test spawns two processes that join a process group over a local TCP port, as torchrun would set it up, and
compares with one process: the acceptance point of the multi-GPU issue that two ranks with batch B take the same
optimisation steps as one process with batch 2B, for the joint bundle's instance-norm UNet student with deterministic
loss terms (DiceCE, Hinton KD from a frozen teacher, feature alignment whose 1x1 adapter lives outside the network).
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from medkd_ext import distributed
from medkd_ext.engines import DistillationTrainer, LossTerm, loss_parameters
from medkd_ext.handlers import DistributedTraining, NonFiniteLossError, StopOnNonFiniteLoss, recompute_batchnorm
from medkd_ext.losses import FeatureAlignLoss, KDLoss
from medkd_ext.metrics.classification import PredictionCollector
from medkd_ext.metrics.segmentation import SegmentationReport
from medkd_ext.networks import segmentation_network

BATCH = 2  # per rank; the single process takes 2 * BATCH
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, target: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    try:
        distributed.init_distributed("gloo")
        result = globals()[target]()
        if distributed.is_main_process():
            torch.save(result, out)
    except BaseException:
        Path(out + f".error{rank}").write_text(traceback.format_exc())
        raise
    finally:
        distributed.end_distributed()


def _spawn(target: str, tmp_path: Path, world: int = 2):
    out = str(tmp_path / f"{target}.pt")
    mp.start_processes(_worker, args=(world, _free_port(), target, out), nprocs=world, start_method="spawn")
    errors = sorted(tmp_path.glob(f"{target}.pt.error*"))
    assert not errors, errors[0].read_text()
    return torch.load(out, weights_only=False)


def _cases(n: int = 4 * BATCH) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 16, 16, 16, generator=g)
    labels = (images > 0.5).float()
    return [{"image": images[i], "label": labels[i]} for i in range(n)]


def _train_student(batch_size: int) -> dict[str, torch.Tensor]:
    """STEPS distillation steps of the joint bundle's UNet student (instance norm); returns its weights and the
    adapter's."""
    torch.manual_seed(0)
    student = segmentation_network("unet", spatial_dims=3, in_channels=1, out_channels=2, width=4)
    teacher = segmentation_network("unet", spatial_dims=3, in_channels=1, out_channels=2, width=8)
    terms = [
        LossTerm("seg", DiceCELoss(to_onehot_y=True, softmax=True), teacher="label"),
        LossTerm("kd", KDLoss(temperature=4.0), weight=0.5),
        LossTerm("feat", FeatureAlignLoss(16, 32, spatial_dims=3), student="encoder.2", teacher="encoder.2"),
    ]
    # SGD: the conv biases in front of instance norm get gradients that are zero up to rounding, which Adam would
    # scale up to full steps of rounding noise; SGD's steps are the gradients, so equal steps mean equal gradients
    optimizer = torch.optim.SGD(list(student.parameters()) + loss_parameters(terms), lr=0.1, momentum=0.9)
    dataset = _cases()
    sampler = distributed.shard_sampler(dataset, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False)
    trainer = DistillationTrainer(
        device=torch.device("cpu"), max_epochs=1, epoch_length=STEPS, train_data_loader=loader, network=student,
        optimizer=optimizer, teachers=teacher, loss_terms=terms, train_handlers=[DistributedTraining()],
    )
    trainer.run()
    assert not isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)  # unwrapped when completed
    weights = {f"student.{k}": v.clone() for k, v in student.state_dict().items()}
    weights.update({f"adapter.{i}": p.detach().clone() for i, p in enumerate(loss_parameters(terms))})
    return weights


def ddp_student() -> dict[str, torch.Tensor]:
    return _train_student(BATCH)


@pytest.mark.slow
def test_two_ranks_with_batch_b_take_the_steps_of_one_process_with_batch_2b(tmp_path):
    two_ranks = _spawn("ddp_student", tmp_path)
    one_process = _train_student(2 * BATCH)
    assert two_ranks.keys() == one_process.keys()
    changed = 0
    for key, value in one_process.items():
        torch.testing.assert_close(two_ranks[key], value, atol=1e-5, rtol=0, msg=key)
        changed += int(key.startswith("adapter."))
    assert changed > 0  # the adapter outside the network is trained and averaged too
    # and the steps did something: the weights left their initial values
    torch.manual_seed(0)
    initial = segmentation_network("unet", spatial_dims=3, in_channels=1, out_channels=2, width=4).state_dict()
    assert max((one_process[f"student.{k}"] - v).abs().max().item() for k, v in initial.items()) > 1e-3


def collectives() -> dict:
    r = distributed.rank()
    # every rank's part of a validation set: 5 cases, each seen once
    sampler = distributed.shard_sampler(list(range(5)), shuffle=False, even_divisible=False)
    seen = distributed.gather_objects(list(sampler))
    # fixed shards (teacher-output cache): the same cases on a rank every epoch, in another order
    fixed = distributed.shard_sampler(list(range(5)), shuffle=True, seed=0, fixed=True)
    epochs = []
    for epoch in (1, 2):
        fixed.set_epoch(epoch)
        epochs.append(list(fixed))
    fixed_parts = distributed.gather_objects(epochs)
    # classification report over every rank's predictions
    collector = PredictionCollector()
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]]) if r == 0 else torch.tensor([[0.3, 0.7]])
    collector.add(probs, torch.tensor([0, 1]) if r == 0 else torch.tensor([0]))
    report = collector.report(multi_label=False, class_names=None)
    # segmentation report rows of every rank
    seg = SegmentationReport(num_classes=2)
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2] = 1
    seg.update(mask, mask, case_id=f"case_{r}")
    seg.gather()
    # gradients of parameters outside a DDP module are averaged
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), float(r + 1))
    q = torch.nn.Parameter(torch.zeros(2))  # a gradient on rank 1 only
    q.grad = torch.ones(2) if r == 1 else None
    distributed.average_gradients([p, q])
    # BatchNorm statistics recomputed on each rank's batches, then averaged
    bn = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
    batches = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]) + 10 * r]
    recompute_batchnorm(bn, batches)
    # a loss that is not finite on rank 1 only stops both ranks at that iteration
    engine = Engine(lambda e, b: {"loss": torch.tensor(float("nan") if r == 1 and e.state.iteration == 2 else 1.0)})
    StopOnNonFiniteLoss().attach(engine)
    try:
        engine.run(range(5), max_epochs=1)
        stopped = None
    except NonFiniteLossError as error:
        stopped = (engine.state.iteration, str(error))
    return {"fixed": fixed_parts, "stopped": stopped, "seen": seen, "accuracy": report["accuracy"],
            "cases": sorted(row["case"] for row in seg._rows), "p": p.grad, "q": q.grad, "mean": bn[0].running_mean}


@pytest.mark.slow
def test_collectives_cover_every_rank(tmp_path):
    result = _spawn("collectives", tmp_path)
    assert sorted(i for part in result["seen"] for i in part) == [0, 1, 2, 3, 4]  # each case once
    (rank0_e1, rank0_e2), (rank1_e1, rank1_e2) = result["fixed"]
    assert sorted(rank0_e1) == sorted(rank0_e2) == [0, 2, 4]  # rank 0 keeps its cases
    assert set(rank1_e1) == set(rank1_e2) == {1, 3} and len(rank1_e1) == 3  # padded to the same length
    assert result["accuracy"] == pytest.approx(2 / 3)  # 3 predictions of 2 ranks, 2 right
    assert result["cases"] == ["case_0", "case_1"]
    torch.testing.assert_close(result["p"], torch.full((3,), 1.5))
    torch.testing.assert_close(result["q"], torch.full((2,), 0.5))  # zero on rank 0, one on rank 1: averaged
    torch.testing.assert_close(result["mean"], torch.tensor([6.0, 7.0]))  # means 1, 2 and 11, 12 averaged
    assert result["stopped"] is not None and result["stopped"][0] == 2 and "on rank 1" in result["stopped"][1]


def test_single_process_is_a_no_op(tmp_path):
    assert not dist.is_initialized()
    assert distributed.shard_sampler(list(range(4))) is None
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.is_main_process() and distributed.world_size() == 1
    distributed.barrier()
    distributed.end_distributed()
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    distributed.average_gradients([p])
    torch.testing.assert_close(p.grad, torch.ones(2))


def test_init_without_torchrun_runs_as_one_process(monkeypatch, caplog):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    distributed.init_distributed()
    assert not dist.is_initialized()
    assert "without torchrun" in caplog.text and "torchrun --nproc_per_node" in caplog.text
