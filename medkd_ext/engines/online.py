"""Online distillation trainers, without a pre-trained teacher: ONE (Lan et al., NeurIPS 2018) and Deep Mutual
Learning (Zhang et al., CVPR 2018), with the settings of the KD study of Sarfraz et al., "Knowledge distillation
beyond model compression" (Table I: ONE T = 3, three branches; DML T = 4, a cohort of two)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines.roskd import supervised_loss
from medkd_ext.engines.stages import as_flag
from medkd_ext.engines.utils import optimisation_step
from medkd_ext.losses.online import EnsembleKDLoss, MutualLearningLoss
from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.networks.one import ONENetwork

__all__ = ["MutualLearningTrainer", "ONETrainer"]


def _supervised(loss_function: Callable | None, multi_label: bool) -> Callable:
    return supervised_loss(multi_label) if loss_function is None else loss_function


def _check_weight(value: float, owner: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{owner}: {name} must be a non-negative number, got {value!r}.")
    return float(value)


def _split_batch(engine: SupervisedTrainer, batchdata: Any) -> tuple[torch.Tensor, Any, tuple, dict]:
    batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
    if len(batch) == 2:
        return batch[0], batch[1], (), {}
    return batch[0], batch[1], tuple(batch[2]), dict(batch[3])


class ONETrainer(SupervisedTrainer):
    """Trains a :class:`~medkd_ext.networks.ONENetwork` with the objective of ONE (Lan et al., NeurIPS 2018).

    ``L = sum_i CE(z_i, y) + CE(z_e, y) + kd_weight * T^2 * sum_i KL(softmax(z_e / T) || softmax(z_i / T))`` over the
    branches ``z_i`` and the gated ensemble ``z_e`` (:class:`~medkd_ext.losses.EnsembleKDLoss`, the ensemble detached),
    ``T = 3``, in one optimisation step over the whole network (trunk, branches and gate). ``kd_weight`` (1 in the
    paper) is a plain attribute, so a ``RampHandler(target=@trainer, attribute="kd_weight", ...)`` may schedule it.
    With ``multi_label=True`` (an extension; the paper is multi-class) the supervised loss is BCE with logits and the
    KL the per-class Bernoulli KL.

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (what the network returns outside training: one
    branch or the ensemble, see ``ONENetwork.output``), ``loss``, the unweighted terms ``ce`` (sum over the branches),
    ``ce_ensemble`` and ``kd``, and ``gate_<i>``, the batch mean of each branch's gate weight (log them with
    ``medkd_ext.engines.loss_terms_output``). Validation and checkpoints see ``network`` as it is: its ``output``
    decides what an evaluator scores.

    Args:
        device: device of the network.
        max_epochs: number of epochs.
        train_data_loader: loader of dict batches with ``image`` and ``label``.
        network: the :class:`ONENetwork` (possibly wrapped in ``DataParallel``/``DistributedDataParallel``).
        optimizer: optimizer over all of the network's parameters.
        loss_function: supervised loss of each branch and of the ensemble; default cross-entropy (BCE with logits
            when ``multi_label``).
        temperature: ``T`` of the KL term (3 in the paper and the KD study).
        kd_weight: weight of the KL term.
        multi_label: see above.
        kwargs: every other ``SupervisedTrainer`` argument (``amp``, ``train_handlers``, ``inferer``, ...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable | None = None,
        temperature: float = 3.0,
        kd_weight: float = 1.0,
        multi_label: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(unwrap_network(network), ONENetwork):
            raise TypeError(
                f"ONETrainer: network must be a medkd_ext.networks.ONENetwork, got {type(network).__name__}; build it "
                "with ONENetwork(backbone, split, num_branches=3)."
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=_supervised(loss_function, as_flag(multi_label, "multi_label")),
            **kwargs,
        )
        self.kd_loss = EnsembleKDLoss(temperature, multi_label=as_flag(multi_label, "multi_label"))
        self.kd_weight = _check_weight(kd_weight, "ONETrainer", "kd_weight")

    def _iteration(self, engine: ONETrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One ONE step: every branch, the gate and the ensemble, one optimisation step."""
        if batchdata is None:
            raise ValueError("ONETrainer: no batch data for this iteration.")
        inputs, targets, args, kwargs = _split_batch(engine, batchdata)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        one = unwrap_network(engine.network)

        def _forward() -> dict[str, Any]:
            out = engine.inferer(inputs, engine.network, *args, output="all", **kwargs)
            pred = out["ensemble"] if one.output == "ensemble" else out["branches"][one.branch]
            engine.state.output[Keys.PRED] = pred
            return out

        def _loss(out: dict[str, Any]) -> None:
            ce = torch.stack([engine.loss_function(z, targets).mean() for z in out["branches"]]).sum()
            ce_ensemble = engine.loss_function(out["ensemble"], targets).mean()
            kd = engine.kd_loss(out["branches"], out["ensemble"])
            engine.state.output[Keys.LOSS] = ce + ce_ensemble + engine.kd_weight * kd
            engine.state.output.update({"ce": ce.detach(), "ce_ensemble": ce_ensemble.detach(), "kd": kd.detach()})
            for i, weight in enumerate(out["gate"].detach().float().mean(dim=0)):
                engine.state.output[f"gate_{i}"] = weight

        engine.network.train()
        optimisation_step(engine, _forward, _loss)
        return engine.state.output


@contextmanager
def _optimizer_of(engine: SupervisedTrainer, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """``engine.optimizer`` is ``optimizer`` inside the block (``optimisation_step`` steps ``engine.optimizer``)."""
    own = engine.optimizer
    engine.optimizer = optimizer
    try:
        yield
    finally:
        engine.optimizer = own


class MutualLearningTrainer(SupervisedTrainer):
    """Deep Mutual Learning (Zhang, Xiang, Hospedales and Lu, CVPR 2018): a cohort of students taught by each other.

    Student ``k`` minimises ``L_k = CE(z_k, y) + kd_weight * T^2 * (1 / (K - 1)) * sum_{l != k} KL(p_l || p_k)``
    (:class:`~medkd_ext.losses.MutualLearningLoss`, ``p = softmax(z / T)``, the peers' predictions detached), ``T = 4``
    and a cohort of ``K = 2`` in the KD study. As in the paper's algorithm the students are updated in turn within
    each iteration, each with its own optimizer, and each step uses the peers' current predictions: every student is
    run on the batch once (with its graph), student 0 is updated, then before student ``k``'s update student ``k - 1``,
    just updated, is run again on the batch (without gradients, in training mode, so the BatchNorm statistics of all
    students but the last see the batch twice). ``alternate=False`` uses the predictions from the start of the
    iteration for every update (a simultaneous update).

    ``network`` is student 0: the student the bundle's validation, checkpoints and ``pred`` see; ``peers`` are the
    others. ``engine.state.output`` holds ``image``, ``label``, ``pred`` (student 0), ``loss`` (the cohort's total
    ``sum_k L_k``, detached) and per student ``k`` the terms ``ce_<k>``, ``kl_<k>`` (unweighted) and ``loss_<k>``.
    MONAI's iteration events ``FORWARD_COMPLETED``, ``LOSS_COMPLETED`` and ``BACKWARD_COMPLETED`` fire once per
    student update, i.e. ``K`` times per iteration, and ``MODEL_COMPLETED`` (on which MONAI decollates the output)
    once, after the last update; with ``amp``, each update has its own gradient-scaler step.

    Args:
        device: device of the students.
        max_epochs: number of epochs.
        train_data_loader: loader of dict batches with ``image`` and ``label``.
        network: student 0.
        optimizer: optimizer over student 0's parameters.
        peers: the other students (a module or a sequence of them), each moved to ``device``.
        peer_optimizers: one optimizer per peer, over that peer's parameters, in the order of ``peers``.
        loss_function: supervised loss of each student; default cross-entropy (BCE with logits when ``multi_label``).
        temperature: ``T`` of the mimicry term (4 in the KD study; the paper's loss is ``T = 1``).
        kd_weight: weight of the mimicry term (1 in the paper).
        alternate: update in turn with fresh peer predictions (the paper's algorithm) or simultaneously.
        multi_label: BCE and per-class Bernoulli KL (an extension; the paper is multi-class).
        kwargs: every other ``SupervisedTrainer`` argument.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        peers: nn.Module | Sequence[nn.Module],
        peer_optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        loss_function: Callable | None = None,
        temperature: float = 4.0,
        kd_weight: float = 1.0,
        alternate: bool = True,
        multi_label: bool = False,
        **kwargs: Any,
    ) -> None:
        owner = "MutualLearningTrainer"
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=_supervised(loss_function, as_flag(multi_label, "multi_label")),
            **kwargs,
        )
        peers = [peers] if isinstance(peers, nn.Module) else list(peers)
        if isinstance(peer_optimizers, torch.optim.Optimizer):
            peer_optimizers = [peer_optimizers]
        peer_optimizers = list(peer_optimizers)
        if not peers:
            raise ValueError(f"{owner}: peers is empty; mutual learning needs at least one peer of the network.")
        for i, peer in enumerate(peers):
            if not isinstance(peer, nn.Module):
                raise TypeError(f"{owner}: peer {i} is a {type(peer).__name__}, not a torch.nn.Module.")
        if len(peer_optimizers) != len(peers):
            raise ValueError(
                f"{owner}: {len(peers)} peer(s) but {len(peer_optimizers)} peer optimizer(s); give one optimizer per "
                "peer, over that peer's parameters."
            )
        students = [network, *peers]
        optimizers = [optimizer, *peer_optimizers]
        seen: dict[int, int] = {}
        for k, (student, optim) in enumerate(zip(students, optimizers)):
            if not isinstance(optim, torch.optim.Optimizer):
                raise TypeError(f"{owner}: the optimizer of student {k} is a {type(optim).__name__}, not an Optimizer.")
            for p in unwrap_network(student).parameters():
                if seen.setdefault(id(p), k) != k:
                    raise ValueError(
                        f"{owner}: students {seen[id(p)]} and {k} share parameters; give distinct networks."
                    )
            held = {id(p) for group in optim.param_groups for p in group["params"]}
            trained = [id(p) for p in unwrap_network(student).parameters() if p.requires_grad]
            if not trained or any(i not in held for i in trained):
                raise ValueError(
                    f"{owner}: the optimizer of student {k} ({'network' if k == 0 else f'peer {k - 1}'}) must hold "
                    "all of that student's trainable parameters."
                )
        self.peers = [peer.to(device) for peer in peers]
        self.peer_optimizers = peer_optimizers
        self.kd_loss = MutualLearningLoss(temperature, multi_label=as_flag(multi_label, "multi_label"))
        self.kd_weight = _check_weight(kd_weight, owner, "kd_weight")
        self.alternate = as_flag(alternate, "alternate")

    @property
    def students(self) -> list[nn.Module]:
        """The cohort: ``network`` (student 0), then the peers."""
        return [self.network, *self.peers]

    def _iteration(self, engine: MutualLearningTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One DML iteration: each student updated in turn (see the class docstring)."""
        if batchdata is None:
            raise ValueError("MutualLearningTrainer: no batch data for this iteration.")
        inputs, targets, args, kwargs = _split_batch(engine, batchdata)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        students = engine.students
        optimizers = [engine.optimizer, *engine.peer_optimizers]
        for student in students:
            student.train()
        preds: list[torch.Tensor | None] = [None] * len(students)  # with graph, until the student's update
        current: list[torch.Tensor | None] = [None] * len(students)  # detached predictions of the current weights
        totals = []

        def _run(k: int) -> torch.Tensor:
            return engine.inferer(inputs, students[k], *args, **kwargs)

        for k in range(len(students)):

            def _forward(k: int = k) -> torch.Tensor:
                if k == 0:
                    for j in range(len(students)):
                        preds[j] = _run(j)
                        current[j] = preds[j].detach()
                    engine.state.output[Keys.PRED] = preds[0]
                elif engine.alternate:
                    with torch.no_grad():  # student k - 1 has just been updated; the earlier ones were re-run since
                        current[k - 1] = _run(k - 1).detach()
                return preds[k]

            def _loss(pred: torch.Tensor, k: int = k) -> None:
                peers = [current[j] for j in range(len(students)) if j != k]
                ce = engine.loss_function(pred, targets).mean()
                kl = engine.kd_loss(pred, peers)
                total = ce + engine.kd_weight * kl
                engine.state.output[Keys.LOSS] = total
                engine.state.output.update(
                    {f"ce_{k}": ce.detach(), f"kl_{k}": kl.detach(), f"loss_{k}": total.detach()}
                )

            with _optimizer_of(engine, optimizers[k]):
                optimisation_step(engine, _forward, _loss, model_completed=False)
            totals.append(engine.state.output[f"loss_{k}"])
            preds[k] = None
        engine.state.output[Keys.LOSS] = torch.stack(totals).sum()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # once, after every student's update (MONAI decollates)
        return engine.state.output
